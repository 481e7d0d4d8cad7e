"""Simulated atomic-resolution images with exact ground truth.

Scenes: a crystal filling the field, an interface between two crystals, a nanoparticle on an
amorphous support, and isolated single atoms (with a few clusters and diffuse contamination)
on an amorphous support. Lattices: square, rectangular, triangular, honeycomb (graphene-like)
and perovskite-like (two sublattices of different intensity), at any rotation, nearest-column
spacing 5–30 px. Defects: vacancies, bright and dim substitutional dopants, interstitials.
Distortions: drift shear, anisotropic scale, scan-row jitter. Noise: Poisson at a dose from a
few to thousands of counts per column, plus read noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from napari_microml.synth.render import add_noise, background, render_gaussians, smooth_field

LATTICES = ("square", "rectangular", "triangular", "honeycomb", "perovskite")
# Drawn only when asked for by name (``lattice=``), so the random draws over LATTICES, and every
# image made from them, stay as they were: "dichalcogenide" is a honeycomb whose two sublattices
# differ in intensity, as 2H-MoS2 / WS2 / WSe2 or hBN seen along [001] in HAADF (the chalcogen
# pair or N column at 0.15-0.9 of the metal or B column).
EXTRA_LATTICES = ("dichalcogenide",)
SCENES = ("crystal", "interface", "particle", "single_atoms")

HOST, DOPANT_BRIGHT, DOPANT_DIM, INTERSTITIAL, ADATOM = 0, 1, 2, 3, 4
KIND_NAMES = {
    HOST: "host",
    DOPANT_BRIGHT: "dopant_bright",
    DOPANT_DIM: "dopant_dim",
    INTERSTITIAL: "interstitial",
    ADATOM: "adatom",
}


@dataclass
class LatticeSample:
    """A simulated image and everything true about it."""

    image: np.ndarray  # (H, W) float32, noisy, in units of the clean image
    clean: np.ndarray  # (H, W) float32, noise-free
    positions: np.ndarray  # (N, 2) float64 (row, col) of every visible column / atom
    kinds: np.ndarray  # (N,) int: HOST, DOPANT_BRIGHT, DOPANT_DIM, INTERSTITIAL, ADATOM
    sigma: np.ndarray  # (N,) column widths (px)
    amplitude: np.ndarray  # (N,) column peak heights
    vacancies: np.ndarray  # (M, 2) (row, col) of removed columns
    amorphous: np.ndarray  # (H, W) bool, where an amorphous support/patch is
    params: dict = field(default_factory=dict)


def _cell(lattice: str, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Basis vectors (2, 2) in (x, y), basis positions (k, 2) and relative intensities (k,),
    scaled so the nearest-neighbour column distance is 1."""
    s3 = np.sqrt(3.0)
    if lattice == "square":
        return np.array([[1, 0], [0, 1.0]]), np.zeros((1, 2)), np.ones(1)
    if lattice == "rectangular":
        return np.array([[1, 0], [0, rng.uniform(1.25, 1.8)]]), np.zeros((1, 2)), np.ones(1)
    if lattice == "triangular":
        return np.array([[1, 0], [0.5, s3 / 2]]), np.zeros((1, 2)), np.ones(1)
    if lattice in ("honeycomb", "dichalcogenide"):
        rel = (
            np.ones(2)
            if lattice == "honeycomb"
            else np.array([1.0, np.exp(rng.uniform(np.log(0.15), np.log(0.9)))])
        )
        return np.array([[s3, 0], [s3 / 2, 1.5]]), np.array([[0, 0], [0, 1.0]]), rel
    if lattice == "perovskite":
        a = np.sqrt(2.0)
        return (
            np.array([[a, 0], [0, a]]),
            np.array([[0, 0], [a / 2, a / 2]]),
            np.array([1.0, rng.uniform(0.3, 0.75)]),
        )
    raise ValueError(f"Unknown lattice {lattice!r}; choose from {LATTICES + EXTRA_LATTICES}.")


