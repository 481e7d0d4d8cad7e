"""Which defect model suits an image: a honeycomb with two unequally bright sublattices is a
2D dichalcogenide-like material (2H-MoS2 / WS2 / WSe2, hBN along c) and gets the
"dichalcogenide" model; everything else gets the default.

The test works on the atom columns (the atom finder's). Columns closer than ``NEIGHBOUR``
median nearest-neighbour distances are neighbours. A honeycomb is the only lattice here
whose neighbour graph has three neighbours per column (square and perovskite: 4, triangular: 6,
rectangular: 2) and splits into two sublattices with every neighbour on the other one
(a bipartite graph). Its two sublattices' median column heights
(:func:`napari_microml.defects.columns.column_heights`) then give the ratio: below
``RATIO_MAX`` the sublattices differ (a TMD's chalcogen pair is 0.15–0.9 of the metal column);
graphene's are equal.
"""

from __future__ import annotations

import numpy as np

NEIGHBOUR = 1.3  # neighbours: closer than this many median nearest-neighbour distances
MIN_COLUMNS = 30  # fewer columns: no verdict (default model)
MAX_CONFLICTS = 0.05  # at most this fraction of a piece's neighbour pairs on the same sublattice
MIN_THREEFOLD = 0.3  # at least this fraction of the inner columns with exactly 3 neighbours
RATIO_MAX = 0.85  # dim / bright sublattice height below this: unequal sublattices


def sublattice_ratio(image: np.ndarray, columns: np.ndarray) -> float | None:
    """Median height of the dimmer sublattice over the brighter one when the columns form a
    honeycomb (3 neighbours each, two sublattices); ``None`` when they do not."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    from napari_microml.defects.columns import column_heights

    cols = np.asarray(columns, float).reshape(-1, 2)
    if len(cols) < MIN_COLUMNS:
        return None
    tree = cKDTree(cols)
    spacing = float(np.median(tree.query(cols, k=2)[0][:, 1]))
    pairs = tree.query_pairs(NEIGHBOUR * spacing, output_type="ndarray")
    n = len(cols)
    degree = np.bincount(pairs.ravel(), minlength=n)
    h, w = np.asarray(image).shape[-2:]
    inner = ((cols >= 1.5 * spacing) & (cols <= np.array([h, w]) - 1 - 1.5 * spacing)).all(1)
    if inner.sum() < MIN_COLUMNS // 2 or np.mean(degree[inner] == 3) < MIN_THREEFOLD:
        return None
    # the three-fold part (a column beside a vacancy has two): a grain boundary's other
    # crystal, if it is not a honeycomb, drops out here
    part = (degree == 2) | (degree == 3)
    pairs = pairs[part[pairs[:, 0]] & part[pairs[:, 1]]]
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n)).tocsr()
    n_comp, comp = connected_components(graph, directed=False)
    side = _two_colour((graph + graph.T).tocsr(), comp)
    same = side[pairs[:, 0]] == side[pairs[:, 1]]
    conflicts = np.bincount(comp[pairs[:, 0]], weights=same, minlength=n_comp)
    edges = np.bincount(comp[pairs[:, 0]], minlength=n_comp)
    bad = np.flatnonzero(conflicts > MAX_CONFLICTS * edges)  # odd rings: not two sublattices
    heights = column_heights(image, cols, spacing)
    size = np.bincount(comp, minlength=n_comp)
    by_piece = np.argsort(comp, kind="stable")
    bounds = np.searchsorted(comp[by_piece], np.arange(n_comp + 1))
    ratios, weights = [], []
    for c in np.setdiff1d(
        np.flatnonzero(size >= 20), bad
    ):  # colours of separate pieces differ: one ratio each
        members = by_piece[bounds[c] : bounds[c + 1]]
        levels = [heights[members[side[members] == k]] for k in (0, 1)]
        if min(len(v) for v in levels) >= 10:
            a, b = (float(np.median(v)) for v in levels)
            if max(a, b) > 0:
                ratios.append(max(min(a, b), 0.0) / max(a, b))
                weights.append(sum(len(v) for v in levels))
    if not ratios:
        return None
    order = np.argsort(ratios)
    cum = np.cumsum(np.asarray(weights, float)[order])
    return float(np.asarray(ratios)[order][np.searchsorted(cum, 0.5 * cum[-1])])


def _two_colour(graph, comp: np.ndarray) -> np.ndarray:
    """0/1 per node by breadth-first parity from one start per connected piece, all pieces at
    once (one sweep per graph level, so many small pieces cost no more than one large one)."""
    n = graph.shape[0]
    indptr, indices = graph.indptr, graph.indices
    side = np.full(n, -1)
    frontier = np.unique(comp, return_index=True)[1]
    side[frontier] = 0
    while len(frontier):
        counts = indptr[frontier + 1] - indptr[frontier]
        where = np.repeat(indptr[frontier] - np.cumsum(counts) + counts, counts) + np.arange(
            counts.sum()
        )
        nbr, src = indices[where], np.repeat(frontier, counts)
        new = side[nbr] < 0
        frontier, first = np.unique(nbr[new], return_index=True)
        side[frontier] = 1 - side[src[new][first]]
    return side


def choose_model(image: np.ndarray, columns: np.ndarray) -> tuple[str, float | None]:
    """``("dichalcogenide", ratio)`` for a honeycomb of unequal sublattices, else
    ``("default", ratio or None)``."""
    ratio = sublattice_ratio(image, columns)
    return ("dichalcogenide" if ratio is not None and ratio < RATIO_MAX else "default"), ratio
