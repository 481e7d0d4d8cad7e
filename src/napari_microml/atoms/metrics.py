"""Detection scores: Hungarian matching of predicted to true positions."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist


def match_points(pred, true, max_distance: float = 3.0) -> dict:
    """Match by distance (Hungarian, pairs farther than ``max_distance`` px do not count).

    Returns precision, recall, f1, rms (px, over matched pairs) and the matched index pairs.
    """
    pred, true = np.asarray(pred, float).reshape(-1, 2), np.asarray(true, float).reshape(-1, 2)
    if len(pred) == 0 or len(true) == 0:
        tp = 0
        pairs = np.zeros((0, 2), int)
    else:
        d = cdist(pred, true)
        big = max_distance * 10 + d.max()
        r, c = linear_sum_assignment(np.where(d <= max_distance, d, big))
        ok = d[r, c] <= max_distance
        pairs = np.column_stack([r[ok], c[ok]])
        tp = len(pairs)
    precision = tp / len(pred) if len(pred) else float(len(true) == 0)
    recall = tp / len(true) if len(true) else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    rms = (
        float(np.sqrt(((pred[pairs[:, 0]] - true[pairs[:, 1]]) ** 2).sum(1).mean()))
        if tp
        else float("nan")
    )
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "rms": rms,
        "pairs": pairs,
        "n_pred": len(pred),
        "n_true": len(true),
    }


def match_boxes(pred, true, box: int = 21, min_iou: float = 0.5) -> dict:
    """The protocol of Leitherer et al. (JACS 2022) for the Pt single-atom data: a ``box``×``box``
    square around each centre, Hungarian matching on IoU, a pair counts when IoU > ``min_iou``."""
    pred, true = np.asarray(pred, float).reshape(-1, 2), np.asarray(true, float).reshape(-1, 2)
    if len(pred) == 0 or len(true) == 0:
        tp = 0
    else:
        dy = np.abs(pred[:, None, 0] - true[None, :, 0])
        dx = np.abs(pred[:, None, 1] - true[None, :, 1])
        inter = np.clip(box - dy, 0, None) * np.clip(box - dx, 0, None)
        iou = inter / (2 * box * box - inter)
        r, c = linear_sum_assignment(-iou)
        tp = int((iou[r, c] > min_iou).sum())
    precision = tp / len(pred) if len(pred) else float(len(true) == 0)
    recall = tp / len(true) if len(true) else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}
