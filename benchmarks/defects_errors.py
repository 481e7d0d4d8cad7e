"""Defect-segmenter error analysis on VALIDATION seeds (never the benchmark's 5,000,000+).

For every missed true point defect and every false positive, at the chosen doses, records the
lattice, scene, spacing, distances (in column spacings) to the image border and to the nearest
extended region, the dopant's contrast (its peak height over its own sublattice's host columns,
and that in units of the host columns' natural spread), the nearest other defect (merged pairs),
what the network says at the site (pixel class, defect probability, instance class) and, when a
prediction of another class sits on the site, the confusion. Prints JSON: counts of each error
cause per class and dose, how many misses the network never fired on (defect probability below
the threshold everywhere within the truth disc), and (with ``--rows``) every error row.

Usage: python benchmarks/defects_errors.py [--seed0 9700000] [--n-seeds 4] [--doses 200,2000]
       [--threshold 0.5] [--rows] [--no-column-check]
Protocol as benchmarks/defects.py: 5 lattices x 2 scenes x n seeds, 256², spacing uniform 8-18,
Hungarian matching per class within 0.5*spacing, a 0.5*spacing border ignored.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np
from defects import benchmark_images  # the benchmark's own image set (benchmarks/defects.py)

from napari_microml.defects.metrics import POINT_CLASSES
from napari_microml.defects.segment import segment_defects
from napari_microml.synth.defects import column_contrast

SCENES = ("crystal", "interface")


def _contrast(s, sites: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Contrast of the column at each site over its own sublattice's host columns
    (``synth.defects.column_contrast``) and that contrast in units of the host spread,
    ``(contrast - 1) / sigma``; NaN where no column sits on the site (vacancies)."""
    from scipy.spatial import cKDTree

    out = np.full((2, len(sites)), np.nan)
    if s.amplitude is None or not len(sites) or len(s.positions) < 4:
        return out[0], out[1]
    c, sigma = column_contrast(s.positions, s.kinds, s.amplitude)
    d, j = cKDTree(s.positions).query(sites)
    ok = d < 0.5
    out[0, ok] = c[j[ok]]
    out[1, ok] = (c[j[ok]] - 1) / sigma
    return out[0], out[1]


def _at_site(r, p, rad: float) -> dict:
    """What the network says in a disc of radius ``rad`` px around a true site: the class of the
    pixel-wise argmax at its most defect-like pixel and the instance class covering the site."""
    from napari_microml.defects.classes import CLASS_NAMES

    h, w = r.labels.shape
    rr, cc = np.mgrid[
        max(0, int(p[0] - rad)) : min(h, int(p[0] + rad) + 2),
        max(0, int(p[1] - rad)) : min(w, int(p[1] + rad) + 2),
    ]
    disc = (rr - p[0]) ** 2 + (cc - p[1]) ** 2 <= rad**2
    rr, cc = rr[disc], cc[disc]
    if not len(rr):
        return {}
    pr = r.probabilities[:, rr, cc]
    k = int(np.argmin(pr[0]))
    names = ("none",) + tuple(CLASS_NAMES)
    lab = r.labels[int(np.clip(np.rint(p[0]), 0, h - 1)), int(np.clip(np.rint(p[1]), 0, w - 1))]
    inst = r.table.loc[r.table["label"] == lab, "class"]
    return {
        "pixel_class": names[int(np.argmax(pr[:, k]))],
        "max_defect_p": round(float(1 - pr[0, k]), 3),
        "instance_class": inst.iloc[0] if len(inst) else "none",
    }