def lattice_sites(shape, lattice: str, spacing: float, rotation: float, rng, margin: float = 0.0):
    """Column positions (row, col) covering ``shape``, with relative intensity and cell info."""
    h, w = shape
    vecs, basis, rel = _cell(lattice, rng)
    c, s = np.cos(rotation), np.sin(rotation)
    rot = np.array([[c, -s], [s, c]])
    vecs = (vecs @ rot.T) * spacing
    basis = (basis @ rot.T) * spacing
    n = int(np.ceil(np.hypot(h, w) / (spacing * 0.5))) + 2
    i, j = np.meshgrid(np.arange(-n, n + 1), np.arange(-n, n + 1), indexing="ij")
    origin = np.array([w / 2, h / 2]) + rng.uniform(0, 1, 2) @ vecs
    cells = origin + i.reshape(-1, 1) * vecs[0] + j.reshape(-1, 1) * vecs[1]
    pts = (cells[:, None, :] + basis[None]).reshape(-1, 2)
    rels = np.tile(rel, len(cells))
    xy_ok = (
        (pts[:, 0] > -margin)
        & (pts[:, 0] < w - 1 + margin)
        & (pts[:, 1] > -margin)
        & (pts[:, 1] < h - 1 + margin)
    )
    pts, rels = pts[xy_ok], rels[xy_ok]
    # interstitial candidates: a point inside each cell away from the columns
    offset = 0.5 * vecs[0] if lattice == "perovskite" else 0.5 * (vecs[0] + vecs[1])
    mid = cells + offset
    mid = mid[(mid[:, 0] > 0) & (mid[:, 0] < w - 1) & (mid[:, 1] > 0) & (mid[:, 1] < h - 1)]
    return pts[:, ::-1].copy(), rels, mid[:, ::-1].copy()


