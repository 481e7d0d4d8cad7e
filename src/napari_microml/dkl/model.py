"""Deep kernel learning (DKL) surrogate: patch → embedding → exact GP, in GPyTorch.

The model maps the structure-image patch around every candidate pixel to a low-dimensional
embedding and puts an exact Gaussian process with an ARD kernel on that embedding (optionally
plus a weak additive kernel on the pixel coordinates). Network weights and GP
hyper-parameters are trained jointly on the exact marginal log-likelihood of the
(standardised) measurements. Between active-learning steps the model is *warm started*:
weights and hyper-parameters are kept and only a few optimiser iterations are run on the
enlarged data set.

The default feature map (``cnn``) learns from raw patches. ``pca_mlp`` is pre-trained without
labels: every candidate patch is known before the first measurement, so the network's input
is the whitened PCA of all of them and its output starts as the projection on the leading
components; the few labels only bend that embedding (its weights are pulled back to the
start, L2-SP). Two non-deep feature maps share the same GP code and serve as baselines:
``features="coords"`` (GP on pixel coordinates) and ``features="pca"`` (GP on PCA of patches).
:class:`~napari_microml.dkl.ensemble.DKLEnsemble` averages several seeds.

torch and gpytorch are imported inside functions so that importing this module is cheap.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from napari_microml.dkl.features import make_extractor, pca_features
from napari_microml.runtime.validate import as_scaled_stack, check_number, robust_normalize

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
    mode = "reflect" if min(h, w) > max(lo, hi) else "edge"
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


def standardization(y: np.ndarray) -> tuple[float, float]:
    """Mean and scale that standardise measurements ``y`` (float64), in their own units.

    The scale is the standard deviation; constant values (no spread at the data's own
    precision) are scaled by their magnitude, so nothing depends on an absolute tolerance
    (values of 1e-15 A standardise as values of 1 A do).
    """
    y = np.asarray(y, np.float64)
    mean = float(y.mean())
    std = float(y.std())
    if std > 1e-12 * float(np.abs(y).max()):  # relative: a spread above float64 rounding
        return mean, std
    return mean, (abs(mean) or 1.0)


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


@dataclass
class ModelState:
    """A JSON-friendly summary of the fitted surrogate (for logs)."""

    n_train: int
    lengthscale: list
    outputscale: float
    noise: float
    mll: float
    iterations: int

    def as_dict(self) -> dict:
        return {
            "n_train": self.n_train,
            "lengthscale": [round(float(v), 5) for v in self.lengthscale],
            "outputscale": round(float(self.outputscale), 5),
            "noise": round(float(self.noise), 6),
            "mll": round(float(self.mll), 5),
            "iterations": self.iterations,
        }


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
        ``pca``: fixed PCA of patches; ``coords``: plain GP on (row, col). ``cnn`` scored
        best on fresh synthetic validation images (``benchmarks/dkl_tune.py --confirm``).
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
    trend : bool
        Add a linear kernel on the embedding (Bayesian linear trend) to the stationary one, so
        the surrogate can extrapolate a trend to embeddings beyond the measured ones — where a
        stationary GP falls back to the mean. Properties are often largest at the extremes of
        the structure (the brightest, thickest, most distorted regions). Off by default: on
        the synthetic validation sets (``benchmarks/dkl_tune.py`` sets, data seeds 1002–1005, 3
        campaigns each) it raised one network's score 0.397 → 0.414 but not the 3-network
        ensemble's (0.455 → 0.453; found@3 % 0.365 → 0.380 with a larger spread).
    device : str
        ``auto``/``cuda``/``mps``/``cpu``.
    seed : int
        Seeds the network initialisation.
    init_iters, warm_iters : int
        Optimiser iterations for the first fit and for each warm-started refit.
    lr, nn_lr_scale, weight_decay : float
        Adam learning rate of the GP hyper-parameters; the network uses ``lr * nn_lr_scale``;
        ``weight_decay`` is its L2 strength (for ``pca_mlp``: towards the PCA start). The
        defaults (0.25, 1e-3), ``embedding_dim=4`` and ``pca_components=16`` were chosen on
        synthetic validation sets only (``benchmarks/dkl_tune.py``), never on CuZn or BEPS.
    chunk : int
        Candidates per prediction batch.
    """

    def __init__(
        self,
        structure,
        *,
        patch_size: int = 16,
        features: str = "cnn",
        embedding_dim: int = 4,
        pca_components: int = 16,
        coord_weight: float | None = None,
        kernel: str = "rbf",
        trend: bool = False,
        device="auto",
        seed: int = 0,
        init_iters: int = 150,
        warm_iters: int = 30,
        lr: float = 0.02,
        nn_lr_scale: float = 0.25,
        weight_decay: float = 1e-3,
        chunk: int = 8192,
    ):
        import torch

        from napari_microml.runtime.device import resolve_device

        if features not in FEATURES:
            raise ValueError(f"Unknown features {features!r}: choose one of {', '.join(FEATURES)}.")
        if kernel not in ("rbf", "matern"):
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
        self.shape = self.image.shape
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
        self._gp = None
        self._lik = None
        self._y_mean, self._y_std = 0.0, 1.0
        self.state: ModelState | None = None
        self._train_idx = None
        self._cache = None

    # ------------------------------------------------------------------------------------
    def _build(self, x, y):
        import gpytorch
        import torch

        torch.manual_seed(self.seed)
        extractor = make_extractor(self.features, self.patch_size, self.dim, self.in_dim)
        dim, use_xy = self.dim, self.coord_weight > 0
        n_feat = self.inputs.shape[1] - (2 if use_xy else 0)
        kw = dict(ard_num_dims=dim, active_dims=tuple(range(dim)))
        base = (
            gpytorch.kernels.RBFKernel(**kw)
            if self.kernel == "rbf"
            else gpytorch.kernels.MaternKernel(nu=2.5, **kw)
        )
        covar = gpytorch.kernels.ScaleKernel(base)
        if self.trend:
            # a dense degree-1 polynomial kernel (LinearKernel is low-rank and breaks the sum)
            linear = gpytorch.kernels.ScaleKernel(
                gpytorch.kernels.PolynomialKernel(power=1, active_dims=tuple(range(dim)))
            )
            linear.outputscale = 0.1
            covar = covar + linear
        if use_xy:
            xy_kernel = gpytorch.kernels.ScaleKernel(
                gpytorch.kernels.RBFKernel(active_dims=(dim, dim + 1))
            )
            covar = covar + xy_kernel

        class _GP(gpytorch.models.ExactGP):
            def __init__(self, x, y, likelihood):
                super().__init__(x, y, likelihood)
                self.extractor = extractor
                self.mean_module = gpytorch.means.ConstantMean()
                self.covar_module = covar

            def featurize(self, x):
                z = self.extractor(x[..., :n_feat])
                return torch.cat([z, x[..., n_feat:]], -1) if use_xy else z

            def forward(self, x):
                z = self.featurize(x)
                return gpytorch.distributions.MultivariateNormal(
                    self.mean_module(z), self.covar_module(z)
                )

        lik = gpytorch.likelihoods.GaussianLikelihood(
            noise_constraint=gpytorch.constraints.GreaterThan(1e-4)
        )
        gp = _GP(x, y, lik)
        init_ls = {"cnn": 0.5, "mlp": 0.5, "coords": 0.2}.get(self.features, 1.0)
        base.lengthscale = init_ls
        if use_xy:
            xy_kernel.base_kernel.lengthscale = 0.2
            xy_kernel.outputscale = self.coord_weight
        lik.noise = 0.05
        self._gp, self._lik = gp.to(self.device), lik.to(self.device)

    def _kernels(self):
        """The stationary structure ScaleKernel (and the coordinate one, or None)."""
        cov = self._gp.covar_module
        parts = list(cov.kernels) if hasattr(cov, "kernels") else [cov]
        return parts[0], (parts[-1] if self.coord_weight > 0 else None)

    def fit(self, indices: np.ndarray, values: np.ndarray, *, iterations: int | None = None):
        """(Re)fit on observed flat pixel ``indices`` with ``values`` (warm start if fitted).

        Returns the :class:`ModelState` summary.
        """
        import gpytorch
        import torch

        idx = np.asarray(indices, np.int64).ravel()
        y = np.asarray(values, np.float64).ravel()
        self._y_mean, self._y_std = standardization(y)
        yt = torch.as_tensor(
            (y - self._y_mean) / self._y_std, dtype=torch.float32, device=self.device
        )
        xt = self.inputs[torch.as_tensor(idx, device=self.device)]
        first = self._gp is None
        if first:
            self._build(xt, yt)
        else:
            self._gp.set_train_data(xt, yt, strict=False)
        if iterations is None:
            iterations = self.init_iters if first else self.warm_iters
        n_iter = int(iterations)
        gp, lik = self._gp, self._lik
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
        self._train_idx = idx
        self._cache = None
        kern, _ = self._kernels()
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
        return self._gp is not None

    def _embed(self, x):
        """Kernel inputs (embedding, plus coordinates if used) for inputs ``x``, chunked."""
        import torch

        with torch.no_grad():
            parts = [
                self._gp.featurize(x[s : s + self.chunk]) for s in range(0, len(x), self.chunk)
            ]
            return torch.cat(parts)

    def _posterior_cache(self):
        """Cholesky factor of the noisy train covariance and the weights (computed once per fit)."""
        import torch

        if self._cache is None:
            gp, lik = self._gp, self._lik
            with torch.no_grad():
                xt = gp.train_inputs[0]
                zt = self._embed(xt)
                k = gp.covar_module(zt).to_dense().double()
                k = 0.5 * (k + k.T)  # float32 kernels are symmetric only to rounding
                eye = torch.eye(len(zt), dtype=k.dtype, device=k.device)
                chol = safe_cholesky(k + (lik.noise.double() + 1e-6) * eye)  # standardised units
                mu0 = gp.mean_module.constant.detach().double()
                resid = (gp.train_targets.double() - mu0).unsqueeze(-1)
                alpha = torch.cholesky_solve(resid, chol)
            self._cache = (zt, chol, alpha, mu0)
        return self._cache

    def _cross(self, za, zb):
        import torch

        kern = self._gp.covar_module
        with torch.no_grad():
            return kern(za.float(), zb.float()).to_dense().double()

    def _prior_var(self, zs):
        """Prior variance of the latent function at embeddings ``zs`` (m,)."""
        import torch

        with torch.no_grad():
            return self._gp.covar_module(zs.float(), diag=True).double()

    def predict(self, indices: np.ndarray | None = None, *, standardized: bool = False):
        """Posterior mean and std of the latent function at flat ``indices`` (default: all).

        Exact GP posterior on the learned embedding, evaluated in chunks of ``self.chunk``
        candidates. Units are the measurement's units unless ``standardized``.
        """
        import torch

        if not self.fitted:
            raise ValueError("The model has no measurements yet: observe some points first.")
        x = self.inputs
        if indices is not None:
            x = x[torch.as_tensor(np.asarray(indices, np.int64), device=self.device)]
        zt, chol, alpha, mu0 = self._posterior_cache()
        means, stds = [], []
        with torch.no_grad():
            for start in range(0, len(x), self.chunk):
                zs = self._gp.featurize(x[start : start + self.chunk])
                ks = self._cross(zs, zt)  # (m, n)
                means.append((mu0 + ks @ alpha).squeeze(-1).cpu().numpy())
                v = torch.linalg.solve_triangular(chol, ks.T, upper=False)
                var = (self._prior_var(zs) - (v * v).sum(0)).clamp_min(1e-10)
                stds.append(var.sqrt().cpu().numpy())
        mean, std = np.concatenate(means), np.concatenate(stds)
        if standardized:
            return mean, std
        return mean * self._y_std + self._y_mean, std * self._y_std

    def sample(self, indices: np.ndarray, n_samples: int, rng: np.random.Generator):
        """Joint posterior samples (standardised units) at flat ``indices``: (n_samples, n)."""
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
