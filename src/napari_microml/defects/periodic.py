"""An interstitial is an exception to the lattice: its site must differ from the same site in the
neighbouring unit cells.

The defect network calls an 'interstitial' wherever it sees intensity between the columns it
expects. Real crystals often have intensity there in EVERY cell: a light column (O, N), a
dumbbell partner, the probe's tail. At some sampling the network reads that faint, periodic
feature as interstitials scattered over a perfect crystal. A true interstitial is an atom at a
site that is empty in the other cells. So each interstitial call is compared with its
lattice-equivalent sites: the call's offset from an anchor column (a near column not at the call
itself) is added to the neighbouring columns, and the image's background-free height
(:func:`napari_microml.defects.columns.height_map`) at the call is compared with the heights at
those sites, in units of their own robust spread (noise and cell-to-cell variation together).
Calls that do not stand out (``Z_MIN``) are dropped. Everything is in units of the measured
column spacing and the image's own spread, so no instrument, dose or sampling is assumed.
"""

from __future__ import annotations

import numpy as np

# constants chosen on validation seeds and judged on fresh ones (how: notes/s20/D.md)
Z_MIN = 3.0  # an interstitial's height must stand this many spreads above its equivalent sites
REFERENCES = 24  # neighbouring columns whose equivalent sites are read (a local reference)
MIN_REFERENCES = 8  # fewer usable sites: the call is not judged (kept)
ANCHOR_MIN = 0.25  # spacings: a nearer column is the one the call sits on
ANCHORS = 3  # nearest columns tried as anchors (one may be the interstitial, its centroid off it)
OFF_COLUMN = 0.75  # an equivalent site closer than this × the offset to a column is no such site
TRANSLATES = 48  # nearest columns tried as lattice translations of the column a call sits on
NEIGHBOURHOOD = 6  # a translation carries at least TRANSLATION of these neighbours onto columns
TRANSLATION = 2 / 3
SAME_SITE = 0.25  # spacings: how close a carried column must land to a column


def _height_z(field: np.ndarray, at: np.ndarray, ref: np.ndarray) -> float:
    """``field`` at ``at`` over its values at ``ref``, in their robust spreads (NaN if too few)."""
    from scipy import ndimage as ndi

    if len(ref) < MIN_REFERENCES:
        return np.nan
    vals = ndi.map_coordinates(field, np.asarray(ref, float).T, order=1, mode="nearest")
    here = float(ndi.map_coordinates(field, np.asarray(at, float).reshape(2, 1), order=1)[0])
    med = float(np.median(vals))
    return (here - med) / max(1.4826 * float(np.median(np.abs(vals - med))), 1e-12)


def _inside(p: np.ndarray, shape) -> np.ndarray:
    return (
        (p[..., 0] >= 0)
        & (p[..., 0] <= shape[0] - 1)
        & (p[..., 1] >= 0)
        & (p[..., 1] <= shape[1] - 1)
    )


def site_excess(
    image: np.ndarray, sites: np.ndarray, columns: np.ndarray, spacing: float
) -> np.ndarray:
    """How far each site's height stands above the same site in the neighbouring unit cells.

    Parameters
    ----------
    image : (H, W) float image with bright columns (what the network saw).
    sites : (M, 2) positions (row, col) in px, between the columns.
    columns : (N, 2) atom columns (row, col) in px.
    spacing : float
        Typical nearest-column distance in px.

    Returns
    -------
    (M,) float: ``(height - median of the equivalent sites) / their robust spread`` (1.4826 ×
    MAD). The equivalent sites are the site's offset from an anchor column added to the
    anchor's ``REFERENCES`` nearest columns, those landing on a column (another sublattice)
    left out; the largest value over the ``ANCHORS`` nearest columns at least ``ANCHOR_MIN``
    spacing away (one may be the interstitial itself, found by the atom finder, with the call's
    centroid off it). NaN where no anchor has ``MIN_REFERENCES`` such sites in the image.
    """
    from scipy.spatial import cKDTree

    from napari_microml.defects.columns import height_map

    cols = np.asarray(columns, float).reshape(-1, 2)
    pts = np.asarray(sites, float).reshape(-1, 2)
    z = np.full(len(pts), np.nan)
    if len(cols) < MIN_REFERENCES + 1 or not len(pts):
        return z
    field = height_map(image, spacing)  # at the centroid: a wider peak search climbs the columns
    tree = cKDTree(cols)
    d, idx = tree.query(pts, k=min(8, len(cols)))
    for i in range(len(pts)):
        for anchor in idx[i][d[i] >= ANCHOR_MIN * spacing][:ANCHORS]:
            offset = pts[i] - cols[anchor]
            near = tree.query(cols[anchor], k=min(REFERENCES + 1, len(cols)))[1][1:]
            ref = cols[near] + offset  # the call's site in the other cells
            clear = tree.query(ref)[0] >= OFF_COLUMN * np.hypot(*offset)
            z[i] = np.fmax(z[i], _height_z(field, pts[i], ref[_inside(ref, image.shape) & clear]))
    return z


