"""Point defects belong to a lattice: drop vacancy / dopant / interstitial calls far from columns.

The defect network was trained on crystals. On a nanoparticle or single-atom frame it also calls
"vacancies" and dopants in the vacuum or on the amorphous support (about 60 % of its point calls
on simulated particle frames). A missing or substituted column has its neighbours about one
lattice spacing away, at an image border or a grain boundary too; a call in vacuum is farther.
So a point defect is kept only when the nearest atom column (found by the atom finder, or given
by the user) lies within ``MAX_SPACINGS`` local spacings, the local spacing being the median
nearest-neighbour distance of the 12 columns nearest the defect. Extended regions are not judged.
"""

from __future__ import annotations

import numpy as np

MAX_SPACINGS = 1.5  # a missing or substituted column has neighbours about 1 spacing away


def near_lattice(
    centres: np.ndarray, columns: np.ndarray, max_spacings: float = MAX_SPACINGS
) -> np.ndarray:
    """(N,) bool: is the nearest of ``columns`` (M, 2) within ``max_spacings`` local spacings
    of each of ``centres`` (N, 2)? All False when fewer than 3 columns exist (no lattice)."""
    from scipy.spatial import cKDTree

    c = np.asarray(centres, float).reshape(-1, 2)
    cols = np.asarray(columns, float).reshape(-1, 2)
    if len(cols) < 3 or not len(c):
        return np.zeros(len(c), bool)
    tree = cKDTree(cols)
    nearest_neighbour = tree.query(cols, k=2)[0][:, 1]
    _, idx = tree.query(c, k=min(12, len(cols)))  # k >= 3: idx is (N, k)
    local = np.median(nearest_neighbour[idx], axis=1)
    return tree.query(c)[0] <= max_spacings * local
