"""Atom-finder benchmark: accuracy on synthetic truth and real Pt images, speed, refinement.

Prints one JSON document; every figure sits beside a classical baseline run in the same process.
Usage: python benchmarks/atoms.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.feature import blob_log, peak_local_max

import napari_microml as mm
from napari_microml.atoms.metrics import match_boxes, match_points
from napari_microml.atoms.refine import refine_positions, window_radius
from napari_microml.synth.lattice import simulate_lattice

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def baseline_find(image, spacing_guess=None):
    """Classical: Gaussian-smoothed peak_local_max with an Otsu-like threshold, then COM."""
    from skimage.filters import threshold_otsu

    img = ndi.gaussian_filter(image.astype(np.float64), 1.5)
    img = img - ndi.gaussian_filter(img, 15)
    peaks = peak_local_max(
        img, min_distance=2, threshold_abs=threshold_otsu(img), exclude_border=False
    )
    pos, _ = refine_positions(image, peaks.astype(float), method="com")
    return pos


def _inner_truth(s, margin=6):
    h, w = s.image.shape
    keep = (
        (s.positions > margin).all(1)
        & (s.positions[:, 0] < h - margin)
        & (s.positions[:, 1] < w - margin)
    )
    return s.positions[keep]


def _clip(p, shape, margin=6):
    return p[(p > margin).all(1) & (p[:, 0] < shape[0] - margin) & (p[:, 1] < shape[1] - margin)]


def _rms_clean(s, pred, spacing):
    """RMS (px) of matched columns away from amorphous patches (where 'the centre' is ambiguous)."""
    am = ndi.binary_dilation(s.amorphous, iterations=max(1, int(spacing)))
    t = _inner_truth(s)
    ip = np.rint(t).astype(int)
    t = t[~am[ip[:, 0], ip[:, 1]]]
    m = match_points(pred, t, max_distance=spacing / 3)
    return m["rms"]


def synthetic(doses, seeds, size=256):
    out = []
    for dose in doses:
        rows = {"ours": [], "baseline": []}
        counts = []
        for lattice in ("square", "triangular", "honeycomb", "perovskite", "rectangular"):
            for seed in seeds:
                spacing = float(np.random.default_rng(seed).uniform(8, 20))
                s = simulate_lattice(
                    (size, size),
                    scene="crystal",
                    lattice=lattice,
                    spacing=spacing,
                    dose=dose,
                    seed=1000 + seed,
                )
                counts.append(np.median(2 * np.pi * s.sigma**2 * s.amplitude) * dose)
                truth = _inner_truth(s)
                for name, pred in (
                    ("ours", mm.find_atoms(s.image).positions),
                    ("baseline", baseline_find(s.image)),
                ):
                    pred = _clip(pred, s.image.shape)
                    m = match_points(pred, truth, max_distance=spacing / 3)
                    rows[name].append(
                        {
                            "precision": m["precision"],
                            "recall": m["recall"],
                            "f1": m["f1"],
                            "rms_px": _rms_clean(s, pred, spacing),
                        }
                    )
        entry = {
            "dose_counts_at_column_peak": dose,
            "median_counts_per_column": float(np.median(counts)),
        }
        for name, r in rows.items():
            df = pd.DataFrame(r)
            entry[name] = {k: round(float(df[k].mean()), 4) for k in df.columns}
        out.append(entry)
    return out


def scale(spacings=(3.0, 4.0, 45.0, 60.0, 90.0), seeds=(0, 1, 2), dose=500):
    """Columns outside the trained 5–30 px spacing: automatic resampling vs none.

    On held-out seeds.
    """
    out = []
    for spacing in spacings:
        size = int(np.clip(spacing * 18, 192, 1600))
        rows = {"auto": [], "off": []}
        zooms = []
        for lattice in ("square", "triangular", "honeycomb", "perovskite", "rectangular"):
            for seed in seeds:
                s = simulate_lattice(
                    (size, size),
                    scene="crystal",
                    lattice=lattice,
                    spacing=spacing,
                    dose=dose,
                    seed=2000 + seed,
                )
                margin = max(6, spacing / 2)
                truth = _inner_truth(s, margin)
                for mode in ("auto", "off"):
                    r = mm.find_atoms(s.image, rescale=mode)
                    m = match_points(
                        _clip(r.positions, s.image.shape, margin),
                        truth,
                        max_distance=max(1.5, spacing / 3),
                    )
                    rows[mode].append({"f1": m["f1"], "rms_px": m["rms"]})
                    if mode == "auto":
                        zooms.append(r.parameters["zoom"])
        entry = {
            "spacing_px": spacing,
            "image_px": size,
            "zoom_range": [round(min(zooms), 3), round(max(zooms), 3)],
        }
        for mode, r in rows.items():
            df = pd.DataFrame(r)
            entry[f"rescale_{mode}"] = {k: round(float(df[k].mean()), 4) for k in df.columns}
        out.append(entry)
    return out


def real_pt(threshold=0.5):
    folder = DATA / "atoms_pt_haadf"
    if not folder.is_dir():
        return {"skipped": f"{folder} not found"}
    import tifffile

    items = []
    for path in sorted((folder / "images").glob("*.tif")):
        true = pd.read_csv(folder / "labels" / (path.name.split("_")[0] + "_Results.csv"))[
            ["Y", "X"]
        ].to_numpy(float)
        items.append((path.name, tifffile.imread(path).astype(np.float32), true))
    ours = [
        match_boxes(mm.find_atoms(img, model="default", threshold=threshold).positions, t)
        for _, img, t in items
    ]
    # LoG baseline tuned ON these 11 images (its best setting, an optimistic baseline)
    best = None
    for thr in (0.02, 0.04, 0.06, 0.08, 0.1, 0.14):
        for sig in ((1, 3), (1.5, 4), (2, 5)):
            res = []
            for _, img, t in items:
                norm = (img - np.percentile(img, 1)) / (
                    np.percentile(img, 99.8) - np.percentile(img, 1)
                )
                b = blob_log(norm, min_sigma=sig[0], max_sigma=sig[1], num_sigma=5, threshold=thr)
                res.append(match_boxes(b[:, :2], t))
            f1 = np.mean([r["f1"] for r in res])
            if best is None or f1 > best[0]:
                best = (f1, thr, sig, res)

    def summary(res):
        return {
            k: round(float(np.mean([r[k] for r in res])), 4) for k in ("precision", "recall", "f1")
        }

    return {
        "n_images": len(items),
        "protocol": "21x21 px boxes, Hungarian, IoU>0.5, mean over images",
        "ours_synthetic_only": summary(ours),
        "ours_per_image_f1": {
            n: round(r["f1"], 3) for (n, _, _), r in zip(items, ours, strict=True)
        },
        "log_baseline_tuned_on_these_images": {
            **summary(best[3]),
            "threshold": best[1],
            "sigma": best[2],
        },
    }


def speed(size):
    s = simulate_lattice(
        (size, size), scene="crystal", lattice="square", spacing=12, dose=500, seed=0
    )
    mm.find_atoms(s.image[:256, :256])  # warm-up
    t = time.perf_counter()
    r = mm.find_atoms(s.image)
    ours = time.perf_counter() - t
    t = time.perf_counter()
    baseline_find(s.image)
    base = time.perf_counter() - t
    return {
        "size": size,
        "n_atoms": len(r.positions),
        "find_atoms_s": round(ours, 3),
        "baseline_peak_local_max_com_s": round(base, 3),
    }


def big_memory(size=4096):
    """find_atoms on a size² image in a fresh process; peak resident memory in MiB."""
    code = (
        "import resource,time,numpy as np,napari_microml as mm;"
        "from napari_microml.synth.lattice import simulate_lattice;"
        "img=np.tile(simulate_lattice((512,512),scene='crystal',spacing=12,dose=500,seed=0)"
        f".image,({size // 512},{size // 512}));"
        "r0=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;t=time.perf_counter();r=mm.find_atoms(img);"
        "print(time.perf_counter()-t,len(r.positions),r0/1024,resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    dt, n, before, peak = float(out[0]), int(out[1]), float(out[2]), float(out[3])
    return {
        "size": size,
        "n_atoms": n,
        "find_atoms_s": round(dt, 2),
        "input_MiB": round(size * size * 4 / 2**20, 1),
        "peak_rss_MiB_before_call": round(before, 1),
        "peak_rss_MiB": round(peak, 1),
    }


def refinement_throughput(n_max=600, repeats=5):
    s = simulate_lattice(
        (512, 512), scene="crystal", lattice="square", spacing=12, dose=1000, defects=False, seed=2
    )
    am = ndi.binary_dilation(s.amorphous, iterations=12)
    truth = _inner_truth(s, 12)
    ip = np.rint(truth).astype(int)
    truth = truth[~am[ip[:, 0], ip[:, 1]]]
    start = truth + np.random.default_rng(0).uniform(-0.5, 0.5, truth.shape)
    r = window_radius(start)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = yy**2 + xx**2 <= (r + 0.5) ** 2

    def g(coords, a, y0, x0, sig, b):
        y, x = coords
        return a * np.exp(-((y - y0) ** 2 + (x - x0) ** 2) / (2 * sig**2)) + b

    n = min(n_max, len(start))
    base = np.empty((n, 2))
    # both methods: one warm-up call, then the best of `repeats` timings (as timeit does),
    # the two methods alternating so a load change on a shared machine hits both alike; ours
    # takes ~20 ms, so each of its timings is the mean of 8 calls (comparable to one ~0.2 s
    # curve_fit pass, less timer jitter)
    refine_positions(s.image, start[:10])
    t_ours = t_base = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(8):
            ours, _ = refine_positions(s.image, start)
        t_ours = min(t_ours, (time.perf_counter() - t) / 8)
        t = time.perf_counter()
        _curve_fit_all(g, s.image, start[:n], yy, xx, disk, r, base)
        t_base = min(t_base, time.perf_counter() - t)
    rms = lambda p, tr: float(np.sqrt(((p - tr) ** 2).sum(1).mean()))  # noqa: E731
    return {
        "n_atoms": len(start),
        "timing": f"best of {repeats} after a warm-up, both methods alternating "
        "(ours: mean of 8 calls each)",
        "ours_atoms_per_s": round(len(start) / t_ours, 1),
        "scipy_curve_fit_atoms_per_s": round(n / t_base, 1),
        "speedup": round((len(start) / t_ours) / (n / t_base), 1),
        "ours_rms_px": round(rms(ours, truth), 4),
        "scipy_rms_px_same_atoms": round(rms(base, truth[:n]), 4),
        "ours_rms_px_same_atoms": round(rms(ours[:n], truth[:n]), 4),
    }


def _curve_fit_all(g, image, start, yy, xx, disk, r, base):
    """The baseline: one scipy curve_fit per atom on the same disk window."""
    from scipy.optimize import curve_fit

    for i, (py, px) in enumerate(start):
        cy, cx = int(round(py)), int(round(px))
        patch = image[cy - r : cy + r + 1, cx - r : cx + r + 1]
        y, x = (yy + cy)[disk], (xx + cx)[disk]
        v = patch[disk]
        try:
            p, _ = curve_fit(
                g, (y, x), v, p0=[v.max() - v.min(), py, px, r / 2.5, v.min()], maxfev=2000
            )
            base[i] = p[1:3]
        except RuntimeError:
            base[i] = (py, px)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--parts", default="synthetic,scale,real,speed,memory,refinement")
    a = ap.parse_args()
    seeds = [0] if a.quick else [0, 1, 2]
    parts = a.parts.split(",")
    import torch

    from napari_microml.nets.registry import list_models

    report = {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
    }
    if "synthetic" in parts:
        report["synthetic_vs_dose"] = synthetic([20, 100, 1000, 10000], seeds)
    if "scale" in parts:
        report["spacing_outside_training"] = scale(seeds=seeds)
    if "real" in parts:
        report["real_pt_haadf"] = real_pt()
        ft = list_models("atoms").get("atoms-pt-single-atoms")
        if ft:  # measured by training/atoms_finetune.py, leave-one-image-out
            report["real_pt_haadf"]["finetuned_leave_one_image_out"] = ft["meta"].get(
                "leave_one_image_out"
            )
    if "speed" in parts:
        report["speed_1024"] = speed(1024)
    if "memory" in parts:
        report["speed_4096_memory"] = big_memory(4096)
    if "refinement" in parts:
        report["refinement"] = refinement_throughput()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
