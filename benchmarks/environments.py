"""Environment-clustering benchmark: planted defect classes on synthetic perovskite images.

Prints one JSON document. For each test image (seeds never used for anything else):

* ``ari``: adjusted Rand index of the clustering vs the planted classes, where the truth is
  A host, B host, bright dopant (B sites), dim dopant (A sites) and "next to a vacancy"
  (any column whose nearest-neighbour site is empty), with BIC choosing the number of classes;
* ``auroc_defect``: AUROC of unusualness for defect columns (dopants, vacancy neighbours) vs
  host columns, fitted on the same image;
* ``unseen``: the model is fitted on an image *without* interstitials and applied to one with
  them: AUROC of unusualness for interstitials vs everything else, the fraction of
  interstitials flagged ``unusual`` and the fraction of host columns flagged.

Baselines in the same run: raw-patch descriptor (Maksov et al.) and a 1-D mixture on the
centre intensity alone. Positions get 0.25 px Gaussian jitter (a detector's error).
Usage: python benchmarks/environments.py [--quick]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from scipy.spatial import cKDTree
from sklearn.metrics import adjusted_rand_score, roc_auc_score

from napari_microml.defects.environments import classify_environments
from napari_microml.synth.lattice import lattice_sites
from napari_microml.synth.render import add_noise, render_gaussians

CLASSES = (
    "A_host",
    "B_host",
    "B_dopant_bright",
    "A_dopant_dim",
    "near_vacancy",
    "A_near_dopant",
    "B_near_dopant",
    "interstitial",
)
INTERSTITIAL = CLASSES.index("interstitial")


def planted(
    seed: int,
    *,
    size: int = 256,
    spacing: float = 11.0,
    dose: float = 300.0,
    interstitials: bool = False,
    jitter: float = 0.25,
    rotation: float | None = None,
    b_rel: float = 0.55,
) -> dict:
    """A perovskite-like image with planted defects and the true class of every column.

    A column's class is what sits on it (host A/B, dopant) or, for a host column, what is
    wrong in its first neighbour shell (an empty site wins over a dopant neighbour).
    """
    rng = np.random.default_rng(seed)
    rotation = rng.uniform(0, np.pi / 2) if rotation is None else rotation
    pts, rel, mids = lattice_sites((size, size), "perovskite", spacing, rotation, rng)
    a_site = rel > 0.99
    rel = np.where(a_site, 1.0, b_rel)  # the same material in every image
    u = rng.uniform(size=len(pts))
    vac = a_site & (u < 0.03)
    truth = np.where(a_site, 0, 1)
    amp = rel * rng.normal(1, 0.04, len(pts))
    bright = ~a_site & (u > 0.93)
    dim = a_site & (u > 0.94)
    amp[bright] *= 1.8
    amp[dim] *= 0.45
    truth[bright], truth[dim] = 2, 3
    for mask, near_cls in (
        (bright, np.where(a_site, 5, 1)),
        (dim, np.where(a_site, 0, 6)),
        (vac, 4),
    ):
        if mask.any():
            host = np.isin(truth, (0, 1, 5, 6) if mask is vac else (0, 1))
            near = (cKDTree(pts[mask]).query(pts, k=1)[0] < 1.05 * spacing) & host
            truth[near] = np.broadcast_to(near_cls, truth.shape)[near]
    truth[vac] = -1
    keep = ~vac
    pts, amp, truth = pts[keep], amp[keep], truth[keep]
    if interstitials and len(mids):
        pick = rng.choice(len(mids), max(3, len(mids) // 40), replace=False)
        pts = np.vstack([pts, mids[pick]])
        amp = np.concatenate([amp, rng.uniform(0.5, 0.8, len(pick))])
        truth = np.concatenate([truth, np.full(len(pick), INTERSTITIAL)])
    sigma = np.full(len(pts), 0.2 * spacing)
    clean = render_gaussians((size, size), pts, sigma, amp) + 0.1
    image = add_noise(clean, dose, rng) / dose
    inside = ((pts > 2) & (pts < size - 3)).all(1)
    obs = pts[inside] + rng.normal(0, jitter, (inside.sum(), 2))
    return dict(
        image=image.astype(np.float32),
        positions=obs,
        truth=truth[inside],
        rotation=rotation,
        spacing=spacing,
    )


def _auroc(score, positive):
    positive = np.asarray(positive, bool)
    if positive.all() or not positive.any():
        return None
    return round(float(roc_auc_score(positive, score)), 3)


def centre_intensity_baseline(s: dict, seed: int) -> np.ndarray:
    from sklearn.mixture import GaussianMixture

    from napari_microml.defects.environments import _prepared

    img = _prepared(s["image"], 9, s["positions"])
    ip = np.rint(s["positions"]).astype(int)
    x = img[ip[:, 0], ip[:, 1]][:, None]
    fits = [GaussianMixture(k, random_state=seed, n_init=3).fit(x) for k in range(1, 9)]
    best = min(fits, key=lambda g: g.bic(x))
    return best.predict(x)


def evaluate(seed: int, dose: float) -> dict:
    s = planted(seed, dose=dose)
    out = {
        "seed": seed,
        "dose": dose,
        "n_atoms": int(len(s["truth"])),
        "true_classes": {CLASSES[c]: int((s["truth"] == c).sum()) for c in np.unique(s["truth"])},
    }
    defect = s["truth"] >= 2
    for desc in ("rings", "patch"):
        r = classify_environments(s["image"], s["positions"], descriptor=desc, seed=0)
        inner = ~r.edge
        out[desc] = {
            "ari": round(adjusted_rand_score(s["truth"], r.classes), 3),
            "ari_interior": round(adjusted_rand_score(s["truth"][inner], r.classes[inner]), 3),
            "n_classes": r.n_classes,
            "auroc_defect": _auroc(r.unusualness, defect),
            "flagged_host_frac": round(float(r.unusual[~defect].mean()), 4),
            "flagged_defect_frac": round(float(r.unusual[defect].mean()), 4),
        }
        t = planted(seed + 500, dose=dose, interstitials=True, rotation=s["rotation"])
        inter, host = t["truth"] == INTERSTITIAL, t["truth"] <= 1
        far = host & (cKDTree(t["positions"][inter]).query(t["positions"])[0] > 1.05 * t["spacing"])
        for key, res in (
            ("unseen_interstitial", r.apply(t["image"], t["positions"])),
            (
                "in_image_interstitial",
                classify_environments(t["image"], t["positions"], descriptor=desc, seed=0),
            ),
        ):
            inner = inter & ~res.edge
            out[desc][key] = {
                "auroc": _auroc(res.unusualness, inter),
                "n": int(inter.sum()),
                "n_interior": int(inner.sum()),
                "flagged_frac_interior": round(float(res.unusual[inner].mean()), 3)
                if inner.any()
                else None,
                "host_flagged_frac": round(float(res.unusual[host].mean()), 4),
                "host_far_flagged_frac": round(float(res.unusual[far].mean()), 4),
            }
    out["centre_intensity_gmm"] = {
        "ari": round(adjusted_rand_score(s["truth"], centre_intensity_baseline(s, 0)), 3)
    }
    return out


def real_srtio3() -> dict | None:
    """SrTiO3 [001] ABF (hyperspy demo, ../shared/data): no truth per column, but the classes
    should be the projected sublattices, so nearest neighbours rarely share a class."""
    from pathlib import Path

    path = (
        Path(__file__).resolve().parents[1].parent
        / "shared"
        / "data"
        / "formats"
        / "stem_abf_data.hspy"
    )
    if not path.is_file():
        return None
    import napari_microml as mm
    from napari_microml.io.reader import read_file

    image = np.asarray(read_file(path)[0][0], np.float32)
    atoms = mm.find_atoms(image, contrast="dark", device="cpu").positions
    out = {"n_atoms": int(len(atoms))}
    nearest = cKDTree(atoms).query(atoms, k=2)[1][:, 1]
    for desc in ("rings", "patch"):
        r = classify_environments(-image, atoms, descriptor=desc)
        out[desc] = {
            "n_classes": r.n_classes,
            "counts": np.bincount(r.classes).tolist(),
            "nn_same_class_frac": round(float((r.classes[nearest] == r.classes).mean()), 4),
            "unusual_frac": round(float(r.unusual.mean()), 4),
        }
    return out


def _mean(values: list) -> float:
    return round(float(np.mean(values)), 3)


def run(quick: bool = False) -> dict:
    seeds = [9101, 9102] if quick else [9101, 9102, 9103, 9104, 9105]
    doses = [300.0] if quick else [50.0, 300.0, 2000.0]
    rows = [evaluate(seed, dose) for dose in doses for seed in seeds]
    summary = {}
    for dose in doses:
        sel = [r for r in rows if r["dose"] == dose]
        summary[str(dose)] = {
            "centre_intensity_gmm": {
                "ari_mean": _mean([r["centre_intensity_gmm"]["ari"] for r in sel])
            }
        }
        for name in ("rings", "patch"):
            per = [r[name] for r in sel]
            summary[str(dose)][name] = {
                "ari_mean": _mean([d["ari"] for d in per]),
                "ari_interior_mean": _mean([d["ari_interior"] for d in per]),
                "auroc_defect_mean": _mean([d["auroc_defect"] for d in per]),
                **{
                    f"{key}_{m}_mean": _mean([d[key][m] or 0.0 for d in per])
                    for key in ("unseen_interstitial", "in_image_interstitial")
                    for m in ("auroc", "flagged_frac_interior", "host_far_flagged_frac")
                },
            }
    return {
        "benchmark": "defect_environments",
        "quick": quick,
        "summary": summary,
        "real_srtio3_abf": real_srtio3(),
        "runs": rows,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(json.dumps(run(quick=parser.parse_args().quick), indent=1))
