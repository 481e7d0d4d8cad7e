"""Defect scores against exact truth: object matching per class and pixel IoU per class.

Point defects (vacancy, dopants, interstitial) are matched by centroid, per class, with the
Hungarian assignment of :func:`napari_microml.atoms.metrics.match_points` within ``radius`` px
(half the column spacing is the natural choice: a defect put on the neighbouring site is wrong).
Extended regions are matched by overlap: a predicted region counts when at least ``min_overlap``
of its pixels are truly extended, a true region is found when at least ``min_overlap`` of it
is predicted extended.
"""

from __future__ import annotations

import numpy as np

from napari_microml.atoms.metrics import match_points
from napari_microml.defects.classes import CLASS_NAMES, N_OUTPUTS, class_id

POINT_CLASSES = CLASS_NAMES[:4]


def classmap_from_labels(labels: np.ndarray, table) -> np.ndarray:
    """(H, W) uint8 class map (0 = none) from instance ``labels`` and their ``table`` rows."""
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, np.uint8)
    if len(table):
        lut[table["label"].to_numpy(int)] = table["class_id"].to_numpy(int)
    return lut[labels]


def _inside(points: np.ndarray, shape, margin: float) -> np.ndarray:
    """(n,) bool: points at least ``margin`` px from every image edge."""
    h, w = shape
    return (
        (points[:, 0] >= margin)
        & (points[:, 0] <= h - 1 - margin)
        & (points[:, 1] >= margin)
        & (points[:, 1] <= w - 1 - margin)
    )


def _region_scores(pred_mask: np.ndarray, true_mask: np.ndarray, min_overlap: float) -> dict:
    from scipy import ndimage as ndi

    out = {}
    for name, a, b in (("pred", pred_mask, true_mask), ("true", true_mask, pred_mask)):
        lab, n = ndi.label(a)
        if n == 0:
            out[name] = (0, 0)
            continue
        area = np.bincount(lab.ravel(), minlength=n + 1)[1:]
        hit = np.bincount(lab.ravel(), weights=b.ravel().astype(float), minlength=n + 1)[1:]
        out[name] = (int((hit >= min_overlap * area).sum()), n)
    (tp_p, n_p), (tp_t, n_t) = out["pred"], out["true"]
    precision = tp_p / n_p if n_p else float(n_t == 0)
    recall = tp_t / n_t if n_t else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "n_pred": n_p,
        "n_true": n_t,
        "tp_pred": tp_p,
        "tp_true": tp_t,
    }


def pixel_iou(pred_classmap: np.ndarray, true_classmap: np.ndarray) -> dict:
    """Per class: intersection, union (pixels) and IoU (NaN when the class is absent in both)."""
    out = {}
    for name in CLASS_NAMES:
        c = class_id(name)
        p, t = pred_classmap == c, true_classmap == c
        inter, union = int((p & t).sum()), int((p | t).sum())
        out[name] = {
            "intersection": inter,
            "union": union,
            "iou": inter / union if union else float("nan"),
        }
    return out


def score_defects(
    pred_table,
    pred_classmap: np.ndarray,
    true_objects,
    true_classmap: np.ndarray,
    *,
    radius: float,
    margin: float = 0.0,
    min_overlap: float = 0.3,
) -> dict:
    """Per-class object precision / recall / F1 (with counts) and pixel IoU.

    Parameters
    ----------
    pred_table, true_objects : DataFrames with ``class``, ``row``, ``col`` (px).
    pred_classmap, true_classmap : (H, W) int class maps (0 = none, i = ``CLASS_NAMES[i-1]``).
    radius : float
        Largest centroid distance (px) for a point-defect match.
    margin : float
        Border (px) where point defects are ignored: all of them are matched first, then true
        defects in the border and the predictions matched to them are dropped, and so are
        unmatched predictions in the border (a defect on the border line, found a pixel away on
        the other side, is neither a miss nor a false positive).
    min_overlap : float
        Overlap fraction for extended-region matches.

    Returns
    -------
    dict ``{class: {precision, recall, f1, n_pred, n_true, tp, intersection, union, iou}}``.
    """
    pred_classmap, true_classmap = np.asarray(pred_classmap), np.asarray(true_classmap)
    if pred_classmap.shape != true_classmap.shape:
        raise ValueError("The predicted and true class maps must have the same shape.")
    if pred_classmap.max(initial=0) >= N_OUTPUTS or true_classmap.max(initial=0) >= N_OUTPUTS:
        raise ValueError(f"Class maps hold values 0–{N_OUTPUTS - 1}.")
    shape = true_classmap.shape
    ious = pixel_iou(pred_classmap, true_classmap)
    out = {}
    for name in POINT_CLASSES:
        p = (
            pred_table.loc[pred_table["class"] == name, ["row", "col"]]
            .to_numpy(float)
            .reshape(-1, 2)
        )
        t = (
            true_objects.loc[true_objects["class"] == name, ["row", "col"]]
            .to_numpy(float)
            .reshape(-1, 2)
        )
        pairs = match_points(p, t, max_distance=radius)["pairs"]
        p_in, t_in = _inside(p, shape, margin), _inside(t, shape, margin)
        p_matched = np.zeros(len(p), bool)
        p_matched[pairs[:, 0]] = True
        tp = int(t_in[pairs[:, 1]].sum())  # a match counts where the true defect is inside
        n_pred = tp + int((p_in & ~p_matched).sum())  # unmatched predictions inside are false
        n_true = int(t_in.sum())
        precision = tp / n_pred if n_pred else float(n_true == 0)
        recall = tp / n_true if n_true else 1.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[name] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "n_pred": n_pred,
            "n_true": n_true,
            "tp": tp,
            **ious[name],
        }
    ext = class_id("extended")
    r = _region_scores(pred_classmap == ext, true_classmap == ext, min_overlap)
    out["extended"] = {**r, **ious["extended"]}
    return out


def summarize(scores: list[dict]) -> dict:
    """Pool a list of :func:`score_defects` results (micro-averaged: summed counts, then ratios)."""
    out = {}
    for name in CLASS_NAMES:
        rows = [s[name] for s in scores]
        inter, union = sum(r["intersection"] for r in rows), sum(r["union"] for r in rows)
        if name == "extended":
            tp_p, n_p = sum(r["tp_pred"] for r in rows), sum(r["n_pred"] for r in rows)
            tp_t, n_t = sum(r["tp_true"] for r in rows), sum(r["n_true"] for r in rows)
        else:
            tp_p = tp_t = sum(r["tp"] for r in rows)
            n_p, n_t = sum(r["n_pred"] for r in rows), sum(r["n_true"] for r in rows)
        precision = tp_p / n_p if n_p else float("nan")
        recall = tp_t / n_t if n_t else float("nan")
        if n_p and n_t:
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        else:  # nothing predicted, or nothing to find: F1 is 0 unless both are empty
            f1 = 0.0 if n_p or n_t else float("nan")
        out[name] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "n_true": n_t,
            "n_pred": n_p,
            "pixel_iou": round(inter / union, 4) if union else float("nan"),
        }
    return out
