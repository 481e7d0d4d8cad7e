"""Feature maps for the DKL surrogate: patch → embedding networks and the PCA embedding.

``cnn`` (default) and ``mlp`` learn from raw patches; ``pca_mlp`` starts as the whitened PCA
projection of *all* candidate patches (known before any measurement) and is pulled back
towards it (L2-SP); ``pca`` is the fixed PCA embedding. torch is imported inside functions.
"""

from __future__ import annotations

import numpy as np


def pca_features(patches: np.ndarray, dim: int, seed: int = 0) -> np.ndarray:
    """First ``dim`` principal-component scores of flattened patches, unit variance."""
    x = patches.reshape(len(patches), -1).astype(np.float64)
    x = x - x.mean(0)
    rng = np.random.default_rng(seed)
    sub = x if len(x) <= 5000 else x[rng.choice(len(x), 5000, replace=False)]
    _, _, vt = np.linalg.svd(sub, full_matrices=False)
    z = x @ vt[:dim].T
    z /= z.std(0, keepdims=True) + 1e-12
    return z.astype(np.float32)


def make_extractor(kind: str, patch_size: int, dim: int, in_dim: int = 0):
    import torch.nn as nn

    if kind == "cnn":
        pooled = 4 if patch_size >= 8 else 2
        return nn.Sequential(
            nn.Unflatten(1, (1, patch_size, patch_size)),
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(pooled),
            nn.Flatten(),
            nn.Linear(16 * pooled * pooled, 32),
            nn.ReLU(),
            nn.Linear(32, dim),
            nn.Tanh(),
        )
    if kind == "mlp":
        n = patch_size * patch_size
        return nn.Sequential(
            nn.Linear(n, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, dim), nn.Tanh()
        )
    if kind == "pca_mlp":
        return _PCAResidual(in_dim, dim)
    return nn.Identity()


def _pca_residual_class():
    import torch
    import torch.nn as nn

    class PCAResidual(nn.Module):
        """``z = A x + MLP(x)`` on whitened PCA scores ``x``; ``A`` starts as the projection on
        the first ``dim`` components and the MLP's output layer at zero, so before any label
        the embedding *is* the unsupervised PCA embedding of all candidate patches."""

        def __init__(self, in_dim: int, dim: int):
            super().__init__()
            self.linear = nn.Linear(in_dim, dim, bias=False)
            with torch.no_grad():
                self.linear.weight.zero_()
                self.linear.weight[:, :dim].copy_(torch.eye(dim))
            self.mlp = nn.Sequential(nn.Linear(in_dim, 32), nn.Tanh(), nn.Linear(32, dim))
            with torch.no_grad():
                self.mlp[-1].weight.zero_()
                self.mlp[-1].bias.zero_()
            self.register_buffer("anchor", self.linear.weight.detach().clone())

        def forward(self, x):
            return self.linear(x) + self.mlp(x)

        def penalty(self):
            """Squared distance of the weights from the PCA start (L2-SP) + MLP weight norm."""
            pen = ((self.linear.weight - self.anchor) ** 2).sum()
            for m in self.mlp:
                if isinstance(m, nn.Linear):
                    pen = pen + (m.weight**2).sum()
            return pen

    return PCAResidual


def _PCAResidual(in_dim: int, dim: int):  # noqa: N802 - a lazily defined nn.Module class
    return _pca_residual_class()(in_dim, dim)
