"""Ensembles of DKL surrogates: seeds (the active learner's default: 3 members) and scales.

:class:`DKLEnsemble` averages members that differ only in their seed;
:class:`MultiScaleEnsemble` (``ActiveLearner(patch_size="auto")``) mixes members that see
patches of different sizes, weighted by their leave-one-out predictive density.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from napari_microml.dkl.model import DKLModel, ModelState
from napari_microml.runtime.validate import check_number


class _Members:
    """What every ensemble shares: the members are fitted together on the same standardised data."""

    members: list

    @property
    def fitted(self) -> bool:
        return self.members[0].fitted

    @property
    def _y_mean(self):
        return self.members[0]._y_mean

    @property
    def _y_std(self):
        return self.members[0]._y_std


class DKLEnsemble(_Members):
    """Average of ``n_models`` :class:`DKLModel` surrogates that differ only in their seed.

    The posterior is the equal-weight mixture of the members' Gaussians (mean of means;
    variance = mean of variances + variance of means), which steadies the suggestions
    against one unlucky network initialisation. Thompson samples come from one member,
    drawn at random. Same interface as :class:`DKLModel` (``fit``, ``predict``, ``sample``,
    ``embed``, ``state``). All members share the candidate inputs (computed once).
    """

    def __init__(self, structure, *, n_models: int = 3, seed: int = 0, **kwargs):
        import copy

        n_models = check_number(n_models, "n_models", low=1, integer=True)
        first = DKLModel(structure, seed=seed, **kwargs)
        self.members = [first]
        for k in range(1, n_models):
            m = copy.copy(first)  # shares the (read-only) input tensor
            m.seed = int(seed) + 7919 * k
            self.members.append(m)
        for name in ("shape", "features", "device", "patch_size", "dim", "image"):
            setattr(self, name, getattr(first, name))

    @property
    def state(self):
        return self.members[0].state

    def fit(self, indices, values, *, iterations=None):
        for m in self.members:
            m.fit(indices, values, iterations=iterations)
        return self.state

    def predict(self, indices=None, *, standardized: bool = False):
        """Mixture mean and std (see the class docstring), units as :meth:`DKLModel.predict`."""
        preds = [m.predict(indices, standardized=standardized) for m in self.members]
        means = np.stack([p[0] for p in preds])
        var = np.stack([p[1] ** 2 for p in preds]).mean(0) + means.var(0)
        return means.mean(0), np.sqrt(var)

    def sample(self, indices, n_samples: int, rng: np.random.Generator):
        which = rng.integers(len(self.members), size=n_samples)
        out = [self.members[k].sample(indices, 1, rng)[0] for k in which]
        return np.stack(out)

    def embed(self) -> np.ndarray:
        return self.members[0].embed()


# --- multi-scale ensemble: one member per patch size, weights learned from the data ---------
AUTO_PATCH_SIZES = (8, 16, 24)


def auto_patch_sizes(shape, sizes=AUTO_PATCH_SIZES) -> list[int]:
    """Patch sides (px) of the ``patch_size="auto"`` members for an image of ``shape`` (H, W).

    Each of ``sizes`` is clipped to the image's shorter side so every patch fits; duplicates
    made by the clipping are dropped (a 10×12 px image gets [8, 10]).
    """
    limit = int(min(shape[:2]))
    if limit < 1:
        raise ValueError(f"The structure image {tuple(shape)} has no pixels.")
    return sorted({max(1, min(int(p), limit)) for p in sizes})


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


def mixture_weights(
    scores: np.ndarray, *, temperature: float = 1.0, floor: float = 0.1
) -> np.ndarray:
    """Softmax of ``scores / temperature`` mixed with the uniform so each weight ≥ ``floor``.

    ``scores`` (M,) are summed LOO log densities (nats). Returns (M,) weights summing to 1.
    """
    s = np.asarray(scores, np.float64).ravel()
    m = len(s)
    floor = min(max(float(floor), 0.0), 1.0 / m)
    s = np.where(np.isfinite(s), s, -np.inf)
    if not np.isfinite(s).any():
        return np.full(m, 1.0 / m)
    z = (s - s.max()) / max(float(temperature), 1e-12)
    w = np.exp(z)
    w /= w.sum()
    return floor + (1.0 - m * floor) * w


@dataclass
class MixtureState(ModelState):
    """:class:`ModelState` of the heaviest member plus every member's patch size and weight."""

    patch_sizes: list = field(default_factory=list)
    weights: list = field(default_factory=list)
    loo: list = field(default_factory=list)

    def as_dict(self) -> dict:
        out = super().as_dict()
        out["patch_sizes"] = [int(p) for p in self.patch_sizes]
        out["weights"] = [round(float(w), 4) for w in self.weights]
        out["loo"] = [round(float(v), 3) for v in self.loo]
        return out


