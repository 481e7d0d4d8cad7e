"""Rendering primitives with exact ground truth: Gaussian columns, supports, noise."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def render_gaussians(
    shape: tuple[int, int],
    positions: np.ndarray,
    sigma: float | np.ndarray,
    amplitude: float | np.ndarray,
    *,
    row_shift: np.ndarray | None = None,
) -> np.ndarray:
    """Sum of isotropic 2D Gaussians, each evaluated in a local window.

    Parameters
    ----------
    shape : (H, W)
    positions : (N, 2) float, (row, col) in pixels (pixel centres at integers).
    sigma, amplitude : float or (N,) float
    row_shift : (H,) float, optional
        Scan-row jitter: pixel ``(r, c)`` samples the specimen at column ``c + row_shift[r]``.
    """
    h, w = shape
    image = np.zeros(shape, np.float64)
    positions = np.asarray(positions, float).reshape(-1, 2)
    if len(positions) == 0:
        return image.astype(np.float32)
    sigma = np.broadcast_to(np.asarray(sigma, float), (len(positions),))
    amplitude = np.broadcast_to(np.asarray(amplitude, float), (len(positions),))
    # group atoms by window size so each group is one vectorised operation
    radius = np.ceil(3.5 * sigma + 1).astype(int)
    for r in np.unique(radius):
        sel = radius == r
        pos, sig, amp = positions[sel], sigma[sel], amplitude[sel]
        offs = np.arange(-r, r + 1)
        rows = np.rint(pos[:, 0]).astype(int)[:, None] + offs[None, :]  # (n, K)
        cols = np.rint(pos[:, 1]).astype(int)[:, None] + offs[None, :]
        dy = rows - pos[:, :1]
        rr = np.clip(rows, 0, h - 1)
        dx = (
            cols[:, None, :]
            + (row_shift[rr][:, :, None] if row_shift is not None else 0.0)
            - pos[:, None, 1:2]
        )
        val = amp[:, None, None] * np.exp(
            -(dy[:, :, None] ** 2 + dx**2) / (2 * sig[:, None, None] ** 2)
        )
        ok = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        rix = np.broadcast_to(rows[:, :, None], val.shape)[ok]
        cix = np.broadcast_to(cols[:, None, :], val.shape)[ok]
        np.add.at(image, (rix, cix), val[ok])
    return image.astype(np.float32)


def smooth_field(
    shape, rng: np.random.Generator, scales=(2.0, 6.0, 20.0), weights=None
) -> np.ndarray:
    """Zero-mean, unit-std random field mixing several correlation lengths (px)."""
    weights = weights if weights is not None else rng.uniform(0.3, 1.0, len(scales))
    field = np.zeros(shape, np.float64)
    for s, wgt in zip(scales, weights, strict=True):
        f = ndi.gaussian_filter(rng.standard_normal(shape), s)
        field += wgt * f / (f.std() + 1e-12)
    field -= field.mean()
    return (field / (field.std() + 1e-12)).astype(np.float32)


def background(shape, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Smooth background: a random linear gradient plus a very low-frequency bump."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    g = rng.normal(size=2)
    grad = g[0] * (yy / h - 0.5) + g[1] * (xx / w - 0.5)
    bump = smooth_field(shape, rng, scales=(max(h, w) / 4,), weights=[1.0])
    bg = grad + 0.5 * bump
    bg -= bg.min()
    return (strength * bg / (bg.max() + 1e-9)).astype(np.float32)


def add_noise(
    clean: np.ndarray, dose: float, rng: np.random.Generator, read_noise: float = 0.0
) -> np.ndarray:
    """Shot noise at ``dose`` counts for intensity 1, plus Gaussian read noise (in counts).

    The result is in counts; divide by ``dose`` to return to the clean image's scale.
    """
    lam = np.clip(clean, 0, None).astype(np.float64) * dose
    counts = rng.poisson(lam).astype(np.float32)
    if read_noise > 0:
        counts += rng.normal(0, read_noise, clean.shape).astype(np.float32)
    return counts


def heatmap(shape, positions: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Training target: a Gaussian of height 1 at every position (maximum where they overlap)."""
    h, w = shape
    out = np.zeros(shape, np.float32)
    if len(positions) == 0:
        return out
    r = int(np.ceil(3 * sigma))
    offs = np.arange(-r, r + 1)
    rows = np.rint(positions[:, 0]).astype(int)[:, None] + offs
    cols = np.rint(positions[:, 1]).astype(int)[:, None] + offs
    val = np.exp(
        -((rows - positions[:, :1])[:, :, None] ** 2 + (cols - positions[:, 1:2])[:, None, :] ** 2)
        / (2 * sigma**2)
    ).astype(np.float32)
    ok = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    rix = np.broadcast_to(rows[:, :, None], val.shape)[ok]
    cix = np.broadcast_to(cols[:, None, :], val.shape)[ok]
    np.maximum.at(out, (rix, cix), val[ok])
    return out
