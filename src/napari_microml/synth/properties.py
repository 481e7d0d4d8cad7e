"""Synthetic structure/property pairs with exact ground truth, for active-learning tests.

The property depends on the *local structure* (not on position), which is what deep kernel
learning exploits: pixels with similar neighbourhoods have similar properties wherever they
are in the field of view.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

KINDS = ("blobs", "domains", "lattice", "phases")


def structure_property_pair(
    shape=(50, 50), *, kind: str = "blobs", seed: int = 0, noise: float = 0.0
):
    """A structure image and a scalar property map of the same shape.

    kind
        ``"blobs"``: Gaussian particles of two sizes; the property peaks on the rims of the
        *large* particles (a ring-shaped "interface" response).
        ``"domains"``: smooth random two-phase texture of stripes vs. dots; the property is
        high in the striped phase near phase boundaries.
        ``"lattice"``: a noisy atomic-resolution image from :func:`synth.lattice.simulate_lattice`
        (crystal, 4–7 px column spacing, Poisson noise); the property is a local response
        centred on its point defects (bright/dim dopants, vacancies, interstitials).
        ``"phases"``: a low-magnification "chemical map": HAADF-like contrast = thickness ×
        mean atomic number of three phases with their own texture (plus vacuum around a
        particle in half the seeds); the property = thickness × concentration of an element
        enriched in one phase, blurred by the probe - thickness confounds the image contrast.
    noise : float
        Gaussian measurement noise added to the property, as a fraction of its range.

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
        for (r, c), s, big in zip(pos, sig, large, strict=True):
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
    elif kind == "lattice":
        img, prop = _lattice_pair(shape, rng)
    elif kind == "phases":
        img, prop = _phases_pair(shape, rng)
    else:
        raise ValueError(f"Unknown kind {kind!r}: use one of {', '.join(KINDS)}.")
    prop = prop - prop.min()
    prop = prop / (prop.max() or 1.0)
    if noise:
        prop = prop + float(noise) * rng.standard_normal(shape)
    return img.astype(np.float32), prop


def _lattice_pair(shape, rng):
    """Atomic-resolution image and a defect-centred property (see structure_property_pair)."""
    from napari_microml.synth.lattice import (
        DOPANT_BRIGHT,
        DOPANT_DIM,
        INTERSTITIAL,
        simulate_lattice,
    )

    rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    for _ in range(20):  # redraw until the field holds a few defects
        spacing = rng.uniform(4.0, 7.0)
        sample = simulate_lattice(
            shape,
            scene="crystal",
            spacing=spacing,
            dose=float(np.exp(rng.uniform(np.log(50), np.log(2000)))),
            defects=True,
            seed=int(rng.integers(2**31)),
        )
        weight = {DOPANT_BRIGHT: 1.0, DOPANT_DIM: 0.6, INTERSTITIAL: 0.8}
        pts = [
            (p, weight[k])
            for p, k in zip(sample.positions, sample.kinds, strict=True)
            if k in weight
        ]
        pts += [(p, 0.7) for p in sample.vacancies]
        if len(pts) >= 3:
            break
    prop = np.zeros(shape)
    width = 0.6 * spacing
    for (r, c), wgt in pts:
        prop += wgt * np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * width**2))
    return sample.image, prop


def _phases_pair(shape, rng):
    """Low-magnification multi-phase "chemical map" (see structure_property_pair)."""
    from napari_microml.synth.render import smooth_field

    h, w = shape
    size = min(h, w)
    fields = np.stack(
        [smooth_field(shape, rng, scales=(size / 6,), weights=[1.0]) for _ in range(3)]
    )
    phase = np.argmax(fields + 0.3 * rng.uniform(size=(3, 1, 1)), axis=0)
    z = rng.uniform(0.5, 1.5, 3)  # mean atomic number (HAADF contrast)
    conc = np.array([rng.uniform(0.7, 1.0), rng.uniform(0.1, 0.4), rng.uniform(0.0, 0.3)])
    thick = np.clip(
        1 + rng.uniform(0.2, 0.5) * smooth_field(shape, rng, scales=(size / 3,), weights=[1.0]),
        0.2,
        None,
    )
    if rng.uniform() < 0.5:  # a particle with vacuum around it
        rr, cc = np.mgrid[0:h, 0:w].astype(float)
        c0, rad = np.array([h, w]) * rng.uniform(0.4, 0.6, 2), size * rng.uniform(0.35, 0.5)
        thick = thick * ndi.gaussian_filter(
            (((rr - c0[0]) ** 2 + (cc - c0[1]) ** 2) < rad**2).astype(float), 1.0
        )
    texture = np.stack(
        [smooth_field(shape, rng, scales=(s,), weights=[1.0]) for s in (0.8, 1.5, 3.0)]
    )
    tex = np.take_along_axis(texture, phase[None], 0)[0]
    img = thick * (z[phase] * (1 + 0.15 * tex))
    img = ndi.gaussian_filter(img, 0.7)
    img = img + 0.03 * np.sqrt(np.clip(img, 0, None) + 0.05) * rng.standard_normal(shape)
    prop = ndi.gaussian_filter(thick * conc[phase], 1.0)
    return img, prop


def property_spectrum_image(
    prop,
    *,
    n_channels: int = 64,
    axis=None,
    centre=None,
    width=3.0,
    noise: float = 0.0,
    seed: int = 0,
):
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
