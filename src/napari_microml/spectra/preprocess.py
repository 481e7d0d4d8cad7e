"""Spectrum preprocessing shared by the shift-VAE core and the benchmarks (numpy only)."""

from __future__ import annotations

import numpy as np

NORMALIZATIONS = ("max", "global", "none")


def despike(spectra: np.ndarray, *, size: int = 3, threshold: float = 5.0) -> np.ndarray:
    """Replace single-channel spikes (cosmic rays, switching glitches) by the local median.

    A channel is a spike when it differs from the running median of ``size`` channels by
    more than ``threshold`` robust standard deviations (1.4826 × median absolute residual of
    that spectrum). Works on the last axis of an ``(..., L)`` array and returns float32.
    """
    from scipy.ndimage import median_filter

    x = np.asarray(spectra, np.float32)
    med = median_filter(x, size=[1] * (x.ndim - 1) + [int(size)], mode="nearest")
    resid = x - med
    sigma = 1.4826 * np.median(np.abs(resid), axis=-1, keepdims=True)
    sigma = np.maximum(sigma, 1e-12 + 1e-6 * np.abs(med).max(axis=-1, keepdims=True))
    spikes = np.abs(resid) > threshold * sigma
    return np.where(spikes, med, x).astype(np.float32)


def normalize(spectra: np.ndarray, how: str = "max") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scale spectra for the network; returns ``(normed, offset, scale)``.

    ``normed = (spectra - offset) / scale`` with ``offset``/``scale`` shaped ``(N, 1)``:

    * ``"max"``: each spectrum to [0, 1] (its own min and max) – shapes only, intensity removed;
    * ``"global"``: the whole set to [0, 1] with one min and max – keeps relative intensities;
    * ``"none"``: unchanged.
    """
    x = np.asarray(spectra, np.float32)
    n = x.shape[0]
    if how == "max":
        lo = x.min(axis=1, keepdims=True)
        hi = x.max(axis=1, keepdims=True)
    elif how == "global":
        lo = np.full((n, 1), x.min(), np.float32)
        hi = np.full((n, 1), x.max(), np.float32)
    elif how == "none":
        lo = np.zeros((n, 1), np.float32)
        hi = np.ones((n, 1), np.float32)
    else:
        raise ValueError(
            f"Unknown normalisation {how!r}: choose one of {', '.join(NORMALIZATIONS)}."
        )
    scale = np.where(hi - lo > 1e-12, hi - lo, 1.0).astype(np.float32)
    return ((x - lo) / scale).astype(np.float32), lo.astype(np.float32), scale


def centroid(spectra: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Intensity-weighted centre of each spectrum (negative values clipped to 0)."""
    w = np.clip(np.asarray(spectra, float), 0, None)
    return (w * axis).sum(-1) / np.maximum(w.sum(-1), 1e-30)


def cross_correlation_shift(
    spectra: np.ndarray, axis: np.ndarray, reference=None, iterations: int = 2
) -> np.ndarray:
    """Shift of each spectrum against a reference (default: the mean) by cross-correlation.

    Sub-channel precision from a parabola through the correlation peak; the reference is
    re-built from the aligned spectra ``iterations`` times. Returns axis units, positive =
    features at larger axis values, relative to the median shift.
    """
    x = np.asarray(spectra, float)
    x = x - x.mean(axis=1, keepdims=True)
    n, L = x.shape
    step = (axis[-1] - axis[0]) / (L - 1)
    ref = x.mean(0) if reference is None else np.asarray(reference, float) - np.mean(reference)
    shifts = np.zeros(n)
    for _ in range(max(1, iterations)):
        fx = np.fft.rfft(x, 2 * L)
        fr = np.fft.rfft(ref, 2 * L)
        cc = np.fft.irfft(fx * np.conj(fr), 2 * L)
        cc = np.concatenate([cc[:, -(L - 1) :], cc[:, :L]], axis=1)  # lags -(L-1)..(L-1)
        k = np.argmax(cc, axis=1)
        k = np.clip(k, 1, cc.shape[1] - 2)
        y0, y1, y2 = cc[np.arange(n), k - 1], cc[np.arange(n), k], cc[np.arange(n), k + 1]
        den = y0 - 2 * y1 + y2
        frac = np.where(np.abs(den) > 1e-30, 0.5 * (y0 - y2) / np.where(den == 0, 1, den), 0.0)
        lag = k - (L - 1) + frac
        shifts = lag.astype(float)
        # rebuild the reference from spectra shifted back onto a common grid
        idx = np.arange(L)
        aligned = np.stack([np.interp(idx + s, idx, row) for s, row in zip(shifts, x, strict=True)])
        ref = aligned.mean(0)
    shifts = shifts * step
    return shifts - np.median(shifts)


def gaussian_peak_centres(spectra, axis, half_width: int = 4) -> np.ndarray:
    """Centre of the strongest peak of every spectrum by a Gaussian + offset least-squares fit
    over ±``half_width`` channels around its maximum (axis units). Used as a measured ground
    truth, e.g. the zero-loss-peak position in low-loss EELS."""
    from scipy.optimize import curve_fit

    def g(x, a, c, w, b):
        return a * np.exp(-((x - c) ** 2) / (2 * w * w)) + b

    axis = np.asarray(axis, float)
    out = []
    for s in np.asarray(spectra, float):
        k = int(np.argmax(s))
        sl = slice(max(k - half_width, 0), k + half_width + 1)
        p, _ = curve_fit(g, axis[sl], s[sl], p0=[s[k], axis[k], 0.5, 0.0])
        out.append(p[1])
    return np.array(out)


def dominant_peak_window(
    spectra, axis=None, *, widths: float = 4.0, min_channels: int = 32
) -> tuple[int, int]:
    """Channels ``(start, stop)`` (half-open) around the most prominent peak of the mean
    spectrum, e.g. the zero-loss peak of low-loss EELS or a white line of a core-loss edge.

    The window spans ``widths`` full widths at half maximum on each side of the peak, plus the
    spread of the individual spectra's peak positions (so shifted spectra stay inside), and at
    least ``min_channels`` channels; the whole range when no peak stands out.
    """
    from scipy.signal import find_peaks, peak_widths

    x = np.asarray(spectra, float)
    x = x.reshape(-1, x.shape[-1])
    n = x.shape[1]
    mean = x.mean(0)
    peaks, props = find_peaks(mean, prominence=0)
    if len(peaks) == 0:
        return 0, n
    prom = props["prominences"]
    k = int(peaks[np.argmax(prom)])
    if prom.max() < 0.05 * (mean.max() - mean.min()):  # no peak above the wiggles
        return 0, n
    fwhm = float(peak_widths(mean, [k], rel_height=0.5)[0][0])
    reach = int(np.ceil(max(2.0, 3 * fwhm)))  # where each spectrum's own maximum is looked for
    lo0, hi0 = max(k - reach, 0), min(k + reach + 1, n)
    own = lo0 + np.argmax(x[:, lo0:hi0], axis=1)
    spread = float(own.max() - own.min())
    half = max(widths * fwhm + spread, min_channels / 2)
    start, stop = int(max(np.floor(k - half), 0)), int(min(np.ceil(k + half) + 1, n))
    return start, stop