def _poisson_disc(shape, n, min_dist: float, rng, inside=None) -> np.ndarray:
    """Up to ``n`` random points at least ``min_dist`` apart (dart throwing)."""
    h, w = shape
    pts: list[np.ndarray] = []
    for _ in range(n * 20):
        p = rng.uniform([2, 2], [h - 3, w - 3])
        if inside is not None and not inside[int(p[0]), int(p[1])]:
            continue
        if all((p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2 >= min_dist**2 for q in pts):
            pts.append(p)
            if len(pts) >= n:
                break
    return np.array(pts, float).reshape(-1, 2)


def _crystal(shape, rng, lattice, spacing, rotation, defects: bool, region=None):
    sites, rel, mids = lattice_sites(shape, lattice, spacing, rotation, rng, margin=2 * spacing)
    if region is not None:
        keep = region(sites)
        sites, rel = sites[keep], rel[keep]
        mids = mids[region(mids)]
    kinds = np.full(len(sites), HOST)
    amp = rel * rng.normal(1.0, rng.uniform(0.02, 0.12), len(sites)).clip(0.6, 1.4)
    sigma = np.full(len(sites), spacing * rng.uniform(0.12, 0.24)).clip(0.7, None)
    sigma = sigma * rng.normal(1, 0.05, len(sites)).clip(0.85, 1.15)
    vac = np.zeros(len(sites), bool)
    if defects and len(sites):
        u = rng.uniform(size=len(sites))
        f_vac, f_b, f_d = rng.uniform(0, 0.04), rng.uniform(0, 0.03), rng.uniform(0, 0.03)
        vac = u < f_vac
        bright = (u >= f_vac) & (u < f_vac + f_b)
        dim = (u >= f_vac + f_b) & (u < f_vac + f_b + f_d)
        amp[bright] *= rng.uniform(1.4, 2.2, bright.sum())
        amp[dim] *= rng.uniform(0.3, 0.6, dim.sum())
        kinds[bright], kinds[dim] = DOPANT_BRIGHT, DOPANT_DIM
    vacancies = sites[vac]
    sites, kinds, amp, sigma = sites[~vac], kinds[~vac], amp[~vac], sigma[~vac]
    if defects and len(mids):
        n_int = rng.binomial(len(mids), rng.uniform(0, 0.01))
        pick = rng.choice(len(mids), n_int, replace=False)
        sites = np.vstack([sites, mids[pick]])
        kinds = np.concatenate([kinds, np.full(n_int, INTERSTITIAL)])
        amp = np.concatenate([amp, rng.uniform(0.3, 0.8, n_int)])
        sigma = np.concatenate([sigma, np.full(n_int, np.median(sigma) if len(sigma) else 1.0)])
    return sites, kinds, amp, sigma, vacancies


def _support(shape, rng, strength):
    """Amorphous support (e.g. carbon): speckle at 1–3 px plus mottling, non-negative."""
    speckle = smooth_field(shape, rng, scales=(rng.uniform(0.8, 1.5), rng.uniform(2, 4), 12.0))
    return (strength * np.clip(1 + rng.uniform(0.3, 0.7) * speckle, 0, None)).astype(np.float32)


def simulate_lattice(
    shape=(256, 256),
    *,
    scene: str | None = None,
    lattice: str | None = None,
    spacing: float | None = None,
    rotation: float | None = None,
    dose: float | None = None,
    defects: bool = True,
    distort: bool = True,
    seed=0,
) -> LatticeSample:
    """Simulate one image; any parameter left ``None`` is drawn at random from ``seed``.

    Parameters
    ----------
    shape : (H, W)
    scene : one of ``SCENES``
    lattice : one of ``LATTICES`` (drawn at random if None) or ``EXTRA_LATTICES``
    spacing : nearest-neighbour column distance in px (5–30 typical)
    rotation : lattice rotation in radians
    dose : counts at the peak of a unit-height column (log-uniform 5–5000 if None);
        ``np.inf`` gives a noise-free image.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    scene = scene or rng.choice(SCENES, p=[0.4, 0.2, 0.2, 0.2])
    lattice = lattice or str(rng.choice(LATTICES))
    spacing = float(spacing if spacing is not None else np.exp(rng.uniform(np.log(5), np.log(30))))
    rotation = float(rotation if rotation is not None else rng.uniform(0, np.pi))
    dose = float(dose if dose is not None else np.exp(rng.uniform(np.log(5), np.log(5000))))
    yy, xx = np.mgrid[0:h, 0:w]
    amorphous = np.zeros(shape, bool)
    empty = np.zeros((0, 2))
    if scene == "crystal":
        sites, kinds, amp, sigma, vac = _crystal(shape, rng, lattice, spacing, rotation, defects)
    elif scene == "interface":
        ang = rng.uniform(0, np.pi)
        normal = np.array([np.sin(ang), np.cos(ang)])
        c0 = np.array([h, w]) * rng.uniform(0.3, 0.7, 2)
        side = lambda p: ((p - c0) @ normal) > 0  # noqa: E731
        a = _crystal(shape, rng, lattice, spacing, rotation, defects, region=side)
        lat2 = str(rng.choice(LATTICES))
        sp2 = spacing * rng.uniform(0.8, 1.25)
        b = _crystal(
            shape, rng, lat2, sp2, rng.uniform(0, np.pi), defects, region=lambda p: ~side(p)
        )
        b[2][:] *= rng.uniform(0.5, 1.3)
        sites, kinds, amp, sigma, vac = (np.concatenate([x, y]) for x, y in zip(a, b, strict=True))
    elif scene == "particle":
        r = min(h, w) * rng.uniform(0.2, 0.45)
        ecc = rng.uniform(0.7, 1.0)
        c0 = np.array([h, w]) * rng.uniform(0.35, 0.65, 2)
        inside = lambda p: ((p[:, 0] - c0[0]) / r) ** 2 + ((p[:, 1] - c0[1]) / (r * ecc)) ** 2 < 1  # noqa: E731
        sites, kinds, amp, sigma, vac = _crystal(
            shape, rng, lattice, spacing, rotation, defects, region=inside
        )
        grid = np.column_stack([yy.ravel(), xx.ravel()]).astype(float)
        amorphous = ~inside(grid).reshape(shape)
    else:  # single atoms (and small clusters) on an amorphous support
        sig = rng.uniform(1.0, 3.0)
        density = rng.uniform(0.2, 1.5) / (30 * sig) ** 2 * 30
        n = max(1, int(density * h * w / 30))
        sites = _poisson_disc(shape, n, 4 * sig, rng)
        n_cl = rng.integers(0, 4)
        for c in _poisson_disc(shape, n_cl, 20 * sig, rng):
            k = rng.integers(2, 7)
            sites = np.vstack([sites, c + rng.normal(0, 1.6 * sig, (k, 2))])
        keep = (sites[:, 0] > 0) & (sites[:, 0] < h - 1) & (sites[:, 1] > 0) & (sites[:, 1] < w - 1)
        sites = sites[keep]
        amorphous[:] = True
        if rng.uniform() < 0.6:  # a support flake with vacuum beside it (atoms sit on the flake)
            flake = smooth_field(shape, rng, scales=(min(h, w) / 5,), weights=[1.0]) > rng.uniform(
                -0.8, 0.4
            )
            amorphous = flake
            ip = np.rint(sites).astype(int)
            on = flake[ip[:, 0], ip[:, 1]] | (rng.uniform(size=len(sites)) < 0.05)
            sites = sites[on]
        kinds = np.full(len(sites), ADATOM)
        amp = rng.uniform(0.6, 1.4, len(sites))
        sigma = sig * rng.normal(1, 0.08, len(sites)).clip(0.8, 1.2)
        vac = empty
    # distortions: drift shear and anisotropic scale are affine, so the truth moves with them
    row_shift = None
    if distort:
        shear, stretch = rng.normal(0, 0.02), rng.normal(0, 0.02)

        def affine(p):  # noqa: E306
            p = p.copy()
            p[:, 1] += shear * (p[:, 0] - h / 2)
            p[:, 0] = h / 2 + (p[:, 0] - h / 2) * (1 + stretch)
            return p

        sites = affine(sites) if len(sites) else sites
        vac = affine(vac) if len(vac) else vac
        smooth = smooth_field((h, 1), rng, scales=(rng.uniform(1, 4),), weights=[1.0])[:, 0]
        row_shift = rng.uniform(0, 0.35) * smooth + rng.uniform(0, 0.1) * rng.standard_normal(h)
    clean = render_gaussians(shape, sites, sigma, amp, row_shift=row_shift)
    if scene == "single_atoms":  # from thin carbon to a thick support brighter than the atoms
        support_level = float(np.exp(rng.uniform(np.log(0.05), np.log(3.0))))
    else:
        support_level = rng.uniform(0.03, 0.3)
    if amorphous.any():
        thickness = 1 + rng.uniform(0, 0.4) * smooth_field(
            shape, rng, scales=(min(h, w) / 4,), weights=[1.0]
        )
        edge = ndi.gaussian_filter(amorphous.astype(np.float32), rng.uniform(0.5, 3))
        clean += _support(shape, rng, support_level) * np.clip(thickness, 0.3, None) * edge
    elif rng.uniform() < 0.3:  # a contaminated / amorphous patch on a crystal
        c0 = np.array([h, w]) * rng.uniform(0, 1, 2)
        blob = ((yy - c0[0]) ** 2 + (xx - c0[1]) ** 2) < (min(h, w) * rng.uniform(0.05, 0.2)) ** 2
        clean += _support(shape, rng, rng.uniform(0.1, 0.5)) * blob
        amorphous |= blob
    if scene == "single_atoms" and rng.uniform() < 0.5:  # diffuse contamination, not atoms
        blobs = _poisson_disc(shape, int(rng.integers(1, 5)), 10, rng)
        clean += render_gaussians(
            shape, blobs, rng.uniform(4, 10, len(blobs)), rng.uniform(0.2, 0.6, len(blobs))
        )
    clean += background(shape, rng, rng.uniform(0, 0.5)) + rng.uniform(0.0, 0.1)
    clean = clean.astype(np.float32)
    if np.isfinite(dose):
        read = rng.uniform(0, 2)
        image = add_noise(clean, dose, rng, read) / dose
        if rng.uniform() < 0.3:  # scan-line offsets
            image += (rng.normal(0, 0.3, (h, 1)) * np.sqrt(1 / dose)).astype(np.float32)
    else:
        image = clean.copy()
    if row_shift is not None and len(sites):
        # where each column appears in the jittered scan: its centre of mass, i.e. the row
        # shifts averaged with the column's Gaussian weight over the rows it covers
        rows = np.arange(h)
        wgt = np.exp(-((rows[None, :] - sites[:, :1]) ** 2) / (2 * sigma[:, None] ** 2))
        sites = sites.copy()
        sites[:, 1] -= (wgt @ row_shift) / np.maximum(wgt.sum(1), 1e-12)
    visible = (
        (sites[:, 0] >= 0) & (sites[:, 0] <= h - 1) & (sites[:, 1] >= 0) & (sites[:, 1] <= w - 1)
    )
    vis_v = (
        (vac[:, 0] >= 0) & (vac[:, 0] <= h - 1) & (vac[:, 1] >= 0) & (vac[:, 1] <= w - 1)
        if len(vac)
        else np.zeros(0, bool)
    )
    return LatticeSample(
        image=image.astype(np.float32),
        clean=clean,
        positions=sites[visible].astype(np.float64),
        kinds=kinds[visible],
        sigma=sigma[visible],
        amplitude=amp[visible],
        vacancies=vac[vis_v] if len(vac) else empty,
        amorphous=amorphous,
        params=dict(
            scene=str(scene), lattice=lattice, spacing=spacing, rotation=rotation, dose=dose
        ),
    )
