"""Do the tools' defaults hold on data from other instruments?

Each real file in ../shared/data is turned into what another instrument would record (other
pixel sizes, dtypes, offsets, dead pixels, inverted contrast, shear, sizes; scanning-probe
topographs (tilt, line offsets, streaks, creep, 1/f noise, heights in nm); spectra in keV,
descending, with fewer channels; other scan coverages) and run through the public API with
default settings. Every variation's score is printed beside the unperturbed baseline of the
same run, with the physical quantity that must not change (lattice constant in pm, shift in eV).
Usage: python benchmarks/generalise.py
       [--only atoms,abf,pt,defects,spm,spectra,completion,large] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import napari_microml as mm
from napari_microml.atoms.metrics import match_boxes, match_points

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
A18_NM = 0.012246524915099144  # Acquisition_18's calibration (nm/px)
ZOOMS = (0.5, 0.7, 1.5, 2.0)


def resample(image: np.ndarray, factor: float) -> np.ndarray:
    """The same field of view sampled ``factor`` times as finely (an area-averaging detector)."""
    from skimage.transform import rescale

    return rescale(np.asarray(image, float), factor, order=3, anti_aliasing=factor < 1)


def _read(rel: str) -> np.ndarray:
    data, _, _ = mm.read_file(str(DATA / rel))[0]
    return np.asarray(data, float)


def _lattice_a_pm(r, image, pixel_size: float) -> dict:
    lat = mm.analyze_lattice(r.positions, image=image, pixel_size=pixel_size)
    a = lat.lattice
    return {k: round(float(a[k]), 2) for k in ("a_pm", "b_pm") if k in a}


def _atoms_case(image, pixel_size, truth=None, tol=None) -> dict:
    t = time.perf_counter()
    r = mm.find_atoms(image, pixel_size=pixel_size)
    out = {
        "n": len(r.positions),
        "seconds": round(time.perf_counter() - t, 2),
        "contrast": r.parameters["contrast"],
        "model": r.parameters["model_choice"].get("chosen"),
        "zoom": round(float(r.parameters.get("zoom", 1.0)), 3),
    }
    if len(r.positions) >= 6:
        try:
            out.update(_lattice_a_pm(r, image, pixel_size))
        except Exception as err:  # noqa: BLE001 - reported, not hidden
            out["lattice_error"] = str(err)[:120]
    if truth is not None:
        m = match_points(r.positions, truth, max_distance=tol)
        out["f1_vs_resampled_baseline"] = round(m["f1"], 4)
    return out, r


def atoms_section(rel: str, pixel_size: float, crop: int) -> dict:
    """Lattice image: columns and lattice constant at other samplings, dtypes and defects."""
    full = _read(rel)
    h, w = full.shape
    img = full[(h - crop) // 2 : (h + crop) // 2, (w - crop) // 2 : (w + crop) // 2]
    base, rb = _atoms_case(img, pixel_size)
    rows = {"baseline": base}
    inner = rb.positions
    for f in ZOOMS:
        z = resample(img, f)
        truth = (inner + 0.5) * f - 0.5
        rows[f"zoom x{f}"], _ = _atoms_case(z, pixel_size / f, truth, tol=1.5 * max(f, 1))
    rng = np.random.default_rng(0)
    lo, hi = img.min(), img.max()
    u = (img - lo) / (hi - lo)
    dead = img.copy()
    k = rng.choice(img.size, 20, replace=False)
    dead.flat[k[:10]] = 0
    dead.flat[k[10:]] = hi * 50
    nan = img.copy()
    nan.flat[k] = np.nan
    sh = np.array([[1.0, 0.03], [0.0, 1.0]])
    from scipy.ndimage import affine_transform

    shear = affine_transform(img, sh, order=3, mode="reflect")
    variants = {
        "uint8": np.round(u * 255).astype(np.uint8),
        "uint16+offset": np.round(u * 4000 + 30000).astype(np.uint16),
        "int16 negative": np.round(u * 3000 - 2000).astype(np.int16),
        "float32 x1e-6": (u * 1e-6).astype(np.float32),
        "float64 -offset": u - 5.0,
        "20 dead/hot px": dead,
        "20 NaN px": nan,
        "shear 3%": shear,
        "non-square odd 333x517": img[:333, :517] if crop >= 517 else img[: crop - 3, : crop - 1],
        "tiny 64": img[:64, :64],
    }
    for name, v in variants.items():
        truth = inner if name in ("uint8", "uint16+offset", "int16 negative") else None
        rows[name], _ = _atoms_case(v, pixel_size, truth, tol=1.5)
    return rows


def pt_section(n_images: int = 11) -> dict:
    """Pt single atoms, box protocol scaled with the image: F1 at other samplings."""
    import pandas as pd
    import tifffile

    rows: dict[str, list] = {}
    files = sorted((DATA / "atoms_pt_haadf" / "images").glob("*.tif"))[:n_images]
    for path in files:
        img = tifffile.imread(path).astype(float)
        lab = pd.read_csv(DATA / "atoms_pt_haadf" / "labels" / f"{path.name[:3]}_Results.csv")
        true = lab[["Y", "X"]].to_numpy(float)
        for f in (1.0, *ZOOMS):
            z = img if f == 1.0 else resample(img, f)
            r = mm.find_atoms(z, pixel_size=15 / 512 / f)
            m = match_boxes(r.positions, (true + 0.5) * f - 0.5, box=21 * f)
            # without a calibration the single-atom model runs at the frame's own pixels
            raw = mm.find_atoms(z) if f != 1.0 else r
            m_raw = match_boxes(raw.positions, (true + 0.5) * f - 0.5, box=21 * f)
            key = "baseline" if f == 1.0 else f"zoom x{f}"
            rows.setdefault(key, []).append(
                {
                    "image": path.name[:3],
                    "f1": round(m["f1"], 3),
                    "f1_uncalibrated": round(m_raw["f1"], 3),
                    "n": len(r.positions),
                    "model": r.parameters["model_choice"].get("chosen"),
                }
            )
    return {
        k: {
            "mean_f1": round(float(np.mean([x["f1"] for x in v])), 3),
            "mean_f1_uncalibrated": round(float(np.mean([x["f1_uncalibrated"] for x in v])), 3),
            "per_image": v,
        }
        for k, v in rows.items()
    }


def defects_section() -> dict:
    """Defect counts on the Acquisition_18 crop at other samplings and with stuck pixels (the
    crop is one crystal: every call beyond the baseline's is a false one)."""
    img = _read("formats/Acquisition_18.emd")[256:768, 256:768]
    k = np.random.default_rng(0).choice(img.size, 20, replace=False)
    stuck = img.copy()
    stuck.flat[k[:10]] = img.min() - 50 * np.ptp(img)
    stuck.flat[k[10:]] = img.max() + 50 * np.ptp(img)
    cases = {"baseline": (img, A18_NM), "20 stuck px": (stuck, A18_NM)}
    cases |= {f"zoom x{f}": (resample(img, f), A18_NM / f) for f in ZOOMS}
    rows = {}
    for name, (x, px) in cases.items():
        t = time.perf_counter()
        r = mm.segment_defects(x, pixel_size=px)
        c = r.counts()
        rows[name] = {
            "counts": {str(a): int(b) for a, b in zip(c["class"], c["count"], strict=True)},
            "calls_per_1000_columns": round(1000 * len(r.table) / max(len(r.atoms), 1), 2),
            "zoom": r.provenance.get("parameters", {}).get("zoom"),
            "seconds": round(time.perf_counter() - t, 2),
        }
    return rows


def _write_spectra(path: Path, d: dict) -> None:
    from rsciio.hspy import file_writer

    empty = ("tmp_parameters", "learning_results", "models")
    file_writer(
        str(path), {**d, **{k: {} for k in empty}, "package_info": {"name": "", "version": ""}}
    )


def _spectra_variant(src: Path, out: Path, *, factor=1.0, unit="eV", descending=False) -> Path:
    """``src`` as another spectrometer would write it: energy in ``unit`` (× ``factor``),
    ascending or descending."""
    from rsciio.hspy import file_reader

    d = file_reader(str(src))[0]
    ax = d["axes"][-1]
    offset, scale = float(ax["offset"]), float(ax["scale"])
    if descending:
        d["data"] = np.ascontiguousarray(d["data"][..., ::-1])
        offset, scale = offset + scale * (int(ax["size"]) - 1), -scale
    ax.update(offset=offset * factor, scale=scale * factor, units=unit)
    d["attributes"] = {"_lazy": False}
    _write_spectra(out, d)
    return out


def _shift_case(path: Path, *, crop=None, channels=None) -> dict:
    from napari_microml.runtime.spectral import spectra_last
    from napari_microml.spectra.preprocess import auto_window

    data, kwargs, _ = mm.read_file(str(path))[0]
    spectra, axis = spectra_last(np.asarray(data, float), kwargs["metadata"])
    e = axis.values
    if crop is not None:
        keep = e >= crop
        spectra, e = spectra[..., keep], e[keep]
    if channels is not None:  # a spectrometer with other channels over the same range
        n = spectra.shape[-1]
        if channels < n:  # binned: each channel the sum of the finer ones
            k = n // channels
            spectra = spectra[..., : k * channels].reshape(*spectra.shape[:-1], channels, k).sum(-1)
            e = e[: k * channels].reshape(channels, k).mean(-1)
        else:
            fine = np.linspace(e[0], e[-1], channels)
            spectra = np.stack([np.interp(fine, e, s) for s in spectra.reshape(-1, n)])
            spectra, e = spectra.reshape(*data.shape[:-1], channels), fine
    w = auto_window(spectra, e, units=axis.units)
    t = time.perf_counter()
    v = mm.fit_shift_vae(spectra, axis=e, channel_range=(w.start, w.stop), seed=0)
    return {
        "units": axis.units,
        "window": w.describe(axis.units),
        "shift": np.asarray(v.shift, float).ravel(),
        "seconds": round(time.perf_counter() - t, 2),
    }


def spectra_section(tmp: Path) -> dict:
    """LSMO low-loss zero-loss drift and CuZn Cu L3 edge: shifts in eV whatever the axis."""
    rows: dict = {}
    for rel in ("spectra/LSMO_linescan_low_loss.hspy", "dkl/CuZn_EELS_mapping_tutorial.hspy"):
        src = DATA / rel
        base = _shift_case(src)
        res = {"baseline": {k: v for k, v in base.items() if k != "shift"}}
        res["baseline"]["shift_span_eV"] = round(float(np.ptp(base["shift"])), 4)
        cases = {
            "keV axis": {"path": _spectra_variant(src, tmp / "kev.hspy", factor=1e-3, unit="keV")},
            "meV axis": {"path": _spectra_variant(src, tmp / "mev.hspy", factor=1e3, unit="meV")},
            "descending": {"path": _spectra_variant(src, tmp / "desc.hspy", descending=True)},
        }
        for n in (256, 512, 2048, 4096):
            cases[f"{n} channels"] = {"path": src, "channels": n}
        if "low_loss" in rel:
            cases["zero-loss peak out of view (from +5 eV)"] = {"path": src, "crop": 5.0}
        for name, c in cases.items():
            got = _shift_case(c.pop("path"), **c)
            s = got.pop("shift")
            got["shift_span_eV"] = round(float(np.ptp(s)), 4)
            if len(s) == len(base["shift"]):
                got["r_vs_baseline"] = round(float(np.corrcoef(s, base["shift"])[0, 1]), 4)
                got["max_abs_diff_eV"] = round(float(np.abs(s - base["shift"]).max()), 4)
            res[name] = got
        # another line-scan shape: (1, N) and (N, 1) as files of that shape
        rows[rel.split("/")[-1]] = res
    return rows


def completion_section() -> dict:
    """Kriging (the default) at other coverages, masks and value types; RMS on [0, 1]."""
    import tifffile

    from napari_microml.completion.metrics import relative_rms

    rows: dict = {}
    for name in ("truth-1", "truth-2"):
        truth = tifffile.imread(DATA / "completion" / f"{name}.tif").astype(float)

        def run(mask, values=None, truth=truth):
            v = truth if values is None else values
            t = time.perf_counter()
            c = mm.complete_scan(np.where(mask != 0, v, np.nan), mask)
            pred = c.image if values is None else (c.image - v.min()) / np.ptp(v)
            sd = np.where(mask != 0, np.nan, c.uncertainty / (1 if values is None else np.ptp(v)))
            err = np.abs(pred - truth)[mask == 0]
            return {
                "coverage_pct": round(100 * float((mask != 0).mean()), 2),
                "rms_pct": round(100 * relative_rms(pred, truth, mask != 0), 3),
                "within_2sigma_pct": round(100 * float((err <= 2 * sd[mask == 0]).mean()), 1),
                "seconds": round(time.perf_counter() - t, 2),
            }

        spiral = mm.scan_mask("spiral", truth.shape, 1 / 17.9, seed=0)
        res = {"baseline (spiral 1/17.9)": run(spiral)}
        for cov in (0.01, 0.02, 0.05, 0.10, 0.25, 0.50):
            res[f"random {cov:.0%}"] = run(mm.scan_mask("random", truth.shape, cov, seed=0))
            res[f"lines {cov:.0%}"] = run(mm.scan_mask("lines", truth.shape, cov, seed=0))
        trace = tifffile.imread(DATA / "completion" / "mask-1.tif").astype(float)
        res["paper trace, float weights (non-zero = measured)"] = run(trace)
        res["paper trace, thresholded > 0"] = run(trace > 0)
        u16 = np.round(truth * 4000 + 30000).astype(np.uint16).astype(float)
        res["spiral, uint16 values + offset"] = run(spiral, values=u16)
        rows[name] = res
    from napari_microml.completion.scan_io import sparse_from_files

    fmt = DATA / "formats"
    values, mask, _ = sparse_from_files(
        fmt / "ROI_Random_Scan_scan_coordinates.csv",
        fmt / "ROI_Random_Scan_movie.mrc",
        fmt / "ROI_Random_Scan_info.txt",
    )
    t = time.perf_counter()
    c = mm.complete_scan(values, mask)
    rows["ROI_Random_Scan (real, no truth)"] = {
        "shape": list(np.shape(values)),
        "coverage_pct": round(100 * float(np.mean(mask)), 2),
        "measured_kept_exactly": bool(np.allclose(c.image[mask], np.asarray(values)[mask])),
        "finite": bool(np.isfinite(c.image).all()),
        "seconds": round(time.perf_counter() - t, 2),
    }
    return rows


SPM_VARIANTS = {
    "plane 3x corrugation": dict(plane=3, lines=0, shear=0),
    "plane 10x": dict(plane=10, lines=0, shear=0),
    "line offsets 0.5x": dict(plane=0, lines=0.5, shear=0),
    "line offsets 1x": dict(plane=0, lines=1, shear=0),
    "line offsets 3x": dict(plane=0, lines=3, shear=0),
    "shear 2%": dict(plane=0, lines=0, shear=0.02),
    "shear 5%": dict(plane=0, lines=0, shear=0.05),
    "1/f raster noise 0.1x": dict(plane=0, lines=0, shear=0, noise=0.1),
    "1/f raster noise 0.2x": dict(plane=0, lines=0, shear=0, noise=0.2),
    "10 streaks (+ lines 1x)": dict(plane=0, lines=1, shear=0, streaks=10),
    "STM: plane 5x, lines 1x, shear 3%, 1/f 0.1x": dict(plane=5, lines=1, shear=0.03, noise=0.1),
    "same, atoms dark": dict(plane=5, lines=1, shear=0.03, noise=0.1, invert=True),
    "heavy: plane 10x, lines 3x, shear 5%, 1/f 0.2x, 10 streaks": dict(
        plane=10, lines=3, shear=0.05, noise=0.2, streaks=10
    ),
}


class _NoLevelling:
    """The tools as they were before scanning-probe levelling (the same run's baseline)."""

    MODULES = (
        "napari_microml.atoms.finder",
        "napari_microml.defects.segment",
        "napari_microml.lattice.analyze",
    )

    def __enter__(self):
        import importlib

        from napari_microml.runtime.level import Levelling

        self.saved = []
        for name in self.MODULES:
            mod = importlib.import_module(name)
            self.saved.append((mod, mod.level_scan))
            mod.level_scan = lambda frame: Levelling()
        return self

    def __exit__(self, *exc):
        for mod, fn in self.saved:
            mod.level_scan = fn


def _spm_atoms(image, pixel_size, truth) -> dict:
    out, r = _atoms_case(image, pixel_size, truth, tol=1.5)
    out["levelling"] = r.parameters.get("levelling")
    del out["seconds"]
    return out


def spm_section() -> dict:
    """Scanning-probe (STM/AFM) copies of the lattice images, the Pt/C frames and the defect
    crop: heights in nm, tilt, line offsets, streaks, creep, 1/f noise; each with levelling
    (now) and without (before), beside the unperturbed baseline; and the 17 real electron
    images, which must not be levelled."""
    from napari_microml.runtime.level import level_scan
    from napari_microml.synth.scanprobe import scanning_probe

    rows: dict = {}
    for name, rel, px, crop in (
        ("Acquisition_18 512 crop", "formats/Acquisition_18.emd", A18_NM, 512),
        ("ABF SrTiO3 384 crop", "formats/stem_abf_data.hspy", 0.00933, 384),
    ):
        full = _read(rel)
        h, w = full.shape
        img = full[(h - crop) // 2 : (h + crop) // 2, (w - crop) // 2 : (w + crop) // 2]
        base, rb = _atoms_case(img, px)
        del base["seconds"]
        res: dict = {"baseline": base}
        for vname, kw in SPM_VARIANTS.items():
            x = scanning_probe(img, **kw)
            sh = kw.get("shear", 0.0)
            truth = np.column_stack(
                [rb.positions[:, 0], rb.positions[:, 1] - sh * rb.positions[:, 0]]
            )
            now = _spm_atoms(x, px, truth)
            with _NoLevelling():
                before = _spm_atoms(x, px, truth)
            res[vname] = {"levelled": now, "not levelled (before)": before}
        rows[name] = res
    import pandas as pd
    import tifffile

    pt: dict = {}
    for path in sorted((DATA / "atoms_pt_haadf" / "images").glob("*.tif")):
        img = tifffile.imread(path).astype(float)
        lab = pd.read_csv(DATA / "atoms_pt_haadf" / "labels" / f"{path.name[:3]}_Results.csv")
        true = lab[["Y", "X"]].to_numpy(float)
        r = mm.find_atoms(img, pixel_size=15 / 512)
        x = scanning_probe(img, plane=5, lines=1, shear=0.0, noise=0.1, streaks=5)
        entry = {"baseline": round(match_boxes(r.positions, true, box=21)["f1"], 3)}
        for key, ctx in (("levelled", None), ("not levelled (before)", _NoLevelling)):
            if ctx is None:
                got = mm.find_atoms(x, pixel_size=15 / 512)
            else:
                with ctx():
                    got = mm.find_atoms(x, pixel_size=15 / 512)
            entry[key] = round(match_boxes(got.positions, true, box=21)["f1"], 3)
            entry[key + " vs baseline detections"] = round(
                match_points(got.positions, r.positions, max_distance=3.0)["f1"], 3
            )
        pt[path.name[:3]] = entry
    rows["Pt/C as STM (plane 5x, lines 1x, 1/f 0.1x, 5 streaks): F1 vs labels"] = {
        "mean": {
            k: round(float(np.mean([e[k] for e in pt.values()])), 3)
            for k in next(iter(pt.values()))
        },
        "per_image": pt,
    }
    img = _read("formats/Acquisition_18.emd")[256:768, 256:768]
    dres: dict = {}
    for vname, x in {
        "baseline": img,
        "STM: plane 5x, lines 1x, 1/f 0.1x": scanning_probe(
            img, plane=5, lines=1, shear=0, noise=0.1
        ),
        "heavy: plane 10x, lines 3x, 1/f 0.2x, 10 streaks": scanning_probe(
            img, plane=10, lines=3, shear=0, noise=0.2, streaks=10
        ),
    }.items():
        for key, ctx in (("levelled", None), ("not levelled (before)", _NoLevelling)):
            if ctx is None:
                r = mm.segment_defects(x, pixel_size=A18_NM)
            else:
                with ctx():
                    r = mm.segment_defects(x, pixel_size=A18_NM)
            c = r.counts()
            dres.setdefault(vname, {})[key] = {
                "counts": {str(a): int(b) for a, b in zip(c["class"], c["count"], strict=True)},
                "levelling": r.provenance.get("parameters", {}).get("levelling"),
            }
            if vname == "baseline":
                break
    rows["defects, Acquisition_18 512 crop (one crystal: 1 bright dopant)"] = dres
    real = {}
    for rel in (
        "formats/Acquisition_18.emd",
        "formats/stem_abf_data.hspy",
        "formats/DMReader_Image_SI-Survey.dm3",
        "dkl/CuZn_HAADF.hspy",
        "completion/truth-1.tif",
        "completion/truth-2.tif",
        *sorted(
            f"atoms_pt_haadf/images/{p.name}"
            for p in (DATA / "atoms_pt_haadf" / "images").glob("*.tif")
        ),
    ):
        x = np.squeeze(_read(rel)).astype(float)
        real[rel.split("/")[-1]] = level_scan(x).describe() or "not levelled"
    rows["17 real electron images"] = real
    return rows


_LARGE = """
import json, resource, sys, time
import numpy as np
import napari_microml as mm
from napari_microml.atoms.finder import find_atoms_iter
side = int(sys.argv[1])
a18 = np.asarray(mm.read_file(sys.argv[2])[0][0], np.float32)
image = np.tile(a18, (side // a18.shape[0], side // a18.shape[1]))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
gen, events = find_atoms_iter(image, pixel_size=0.012246524915099144), []
while True:
    try:
        events.append(next(gen)[3])
    except StopIteration as stop:
        r = stop.value
        break
found = time.perf_counter() - t
lat = mm.analyze_lattice(r.positions, image=image, pixel_size=0.012246524915099144)
print(json.dumps({
    "side": side, "columns": len(r.positions), "find_atoms_s": round(found, 1),
    "analyze_lattice_s": round(time.perf_counter() - t - found, 1),
    "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    "rss_before_mib": round(before), "progress_messages": len(events),
    "first_messages": events[:3], "last_message": events[-1],
    "a_pm": round(float(lat.lattice["a_pm"]), 2),
}))
"""


def large_section() -> dict:
    """A 2048² and a 4096² frame (Acquisition_18 tiled): time, peak memory, progress messages."""
    import subprocess

    rows = {}
    for side in (2048, 4096):
        done = subprocess.run(
            [sys.executable, "-c", _LARGE, str(side), str(DATA / "formats/Acquisition_18.emd")],
            capture_output=True,
            text=True,
            check=False,
        )
        rows[f"{side}²"] = json.loads(done.stdout) if done.returncode == 0 else done.stderr[-400:]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="atoms,abf,pt,defects,spm,spectra,completion,large")
    ap.add_argument("--out")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    parts = set(args.only.split(","))
    out: dict = {}
    if not DATA.is_dir():
        out["skipped"] = f"{DATA} not found"
    else:
        if "atoms" in parts:
            out["Acquisition_18 512 crop"] = atoms_section(
                "formats/Acquisition_18.emd", A18_NM, 512
            )
        if "abf" in parts:
            out["ABF SrTiO3 384 crop"] = atoms_section("formats/stem_abf_data.hspy", 0.00933, 384)
        if "pt" in parts:
            out["Pt/C single atoms"] = pt_section()
        if "defects" in parts:
            out["defects, Acquisition_18 512 crop"] = defects_section()
        if "spm" in parts:
            out["scanning-probe images"] = spm_section()
        if "spectra" in parts:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                out["spectra"] = spectra_section(Path(tmp))
        if "completion" in parts:
            out["completion"] = completion_section()
        if "large" in parts:
            out["large frames"] = large_section()
    text = json.dumps(out, indent=1, default=float)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    sys.exit(main())
