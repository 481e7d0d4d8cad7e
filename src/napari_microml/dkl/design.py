"""Initial designs of an active-learning campaign: where to measure before any model exists.

``"random"`` draws the first points uniformly. ``"diverse"`` spreads them over the space the
model will learn in: the image is split into as many clusters as points (k-means, started
from random pixels, on the whitened PCA scores of the structure patches plus the standardised
pixel coordinates, or on the coordinates alone for a GP on coordinates) and the available
pixel nearest each cluster centre is measured, so the kinds of local structure are
represented in proportion from the first step rather than by chance. Pixels closer to the
edge than half a patch (whose patches are mostly padding) are left out when enough others
remain.
"""

from __future__ import annotations

import warnings

import numpy as np

INITIAL_DESIGNS = ("random", "diverse")
_MAX_POINTS = 10000  # clustering subsample: the design costs < 1 s at any image size
_PCA_DIM = 8


def _cluster_inputs(image, patch_size, candidates, features):
    from napari_microml.dkl.features import pca_features
    from napari_microml.dkl.model import extract_patches

    xy = (candidates - candidates.mean(0)) / (candidates.std(0) + 1e-12)
    if features == "coords" or patch_size is None:
        return xy
    patches = extract_patches(image, patch_size, candidates)
    dim = int(min(_PCA_DIM, patches[0].size, len(patches) - 1))
    return np.column_stack([pca_features(patches, max(dim, 1)), xy])


def diverse_points(
    image,
    n: int,
    rng: np.random.Generator,
    *,
    available=None,
    patch_size: int | None = None,
    features: str = "cnn",
) -> np.ndarray:
    """``n`` flat pixel indices that cover the model's input space (see the module docstring).

    ``image`` is the normalised (H, W) structure image, ``available`` a flat boolean mask of
    pixels that may be chosen (default all), ``rng`` seeds the subsample and k-means.
    """
    from scipy.cluster.vq import kmeans2

    h, w = image.shape
    ok = np.ones(h * w, bool) if available is None else np.asarray(available, bool).ravel()
    pool = np.flatnonzero(ok)
    n = int(min(n, len(pool)))
    if patch_size is not None and features != "coords":  # border patches are mostly padding
        m = int(patch_size) // 2
        rr, cc = pool // w, pool % w
        inner = pool[(rr >= m) & (rr < h - m) & (cc >= m) & (cc < w - m)]
        if len(inner) >= 4 * n:
            pool = inner
    if n < 1:
        return np.zeros(0, int)
    if len(pool) > _MAX_POINTS:
        pool = np.sort(rng.choice(pool, _MAX_POINTS, replace=False))
    if n >= len(pool):
        return pool[:n].copy()
    coords = np.column_stack([pool // w, pool % w])
    z = _cluster_inputs(image, patch_size, coords, features).astype(np.float64)
    with warnings.catch_warnings():  # an empty cluster is fine: its centre still gets a pixel
        warnings.simplefilter("ignore")
        centres, _ = kmeans2(z, n, minit="points", rng=rng, iter=20)
    chosen: list[int] = []
    free = np.ones(len(pool), bool)
    for c in centres:  # the nearest free pixel to each centre (empty clusters included)
        d = ((z - c) ** 2).sum(1)
        d[~free] = np.inf
        k = int(np.argmin(d))
        chosen.append(int(pool[k]))
        free[k] = False
    return np.asarray(chosen, int)
