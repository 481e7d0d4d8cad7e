"""Simulated crystals with labelled defects: per-pixel and per-object ground truth.

Wraps :func:`napari_microml.synth.lattice.simulate_lattice` (crystal and grain-boundary scenes)
and turns what it planted into the defect classes of :mod:`napari_microml.defects.classes`:

* point defects — vacancy (missing column), brighter / dimmer substitutional dopant,
  interstitial — each a disc of radius ``disc × spacing`` around the site (the empty site for a
  vacancy);
* extended regions — the band along a grain boundary between two rotated lattices, and an
  amorphous / contaminated patch. Point defects inside an extended region belong to it.

Some images are rendered with ABF-like dark-column contrast (``contrast='dark'``): a bright
field with dark columns, so tools that invert ABF images see the kind of data they will meet.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from napari_microml.defects.classes import CLASS_NAMES, class_id
from napari_microml.synth.lattice import (
    DOPANT_BRIGHT,
    DOPANT_DIM,
    HOST,
    INTERSTITIAL,
    LATTICES,
    simulate_lattice,
)
from napari_microml.synth.render import add_noise

SCENES = ("crystal", "interface")
KIND_TO_CLASS = {
    DOPANT_BRIGHT: "dopant_bright",
    DOPANT_DIM: "dopant_dim",
    INTERSTITIAL: "interstitial",
}


@dataclass
class DefectSample:
    """A simulated image and its exact defect truth.

    image : (H, W) float32 noisy image (dark columns when ``params['contrast'] == 'dark'``).
    clean : (H, W) float32 noise-free image in the same contrast.
    classmap : (H, W) uint8 per-pixel truth, 0 = defect-free, i = ``CLASS_NAMES[i - 1]``.
    objects : pandas.DataFrame, one row per defect: class, class_id, row, col (px; for an
        extended region the centroid of the region), area_px.
    positions : (N, 2) float64 (row, col) of every visible atom column (host and dopant
        columns and interstitials).
    kinds : (N,) int, the lattice simulator's kind of each column.
    extended : (H, W) bool, the planted extended regions.
    params : scene, lattice, spacing (px), rotation (rad), dose, contrast, disc radius (px), seed.
    amplitude : (N,) peak height of each column in ``positions`` (clean image units; host
        columns ≈ their sublattice's relative intensity, dopants scaled by their factor).
    """

    image: np.ndarray
    clean: np.ndarray
    classmap: np.ndarray
    objects: object
    positions: np.ndarray
    kinds: np.ndarray
    extended: np.ndarray
    params: dict = field(default_factory=dict)
    amplitude: np.ndarray | None = None


def _boundary_band(shape, seed, half_width: float) -> np.ndarray:
    """Pixels within ``half_width`` of the interface line drawn by ``simulate_lattice``.

    simulate_lattice draws the interface normal and centre first when scene, lattice, spacing,
    rotation and dose are all given, so the same generator reproduces them exactly.
    """
    h, w = shape
    rng = np.random.default_rng(seed)
    ang = rng.uniform(0, np.pi)
    n = np.array([np.sin(ang), np.cos(ang)])
    c0 = np.array([h, w]) * rng.uniform(0.3, 0.7, 2)
    yy, xx = np.mgrid[0:h, 0:w]
    return np.abs((yy - c0[0]) * n[0] + (xx - c0[1]) * n[1]) < half_width


def _discs(shape, centres: np.ndarray, radius: float) -> np.ndarray:
    """Index (into ``centres``) + 1 of the disc covering each pixel, 0 where none; (H, W) int."""
    h, w = shape
    out = np.zeros(shape, np.int32)
    r = int(np.ceil(radius))
    offs = np.arange(-r, r + 1)
    for i, (y, x) in enumerate(np.asarray(centres, float).reshape(-1, 2)):
        rows, cols = np.rint(y).astype(int) + offs, np.rint(x).astype(int) + offs
        inside = ((rows[:, None] - y) ** 2 + (cols[None, :] - x) ** 2) <= radius**2
        ok = inside & ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
        rr, cc = np.nonzero(ok)
        out[rows[rr], cols[cc]] = i + 1
    return out


def column_contrast(
    positions: np.ndarray, kinds: np.ndarray, amplitude: np.ndarray
) -> tuple[np.ndarray, float]:
    """Each column's peak height over the median of nearby host columns of its own sublattice.

    The same-sublattice neighbours are the host columns 1.2–2.1 local spacings away (the local
    spacing is the median nearest-column distance of the 12 nearest columns): for every lattice
    of ``synth.lattice`` these are lattice translations of the column (second and third
    neighbours), never the other perovskite sublattice (first neighbours, 1 spacing).

    Returns
    -------
    contrast : (N,) float, NaN for interstitials and where fewer than 3 such hosts exist.
    sigma : float, robust spread (1.4826 × MAD) of the host columns' own contrast: the natural
        column-to-column intensity variation of the crystal.
    """
    from scipy.spatial import cKDTree

    n = len(positions)
    out = np.full(n, np.nan)
    if n < 4:
        return out, float("nan")
    tree = cKDTree(positions)
    d, idx = tree.query(positions, k=min(13, n))
    nn = d[:, 1]
    local = np.median(nn[idx[:, 1:]], axis=1)
    host = kinds == HOST
    for i in np.nonzero(kinds != INTERSTITIAL)[0]:
        near = np.array(tree.query_ball_point(positions[i], 2.1 * local[i]), int)
        dist = np.hypot(*(positions[near] - positions[i]).T)
        near = near[host[near] & (dist > 1.2 * local[i])]
        if len(near) >= 3:
            out[i] = amplitude[i] / np.median(amplitude[near])
    ref = out[host & np.isfinite(out)]
    sigma = (
        1.4826 * float(np.median(np.abs(ref - np.median(ref)))) if len(ref) >= 10 else float("nan")
    )
    return out, sigma


def _abf(clean: np.ndarray, dose: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """ABF-like rendering: a bright field of level ``L`` with the columns as dark dips."""
    level = float(clean.max()) * rng.uniform(1.1, 1.6) + rng.uniform(0.1, 0.5)
    dark = (level - clean).astype(np.float32)
    if not np.isfinite(dose):
        return dark, dark.copy()
    noisy = add_noise(dark, dose, rng, rng.uniform(0, 2)) / dose
    return dark, noisy.astype(np.float32)


def simulate_defects(
    shape=(256, 256),
    *,
    seed: int,
    dose: float | None = None,
    scene: str | None = None,
    lattice: str | None = None,
    spacing: float | None = None,
    rotation: float | None = None,
    contrast: str | None = None,
    distort: bool = True,
    disc: float = 0.35,
    p_dark: float = 0.2,
) -> DefectSample:
    """Simulate one crystal image with vacancies, dopants, interstitials and extended regions.

    Parameters
    ----------
    shape : (H, W) in pixels.
    seed : int
        Everything random (scene, lattice, defects, noise) follows from it.
    dose : float, optional
        Counts at the peak of a unit-height column (log-uniform 8–5000 if None; ``np.inf``
        for no noise).
    scene : {'crystal', 'interface'}, optional
        A single crystal, or a grain boundary between two rotated crystals (random if None).
    lattice : one of ``synth.lattice.LATTICES`` or ``EXTRA_LATTICES``, optional
        The crystal (random from ``LATTICES`` if None).
    spacing : float, optional
        Nearest-neighbour column distance in px (log-uniform 6–24 if None).
    rotation : float, optional
        Lattice rotation in radians.
    contrast : {'bright', 'dark'}, optional
        HAADF-like bright columns or ABF-like dark columns (dark with probability ``p_dark``).
    disc : float
        Radius of a point defect's truth disc, as a fraction of ``spacing``.

    Returns
    -------
    DefectSample
    """
    import pandas as pd

    if len(shape) != 2 or min(shape) < 16:
        raise ValueError(f"shape must be (height, width) of at least 16×16 pixels, not {shape}.")
    rng = np.random.default_rng([int(seed), 7_373])  # our own draws, independent of the lattice's
    scene = scene or str(rng.choice(SCENES, p=[0.6, 0.4]))
    if scene not in SCENES:
        raise ValueError(f"Unknown scene {scene!r}; choose one of {', '.join(SCENES)}.")
    lattice = lattice or str(rng.choice(LATTICES))
    spacing = float(spacing if spacing is not None else np.exp(rng.uniform(np.log(6), np.log(24))))
    rotation = float(rotation if rotation is not None else rng.uniform(0, np.pi))
    dose = float(dose if dose is not None else np.exp(rng.uniform(np.log(8), np.log(5000))))
    contrast = contrast or ("dark" if rng.uniform() < p_dark else "bright")
    if contrast not in ("bright", "dark"):
        raise ValueError("contrast must be 'bright' (HAADF-like) or 'dark' (ABF-like).")
    s = simulate_lattice(
        shape,
        scene=scene,
        lattice=lattice,
        spacing=spacing,
        rotation=rotation,
        dose=np.inf if contrast == "dark" else dose,
        distort=distort,
        seed=seed,
    )
    image, clean = s.image, s.clean
    if contrast == "dark":
        clean, image = _abf(s.clean, dose, rng)
    extended = s.amorphous.copy()
    if scene == "interface":
        extended |= _boundary_band(shape, seed, max(0.75 * spacing, 3.0))
    radius = max(disc * spacing, 1.5)
    h, w = shape
    site_list, name_list = [s.vacancies.reshape(-1, 2)], ["vacancy"] * len(s.vacancies)
    for kind, name in KIND_TO_CLASS.items():
        sel = s.kinds == kind
        site_list.append(s.positions[sel])
        name_list += [name] * int(sel.sum())
    sites = np.vstack(site_list)
    names = np.array(name_list, dtype=object)
    if len(sites):
        ip = np.clip(np.rint(sites).astype(int), 0, [h - 1, w - 1])
        keep = ~extended[ip[:, 0], ip[:, 1]]
        sites, names = sites[keep], names[keep]
    owner = _discs(shape, sites, radius)
    classmap = np.zeros(shape, np.uint8)
    classmap[extended] = class_id("extended")
    ids = np.array([class_id(n) for n in names], np.uint8)
    classmap[owner > 0] = ids[owner[owner > 0] - 1]
    rows = [
        {
            "class": n,
            "class_id": class_id(n),
            "row": float(p[0]),
            "col": float(p[1]),
            "area_px": int((owner == i + 1).sum()),
        }
        for i, (n, p) in enumerate(zip(names, sites, strict=True))
    ]
    from scipy import ndimage as ndi

    regions, n_reg = ndi.label(classmap == class_id("extended"))
    for lab in range(1, n_reg + 1):
        rr, cc = np.nonzero(regions == lab)
        rows.append(
            {
                "class": "extended",
                "class_id": class_id("extended"),
                "row": float(rr.mean()),
                "col": float(cc.mean()),
                "area_px": int(len(rr)),
            }
        )
    objects = pd.DataFrame(rows, columns=["class", "class_id", "row", "col", "area_px"])
    params = dict(
        s.params,
        scene=scene,
        contrast=contrast,
        disc_radius_px=radius,
        seed=int(seed),
        class_names=list(CLASS_NAMES),
    )
    return DefectSample(
        image=image.astype(np.float32),
        clean=clean.astype(np.float32),
        classmap=classmap,
        objects=objects,
        positions=s.positions,
        kinds=s.kinds,
        extended=extended,
        params=params,
        amplitude=s.amplitude,
    )
