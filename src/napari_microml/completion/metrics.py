"""Errors of a completed scan against a fully measured truth, at the unmeasured pixels."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def _to_unit_range(pred, truth):
    """``pred`` and ``truth`` mapped by the affine that takes the truth's range to [0, 1]."""
    lo, hi = float(np.nanmin(truth)), float(np.nanmax(truth))
    span = hi - lo if hi > lo else 1.0
    return (
        (np.asarray(pred, np.float64) - lo) / span,
        (np.asarray(truth, np.float64) - lo) / span,
        span,
    )


def relative_rms(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """RMS(pred − truth) at the unmeasured pixels (``~mask``), a fraction of the truth's range."""
    p, t, _ = _to_unit_range(pred, truth)
    miss = ~np.asarray(mask, bool)
    return float(np.sqrt(np.mean((p - t)[miss] ** 2)))


def completion_errors(
    pred: np.ndarray, truth: np.ndarray, mask: np.ndarray, sigma: np.ndarray | None = None
) -> dict:
    """Accuracy of ``pred`` at pixels where ``mask`` is False, relative to the truth's range.

    Both images are mapped by the same affine so the truth spans [0, 1].

    Parameters
    ----------
    pred, truth : (H, W) arrays
    mask : (H, W) bool, True where the pixel was measured (excluded from the errors).
    sigma : optional (H, W) predicted 1σ in the truth's units; adds ``within_2sigma``.

    Returns
    -------
    dict with
        ``rms`` : RMS(pred − truth) (fraction of the range),
        ``rms_smooth`` : RMS(pred − truth smoothed by a Gaussian σ = 1 px),
        ``noise`` : the truth's own noise level (Immerkær estimate, same units),
        ``excess`` : sqrt(max(rms² − noise², 0)), the error beyond the truth's noise,
        ``ssim`` : structural similarity of the whole images (data range 1),
        ``within_2sigma`` (if ``sigma``) : fraction of unmeasured pixels with |pred − truth| ≤ 2σ.
    """
    from skimage.metrics import structural_similarity

    from napari_microml.runtime.noise import noise_sigma

    pred = np.asarray(pred, np.float64)
    truth = np.asarray(truth, np.float64)
    mask = np.asarray(mask, bool)
    if pred.shape != truth.shape or truth.shape != mask.shape or truth.ndim != 2:
        raise ValueError("pred, truth and mask must be 2D images of the same shape.")
    if mask.all():
        raise ValueError("Every pixel is measured: there are no completed pixels to score.")
    p, t, span = _to_unit_range(pred, truth)
    miss = ~mask
    err = (p - t)[miss]
    rms = relative_rms(pred, truth, mask)
    smooth = ndi.gaussian_filter(t, 1.0, mode="reflect")
    noise = noise_sigma(t)
    out = {
        "rms": rms,
        "rms_smooth": float(np.sqrt(np.mean((p - smooth)[miss] ** 2))),
        "noise": float(noise),
        "excess": float(np.sqrt(max(rms**2 - noise**2, 0.0))),
        "ssim": float(structural_similarity(t, np.clip(p, -1, 2), data_range=1.0)),
    }
    if sigma is not None:
        s = np.asarray(sigma, np.float64)[miss] / span
        out["within_2sigma"] = float(np.mean(np.abs(err) <= 2 * s))
    return out


def seam_ratio(filled: np.ndarray, mask: np.ndarray, *, period: int = 16) -> float:
    """How much larger the steps are at one phase of a ``period``-px tiling than typically.

    For each axis, the mean |difference| between neighbouring unmeasured pixels is grouped by
    position modulo ``period`` (kriging's 8/16-px blocks repeat with 16 px); the ratio of the
    largest group to the median group, the larger over both axes. About 1 for a seamless
    image; a mosaic of independently predicted blocks gives 2–5.

    Parameters
    ----------
    filled : (H, W) completed image.
    mask : (H, W) bool, True where measured (measured pixels are left out).
    period : tiling period (px).

    Returns
    -------
    float ratio (≥ 1).
    """
    f = np.asarray(filled, np.float64)
    m = np.asarray(mask, bool)
    ratios = []
    for a, b in ((f, m), (f.T, m.T)):
        step = np.abs(np.diff(a, axis=1))
        both = ~b[:, 1:] & ~b[:, :-1]
        by_phase = np.array([step[:, j::period][both[:, j::period]].mean() for j in range(period)])
        ratios.append(float(by_phase.max() / np.median(by_phase)))
    return max(ratios)
