"""Simulated spectra with exact ground truth (peak centres, widths) for the shift-VAE."""

from __future__ import annotations

import numpy as np


def gaussian(x, centre, width, amplitude=1.0):
    """Gaussian peaks; broadcasting ``(N, 1)`` parameters against ``x (L,)``."""
    return amplitude * np.exp(-((x - centre) ** 2) / (2.0 * width**2))


def gaussian_peaks(n: int = 5000, n_channels: int = 100, *, x_range=(-12.0, 12.0), seed: int = 0):
    """The published shift-VAE setup (Ziatdinov et al. 2023): one Gaussian per spectrum.

    centre ~ U(-3, 3), width ~ U(0.5, 5), white noise with amplitude ~ U(0, 0.1) per spectrum.

    Returns ``(spectra (n, L) float32, x (L,), truth dict with centre, width, noise)``.
    """
    rng = np.random.default_rng(seed)
    x = np.linspace(x_range[0], x_range[1], n_channels)
    centre = rng.uniform(-3, 3, n)
    width = rng.uniform(0.5, 5, n)
    noise = rng.uniform(0, 0.1, n)
    y = gaussian(x[None], centre[:, None], width[:, None])
    y = y + noise[:, None] * rng.standard_normal(y.shape)
    return y.astype(np.float32), x, {"centre": centre, "width": width, "noise": noise}


def two_peak_spectra(
    n: int = 5000,
    n_channels: int = 100,
    *,
    x_range=(-12.0, 12.0),
    seed: int = 0,
    counts: float = 200.0,
):
    """A harder set: main peak + satellite (sometimes taller), sloped background, Poisson noise.

    The satellite sits 3–5 units above the main peak and has 0.3–1.5× its height (so in about
    a third of spectra it is taller); both move together by ``centre`` ~ U(-3, 3). The
    background is a random linear slope. ``counts`` sets the dose of the Poisson noise.
    """
    rng = np.random.default_rng(seed)
    x = np.linspace(x_range[0], x_range[1], n_channels)
    centre = rng.uniform(-3, 3, n)
    width = rng.uniform(0.6, 2.0, n)
    sep = rng.uniform(3.0, 5.0, n)
    ratio = rng.uniform(0.3, 1.5, n)
    slope = rng.uniform(-0.015, 0.015, n)
    base = rng.uniform(0.1, 0.3, n)
    y = (
        gaussian(x[None], centre[:, None], width[:, None])
        + gaussian(x[None], (centre + sep)[:, None], 1.2 * width[:, None], ratio[:, None])
        + base[:, None]
        + slope[:, None] * x[None]
    )
    y = np.clip(y, 0, None)
    y = rng.poisson(y * counts) / counts
    return (
        y.astype(np.float32),
        x,
        {"centre": centre, "width": width, "separation": sep, "ratio": ratio, "slope": slope},
    )


def simulate_spectrum_image(
    shape=(32, 32), n_channels: int = 128, seed: int = 0, max_shift: float = 1.5
):
    """A spectrum image (H, W, L) whose peaks shift smoothly across the field of view.

    Two peaks near 532 and 540 eV (an O-K-edge-like pair) on an axis of 525–550 eV. The
    shift map (eV) is a gradient plus a bump, within ±``max_shift``; the first peak's width
    changes between two regions (a "phase" the content latent should find). Poisson noise.

    Returns
    -------
    cube : float32 (H, W, L)
    axis : float64 (L,) energy loss in eV
    true_shift : float32 (H, W) in eV (positive = to higher energy)
    """
    rng = np.random.default_rng(seed)
    H, W = int(shape[0]), int(shape[1])
    axis = np.linspace(525.0, 550.0, int(n_channels))
    rr, cc = np.mgrid[0:H, 0:W]
    u, v = rr / max(H - 1, 1), cc / max(W - 1, 1)
    shift = 0.6 * (v - 0.5) + 0.9 * np.exp(-(((u - 0.6) ** 2 + (v - 0.35) ** 2) / 0.04))
    shift = shift - shift.mean()
    shift = max_shift * shift / max(np.abs(shift).max(), 1e-9)
    phase = (u + 0.3 * np.sin(6 * v) > 0.55).astype(float)
    w1 = 0.8 + 0.6 * phase
    s = shift[..., None]
    y = (
        gaussian(axis, 532.0 + s, w1[..., None], 1.0)
        + gaussian(axis, 540.0 + s, 2.0, 0.6 - 0.2 * phase[..., None])
        + 0.05
    )
    y = rng.poisson(y * 300.0) / 300.0
    return y.astype(np.float32), axis, shift.astype(np.float32)
