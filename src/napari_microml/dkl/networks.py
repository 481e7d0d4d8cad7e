"""The torch modules of the DKL surrogate: the deep-kernel exact GP and its feature networks.

:class:`DeepKernelGP` is an exact Gaussian process (a gpytorch ``ExactGP``, as BoTorch's
``SingleTaskGP``) whose kernel sees the output of a feature network; the network, mean,
covariance and likelihood are passed in, so each piece can be swapped on its own. This module
imports torch and gpytorch at the top: :mod:`napari_microml.dkl.model` imports it only when a
model is first fitted, so importing the DKL package stays cheap.
"""

from __future__ import annotations

import gpytorch
import torch
from torch import nn

from napari_microml.dkl.model import KERNELS

EXTRACTORS = ("cnn", "mlp", "pca_mlp", "identity")


class DeepKernelGP(gpytorch.models.ExactGP):
    """Exact GP on learned features: ``f(x) ~ GP(m(g(x)), k(g(x), g(x')))``.

    Parameters
    ----------
    train_x : torch.Tensor
        (n, d) training inputs: ``n_features`` network inputs, then any inputs that bypass
        the network (the normalised pixel coordinates of the coordinate kernel).
    train_y : torch.Tensor
        (n,) training targets, in the GP's (transformed) units.
    likelihood : gpytorch.likelihoods.GaussianLikelihood
        Observation noise model.
    feature_extractor : torch.nn.Module
        The network ``g`` mapping the first ``n_features`` inputs to the embedding.
    covar_module : gpytorch.kernels.Kernel
        Kernel on the embedding (and the bypassing inputs).
    n_features : int
        Number of leading input columns fed to ``feature_extractor``.
    mean_module : gpytorch.means.Mean, optional
        Prior mean on the embedding; default a learned constant.
    """

    def __init__(
        self,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        likelihood: gpytorch.likelihoods.GaussianLikelihood,
        *,
        feature_extractor: nn.Module,
        covar_module: gpytorch.kernels.Kernel,
        n_features: int,
        mean_module: gpytorch.means.Mean | None = None,
    ) -> None:
        super().__init__(train_x, train_y, likelihood)
        self.extractor = feature_extractor
        self.mean_module = gpytorch.means.ConstantMean() if mean_module is None else mean_module
        self.covar_module = covar_module
        self.n_features = int(n_features)

    def featurize(self, x: torch.Tensor) -> torch.Tensor:
        """Kernel inputs of ``x`` (m, d): the embedding, then the inputs past ``n_features``."""
        z = self.extractor(x[..., : self.n_features])
        if x.shape[-1] > self.n_features:
            return torch.cat([z, x[..., self.n_features :]], -1)
        return z

    def forward(self, x: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        """Prior of the latent function at inputs ``x`` (m, d)."""
        z = self.featurize(x)
        return gpytorch.distributions.MultivariateNormal(self.mean_module(z), self.covar_module(z))


def make_covariance(
    *,
    kernel: str,
    dim: int,
    lengthscale: float,
    trend: bool = False,
    coord_weight: float = 0.0,
) -> tuple[gpytorch.kernels.Kernel, gpytorch.kernels.ScaleKernel]:
    """The surrogate's kernel on the embedding (and pixel coordinates), initialised.

    Parameters
    ----------
    kernel : {"rbf", "matern"}
        Stationary ARD kernel on the ``dim`` embedding columns (Matérn: ν = 5/2).
    dim : int
        Embedding dimension (one length-scale each).
    lengthscale : float
        Initial length-scale of the stationary kernel (embedding units).
    trend : bool
        Add a scaled degree-1 polynomial kernel on the embedding (a Bayesian linear trend).
    coord_weight : float
        Initial output scale of an additive RBF kernel on columns ``dim, dim + 1`` (the
        normalised row and column); 0 leaves it out.

    Returns
    -------
    covariance : gpytorch.kernels.Kernel
        The (sum) kernel.
    structure : gpytorch.kernels.ScaleKernel
        Its stationary part on the embedding (whose length-scales the model state reports).
    """
    if kernel not in KERNELS:
        raise ValueError(f"Unknown kernel {kernel!r}: choose 'rbf' or 'matern'.")
    active = tuple(range(dim))
    base: gpytorch.kernels.Kernel
    if kernel == "rbf":
        base = gpytorch.kernels.RBFKernel(ard_num_dims=dim, active_dims=active)
    else:
        base = gpytorch.kernels.MaternKernel(nu=2.5, ard_num_dims=dim, active_dims=active)
    structure = gpytorch.kernels.ScaleKernel(base)
    covar: gpytorch.kernels.Kernel = structure
    if trend:
        # a dense degree-1 polynomial kernel (LinearKernel is low-rank and breaks the sum)
        linear = gpytorch.kernels.ScaleKernel(
            gpytorch.kernels.PolynomialKernel(power=1, active_dims=active)
        )
        linear.outputscale = 0.1
        covar = covar + linear
    if coord_weight > 0:
        xy_kernel = gpytorch.kernels.ScaleKernel(
            gpytorch.kernels.RBFKernel(active_dims=(dim, dim + 1))
        )
        covar = covar + xy_kernel
    base.lengthscale = lengthscale
    if coord_weight > 0:
        xy_kernel.base_kernel.lengthscale = 0.2
        xy_kernel.outputscale = coord_weight
    return covar, structure


def make_likelihood(*, noise: float = 0.05, min_noise: float = 1e-4):
    """Gaussian likelihood with initial ``noise`` variance, bounded below by ``min_noise``
    (GP units), so a few exactly fitted points cannot make the covariance singular."""
    lik = gpytorch.likelihoods.GaussianLikelihood(
        noise_constraint=gpytorch.constraints.GreaterThan(min_noise)
    )
    lik.noise = noise
    return lik


class PCAResidual(nn.Module):
    """``z = A x + MLP(x)`` on whitened PCA scores ``x``.

    ``A`` starts as the projection on the first ``dim`` components and the MLP's output layer
    at zero, so before any label the embedding *is* the unsupervised PCA embedding of all
    candidate patches; :meth:`penalty` pulls the weights back to that start (L2-SP).

    Parameters
    ----------
    in_dim : int
        Number of whitened principal components fed in.
    dim : int
        Embedding dimension (``dim <= in_dim``).
    """

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, dim, bias=False)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.weight[:, :dim].copy_(torch.eye(dim))
        self.mlp = nn.Sequential(nn.Linear(in_dim, 32), nn.Tanh(), nn.Linear(32, dim))
        out = self.mlp[-1]
        assert isinstance(out, nn.Linear)
        with torch.no_grad():
            out.weight.zero_()
            out.bias.zero_()
        self.anchor: torch.Tensor
        self.register_buffer("anchor", self.linear.weight.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding (m, dim) of PCA scores ``x`` (m, in_dim)."""
        return self.linear(x) + self.mlp(x)

    def penalty(self) -> torch.Tensor:
        """Squared distance of the weights from the PCA start (L2-SP) + MLP weight norm."""
        pen = ((self.linear.weight - self.anchor) ** 2).sum()
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                pen = pen + (m.weight**2).sum()
        return pen


def make_extractor(kind: str, patch_size: int, dim: int, in_dim: int = 0) -> nn.Module:
    """A fresh feature network (initialised from torch's global generator).

    Parameters
    ----------
    kind : {"cnn", "mlp", "pca_mlp", "identity"}
        ``cnn``: two convolutions on the (patch_size, patch_size) patch; ``mlp``: a
        perceptron on the flattened patch; ``pca_mlp``: :class:`PCAResidual` on ``in_dim``
        PCA scores; ``identity``: the inputs are the embedding (fixed features).
    patch_size : int
        Patch side (px) of the ``cnn`` and ``mlp`` inputs.
    dim : int
        Embedding dimension.
    in_dim : int
        Input dimension of ``pca_mlp``.

    Returns
    -------
    torch.nn.Module
        Maps (m, inputs) to (m, dim); ``cnn``/``mlp`` end in ``tanh`` (embedding in ±1).
    """
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
        return PCAResidual(in_dim, dim)
    if kind == "identity":
        return nn.Identity()
    raise ValueError(f"Unknown feature network {kind!r}: choose one of {', '.join(EXTRACTORS)}.")