def column_translations(columns: np.ndarray, index: int, spacing: float) -> np.ndarray:
    """The lattice translations of one column: vectors to nearby columns with its surroundings.

    Parameters
    ----------
    columns : (N, 2) atom columns (row, col) in px.
    index : int
        The column.
    spacing : float
        Typical nearest-column distance in px.

    Returns
    -------
    (K, 2) float: vectors ``t`` to its ``TRANSLATES`` nearest columns that carry at least
    ``TRANSLATION`` of its ``NEIGHBOURHOOD`` nearest neighbours onto columns (within
    ``SAME_SITE`` spacing; neighbours carried outside the frame are not counted). A column of
    the lattice has many; an extra atom between the columns has almost none.
    """
    from scipy.spatial import cKDTree

    cols = np.asarray(columns, float).reshape(-1, 2)
    tree = cKDTree(cols)
    lo, hi = cols.min(axis=0), cols.max(axis=0)
    near = tree.query(cols[index], k=min(TRANSLATES + 1, len(cols)))[1][1:]
    shift = cols[near] - cols[index]
    hood = cols[near[:NEIGHBOURHOOD]]
    moved = hood[None, :, :] + shift[:, None, :]
    seen = np.all((moved >= lo) & (moved <= hi), axis=-1)
    hit = (tree.query(moved.reshape(-1, 2))[0] <= SAME_SITE * spacing).reshape(seen.shape)
    return shift[((hit & seen).sum(1) >= TRANSLATION * seen.sum(1)) & (seen.sum(1) >= 3)]


def column_excess(
    image: np.ndarray, columns: np.ndarray, which: np.ndarray, spacing: float
) -> np.ndarray:
    """How far each chosen column's height stands above its translated copies.

    Parameters
    ----------
    image : (H, W) float image with bright columns.
    columns : (N, 2) atom columns (row, col) in px.
    which : (M,) int indices of the columns to judge.
    spacing : float
        Typical nearest-column distance in px.

    Returns
    -------
    (M,) float: the column's background-free height (:func:`height_map`) minus the median of
    its lattice translations' (:func:`column_translations`), in their robust spread; NaN where
    fewer than ``MIN_REFERENCES`` translations lie in the image (not a column of the lattice).
    """
    from napari_microml.defects.columns import height_map

    cols = np.asarray(columns, float).reshape(-1, 2)
    which = np.asarray(which, int).reshape(-1)
    z = np.full(len(which), np.nan)
    field = None
    for k, j in enumerate(which):
        ref = cols[j] + column_translations(cols, j, spacing)
        ref = ref[_inside(ref, image.shape)]
        if len(ref) >= MIN_REFERENCES:
            field = height_map(image, spacing) if field is None else field
            z[k] = _height_z(field, cols[j], ref)
    return z


def interstitial_check(
    image: np.ndarray, labels: np.ndarray, stats: dict, columns: np.ndarray, spacing: float | None
):
    """Drop the interstitial calls whose site is no brighter than the same site in the other cells.

    A call on a column of the lattice (one with ``MIN_REFERENCES`` lattice translations,
    :func:`column_translations`; e.g. a light column the network took for an extra atom) is
    compared with that column's translated copies; any other call with its equivalent sites
    (:func:`site_excess`).

    Parameters
    ----------
    image : (H, W) float image with bright columns (what the network saw).
    labels, stats : the output of :func:`napari_microml.defects.instances.instances`
        (consecutive labels; ``stats`` arrays indexed by label - 1).
    columns : (N, 2) atom columns (row, col) px, on the same grid.
    spacing : float or None
        Column spacing in px; without it nothing changes.

    Returns
    -------
    labels, stats, n_dropped
        Without the interstitials whose z is below ``Z_MIN`` (calls that cannot be judged are
        kept).
    """
    from scipy.spatial import cKDTree

    from napari_microml.defects.classes import class_id
    from napari_microml.defects.instances import keep_instances

    inter = np.flatnonzero(np.asarray(stats["class_id"]) == class_id("interstitial"))
    cols = np.asarray(columns, float).reshape(-1, 2)
    if not spacing or not np.isfinite(spacing) or not len(inter) or len(cols) <= MIN_REFERENCES:
        return labels, stats, 0
    sites = np.column_stack([stats["row"][inter], stats["col"][inter]])
    z = site_excess(image, sites, cols, spacing)
    dist, on = cKDTree(cols).query(sites)
    sits = np.flatnonzero(dist < ANCHOR_MIN * spacing)
    if len(sits):
        zc = column_excess(image, cols, on[sits], spacing)
        z[sits] = np.where(np.isfinite(zc), zc, z[sits])
    drop = inter[np.isfinite(z) & (z < Z_MIN)]
    if not len(drop):
        return labels, stats, 0
    keep = np.ones(len(stats["row"]), bool)
    keep[drop] = False
    labels, stats = keep_instances(labels, stats, keep)
    return labels, stats, len(drop)
