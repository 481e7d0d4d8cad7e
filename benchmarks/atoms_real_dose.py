"""Atom finder on real crystals at low dose: what ``model="auto"`` chose and what each model finds.

Real crystals (Acquisition_18 HAADF 512² crop at ×1 / ×0.7 / ×1.5 sampling, ABF SrTiO3 with dark
columns, the DM3 HAADF survey) are degraded two ways: a dose model (darkest 1 % → 0 counts, the
median clean-column value → N counts, or for dark columns the bright field's 99th percentile,
then Poisson resampling) and added white noise at k × the frame's own level (Immerkær). The
reference is ``find_atoms`` defaults on the clean image at that sampling; F1 is a Hungarian match
within 0.3 × the reference's nearest-neighbour distance, 8 px from the edges. Per case: auto's
choice and reason, its F1, the lattice and single-atom models' F1, the zoom ``rescale="auto"``
took and the clean image's. Prints one JSON document.
Usage: python benchmarks/atoms_real_dose.py [--quick] [--seeds 10 11 12] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

import napari_microml as mm
from napari_microml.atoms.choose import LATTICE_MODEL, SINGLE_ATOMS_MODEL
from napari_microml.atoms.metrics import match_points
from napari_microml.runtime.noise import noise_sigma

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generalise import A18_NM, DATA, _read, resample  # noqa: E402

ABF_NM = 0.00933  # the ABF file's calibration (nm/px)
DOSES = (5, 10, 20, 50, 100)  # counts at a column's peak
ADDED_NOISE = (1, 2)  # × the frame's own noise level
MARGIN = 8  # px: columns this close to an edge are not scored


def _crop(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape
    return image[(h - side) // 2 : (h + side) // 2, (w - side) // 2 : (w + side) // 2]


def real_crystals(quick: bool = False) -> list[tuple[str, np.ndarray, float | None]]:
    """(name, image, nm per px) of the real crystals judged."""
    a18 = _crop(_read("formats/Acquisition_18.emd"), 512)
    cases = [("Acquisition_18 x1", a18, A18_NM)]
    if not quick:
        cases += [
            ("Acquisition_18 x0.7", resample(a18, 0.7), A18_NM / 0.7),
            ("Acquisition_18 x1.5", resample(a18, 1.5), A18_NM / 1.5),
        ]
    cases += [
        ("ABF SrTiO3 (dark columns)", _read("formats/stem_abf_data.hspy"), ABF_NM),
        ("DM3 survey", _read("formats/DMReader_Image_SI-Survey.dm3"), None),
    ]
    return cases


def at_dose(image: np.ndarray, columns: np.ndarray, counts: float, rng) -> np.ndarray:
    """The frame as a detector counting ``counts`` at a column's peak would record it."""
    lo = np.percentile(image, 1)
    ip = np.clip(np.rint(columns).astype(int), 0, np.array(image.shape) - 1)
    on_columns = np.median(image[ip[:, 0], ip[:, 1]])
    # dark columns: the bright field around them carries the counts
    top = on_columns if on_columns > np.median(image) else np.percentile(image, 99)
    return rng.poisson(np.clip((image - lo) / (top - lo), 0, None) * counts).astype(float)


def _clip(p: np.ndarray, shape) -> np.ndarray:
    p = np.asarray(p, float).reshape(-1, 2)
    return p[(p > MARGIN).all(1) & (p[:, 0] < shape[0] - MARGIN) & (p[:, 1] < shape[1] - MARGIN)]


def table(seeds, quick: bool = False) -> list[dict]:
    """One row per real crystal × degradation × seed."""
    rows = []
    for c, (name, image, px) in enumerate(real_crystals(quick)):
        clean = mm.find_atoms(image, pixel_size=px)
        ref = clean.positions
        tol = 0.3 * float(np.median(cKDTree(ref).query(ref, k=2)[0][:, 1]))

        def f1(pos, image=image, ref=ref, tol=tol):
            shape = image.shape
            return round(match_points(_clip(pos, shape), _clip(ref, shape), tol)["f1"], 3)

        degradations = [f"{n} counts" for n in DOSES] + [f"+{k}x noise" for k in ADDED_NOISE]
        for seed in seeds:
            for i, what in enumerate(degradations):
                rng = np.random.default_rng([seed, c, i])
                if what.endswith("counts"):
                    x = at_dose(image, ref, float(what.split()[0]), rng)
                else:
                    k = float(what[1:].split("x")[0])
                    x = image + rng.normal(0, k * noise_sigma(image), image.shape)
                auto = mm.find_atoms(x, pixel_size=px)
                choice = auto.parameters["model_choice"]
                lattice = (
                    auto
                    if choice["chosen"] == LATTICE_MODEL
                    else mm.find_atoms(x, pixel_size=px, model=LATTICE_MODEL)
                )
                single = (
                    auto
                    if choice["chosen"] == SINGLE_ATOMS_MODEL
                    else mm.find_atoms(x, pixel_size=px, model=SINGLE_ATOMS_MODEL)
                )
                rows.append(
                    dict(
                        image=name,
                        degradation=what,
                        seed=seed,
                        reference_columns=len(_clip(ref, image.shape)),
                        auto_chose=choice["chosen"],
                        reason=choice["reason"],
                        f1_auto=f1(auto.positions),
                        f1_lattice_model=f1(lattice.positions),
                        f1_single_atom_model=f1(single.positions),
                        zoom=round(float(lattice.parameters.get("zoom", 1.0)), 4),
                        clean_zoom=round(float(clean.parameters.get("zoom", 1.0)), 4),
                    )
                )
    return rows


def summary(rows: list[dict]) -> dict:
    """Mean F1 per crystal and degradation over seeds, and how often auto took each model."""
    df = pd.DataFrame(rows)
    out = {}
    for (name, what), g in df.groupby(["image", "degradation"], sort=False):
        n_single = int((g.auto_chose == SINGLE_ATOMS_MODEL).sum())
        n_moved = int((abs(g.zoom - g.clean_zoom) > 0.02).sum())
        out.setdefault(name, {})[what] = {
            "f1_auto": round(float(g.f1_auto.mean()), 3),
            "f1_lattice_model": round(float(g.f1_lattice_model.mean()), 3),
            "f1_single_atom_model": round(float(g.f1_single_atom_model.mean()), 3),
            "auto_chose_single_atoms": f"{n_single}/{len(g)}",
            "zoom_not_the_clean_images": f"{n_moved}/{len(g)}",
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="one seed, Acquisition_18 at ×1 only")
    ap.add_argument("--seeds", type=int, nargs="+", default=[10, 11, 12])
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    if not DATA.is_dir():
        print(json.dumps({"skipped": f"{DATA} not found"}))
        return
    rows = table(args.seeds[:1] if args.quick else args.seeds, quick=args.quick)
    text = json.dumps({"summary": summary(rows), "rows": rows}, indent=1, default=float)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