def _analyse(s, r, dose: float) -> list[dict]:
    from scipy import ndimage as ndi
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    sp = s.params["spacing"]
    h, w = s.image.shape
    radius = margin = 0.5 * sp
    dist_ext = (
        ndi.distance_transform_edt(~s.extended)
        if s.extended.any()
        else np.full(s.image.shape, np.inf)
    )

    def inner(df):
        return df[
            (df["row"] >= margin)
            & (df["row"] <= h - 1 - margin)
            & (df["col"] >= margin)
            & (df["col"] <= w - 1 - margin)
        ]

    true = inner(s.objects[s.objects["class"].isin(POINT_CLASSES)]).reset_index(drop=True)
    pred = inner(r.table[r.table["class"].isin(POINT_CLASSES)]).reset_index(drop=True)
    tp_true, tp_pred = np.zeros(len(true), bool), np.zeros(len(pred), bool)
    for name in POINT_CLASSES:
        ti, pi = np.nonzero(true["class"] == name)[0], np.nonzero(pred["class"] == name)[0]
        if not len(ti) or not len(pi):
            continue
        d = cdist(
            pred.loc[pi, ["row", "col"]].to_numpy(float),
            true.loc[ti, ["row", "col"]].to_numpy(float),
        )
        a, b = linear_sum_assignment(np.where(d <= radius, d, 1e9))
        ok = d[a, b] <= radius
        tp_pred[pi[a[ok]]], tp_true[ti[b[ok]]] = True, True
    tpts = true[["row", "col"]].to_numpy(float)
    ppts = pred[["row", "col"]].to_numpy(float)
    all_true = s.objects[s.objects["class"].isin(POINT_CLASSES)]
    atp = all_true[["row", "col"]].to_numpy(float)
    factor, zscore = _contrast(s, tpts)
    base = {
        "dose": dose,
        "seed": s.params["seed"],
        "lattice": s.params["lattice"],
        "scene": s.params["scene"],
        "spacing": round(sp, 2),
    }
    rows = []

    def place(p):
        ip = np.clip(np.rint(p).astype(int), 0, [h - 1, w - 1])
        border = min(p[0], p[1], h - 1 - p[0], w - 1 - p[1]) / sp
        return {
            "border_sp": round(float(border), 2),
            "extended_sp": round(float(dist_ext[ip[0], ip[1]] / sp), 2),
        }

    for i in np.nonzero(~tp_true)[0]:
        p = tpts[i]
        d_pred = np.hypot(*(ppts - p).T) if len(ppts) else np.zeros(0)
        d_true = np.hypot(*(atp - p).T)
        d_true[d_true < 1e-9] = np.inf
        j = int(np.argmin(d_true)) if len(d_true) else -1
        row = {
            **base,
            "kind": "missed",
            "class": true.loc[i, "class"],
            **place(p),
            "factor": None if np.isnan(factor[i]) else round(float(factor[i]), 2),
            "contrast_z": None if np.isnan(zscore[i]) else round(float(zscore[i]), 1),
            "nearest_defect_sp": round(float(d_true[j] / sp), 2)
            if j >= 0 and np.isfinite(d_true[j])
            else None,
            "nearest_defect_class": all_true.iloc[j]["class"]
            if j >= 0 and np.isfinite(d_true[j])
            else None,
        }
        row.update(_at_site(r, p, 0.35 * sp))
        near = np.nonzero(d_pred <= radius)[0]
        if len(near):
            k = near[np.argmin(d_pred[near])]
            row["pred_here"] = pred.loc[k, "class"]
            row["pred_here_is_tp"] = bool(tp_pred[k])
        rows.append(row)
    for k in np.nonzero(~tp_pred)[0]:
        p = ppts[k]
        d_true = np.hypot(*(atp - p).T) if len(atp) else np.full(1, np.inf)
        j = int(np.argmin(d_true))
        rows.append(
            {
                **base,
                "kind": "false_positive",
                "class": pred.loc[k, "class"],
                **place(p),
                "confidence": round(float(pred.loc[k, "confidence"]), 3),
                "area_px": int(pred.loc[k, "area_px"]),
                "nearest_true_sp": round(float(d_true[j] / sp), 2)
                if np.isfinite(d_true[j])
                else None,
                "nearest_true_class": all_true.iloc[j]["class"] if len(atp) else None,
            }
        )
    return rows


