"""Classical defect baseline: a lattice-site model on top of the atom finder.

1. Columns and their intensities from :func:`napari_microml.find_atoms`.
2. Lattice translations: modes of the neighbour-displacement histogram that (almost) every
   column shares; columns that do not fit are re-fitted as a second grain.
3. Vacancy: a lattice site (column + translation) that at least two columns predict and where no
   column was found. Dopant: column intensity, relative to the median of its same-sublattice
   neighbours (column + 2 × translation), is a robust z-score outlier (bright or dim).
   Interstitial: an isolated column that fits neither lattice. Extended: clusters of columns
   that fit neither lattice, and the band where the two grains meet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from napari_microml.defects.classes import class_id


@dataclass
class BaselineResult:
    """objects: DataFrame (class, class_id, row, col); classmap (H, W) uint8; atoms (N, 2);
    translations: list of (k, 2) arrays, one per grain; spacing: median column distance (px)."""

    objects: object
    classmap: np.ndarray
    atoms: np.ndarray
    translations: list
    spacing: float


def _modes(atoms: np.ndarray, tree: cKDTree, d0: float, min_support: float = 0.7) -> np.ndarray:
    """Displacement vectors (k, 2) shared by at least ``min_support`` of the columns."""
    if len(atoms) < 8:
        return np.zeros((0, 2))
    local = cKDTree(atoms)
    pairs = local.query_pairs(2.2 * d0, output_type="ndarray")
    disp = atoms[pairs[:, 1]] - atoms[pairs[:, 0]]
    disp = np.vstack([disp, -disp])
    disp = disp[np.hypot(*disp.T) > 0.5 * d0]
    if len(disp) == 0:
        return np.zeros((0, 2))
    b = 0.1 * d0
    edges = np.arange(-2.3 * d0, 2.3 * d0 + b, b)
    hist, _, _ = np.histogram2d(disp[:, 0], disp[:, 1], bins=[edges, edges])
    hist = ndi.gaussian_filter(hist, 1.0)
    peaks = (hist == ndi.maximum_filter(hist, size=5)) & (hist > 0.02 * len(atoms))
    centres = edges[:-1] + b / 2
    found = []
    for i, j in zip(*np.nonzero(peaks), strict=True):
        guess = np.array([centres[i], centres[j]])
        near = disp[np.hypot(*(disp - guess).T) < 0.3 * d0]
        if len(near):
            found.append(near.mean(0))
    modes = np.array(found).reshape(-1, 2)
    keep = [m for m in modes if _support(atoms, m[None], tree, d0)[0].mean() >= min_support]
    return np.array(keep).reshape(-1, 2)


def _support(atoms, modes, tree, d0, shape=None):
    """(N,) fraction of in-image translations that land on a column, and (N,) in-image counts."""
    hits = np.zeros(len(atoms))
    valid = np.zeros(len(atoms))
    for t in modes:
        target = atoms + t
        inside = (
            np.ones(len(atoms), bool)
            if shape is None
            else (
                (target >= 0.5 * d0).all(1)
                & (target[:, 0] < shape[0] - 0.5 * d0)
                & (target[:, 1] < shape[1] - 0.5 * d0)
            )
        )
        dist = tree.query(target)[0]
        hits += inside & (dist < 0.3 * d0)
        valid += inside
    return hits / np.maximum(valid, 1), valid


def baseline_defects(
    image, *, contrast: str = "bright", atoms=None, intensities=None, z: float = 3.5, device="auto"
) -> BaselineResult:
    """Classical lattice-site defect detection on a 2D image (see the module docstring).

    Parameters
    ----------
    image : (H, W) array.
    contrast : {'bright', 'dark'} — 'dark' for ABF (inverted first).
    atoms, intensities : optional (N, 2) columns and (N,) peak heights; found with
        ``find_atoms`` when None.
    z : robust z-score beyond which a column is called a dopant.
    """
    import pandas as pd

    from napari_microml.atoms.choose import LATTICE_MODEL
    from napari_microml.atoms.finder import find_atoms

    img = np.asarray(image, np.float32)
    if img.ndim != 2:
        raise ValueError("The baseline works on one 2D image at a time.")
    if atoms is None:
        r = find_atoms(
            img, contrast=contrast, model=LATTICE_MODEL, device=device, refine="gaussian"
        )
        atoms, intensities = r.positions, r.features["intensity"].to_numpy(float)
    atoms = np.asarray(atoms, float).reshape(-1, 2)
    shape = img.shape
    rows: list[tuple] = []
    if len(atoms) < 8:
        return BaselineResult(
            pd.DataFrame(rows, columns=["class", "class_id", "row", "col"]),
            np.zeros(shape, np.uint8),
            atoms,
            [],
            float("nan"),
        )
    tree = cKDTree(atoms)
    d0 = float(np.median(tree.query(atoms, k=2)[0][:, 1]))
    grains, support, unfit = [], np.zeros(len(atoms)), np.ones(len(atoms), bool)
    grain_of = np.full(len(atoms), -1)
    for g in range(2):  # a second grain from the columns the first lattice does not explain
        if unfit.sum() < max(12, 0.1 * len(atoms)):
            break
        modes = _modes(atoms[unfit], tree, d0)
        if len(modes) < 2:
            break
        s, _ = _support(atoms, modes, tree, d0, shape)
        better = unfit & (s > support)
        grain_of[better], support[better] = g, s[better]
        grains.append(modes)
        unfit = support < 0.5
    # vacancies: empty predicted sites backed by at least two columns
    cand_list, who_list = [], []
    for g, modes in enumerate(grains):
        members = np.nonzero((grain_of == g) & ~unfit)[0]
        for t in modes:
            target = atoms[members] + t
            inside = (
                (target >= 0.4 * d0).all(1)
                & (target[:, 0] < shape[0] - 0.4 * d0)
                & (target[:, 1] < shape[1] - 0.4 * d0)
            )
            empty = inside & (tree.query(target)[0] > 0.45 * d0)
            cand_list.append(target[empty])
            who_list.append(members[empty])
    cand = np.vstack(cand_list) if cand_list else np.zeros((0, 2))
    who = np.concatenate(who_list) if who_list else np.zeros(0, int)
    if len(cand):
        pairs = cKDTree(cand).query_pairs(0.4 * d0, output_type="ndarray")
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        adj = coo_matrix(
            (np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(cand), len(cand))
        )
        n, lab = connected_components(adj, directed=False)
        for k in range(n):
            sel = lab == k
            if len(np.unique(who[sel])) >= 2:
                rows.append(("vacancy", *cand[sel].mean(0)))
    # dopants: intensity relative to same-sublattice neighbours (column + 2 t)
    if intensities is not None:
        inten = np.asarray(intensities, float)
        ref = np.full(len(atoms), np.nan)
        for g, modes in enumerate(grains):
            members = np.nonzero(grain_of == g)[0]
            vals = []
            for t in modes:
                d, j = tree.query(atoms[members] + 2 * t)
                vals.append(np.where(d < 0.3 * d0, inten[np.minimum(j, len(atoms) - 1)], np.nan))
            if vals:
                with np.errstate(all="ignore"):
                    import warnings

                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)
                        ref[members] = np.nanmedian(np.column_stack(vals), axis=1)
        rel = inten / ref - 1
        ok = np.isfinite(rel) & ~unfit
        if ok.sum() > 8:
            med = np.median(rel[ok])
            mad = 1.4826 * np.median(np.abs(rel[ok] - med)) + 1e-9
            zs = (rel - med) / mad
            for i in np.nonzero(ok & (zs > z))[0]:
                rows.append(("dopant_bright", *atoms[i]))
            for i in np.nonzero(ok & (zs < -z))[0]:
                rows.append(("dopant_dim", *atoms[i]))
    # interstitials (isolated misfits) and extended regions (clusters of misfits, grain boundary)
    extended = np.zeros(shape, bool)
    mis = np.nonzero(unfit)[0]
    if len(mis):
        near = cKDTree(atoms[mis]).query(atoms[mis], k=min(3, len(mis)))[0]
        clustered = (
            (near[:, -1] < 1.5 * d0)
            if near.ndim == 2 and near.shape[1] >= 3
            else np.zeros(len(mis), bool)
        )
        nn_other = tree.query(atoms[mis], k=2)[0][:, 1]
        for i, c, dist in zip(mis, clustered, nn_other, strict=True):
            if not c and dist > 0.35 * d0:
                rows.append(("interstitial", *atoms[i]))
        pts = np.zeros(shape, bool)
        ip = np.clip(np.rint(atoms[mis[clustered]]).astype(int), 0, np.array(shape) - 1)
        pts[ip[:, 0], ip[:, 1]] = True
        extended |= ndi.distance_transform_edt(~pts) < d0
    if len(grains) == 2:
        dist = []
        for g in range(2):
            pts = np.zeros(shape, bool)
            ip = np.clip(np.rint(atoms[grain_of == g]).astype(int), 0, np.array(shape) - 1)
            pts[ip[:, 0], ip[:, 1]] = True
            dist.append(ndi.distance_transform_edt(~pts))
        extended |= (dist[0] < 1.2 * d0) & (dist[1] < 1.2 * d0)
    objects = pd.DataFrame(rows, columns=["class", "row", "col"])
    objects.insert(1, "class_id", [class_id(c) for c in objects["class"]])
    classmap = np.zeros(shape, np.uint8)
    classmap[extended] = class_id("extended")
    radius = 0.35 * d0
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    for _, r in objects.iterrows():
        y0, x0, rr = int(r["row"]), int(r["col"]), int(np.ceil(radius)) + 1
        sl = (slice(max(y0 - rr, 0), y0 + rr + 1), slice(max(x0 - rr, 0), x0 + rr + 1))
        disc = (yy[sl] - r["row"]) ** 2 + (xx[sl] - r["col"]) ** 2 <= radius**2
        classmap[sl][disc] = r["class_id"]
    lab, n = ndi.label(extended)
    for cy, cx in ndi.center_of_mass(extended, lab, range(1, n + 1)):
        objects.loc[len(objects)] = ["extended", class_id("extended"), cy, cx]
    return BaselineResult(objects, classmap, atoms, grains, d0)
