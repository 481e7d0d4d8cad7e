"""Lattice geometry from column positions: the translation vectors and the sublattices.

A vector is a lattice translation when almost every column has another column (of the same
sublattice) at that offset; vectors that join two different sites of the cell (the A→B bond
of a honeycomb) exist only from some columns. Sublattices are the connected groups of the
graph whose edges are translations; sites that geometry cannot tell apart (perovskite A and B
seen along [001] form one finer square lattice) are split when the columns' intensities
alternate like a checkerboard over that graph, and the split is then redone by geometry with
the coarser cell, so a noisy intensity never decides a single column on its own.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

TOL = 0.22  # match tolerance, fraction of the nearest-neighbour distance
# a translation is found from at least this fraction of the best vector's columns
# (a 3-row strip: 2/3; a honeycomb bond: 1/2)
MIN_SCORE = 0.6
CHECKER = 0.75  # fraction of translation edges joining bright to dim for an intensity split


def nn_distance(positions: np.ndarray, tree: cKDTree | None = None) -> float:
    """Median distance from a column to its nearest other column (px)."""
    tree = tree or cKDTree(positions)
    d, _ = tree.query(positions, k=2, workers=-1)
    return float(np.median(d[:, 1]))


def _sample(n: int, size: int, seed: int = 0) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def reduce_cell(a1: np.ndarray, a2: np.ndarray) -> np.ndarray:
    """Lagrange–Gauss reduced basis (rows, (row, col) px), oriented so a1 points nearest +x
    (the column axis) and a2 turns from a1 towards +y (the row axis)."""
    a1, a2 = np.asarray(a1, float), np.asarray(a2, float)
    for _ in range(50):
        if a2 @ a2 < a1 @ a1:
            a1, a2 = a2, a1
        m = np.round((a1 @ a2) / (a1 @ a1))
        if m == 0:
            break
        a2 = a2 - m * a1
    # a1: whichever of ±a1, ±a2 points nearest +x; a2: the other, signed so a1 × a2 > 0 in (x, y)
    cands = np.array([a1, -a1, a2, -a2])
    pick = int(np.argmax(cands[:, 1] / np.linalg.norm(cands, axis=1)))
    first, other = cands[pick], (a2 if pick < 2 else a1)
    if first[1] * other[0] - first[0] * other[1] < 0:
        other = -other
    return np.array([first, other])


def translations(
    positions: np.ndarray,
    *,
    sample: int = 2000,
    k: int = 12,
    tree: cKDTree | None = None,
    d0: float | None = None,
) -> np.ndarray:
    """The reduced primitive cell (2, 2) (rows a1, a2 in (row, col) px) of a set of columns.

    Raises ValueError when the columns do not form a 2D lattice.
    """
    n = len(positions)
    if n < 6:
        raise ValueError(f"Only {n} columns: a lattice needs at least 6 to find its cell.")
    tree = tree or cKDTree(positions)
    d0 = nn_distance(positions, tree) if d0 is None else d0
    if not d0 > 0:
        raise ValueError("Several columns sit on the same spot; remove duplicate points first.")
    tol = TOL * d0
    idx = _sample(n, sample)
    kk = min(k + 1, n)
    _, nb = tree.query(positions[idx], k=kk)
    vec = (positions[nb[:, 1:]] - positions[idx, None, :]).reshape(-1, 2)
    vt = cKDTree(vec)
    density = vt.query_ball_point(vec, tol, return_length=True)
    peaks: list[np.ndarray] = []
    free = np.ones(len(vec), bool)  # greedy: densest vector first, its neighbourhood then taken
    for j in np.argsort(-density, kind="stable"):
        if density[j] < 0.25 * len(idx) or len(peaks) >= 40:
            break
        if not free[j]:
            continue
        peaks.append(vec[vt.query_ball_point(vec[j], tol)].mean(axis=0))
        free[vt.query_ball_point(peaks[-1], 2 * tol)] = False
    if len(peaks) < 2:
        raise ValueError(
            "The points do not form a 2D lattice (no two repeated neighbour "
            "directions); check the atom positions."
        )
    pk = np.array(peaks)
    dist, _ = tree.query(positions[idx, None, :] + pk[None, :, :], k=1)
    hits = dist < tol  # (sampled columns, peaks)
    score = hits.mean(axis=0)
    good = np.flatnonzero(score >= MIN_SCORE * score.max())
    good = good[np.argsort(np.linalg.norm(pk[good], axis=1))]
    first = good[0]
    a1 = pk[first]
    for k in good[1:]:
        v = pk[k]
        # a2 repeats from the same columns as a1 (not from a second grain's)
        shared = (hits[:, k] & hits[:, first]).sum() / max(hits[:, first].sum(), 1)
        if shared >= 0.5 and abs(a1[0] * v[1] - a1[1] * v[0]) > 0.3 * np.linalg.norm(
            a1
        ) * np.linalg.norm(v):
            return reduce_cell(a1, v)
    raise ValueError("The columns repeat along one direction only; a 2D lattice is needed.")


def translation_edges(
    positions: np.ndarray, members: np.ndarray, cell: np.ndarray, *, k: int = 12
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j) of ``members`` (global indices) joined by ±a1 or ±a2 of ``cell``, and the
    axis (0: a1, 1: a2) of each.

    Neighbour vectors are matched to the nearest whole translation; a tolerance of TOL of the
    shorter cell vector keeps a few % of strain and the fringes of a dislocation."""
    pts = positions[members]
    if len(pts) < 2:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0, int)
    tree = cKDTree(pts)
    kk = min(k + 1, len(pts))
    _, nb = tree.query(pts, k=kk, workers=-1)
    nb = nb[:, 1:]
    vec = pts[nb] - pts[:, None, :]
    inv = np.linalg.inv(cell)
    frac = vec @ inv  # (n, k, 2) in units of a1, a2 (rows of cell)
    whole = np.round(frac)
    resid = np.linalg.norm((frac - whole) @ cell, axis=-1)
    tol = TOL * min(np.linalg.norm(cell, axis=1))
    unit = (np.abs(whole).sum(axis=-1) == 1) & (resid < tol)
    rows = np.broadcast_to(np.arange(len(pts))[:, None], nb.shape)[unit]
    axis = (np.abs(whole[..., 1]) == 1)[unit].astype(int)
    return members[rows], members[nb[unit]], axis


