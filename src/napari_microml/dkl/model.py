"""Deep kernel learning (DKL) surrogate: patch → embedding → exact GP, in GPyTorch.

The model maps the structure-image patch around every candidate pixel to a low-dimensional
embedding and puts an exact Gaussian process with an ARD kernel on that embedding (optionally
plus a weak additive kernel on the pixel coordinates). Network weights and GP
hyper-parameters are trained jointly on the exact marginal log-likelihood of the
measurements in GP units (the model's outcome transform: an optional monotone warp, then
standardisation). The GP itself is :class:`~napari_microml.dkl.networks.DeepKernelGP`, a
gpytorch ``ExactGP`` with a pluggable feature network, mean, kernel and likelihood. Between
active-learning steps the model is *warm started*: weights and hyper-parameters are kept and
only a few optimiser iterations are run on the enlarged data set.

The default feature map (``cnn``) learns from raw patches. ``pca_mlp`` is pre-trained without
labels: every candidate patch is known before the first measurement, so the network's input
is the whitened PCA of all of them and its output starts as the projection on the leading
components; the few labels only bend that embedding (its weights are pulled back to the
start, L2-SP). Two non-deep feature maps share the same GP code and serve as baselines:
``features="coords"`` (GP on pixel coordinates) and ``features="pca"`` (GP on PCA of patches).
:class:`~napari_microml.dkl.ensemble.DKLEnsemble` averages several seeds.

torch and gpytorch are imported inside functions (and :mod:`~napari_microml.dkl.networks` on
the first fit) so that importing this module is cheap.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from napari_microml.dkl.features import pca_features
from napari_microml.dkl.surrogate import ModelState
from napari_microml.dkl.warping import OutcomeTransform
from napari_microml.runtime.validate import as_scaled_stack, check_number, robust_normalize

if TYPE_CHECKING:
    from torch import Tensor

    from napari_microml.dkl.networks import DeepKernelGP

KERNELS = ("rbf", "matern")

FEATURES = ("cnn", "pca_mlp", "mlp", "pca", "coords")


def check_structure(structure, patch_size: int) -> np.ndarray:
    """Validate a 2D structure image against ``patch_size``; return it robustly scaled to
    about 0–1, float32 (H, W), whatever its units (:mod:`napari_microml.runtime.validate`)."""
    scaled = as_scaled_stack(structure, what="structure image", min_size=1, allow_stack=False)
    arr = scaled.stack[0]
    patch_size = check_number(patch_size, "The patch size", low=1, integer=True, unit="pixels")
    if patch_size > min(arr.shape):
        raise ValueError(
            f"The patch size ({patch_size} px) is larger than the structure image "
            f"{arr.shape[0]}×{arr.shape[1]} px; choose a patch size of at most {min(arr.shape)}."
        )
    return robust_normalize(arr)


def extract_patches(image: np.ndarray, patch_size: int, coords: np.ndarray | None = None):
    """Square patches centred on ``coords`` (default: every pixel), reflect-padded.

    Returns float32 (N, patch_size, patch_size); the patch of pixel (r, c) covers rows
    ``r - p//2 … r - p//2 + p - 1``.
    """
    p = int(patch_size)
    h, w = image.shape
    lo = p // 2
    hi = p - 1 - lo
    mode: Literal["reflect", "edge"] = "reflect" if min(h, w) > max(lo, hi) else "edge"
    padded = np.pad(image, ((lo, hi), (lo, hi)), mode=mode)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (p, p))  # (H, W, p, p)
    if coords is None:
        return np.ascontiguousarray(windows.reshape(h * w, p, p), dtype=np.float32)
    coords = np.asarray(coords, int).reshape(-1, 2)
    return np.ascontiguousarray(windows[coords[:, 0], coords[:, 1]], dtype=np.float32)


@contextmanager
def one_thread(enabled: bool = True):
    """Run torch (and numpy's BLAS) on one thread inside the block.

    Parallel float sums split their terms by the thread count, so their rounding (and, over
    many optimiser steps, a campaign's choices) depends on it; on one thread a seeded campaign
    picks the same points whatever ``torch.get_num_threads()`` the session uses.
    """
    if not enabled:
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(before)


def safe_cholesky(k, max_tries: int = 8):
    """Lower Cholesky factor of a (nearly) positive semi-definite ``k`` (torch, float64).

    Adds jitter only when needed, escalating 1e-10, 1e-9, … × the mean diagonal (as gpytorch's
    ``psd_safe_cholesky``): tied or repeated sites give identical rows, which rounding can
    make numerically indefinite. Raises ValueError if ``k`` is not finite.
    """
    import torch

    if not torch.isfinite(k).all():
        raise ValueError(
            "The surrogate's covariance is not finite; are the measured values finite?"
        )
    chol, info = torch.linalg.cholesky_ex(k)
    if not info.any():
        return chol
    scale = float(k.diagonal().abs().mean()) or 1.0
    eye = torch.eye(k.shape[-1], dtype=k.dtype, device=k.device)
    for i in range(max_tries):
        chol, info = torch.linalg.cholesky_ex(k + scale * 10.0 ** (i - 10) * eye)
        if not info.any():
            return chol
    raise ValueError(
        "The surrogate's covariance is not positive definite even with jitter "
        f"{scale * 10.0 ** (max_tries - 11):.3g}."
    )


class DKLModel:
    """Patch-feature Gaussian-process surrogate over every pixel of a structure image.

    Parameters
    ----------
    structure : (H, W) array
        The structure image (e.g. HAADF); any real units.
    patch_size : int
        Side of the square patch around each pixel fed to the feature extractor (px).
    features : {"cnn", "pca_mlp", "mlp", "pca", "coords"}
        ``cnn`` (default): trainable deep kernel on raw patches (a small CNN);
        ``pca_mlp``: a small network on the whitened PCA scores of *all* candidate patches
        (unsupervised, known before any measurement), initialised to the PCA projection and
        kept near it (L2-SP), so a few labels cannot overfit it; ``mlp``: MLP on raw patches;
        ``pca``: fixed PCA of patches; ``coords``: plain GP on (row, col). ``cnn`` is the
        default: best on fresh synthetic validation images (``benchmarks/dkl_tune.py``).
    embedding_dim : int
        Dimension of the embedding the GP sees (ARD: one length-scale each).
    pca_components : int
        Whitened principal components fed to the ``pca_mlp`` network.
    coord_weight : float, optional
        Initial output scale (relative to the structure kernel's 1) of an additive RBF kernel
        on normalised (row, col); 0 switches it off. Both scales are then learned. Default:
        0.3 for ``pca_mlp`` (chosen on synthetic validation sets, ``benchmarks/dkl_tune.py``),
        0 for the other feature maps (so the ``pca``/``coords`` baselines stay pure).
    kernel : {"rbf", "matern"}
        Stationary ARD kernel on the embedding (Matérn: ν = 5/2).
    trend : bool
        Add a linear kernel on the embedding (Bayesian linear trend) to the stationary one, so
        the surrogate can extrapolate a trend to embeddings beyond the measured ones — where a
        stationary GP falls back to the mean. Properties are often largest at the extremes of
        the structure (the brightest, thickest, most distorted regions). Off by default: it
        did not help the 3-network ensemble on the synthetic validation sets.
    device : str
        ``auto``/``cuda``/``mps``/``cpu``.
    seed : int
        Seeds the network initialisation.
    init_iters, warm_iters : int
        Optimiser iterations for the first fit and for each warm-started refit.
    lr, nn_lr_scale, weight_decay : float
        Adam learning rate of the GP hyper-parameters; the network uses ``lr * nn_lr_scale``;
        ``weight_decay`` is its L2 strength (for ``pca_mlp``: towards the PCA start). The
        defaults were chosen on synthetic validation sets only (``benchmarks/dkl_tune.py``).
    chunk : int
        Candidates per prediction batch (bounds memory, not the result).
    outcome_transform : OutcomeTransform, optional
        Maps the measured values to the GP's units and back; default standardisation only
        (:class:`~napari_microml.dkl.warping.OutcomeTransform`). Ensembles share one.
    """

    def __init__(
        self,
        structure: np.ndarray,
        *,
        patch_size: int = 16,
        features: str = "cnn",
        embedding_dim: int = 4,
        pca_components: int = 16,
        coord_weight: float | None = None,
        kernel: str = "rbf",
        trend: bool = False,
        device: str = "auto",
        seed: int = 0,
        init_iters: int = 150,
        warm_iters: int = 30,
        lr: float = 0.02,
        nn_lr_scale: float = 0.25,
        weight_decay: float = 1e-3,
        chunk: int = 8192,
        outcome_transform: OutcomeTransform | None = None,
    ) -> None:
        import torch

        from napari_microml.runtime.device import resolve_device

        if features not in FEATURES:
            raise ValueError(f"Unknown features {features!r}: choose one of {', '.join(FEATURES)}.")
        if kernel not in KERNELS:
            raise ValueError(f"Unknown kernel {kernel!r}: choose 'rbf' or 'matern'.")
        if coord_weight is None:
            coord_weight = 0.3 if features == "pca_mlp" else 0.0
        if check_number(coord_weight, "coord_weight") < 0:
            raise ValueError(f"coord_weight must be 0 (off) or positive, not {coord_weight}.")
        embedding_dim = check_number(embedding_dim, "embedding_dim", low=1, integer=True)
        pca_components = check_number(pca_components, "pca_components", low=1, integer=True)
        seed = check_number(seed, "seed", low=0, integer=True)
        init_iters = check_number(init_iters, "init_iters", low=0, integer=True)
        warm_iters = check_number(warm_iters, "warm_iters", low=0, integer=True)
        lr = check_number(lr, "lr (learning rate)", low=0, high=1, low_open=True)
        nn_lr_scale = check_number(nn_lr_scale, "nn_lr_scale", low=0, low_open=True)
        weight_decay = check_number(weight_decay, "weight_decay", low=0)
        chunk = check_number(chunk, "chunk", low=1, integer=True)
        self.image = check_structure(structure, patch_size)
        self.shape: tuple[int, int] = (int(self.image.shape[0]), int(self.image.shape[1]))
        self.patch_size = int(patch_size)
        self.features = features
        self.kernel = kernel
        self.trend = bool(trend) and features != "coords"
        self.seed = int(seed)
        self.init_iters, self.warm_iters, self.lr, self.chunk = init_iters, warm_iters, lr, chunk
        self.nn_lr_scale, self.weight_decay = float(nn_lr_scale), float(weight_decay)
        self.device = resolve_device(device)
        h, w = self.shape
        rr, cc = np.mgrid[0:h, 0:w]
        xy = np.column_stack([rr.ravel() / max(h - 1, 1), cc.ravel() / max(w - 1, 1)])
        self.in_dim = 0
        if features == "coords":
            x, self.dim, coord_weight = xy, 2, 0.0
        elif features in ("pca", "pca_mlp"):
            patches = extract_patches(self.image, self.patch_size)
            self.dim = min(int(embedding_dim), patches[0].size)
            self.in_dim = (
                self.dim
                if features == "pca"
                else max(self.dim, min(int(pca_components), patches[0].size))
            )
            x = pca_features(patches, self.in_dim)  # deterministic: same for every seed
        else:
            x = extract_patches(self.image, self.patch_size).reshape(h * w, -1)
            x = x - x.mean()
            self.dim = int(embedding_dim)
        self.coord_weight = float(coord_weight)
        if self.coord_weight > 0:
            x = np.column_stack([x, xy])
        self.inputs = torch.as_tensor(np.asarray(x, np.float32), device=self.device)
        self.outcome_transform = (
            OutcomeTransform() if outcome_transform is None else outcome_transform
        )
        self.state: ModelState | None = None
        self._gp: DeepKernelGP | None = None
        self._structure_kernel: Any = None
        self._cache: tuple[Tensor, Tensor, Tensor, Tensor] | None = None

    def with_seed(self, seed: int) -> DKLModel:
        """An unfitted twin with another network ``seed``, sharing the candidate inputs."""
        twin = copy.copy(self)  # the input tensor is read-only: shared, not copied
        twin.seed = check_number(seed, "seed", low=0, integer=True)
        twin.state, twin._gp, twin._structure_kernel, twin._cache = None, None, None, None
        return twin

    def _build(self, x: Tensor, y: Tensor) -> DeepKernelGP:
        import torch

        from napari_microml.dkl.networks import (
            DeepKernelGP,
            make_covariance,
            make_extractor,
            make_likelihood,
        )

        torch.manual_seed(self.seed)  # the network's initial weights
        trainable = self.features in ("cnn", "mlp", "pca_mlp")
        extractor = make_extractor(
            self.features if trainable else "identity", self.patch_size, self.dim, self.in_dim
        )
        covar, self._structure_kernel = make_covariance(
            kernel=self.kernel,
            dim=self.dim,
            lengthscale={"cnn": 0.5, "mlp": 0.5, "coords": 0.2}.get(self.features, 1.0),
            trend=self.trend,
            coord_weight=self.coord_weight,
        )
        n_features = self.inputs.shape[1] - (2 if self.coord_weight > 0 else 0)
        gp = DeepKernelGP(
            x,
            y,
            make_likelihood(),
            feature_extractor=extractor,
            covar_module=covar,
            n_features=n_features,
        )
        return gp.to(self.device)

    def fit(
        self, indices: np.ndarray, values: np.ndarray, *, iterations: int | None = None
    ) -> ModelState:
        """Fit on measured ``values`` at flat pixel ``indices`` (warm start if fitted).

        Parameters
        ----------
        indices : (n,) int array
            Flat pixel indices ``row * W + col`` of the measurements.
        values : (n,) array
            The measured values, in their own units (the outcome transform is refitted).
        iterations : int, optional
            Optimiser iterations; default ``init_iters`` for the first fit, else ``warm_iters``.

        Returns
        -------
        ModelState
            Summary of the fit.
        """
        targets = self.outcome_transform.fit(values)
        return self.fit_transformed(indices, targets, iterations=iterations)

    def fit_transformed(
        self, indices: np.ndarray, targets: np.ndarray, *, iterations: int | None = None
    ) -> ModelState:
        """:meth:`fit` on ``targets`` already in GP units (an ensemble transforms them once).

        Parameters
        ----------
        indices : (n,) int array
            Flat pixel indices.
        targets : (n,) array
            ``outcome_transform.fit(values)``.
        iterations : int, optional
            As :meth:`fit`.

        Returns
        -------
        ModelState
            Summary of the fit.
        """
        import gpytorch
        import torch

        idx = np.asarray(indices, np.int64).ravel()
        yt = torch.as_tensor(
            np.asarray(targets, np.float64).ravel(), dtype=torch.float32, device=self.device
        )
        xt = self.inputs[torch.as_tensor(idx, device=self.device)]
        first = self._gp is None
        if self._gp is None:
            self._gp = gp = self._build(xt, yt)
        else:
            gp = self._gp
            gp.set_train_data(xt, yt, strict=False)
        if iterations is None:
            iterations = self.init_iters if first else self.warm_iters
        n_iter = int(iterations)
        lik = gp.likelihood
        gp.train()
        lik.train()
        nn_params = list(gp.extractor.parameters())
        nn_ids = {id(q) for q in nn_params}
        gp_params = [q for q in gp.parameters() if id(q) not in nn_ids]
        groups = [{"params": gp_params, "lr": self.lr}]
        penalty = getattr(gp.extractor, "penalty", None)
        if nn_params:  # the network learns slower and is kept small (few labelled points)
            groups.append(
                {
                    "params": nn_params,
                    "lr": self.lr * self.nn_lr_scale,
                    "weight_decay": 0.0 if penalty else self.weight_decay,
                }
            )
        opt = torch.optim.Adam(groups)
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(lik, gp)
        loss_value = float("nan")
        with gpytorch.settings.cholesky_jitter(1e-4):
            for _ in range(n_iter):
                opt.zero_grad()
                loss = -mll(gp(xt), yt)
                loss_value = float(loss.detach())
                if penalty is not None:
                    loss = loss + 0.5 * self.weight_decay * penalty()
                loss.backward()
                opt.step()
        gp.eval()
        lik.eval()
        self._cache = None
        kern = self._structure_kernel
        self.state = ModelState(
            n_train=len(idx),
            lengthscale=kern.base_kernel.lengthscale.detach().cpu().ravel().tolist(),
            outputscale=float(kern.outputscale.detach().cpu()),
            noise=float(lik.noise.detach().cpu()),
            mll=-loss_value,
            iterations=n_iter,
        )
        return self.state

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` has run."""
        return self._gp is not None

    def _fitted_gp(self) -> DeepKernelGP:
        if self._gp is None:
            raise ValueError("The model has no measurements yet: observe some points first.")
        return self._gp

    def _embed(self, x: Tensor) -> Tensor:
        """Kernel inputs (embedding, plus coordinates if used) for inputs ``x``, chunked."""
        import torch

        gp = self._fitted_gp()
        with torch.no_grad():
            parts = [gp.featurize(x[s : s + self.chunk]) for s in range(0, len(x), self.chunk)]
            return torch.cat(parts)

    def _posterior_cache(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Train embeddings, Cholesky factor of the noisy train covariance, weights and prior
        mean, all in GP units (computed once per fit)."""
        import torch

        gp = self._fitted_gp()
        if self._cache is None:
            with torch.no_grad():
                xt = gp.train_inputs[0]
                zt = self._embed(xt)
                k = gp.covar_module(zt).to_dense().double()
                k = 0.5 * (k + k.T)  # float32 kernels are symmetric only to rounding
                eye = torch.eye(len(zt), dtype=k.dtype, device=k.device)
                chol = safe_cholesky(k + (gp.likelihood.noise.double() + 1e-6) * eye)
                mu0 = gp.mean_module.constant.detach().double()
                resid = (gp.train_targets.double() - mu0).unsqueeze(-1)
                alpha = torch.cholesky_solve(resid, chol)
            self._cache = (zt, chol, alpha, mu0)
        return self._cache

    def _cross(self, za: Tensor, zb: Tensor) -> Tensor:
        import torch

        kern = self._fitted_gp().covar_module
        with torch.no_grad():
            return kern(za.float(), zb.float()).to_dense().double()

    def _prior_var(self, zs: Tensor) -> Tensor:
        """Prior variance of the latent function at embeddings ``zs`` (m,)."""
        import torch

        with torch.no_grad():
            return self._fitted_gp().covar_module(zs.float(), diag=True).double()

    def predict(
        self, indices: np.ndarray | None = None, *, standardized: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and std of the latent function at flat pixel ``indices``.

        Exact GP posterior on the learned embedding, evaluated in chunks of ``chunk``
        candidates.

        Parameters
        ----------
        indices : (m,) int array, optional
            Flat pixel indices; default every pixel (H*W).
        standardized : bool
            Return GP units (warped and standardised) instead of the measurement's units.

        Returns
        -------
        mean, std : (m,) float arrays
        """
        import torch

        gp = self._fitted_gp()
        x = self.inputs
        if indices is not None:
            x = x[torch.as_tensor(np.asarray(indices, np.int64), device=self.device)]
        zt, chol, alpha, mu0 = self._posterior_cache()
        means, stds = [], []
        with torch.no_grad():
            for start in range(0, len(x), self.chunk):
                zs = gp.featurize(x[start : start + self.chunk])
                ks = self._cross(zs, zt)  # (m, n)
                means.append((mu0 + ks @ alpha).squeeze(-1).cpu().numpy())
                v = torch.linalg.solve_triangular(chol, ks.T, upper=False)
                var = (self._prior_var(zs) - (v * v).sum(0)).clamp_min(1e-10)
                stds.append(var.sqrt().cpu().numpy())
        mean, std = np.concatenate(means), np.concatenate(stds)
        if standardized:
            return mean, std
        return self.outcome_transform.untransform(mean, std)

    def sample(self, indices: np.ndarray, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        """Joint posterior samples of the latent function at flat pixel ``indices``.

        Parameters
        ----------
        indices : (m,) int array
            Flat pixel indices.
        n_samples : int
            Number of joint samples.
        rng : numpy.random.Generator
            Source of the standard normal draws.

        Returns
        -------
        (n_samples, m) float array
            Samples in GP units.
        """
        import torch

        x = self.inputs[torch.as_tensor(np.asarray(indices, np.int64), device=self.device)]
        zt, chol, alpha, mu0 = self._posterior_cache()
        with torch.no_grad():
            zs = self._embed(x)
            ks = self._cross(zs, zt)
            v = torch.linalg.solve_triangular(chol, ks.T, upper=False)
            mean = (mu0 + ks @ alpha).squeeze(-1).cpu().numpy()
            cov = self._cross(zs, zs) - v.T @ v
            cov = 0.5 * (cov + cov.T)
            evals, evecs = torch.linalg.eigh(cov)  # robust for a (numerically) low-rank cov.
            chol_s = (evecs * evals.clamp_min(0).sqrt()[None]).cpu().numpy()
        z = rng.standard_normal((n_samples, len(mean)))
        return mean[None] + z @ chol_s.T

    def embed(self) -> np.ndarray:
        """Embedding of every pixel, (H*W, dim) (without the coordinate inputs)."""
        if not self.fitted:
            raise ValueError("The model is not fitted yet.")
        return self._embed(self.inputs)[:, : self.dim].cpu().numpy()

    def leave_one_out(self) -> np.ndarray:
        """Leave-one-out log predictive density (nats, GP units) of every measurement, (n,)."""
        _, chol, _, mu0 = self._posterior_cache()
        resid = self._fitted_gp().train_targets.double() - mu0
        return loo_log_density(chol.cpu().numpy(), resid.cpu().numpy())


def loo_log_density(chol: np.ndarray, resid: np.ndarray) -> np.ndarray:
    """Exact-GP leave-one-out log predictive density of every observation (nats), (n,).

    With ``K = L Lᵀ`` the noisy train covariance (``chol`` = lower Cholesky factor ``L``,
    (n, n)) and ``resid`` (n,) the observations minus the prior mean, the predictive of
    ``y_i`` given all other points is Gaussian with mean ``y_i - [K⁻¹r]_i / [K⁻¹]_ii`` and
    variance ``1 / [K⁻¹]_ii`` (Rasmussen & Williams 2006, eq. 5.12), so
    ``log p(y_i | y_-i) = -½ log 2π + ½ log [K⁻¹]_ii - ½ [K⁻¹r]_i² / [K⁻¹]_ii``.
    Hyper-parameters (and the feature network) stay those fitted on all points.
    """
    from scipy.linalg import cho_solve

    chol = np.asarray(chol, np.float64)
    resid = np.asarray(resid, np.float64).ravel()
    kinv = cho_solve((chol, True), np.eye(len(resid)))
    d = np.clip(np.diag(kinv), 1e-300, None)
    alpha = kinv @ resid
    return -0.5 * np.log(2 * np.pi) + 0.5 * np.log(d) - 0.5 * alpha**2 / d