class MultiScaleEnsemble(_Members):
    """Mixture of :class:`DKLModel` members that see patches of different sizes.

    One member per patch side in ``patch_sizes`` (default :func:`auto_patch_sizes`: 8, 16
    and 24 px, clipped to the image), each with its own seed. After every fit each member
    is scored by the sum of its exact-GP leave-one-out log predictive densities of the
    (standardised) measurements (:func:`loo_log_density`), and the mixture weights are
    ``softmax(score / temperature)`` floored at ``floor`` per member
    (:func:`mixture_weights`), so a scale is never discarded on a handful of points.
    ``predict`` returns the weighted Gaussian mixture's mean and std; ``sample`` (Thompson)
    draws each sample's member by weight. Same interface as :class:`DKLModel`.

    Parameters
    ----------
    structure : (H, W) array
    patch_sizes : sequence of int, optional
        Patch sides (px); default ``auto_patch_sizes(structure.shape)``.
    seed : int
        Member ``k`` uses ``seed + 7919 k``.
    temperature, floor : float
        Tempering of the LOO scores (nats) and the minimum weight of each member.
    **kwargs
        Passed to every :class:`DKLModel` (``features``, ``device``, ``init_iters``, ...).
    """

    def __init__(
        self,
        structure,
        *,
        patch_sizes=None,
        seed: int = 0,
        temperature: float = 1.0,
        floor: float = 0.1,
        **kwargs,
    ):
        kwargs.pop("patch_size", None)  # the members' sizes are patch_sizes
        shape = np.shape(structure)
        sizes = auto_patch_sizes(shape) if patch_sizes is None else [int(p) for p in patch_sizes]
        if not sizes:
            raise ValueError("The multi-scale ensemble needs at least one patch size.")
        check_number(temperature, "auto_temperature", low=0, low_open=True)
        check_number(floor, "auto_floor (minimum weight of a patch size)", low=0, high=1)
        self.members = [
            DKLModel(structure, patch_size=p, seed=int(seed) + 7919 * k, **kwargs)
            for k, p in enumerate(sizes)
        ]
        self.patch_sizes = sizes
        self.temperature, self.floor = float(temperature), float(floor)
        self.weights = np.full(len(sizes), 1.0 / len(sizes))
        self.loo = np.zeros(len(sizes))
        first = self.members[0]
        for name in ("shape", "features", "device", "dim", "image"):
            setattr(self, name, getattr(first, name))
        self.patch_size = "auto"

    @property
    def best(self) -> DKLModel:
        """The member with the largest weight."""
        return self.members[int(np.argmax(self.weights))]

    @property
    def state(self):
        base = self.best.state
        if base is None:
            return None
        return MixtureState(
            **vars(base),
            patch_sizes=list(self.patch_sizes),
            weights=self.weights.tolist(),
            loo=self.loo.tolist(),
        )

    def member_loo(self, member: DKLModel) -> float:
        """Summed LOO log predictive density (nats, standardised units) of a fitted member."""
        _, chol, _, mu0 = member._posterior_cache()
        resid = member._gp.train_targets.double() - mu0
        return float(loo_log_density(chol.cpu().numpy(), resid.cpu().numpy()).sum())

    def fit(self, indices, values, *, iterations=None):
        for m in self.members:
            m.fit(indices, values, iterations=iterations)
        self.loo = np.array([self.member_loo(m) for m in self.members])
        self.weights = mixture_weights(self.loo, temperature=self.temperature, floor=self.floor)
        return self.state

    def predict(self, indices=None, *, standardized: bool = False):
        """Weighted mixture mean and std, units as :meth:`DKLModel.predict`."""
        # mixed in standardised units (the members share them): the floor is then relative
        preds = [m.predict(indices, standardized=True) for m in self.members]
        w = self.weights[:, None]
        means = np.stack([p[0] for p in preds])
        second = np.stack([p[1] ** 2 for p in preds]) + means**2
        mean = (w * means).sum(0)
        std = np.sqrt(np.clip((w * second).sum(0) - mean**2, 1e-20, None))
        if standardized:
            return mean, std
        return mean * self._y_std + self._y_mean, std * self._y_std

    def sample(self, indices, n_samples: int, rng: np.random.Generator):
        which = rng.choice(len(self.members), size=n_samples, p=self.weights)
        out = [self.members[k].sample(indices, 1, rng)[0] for k in which]
        return np.stack(out)

    def embed(self) -> np.ndarray:
        """Embedding of the heaviest member, (H*W, dim)."""
        return self.best.embed()