def _components(n_all: int, members: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Component id (0…) of each of ``members`` in the graph of edges (i, j)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    local = np.full(n_all, -1)
    local[members] = np.arange(len(members))
    g = coo_matrix((np.ones(len(i)), (local[i], local[j])), shape=(len(members),) * 2)
    return connected_components(g, directed=False)[1]


def relative_intensity(
    positions: np.ndarray, intensity: np.ndarray, tree: cKDTree, d0: float
) -> np.ndarray:
    """Each column's intensity over the mean of its neighbourhood (3 nearest-neighbour
    distances; a median would land on one class when two are equally common): thickness
    gradients and uneven illumination cancel, the cell's pattern stays."""
    d, nb = tree.query(positions, k=min(25, len(positions)), workers=-1)
    near = np.where(d <= 3.0 * d0, intensity[nb], np.nan)
    med = np.nanmean(near, axis=1)
    scale = np.where(np.abs(med) > 1e-12, np.abs(med), 1.0)
    return (intensity - med) / scale


def _otsu(values: np.ndarray) -> float:
    v = np.sort(values)
    n = len(v)
    c = np.cumsum(v)
    k = np.arange(1, n)
    m1, m2 = c[:-1] / k, (c[-1] - c[:-1]) / (n - k)
    between = k * (n - k) * (m1 - m2) ** 2
    j = int(np.argmax(between))
    return 0.5 * (v[j] + v[j + 1])


def _periodic_split(bright: np.ndarray, i: np.ndarray, j: np.ndarray, axis: np.ndarray) -> bool:
    """Whether a bright/dim labelling repeats with the lattice: along each cell vector the
    neighbours are (almost) always alike or (almost) always unlike, and unlike along at least
    one (a checkerboard, or stripes, of an index-2 superlattice). Noise or thickness gives
    neither."""
    unlike = []
    for a in (0, 1):
        sel = axis == a
        if sel.sum() < 10:
            return False
        unlike.append(float((bright[i[sel]] != bright[j[sel]]).mean()))
    return all(u >= CHECKER or u <= 1 - CHECKER for u in unlike) and max(unlike) >= CHECKER


def _split(positions, members, cell, rel, depth) -> list[tuple[np.ndarray, np.ndarray]]:
    """Groups (members, cell) of one geometric site, split further by intensity when it
    repeats over the translation graph (each split halves the symmetry: A/B of a perovskite)."""
    if rel is None or depth >= 3 or len(members) < 12:
        return [(members, cell)]
    i, j, axis = translation_edges(positions, members, cell)
    if len(i) < 20:
        return [(members, cell)]
    bright = rel > _otsu(rel[members])
    frac = float(bright[members].mean())
    if not 0.1 <= frac <= 0.9 or not _periodic_split(bright, i, j, axis):
        return [(members, cell)]
    try:
        coarse = translations(positions[members[bright[members]]])
    except ValueError:
        return [(members, cell)]
    if abs(np.linalg.det(coarse)) < 1.5 * abs(np.linalg.det(cell)):
        return [(members, cell)]
    groups = _sites(positions, members, coarse)
    if len(groups) < 2:
        return [(members, cell)]
    out = []
    for g in groups:
        out += _split(positions, g, coarse, rel, depth + 1)
    return out


def _sites(
    positions: np.ndarray, members: np.ndarray, cell: np.ndarray, share: float = 0.08
) -> list[np.ndarray]:
    """The sites of ``members`` on the lattice ``cell``, largest first.

    Connected pieces of the translation graph whose columns sit at the same fractional offset
    from the largest piece are one site (rows of a site that only repeats along one cell vector,
    such as the O columns of SrTiO3 seen along [110], come as separate chains); sites holding
    less than ``share`` of the columns, and lone columns (no neighbour at a translation), are
    left for ``_adopt``."""
    i, j, _ = translation_edges(positions, members, cell)
    comp = _components(len(positions), members, i, j)
    ids, counts = np.unique(comp, return_counts=True)
    main = members[comp == ids[np.argmax(counts)]]
    dist, near = cKDTree(positions[main]).query(positions[members], k=1)
    frac = (positions[members] - positions[main[near]]) @ np.linalg.inv(cell)
    frac -= np.round(frac)  # offset within the cell, −½…½
    tol = TOL * min(np.linalg.norm(cell, axis=1))
    offsets: list[np.ndarray] = []  # one per site, in cell fractions
    site_of = np.empty(len(ids), int)
    for q, c in enumerate(ids):
        off = np.median(frac[comp == c], axis=0)
        for s, o in enumerate(offsets):
            d = off - o
            if np.linalg.norm((d - np.round(d)) @ cell) < tol:
                site_of[q] = s
                break
        else:
            offsets.append(off)
            site_of[q] = len(offsets) - 1
    site = site_of[np.searchsorted(ids, comp)]
    site[counts[np.searchsorted(ids, comp)] < 2] = -1
    sizes = np.bincount(site[site >= 0], minlength=len(offsets))
    big = [s for s in np.argsort(-sizes, kind="stable") if sizes[s] >= max(3, share * len(members))]
    return [members[site == s] for s in big]


def _adopt(positions, labels, cell, tree, rounds: int = 4) -> np.ndarray:
    """Give each unlabelled column the sublattice of a labelled neighbour that it differs from
    by a whole lattice translation (columns of one sublattice differ only by those)."""
    inv = np.linalg.inv(cell)
    tol = TOL * min(np.linalg.norm(cell, axis=1))
    kk = min(13, len(positions))
    _, nb = tree.query(positions, k=kk, workers=-1)
    for _ in range(rounds):
        todo = np.flatnonzero(labels < 0)
        if len(todo) == 0:
            break
        vec = positions[todo, None, :] - positions[nb[todo]]
        frac = vec @ inv
        resid = np.linalg.norm((frac - np.round(frac)) @ cell, axis=-1)
        lab = labels[nb[todo]]
        resid = np.where(lab >= 0, resid, np.inf)
        best = np.argmin(resid, axis=1)
        ok = resid[np.arange(len(todo)), best] < tol
        labels[todo[ok]] = lab[np.arange(len(todo)), best][ok]
    return labels


def assign_sublattices(
    positions: np.ndarray,
    intensity: np.ndarray | None = None,
    *,
    tree: cKDTree | None = None,
    d0: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sublattice labels (N,) and the primitive cell (2, 2) of sublattice 0.

    0 is the brightest sublattice when ``intensity`` is given, else the largest (ties: the
    site first along the cell's a1, a2). Columns that no rule can place (a second grain, an
    isolated column) take the nearest intensity class, or without intensities the sublattice
    of the nearest placed column."""
    n = len(positions)
    tree = tree or cKDTree(positions)
    d0 = nn_distance(positions, tree) if d0 is None else d0
    fine = translations(positions, tree=tree, d0=d0)
    sites = _sites(positions, np.arange(n), fine)
    rel = (
        None
        if intensity is None
        else relative_intensity(positions, np.asarray(intensity, float), tree, d0)
    )
    groups = []
    for s in sites:
        groups += _split(positions, s, fine, rel, 0)
    key: list[tuple[float, ...]]
    if rel is not None:
        key = [(-float(np.mean(rel[g])),) for g, _ in groups]
    else:
        origin = positions.min(axis=0)
        key = [
            (-len(g), *np.round(np.mod((positions[g] - origin) @ np.linalg.inv(c), 1).mean(0), 2))
            for g, c in groups
        ]
    order = sorted(range(len(groups)), key=lambda q: key[q])
    labels = np.full(n, -1)
    for new, q in enumerate(order):
        labels[groups[q][0]] = new
    cell = groups[order[0]][1]
    labels = _adopt(positions, labels, cell, tree)
    left = labels < 0
    if left.any() and rel is not None and len(groups) > 1:
        means = np.array([np.mean(rel[labels == s]) for s in range(len(groups))])
        labels[left] = np.argmin(np.abs(rel[left, None] - means[None, :]), axis=1)
    elif left.any():  # no intensities: the sublattice of the nearest placed column
        placed = np.flatnonzero(~left)
        labels[left] = labels[placed[cKDTree(positions[placed]).query(positions[left], k=1)[1]]]
    if len(groups) > 1:  # every sublattice repeats with the crystal's cell: that of sublattice 0
        cell = translations(positions[labels == 0])
    return labels, cell
