"""Per-column values → interpolated maps, line profiles and region masks (Qt-free)."""

from __future__ import annotations

import numpy as np


def interpolated_maps(positions: np.ndarray, values: dict, shape, step: int = 1) -> dict:
    """Linear interpolation of each (N,) array in ``values`` over the (H, W) image, sampled every
    ``step`` px (pixel (i, j) of a map is image pixel (i·step, j·step)); NaN outside the columns'
    convex hull and where a column's value is undefined. Barycentric weights on a Delaunay
    triangulation, in NumPy (scipy's LinearNDInterpolator takes ~1.5 s for 30,000 grid points
    here, holding the GUI thread's lock); one triangulation per set of defined columns."""
    from scipy.spatial import Delaunay

    h, w = shape
    rows, cols = np.arange(0, h, step), np.arange(0, w, step)
    grid = np.stack(np.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2).astype(float)
    out, cache = {}, {}
    for name, v in values.items():
        v = np.asarray(v, float)
        ok = np.isfinite(v)
        result = np.full(len(grid), np.nan)
        if ok.sum() >= 3:
            key = ok.tobytes()
            if key not in cache:
                tri = Delaunay(positions[ok])
                simplex = tri.find_simplex(grid)
                inside = simplex >= 0
                t = tri.transform[simplex[inside]]
                b = np.einsum("nij,nj->ni", t[:, :2], grid[inside] - t[:, 2])
                weights = np.column_stack([b, 1 - b.sum(1)])
                cache[key] = (inside, tri.simplices[simplex[inside]], weights)
            inside, vertices, weights = cache[key]
            result[inside] = (v[ok][vertices] * weights).sum(1)
        out[name] = result.reshape(len(rows), len(cols)).astype(np.float32)
    return out


def inside(points: np.ndarray, polygons: list) -> np.ndarray:
    """(N,) bool: which (row, col) points lie inside any of the (M, 2) polygons."""
    from matplotlib.path import Path

    mask = np.zeros(len(points), bool)
    for poly in polygons:
        mask |= Path(np.asarray(poly, float)[:, :2]).contains_points(points)
    return mask


def profile(positions: np.ndarray, values: np.ndarray, line: np.ndarray, width: float):
    """Values of the columns within ``width``/2 px of the polyline ``line`` (K, 2) (row, col):
    (distance along the line (px), value), sorted by distance."""
    line = np.asarray(line, float)[:, :2]
    best_d = np.full(len(positions), np.inf)
    along = np.zeros(len(positions))
    start = 0.0
    for a, b in zip(line[:-1], line[1:], strict=True):
        seg = b - a
        length = float(np.hypot(*seg))
        if length == 0:
            continue
        t = np.clip((positions - a) @ seg / length**2, 0, 1)
        d = np.hypot(*(positions - (a + t[:, None] * seg)).T)
        closer = d < best_d
        best_d[closer] = d[closer]
        along[closer] = start + t[closer] * length
        start += length
    keep = (best_d <= width / 2) & np.isfinite(values)
    order = np.argsort(along[keep])
    return along[keep][order], np.asarray(values)[keep][order]
