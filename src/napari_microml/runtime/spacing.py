"""Lattice period of an image, and the resampling that brings it into a network's trained range.

The networks were trained on column spacings of 5–30 px. A 4k image of a large cell or a
survey image at 3 px per column is outside that range and the raw network fails there.
``estimate_spacing`` measures the shortest strong
period from the image's autocorrelation (Wiener–Khinchin, Hann-windowed, slow background
removed, white-noise spike at the origin dropped; no period when its peak does not stand out of
the noise of a blank frame); ``auto_zoom`` turns it into a resampling
factor only when the image is clearly periodic and the period lies outside the trained range
(``zoom_for`` can also resample frames whose period is in the upper part of the range).
Non-periodic images (single atoms, particles, amorphous films) are never resampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

MIN_STRENGTH = 0.3  # autocorrelation peak / central value; single-atom images stay below 0.2
_REL_PEAK = 0.3  # shortest peak at least this fraction of the strongest one
_MAX_SIDE = 1024  # the estimate uses a central crop of at most this size
# rings stand out of the radial profile by this fraction of the origin (shoulders of
# interpolated noise: ≤ 0.02)
_SHOULDER_RISE = 0.1
# a shoulder this high (of the origin) is correlated noise on the structure's lobe (resampled
# images: 0.32-0.45; single atoms and amorphous films at their own pixels: ≤ 0.05)
_SHOULDER_LEVEL = 0.2
# a lattice's peak under such a shoulder, relative to the lobe there (Acquisition_18 ×1.2/×2:
# 0.88; Pt/C single atoms resampled ×1.2-×2: ≤ 0.36)
_UNDER_SHOULDER = 0.6
_MIN_PEAK_SE = 5.0  # the period's peak, in white-noise standard errors of the autocorrelation
TARGET = 14.0  # px: the period a resampled copy gets
RESCALE_MODES = ("auto", "always", "off")


@dataclass(frozen=True)
class Spacing:
    """The lattice period an image shows, if any.

    Attributes
    ----------
    period : float or None
        Shortest strong lattice period (px), None if none was found.
    strength : float
        Its autocorrelation relative to the origin's (noise-free) value, about 0–1 (can
        slightly exceed 1 for a clean lattice); ≥ MIN_STRENGTH: a lattice.
    """

    period: float | None
    strength: float

    @property
    def periodic(self) -> bool:
        return self.period is not None and self.strength >= MIN_STRENGTH


def estimate_spacing(image: np.ndarray) -> Spacing:
    """Shortest strong period of a 2D image from its autocorrelation.

    Parameters
    ----------
    image : (H, W) array, any real units; a central crop of ≤ 1024² px is analysed.

    Returns
    -------
    Spacing. For simple lattices the period is the nearest-neighbour column distance; for
    honeycomb or perovskite projections it can be up to √3 × that distance.
    """
    x = np.asarray(image, np.float64)
    if x.ndim != 2 or min(x.shape) < 16:
        return Spacing(None, 0.0)
    x = _central(x)
    h, w = x.shape
    x = np.where(np.isfinite(x), x, np.nanmedian(x) if np.isfinite(x).any() else 0.0)
    # a few dead or hot pixels would dominate the autocorrelation
    x = np.clip(x, *np.percentile(x, (0.1, 99.9)))
    x = x - ndi.uniform_filter(x, size=max(16, min(h, w) // 4), mode="reflect")
    window = np.outer(np.hanning(h), np.hanning(w))
    x = (x - x.mean()) * window
    a = np.fft.fftshift(np.fft.irfft2(np.abs(np.fft.rfft2(x)) ** 2, s=(h, w)))
    cy, cx = h // 2, w // 2
    total = a[cy, cx]  # structure + pixel noise
    # white noise only adds to the origin: replace it by its neighbours' level
    a[cy, cx] = 0.25 * (a[cy, cx - 1] + a[cy, cx + 1] + a[cy - 1, cx] + a[cy + 1, cx])
    if a[cy, cx] <= 0:
        return Spacing(None, 0.0)
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(yy - cy, xx - cx)
    r_max = min(h, w) / 4
    rb = np.round(r).astype(np.int64)
    profile = np.bincount(rb.ravel(), a.ravel()) / np.maximum(np.bincount(rb.ravel()), 1)
    lobe = next((i for i in range(1, int(r_max)) if profile[i] <= profile[i + 1]), int(r_max))
    # a shoulder (resampled or blurred noise) is not the lobe's end: it ends below zero, unless
    # the profile oscillates first (a small lattice's rings, not a shoulder)
    below = np.flatnonzero(profile[1 : int(r_max)] <= 0)
    shoulder = None
    if below.size and below[0] + 1 > lobe:
        from scipy.signal import find_peaks

        seg = profile[lobe : below[0] + 2] / a[cy, cx]
        if len(find_peaks(seg, prominence=_SHOULDER_RISE)[0]) < 2:
            if _SHOULDER_LEVEL <= seg[0] < 1:
                shoulder = float(seg[0])
            lobe = int(below[0]) + 1
    peaks = (
        (a == ndi.maximum_filter(a, size=3)) & (r >= max(2.0, 0.8 * lobe)) & (r <= r_max) & (a > 0)
    )
    if not peaks.any():
        return Spacing(None, 0.0)
    vals, radii = a[peaks] / a[cy, cx], r[peaks]
    strong = vals >= _REL_PEAK * vals.max()
    i = int(np.argmin(np.where(strong, radii, np.inf)))
    # In a frame of pure noise the origin's neighbours are ~0 too, so any bump divided by them
    # looks strong: the peak must also stand out of the autocorrelation's own noise, whose
    # standard error (relative to the origin) is sqrt(Σw⁴)/Σw² under the window w.
    w2 = window * window
    if a[peaks][i] < _MIN_PEAK_SE * np.sqrt((w2 * w2).sum()) / w2.sum() * total:
        return Spacing(None, 0.0)
    # interpolated noise, correlated up to the shoulder, raises the origin above the lattice's
    # lobe there; a lattice's peak still reaches most of that lobe, single atoms' do not
    if shoulder is not None and vals[i] >= _UNDER_SHOULDER * shoulder:
        return Spacing(float(radii[i]), float(vals[i] / shoulder))
    return Spacing(float(radii[i]), float(vals[i]))


def _central(image: np.ndarray) -> np.ndarray:
    """The central crop of at most ``_MAX_SIDE``² px that the estimates here look at."""
    h, w = (min(s, _MAX_SIDE) for s in image.shape)
    y0, x0 = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    return image[y0 : y0 + h, x0 : x0 + w]


def auto_zoom(
    spacing: Spacing,
    shape,
    *,
    low: float = 5.0,
    high: float = 36.0,
    target: float = TARGET,
    max_side: int = 8192,
) -> float:
    """Resampling factor bringing a periodic image's period to ``target`` px.

    Only when the period lies outside [``low``, ``high``] px; 1.0 otherwise. Upsampling is
    capped so no side exceeds ``max_side``.
    """
    period = spacing.period
    if period is None or not spacing.periodic or low <= period <= high:
        return 1.0
    zoom = target / period
    return float(min(zoom, max_side / max(shape))) if zoom > 1 else float(zoom)


def resample(image: np.ndarray, zoom: float) -> np.ndarray:
    """Bilinear resampling by ``zoom`` (anti-aliased with a Gaussian when shrinking)."""
    if zoom == 1.0:
        return image
    src = ndi.gaussian_filter(image, 0.5 / zoom) if zoom < 1 else image
    return ndi.zoom(src, zoom, order=1, mode="nearest", grid_mode=True).astype(
        image.dtype, copy=False
    )


def to_original(positions: np.ndarray, zoom: float) -> np.ndarray:
    """Map (row, col) pixel-centre positions on the resampled grid back to the original grid."""
    return (np.asarray(positions, np.float64) + 0.5) / zoom - 0.5


def to_resampled(positions: np.ndarray, zoom: float) -> np.ndarray:
    """Map (row, col) positions on the original grid onto the grid resampled by ``zoom``."""
    return (np.asarray(positions, np.float64) + 0.5) * zoom - 0.5


def _bad_rescale(rescale) -> str:
    modes = ", ".join(repr(m) for m in RESCALE_MODES)
    return f"rescale must be {modes} or a positive number, not {rescale!r}."


def zoom_for(
    frame: np.ndarray,
    rescale,
    *,
    low: float = 5.0,
    high: float = 36.0,
    noisy_high: float | None = None,
) -> tuple[float, float | None]:
    """Resampling factor for ``rescale`` and the period found.

    ``rescale`` is 'auto', 'always', None/'off' or a number.

    ``'auto'`` resamples only a clearly periodic ``frame`` whose period is outside [low, high] px,
    or, with ``noisy_high``, above ``noisy_high`` px (the atom finder's network misses wide
    columns there on real frames, noisy or smooth, that a resampled copy shows); ``'always'``
    brings any clearly periodic frame to the ``TARGET`` period (non-periodic frames are left
    alone either way).
    """
    if rescale is None or rescale == "off":
        return 1.0, None
    if isinstance(rescale, str):
        if rescale not in RESCALE_MODES:
            raise ValueError(_bad_rescale(rescale))
        sp = estimate_spacing(frame)
        if rescale == "always":
            low = high = TARGET
        elif (
            noisy_high is not None
            and sp.period is not None
            and sp.periodic
            and sp.period > noisy_high
        ):
            high = noisy_high
        return auto_zoom(sp, frame.shape, low=low, high=high), (
            round(sp.period, 2) if sp.period is not None and sp.periodic else None
        )
    try:
        zoom = float(rescale)
    except (TypeError, ValueError):
        raise ValueError(_bad_rescale(rescale)) from None
    if not 0.05 <= zoom <= 8:
        raise ValueError(f"A rescale factor of {zoom} is outside 0.05–8; use 'auto' to pick one.")
    return zoom, None


def zoom_to(a: np.ndarray, shape, order: int = 1) -> np.ndarray:
    """Resample the last two axes of ``a`` to exactly ``shape`` (order 0 for label images)."""
    factors = (1.0,) * (a.ndim - 2) + (shape[0] / a.shape[-2], shape[1] / a.shape[-1])
    return ndi.zoom(a, factors, order=order, mode="nearest", grid_mode=True)