def cause(row: dict) -> str:
    """One dominant cause per error row (first rule that applies)."""
    if row["kind"] == "missed":
        if row.get("instance_class") == "extended":
            return "missed_inside_predicted_extended"
        if row.get("pixel_class") == row["class"] and row.get("instance_class") not in (
            None,
            "none",
            row["class"],
        ):
            return f"missed_pixels_right_instance_{row['instance_class']}"
        if row.get("pred_here") and row["pred_here"] != row["class"] and not row["pred_here_is_tp"]:
            return f"confused_as_{row['pred_here']}"
        if row.get("pred_here") and row.get("pred_here_is_tp"):
            return "merged_with_neighbour"
        if row["nearest_defect_sp"] is not None and row["nearest_defect_sp"] < 1.6:
            return "missed_next_to_defect"
        if row["extended_sp"] < 1.5:
            return "missed_near_extended"
        if row["border_sp"] < 1.5:
            return "missed_near_border"
        if (
            row["contrast_z"] is not None
            and row["class"].startswith("dopant")
            and abs(row["contrast_z"]) < 5
        ):
            return "missed_weak_contrast"
        return "missed_isolated"
    if row["nearest_true_sp"] is not None and row["nearest_true_sp"] < 0.5:
        return f"fp_on_true_{row['nearest_true_class']}"
    if row["nearest_true_sp"] is not None and row["nearest_true_sp"] < 1.6:
        return "fp_next_to_defect"
    if row["extended_sp"] < 1.5:
        return "fp_near_extended"
    if row["border_sp"] < 1.5:
        return "fp_near_border"
    return "fp_isolated"


def run(seed0: int, n_seeds: int, doses, threshold: float = 0.5, **seg_kw):
    rows, n_true = [], Counter()
    for dose in doses:
        for s, sp in benchmark_images(seed0, n_seeds, dose, SCENES):
            r = segment_defects(s.image, threshold=threshold, **seg_kw)
            rows += _analyse(s, r, dose)
            o = s.objects
            inner = (
                (o["row"] >= sp / 2)
                & (o["row"] <= 255 - sp / 2)
                & (o["col"] >= sp / 2)
                & (o["col"] <= 255 - sp / 2)
            )
            for c in o.loc[inner, "class"]:
                n_true[(dose, c)] += 1
    summary = {}
    for dose in doses:
        per = {}
        for name in POINT_CLASSES:
            sel = [x for x in rows if x["dose"] == dose and x["class"] == name]
            miss = [x for x in sel if x["kind"] == "missed"]
            fp = [x for x in sel if x["kind"] == "false_positive"]
            nt = n_true[(dose, name)]
            tp = nt - len(miss)
            f1 = 2 * tp / (2 * tp + len(miss) + len(fp)) if nt else float("nan")
            per[name] = {
                "n_true": nt,
                "missed": len(miss),
                "false_pos": len(fp),
                "f1": round(f1, 4),
                "causes": dict(Counter(cause(x) for x in sel).most_common()),
                "missed_network_silent": sum(x.get("max_defect_p", 0) < threshold for x in miss),
                "missed_by_lattice": dict(Counter(x["lattice"] for x in miss).most_common()),
                "missed_by_scene": dict(Counter(x["scene"] for x in miss).most_common()),
                "fp_by_lattice": dict(Counter(x["lattice"] for x in fp).most_common()),
            }
            z = [abs(x["contrast_z"]) for x in miss if x.get("contrast_z") is not None]
            if z:
                per[name]["missed_contrast_z_quantiles"] = [
                    round(float(q), 1) for q in np.quantile(z, [0.1, 0.5, 0.9])
                ]
        summary[str(dose)] = per
    return summary, rows


def main(argv=None):
    import torch

    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seed0", type=int, default=9_700_000)
    p.add_argument("--n-seeds", type=int, default=4)
    p.add_argument("--doses", default="200,2000")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--model", default="default")
    p.add_argument("--rows", action="store_true", help="also print every error row")
    p.add_argument(
        "--no-column-check",
        action="store_true",
        help="network + instances only, without the column-intensity check (defects/columns.py)",
    )
    a = p.parse_args(argv)
    if a.seed0 < 9_000_000:
        raise SystemExit(
            "Error analysis uses validation seeds (9,000,000+), never the benchmark's 5,000,000+."
        )
    summary, rows = run(
        a.seed0,
        a.n_seeds,
        [float(d) for d in a.doses.split(",")],
        threshold=a.threshold,
        model=a.model,
        device="cpu",
        column_check=not a.no_column_check,
    )
    out = {
        "seed0": a.seed0,
        "n_seeds": a.n_seeds,
        "threshold": a.threshold,
        "model": a.model,
        "column_check": not a.no_column_check,
        "summary": summary,
    }
    if a.rows:
        out["rows"] = rows
    print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
