"""The PCA embedding of structure patches, shared by the DKL surrogate and the initial design.

``pca`` (a baseline feature map) is this embedding fixed; ``pca_mlp`` starts from it
(:class:`~napari_microml.dkl.networks.PCAResidual`). The networks themselves live in
:mod:`napari_microml.dkl.networks`.
"""

from __future__ import annotations

import numpy as np


def pca_features(patches: np.ndarray, dim: int, seed: int = 0) -> np.ndarray:
    """First ``dim`` principal-component scores of flattened patches, unit variance.

    Parameters
    ----------
    patches : (N, p, p) array
        The patches (any trailing shape; flattened).
    dim : int
        Number of components kept.
    seed : int
        Seeds the subset of 5000 patches the components are computed on (when N > 5000).

    Returns
    -------
    (N, dim) float32 array
        Whitened scores: unit standard deviation per component.
    """
    x = patches.reshape(len(patches), -1).astype(np.float64)
    x = x - x.mean(0)
    rng = np.random.default_rng(seed)
    sub = x if len(x) <= 5000 else x[rng.choice(len(x), 5000, replace=False)]
    _, _, vt = np.linalg.svd(sub, full_matrices=False)
    z = x @ vt[:dim].T
    z /= z.std(0, keepdims=True) + 1e-12
    return z.astype(np.float32)
