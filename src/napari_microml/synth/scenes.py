"""STEM-like scenes beyond atomic lattices, with exact noise-free truth (for scan completion).

Kinds: ``lattice`` (every :func:`synth.lattice.simulate_lattice` scene, optionally magnified
so columns are up to ~60 px apart), ``edges`` (piecewise-smooth regions with blurred
boundaries and gradients, like a low-magnification view of a specimen edge), ``texture``
(amorphous/granular material at many correlation lengths), ``particles`` (nanoparticles, some
with lattice fringes, on an amorphous support). Any kind may carry a vacuum region
(``vacuum=``): a uniform area at the floor (or, as in bright field, the ceiling) of the
intensity range behind a warped, more or less blurred specimen edge, as at the edge of a
sample or a hole in it. Noise: Poisson at a dose drawn log-uniformly
from a few to thousands of counts per unit intensity, plus read noise; some images are
noise-free.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_microml.synth.lattice import simulate_lattice
from napari_microml.synth.render import add_noise, background, smooth_field

SCENE_KINDS = ("lattice", "edges", "texture", "particles")
_P = (0.5, 0.2, 0.12, 0.18)


def _unit(a: np.ndarray) -> np.ndarray:
    a = a - a.min()
    return (a / (a.max() + 1e-9)).astype(np.float32)


def _lattice(shape, rng) -> np.ndarray:
    h, w = shape
    zoom = float(np.exp(rng.uniform(0, np.log(2.2)))) if rng.uniform() < 0.5 else 1.0
    small = (int(np.ceil(h / zoom)) + 2, int(np.ceil(w / zoom)) + 2)
    s = simulate_lattice(small, dose=np.inf, seed=int(rng.integers(2**31)))
    clean = ndi.zoom(s.clean, zoom, order=3) if zoom > 1 else s.clean
    return _unit(clean[:h, :w])


def _soft_side(
    shape, rng, *, margin: float, warp_div: float, warp_max: float, blur_max: float
) -> np.ndarray:
    """One side (0..1) of a random, smoothly warped straight edge, blurred by a random σ: the
    edge passes through a point at least ``margin`` × the size from the border, its warp has
    correlation length the larger side / ``warp_div`` and amplitude up to ``warp_max`` × it."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    c = rng.uniform([margin * h, margin * w], [(1 - margin) * h, (1 - margin) * w])
    warp = smooth_field(shape, rng, scales=(max(h, w) / warp_div,), weights=[1.0])
    warp = warp * rng.uniform(0, warp_max) * max(h, w)
    side = ((yy - c[0]) * np.sin(ang) + (xx - c[1]) * np.cos(ang) + warp) > 0
    return ndi.gaussian_filter(side.astype(np.float32), rng.uniform(0.5, blur_max))


def _edges(shape, rng) -> np.ndarray:
    img = np.zeros(shape, np.float32)
    for _ in range(int(rng.integers(1, 5))):
        region = _soft_side(shape, rng, margin=0.0, warp_div=3, warp_max=0.1, blur_max=12)
        img += rng.uniform(-1, 1) * region
    img += background(shape, rng, rng.uniform(0, 0.6))
    img += rng.uniform(0, 0.05) * smooth_field(shape, rng, scales=(rng.uniform(1, 3), 8.0))
    return _unit(img)


def _texture(shape, rng) -> np.ndarray:
    scales = tuple(np.exp(rng.uniform(np.log(0.7), np.log(40), int(rng.integers(1, 4)))))
    f = smooth_field(shape, rng, scales=scales)
    if rng.uniform() < 0.5:
        f = np.exp(rng.uniform(0.3, 1.0) * f)  # granular, skewed like thin amorphous films
    return _unit(f + background(shape, rng, rng.uniform(0, 2)))


def _particles(shape, rng) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 0.3 * (
        1
        + rng.uniform(0.2, 0.6) * smooth_field(shape, rng, scales=(rng.uniform(0.8, 2), 5.0, 20.0))
    )
    for _ in range(int(rng.integers(1, 12))):
        r = rng.uniform(3, 0.35 * min(h, w))
        c = rng.uniform([0, 0], [h, w])
        ecc, ang = rng.uniform(0.6, 1.0), rng.uniform(0, np.pi)
        dy, dx = yy - c[0], xx - c[1]
        u = dy * np.cos(ang) + dx * np.sin(ang)
        v = -dy * np.sin(ang) + dx * np.cos(ang)
        inside = (u / r) ** 2 + (v / (r * ecc)) ** 2 < 1
        thick = np.sqrt(np.clip(1 - (u / r) ** 2 - (v / (r * ecc)) ** 2, 0, None))
        body = ndi.gaussian_filter(inside * (0.4 + 0.6 * thick), rng.uniform(0.5, 2.5))
        if rng.uniform() < 0.5:  # lattice fringes inside the particle
            period, fa = rng.uniform(3, 20), rng.uniform(0, np.pi)
            body = body * (
                1 + 0.3 * np.cos(2 * np.pi * (yy * np.sin(fa) + xx * np.cos(fa)) / period)
            )
        img = img + rng.uniform(0.5, 3) * body
    return _unit(img + background(shape, rng, rng.uniform(0, 0.8)))


def _with_vacuum(img: np.ndarray, rng) -> np.ndarray:
    """Replace the part of ``img`` (in [0, 1]) behind a warped edge by a uniform level with a
    faint gradient: dark vacuum (HAADF/ADF) or, one time in four, bright (BF/ABF)."""
    edge = _soft_side(img.shape, rng, margin=0.1, warp_div=4, warp_max=0.15, blur_max=6)
    level = 1.0 if rng.uniform() < 0.25 else 0.0
    flat = level + (0.5 - level) * background(img.shape, rng, rng.uniform(0, 0.1))
    return (1 - edge) * img + edge * flat


_MAKERS = {"lattice": _lattice, "edges": _edges, "texture": _texture, "particles": _particles}


def simulate_scene(
    shape=(128, 128),
    *,
    kind: str | None = None,
    dose: float | None = None,
    seed: int = 0,
    vacuum: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One STEM-like image and its noise-free truth.

    Parameters
    ----------
    shape : (H, W) pixels.
    kind : one of :data:`SCENE_KINDS` (random if None).
    dose : counts per unit intensity (the clean image spans roughly [0, 1]); ``np.inf`` gives
        a noise-free image; None draws log-uniformly from 2–5000 (10 % noise-free).
    seed : int
    vacuum : probability of a vacuum region (0: never, the scene is as without the argument;
        1: always).

    Returns
    -------
    noisy, clean : (H, W) float32 each, in the same intensity units.
    """
    rng = np.random.default_rng(seed)
    kind = kind or str(rng.choice(SCENE_KINDS, p=_P))
    if kind not in _MAKERS:
        raise ValueError(f"Unknown scene kind {kind!r}; choose one of {', '.join(SCENE_KINDS)}.")
    clean = _MAKERS[kind](tuple(shape), rng)
    if vacuum > 0 and rng.uniform() < vacuum:
        clean = _with_vacuum(clean, rng)
    clean = (rng.uniform(0.02, 0.2) + rng.uniform(0.5, 1.0) * clean).astype(np.float32)
    if dose is None:
        dose = (
            np.inf if rng.uniform() < 0.1 else float(np.exp(rng.uniform(np.log(2), np.log(5000))))
        )
    if not np.isfinite(dose):
        return clean.copy(), clean
    noisy = add_noise(clean, dose, rng, rng.uniform(0, 1.5)) / dose
    return noisy.astype(np.float32), clean
