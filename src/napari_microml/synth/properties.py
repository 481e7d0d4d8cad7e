"""Synthetic structure/property pairs with exact ground truth, for active-learning tests.

The property depends on the *local structure* (not on position), which is what deep kernel
learning exploits: pixels with similar neighbourhoods have similar properties wherever they
are in the field of view.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def structure_property_pair(shape=(50, 50), *, kind: str = "blobs", seed: int = 0):
    """A structure image and a scalar property map of the same shape.

    kind
        ``"blobs"``: Gaussian particles of two sizes; the property peaks on the rims of the
        *large* particles (a ring-shaped "interface" response).
        ``"domains"``: smooth random two-phase texture of stripes vs. dots; the property is
        high in the striped phase near phase boundaries.

    Returns
    -------
    structure : float32 (H, W)
    prop : float64 (H, W), scaled to [0, 1]
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    rr, cc = np.mgrid[0:h, 0:w].astype(float)
    if kind == "blobs":
        n = max(4, int(h * w / 120))
        pos = rng.uniform([0, 0], [h, w], (n, 2))
        large = rng.random(n) < 0.35
        sig = np.where(large, 3.0, 1.2)
        img = np.zeros(shape)
        prop = np.zeros(shape)
        for (r, c), s, big in zip(pos, sig, large):
            d2 = (rr - r) ** 2 + (cc - c) ** 2
            img += np.exp(-d2 / (2 * s**2))
            if big:
                d = np.sqrt(d2)
                prop += np.exp(-((d - 1.6 * s) ** 2) / 2.0)
        img += 0.05 * rng.standard_normal(shape)
    elif kind == "domains":
        field = ndi.gaussian_filter(rng.standard_normal(shape), 6)
        phase = field > 0
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * cc / 4.0)
        dots = 0.5 + 0.5 * np.sin(2 * np.pi * rr / 5.0) * np.sin(2 * np.pi * cc / 5.0)
        img = np.where(phase, stripes, dots) + 0.05 * rng.standard_normal(shape)
        dist = ndi.distance_transform_edt(phase)
        prop = np.where(phase, np.exp(-((dist - 2.0) ** 2) / 4.0), 0.0)
    else:
        raise ValueError(f"Unknown kind {kind!r}: use 'blobs' or 'domains'.")
    prop = prop - prop.min()
    prop = prop / (prop.max() or 1.0)
    return img.astype(np.float32), prop


def property_spectrum_image(prop, *, n_channels: int = 64, axis=None, centre=None, width=3.0,
                            noise: float = 0.0, seed: int = 0):
    """A spectrum image whose peak height equals ``prop`` (plus a flat background of 0.1).

    Returns ``cube`` (H, W, E) and ``axis`` (E,) (default: 0 … n_channels-1 in "eV").
    """
    prop = np.asarray(prop, float)
    axis = np.arange(n_channels, dtype=float) if axis is None else np.asarray(axis, float)
    centre = float(axis[len(axis) // 2]) if centre is None else centre
    line = np.exp(-((axis - centre) ** 2) / (2 * width**2))
    cube = 0.1 + prop[..., None] * line[None, None]
    if noise:
        cube = cube + noise * np.random.default_rng(seed).standard_normal(cube.shape)
    return cube, axis
