"""Ensembles of DKL surrogates: seeds (the active learner's default: 3 members) and scales.

:class:`DKLEnsemble` averages members that differ only in their seed;
:class:`MultiScaleEnsemble` (``ActiveLearner(patch_size="auto")``) mixes members that see
patches of different sizes, weighted by their leave-one-out predictive density. Both implement
:class:`~napari_microml.dkl.surrogate.Surrogate`: the members share one outcome transform,
fitted once per fit, and are mixed in GP units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_microml.dkl.model import DKLModel
from napari_microml.dkl.surrogate import ModelState
from napari_microml.dkl.warping import OutcomeTransform
from napari_microml.runtime.validate import check_number

SEED_STEP = 7919  # member k's seed is seed + SEED_STEP * k (a prime far from small seeds)


def member_seed(seed: int, k: int) -> int:
    """Network seed of ensemble member ``k`` (member 0 keeps ``seed``)."""
    return int(seed) + SEED_STEP * int(k)


class _Mixture:
    """What every ensemble shares: members fitted together on the same transformed data."""

    def __init__(self, members: Sequence[DKLModel]) -> None:
        if not members:
            raise ValueError("An ensemble needs at least one member.")
        self.members = list(members)
        self.outcome_transform: OutcomeTransform = self.members[0].outcome_transform
        for m in self.members:  # one transform: the members' GP units are the same
            m.outcome_transform = self.outcome_transform

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the structure image."""
        return self.members[0].shape

    @property
    def image(self) -> np.ndarray:
        """The scaled structure image (H, W)."""
        return self.members[0].image

    @property
    def features(self) -> str:
        """The members' feature map."""
        return self.members[0].features

    @property
    def device(self) -> Any:
        """The members' torch device."""
        return self.members[0].device

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` has run."""
        return self.members[0].fitted

    @property
    def state(self) -> ModelState | None:
        """Summary of the last fit (``None`` before the first)."""
        raise NotImplementedError

    def fit(
        self, indices: np.ndarray, values: np.ndarray, *, iterations: int | None = None
    ) -> ModelState:
        """Fit every member on measured ``values`` (n,) at flat pixel ``indices`` (n,).

        The outcome transform is fitted once; ``iterations`` as :meth:`DKLModel.fit`.
        Returns the ensemble's :class:`~napari_microml.dkl.surrogate.ModelState`.
        """
        targets = self.outcome_transform.fit(values)
        for m in self.members:
            m.fit_transformed(indices, targets, iterations=iterations)
        self._after_fit()
        state = self.state
        assert state is not None  # the members are fitted
        return state

    def _after_fit(self) -> None:
        """Hook run after every fit (the multi-scale ensemble updates its weights)."""

    def _mix(self, means: np.ndarray, stds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mixture mean and std (m,) of the members' Gaussians (M, m), in GP units."""
        raise NotImplementedError

    def _pick(self, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        """Member of each Thompson sample, (n_samples,) int."""
        raise NotImplementedError

    def predict(
        self, indices: np.ndarray | None = None, *, standardized: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mixture mean and std (m,) at flat ``indices`` (default all; units as
        :meth:`DKLModel.predict`); the members are mixed in GP units."""
        preds = [m.predict(indices, standardized=True) for m in self.members]
        mean, std = self._mix(np.stack([p[0] for p in preds]), np.stack([p[1] for p in preds]))
        if standardized:
            return mean, std
        return self.outcome_transform.untransform(mean, std)

    def sample(self, indices: np.ndarray, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        """Thompson samples (n_samples, m) in GP units, each from one member (:meth:`_pick`)."""
        which = self._pick(n_samples, rng)
        return np.stack([self.members[k].sample(indices, 1, rng)[0] for k in which])


class DKLEnsemble(_Mixture):
    """Average of ``n_models`` :class:`DKLModel` surrogates that differ only in their seed.

    The posterior is the equal-weight mixture of the members' Gaussians (mean of means;
    variance = mean of variances + variance of means), which steadies the suggestions
    against one unlucky network initialisation. Thompson samples come from one member,
    drawn at random. All members share the candidate inputs (computed once).

    Parameters
    ----------
    model : DKLModel
        The first member (unfitted); the others are its twins with seeds
        :func:`member_seed` ``(model.seed, k)``.
    n_models : int
        Number of members.
    """

    def __init__(self, model: DKLModel, *, n_models: int = 3) -> None:
        n_models = check_number(n_models, "n_models", low=1, integer=True)
        twins = [model.with_seed(member_seed(model.seed, k)) for k in range(1, n_models)]
        super().__init__([model, *twins])

    @property
    def patch_size(self) -> int:
        """The members' patch side (px)."""
        return self.members[0].patch_size

    @property
    def state(self) -> ModelState | None:
        """The first member's :class:`~napari_microml.dkl.surrogate.ModelState`."""
        return self.members[0].state

    def _mix(self, means: np.ndarray, stds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        var = (stds**2).mean(0) + means.var(0)
        return means.mean(0), np.sqrt(var)

    def _pick(self, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(len(self.members), size=n_samples)

    def embed(self) -> np.ndarray:
        """Embedding of the first member, (H*W, dim)."""
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


class MultiScaleEnsemble(_Mixture):
    """Mixture of :class:`DKLModel` members that see patches of different sizes.

    After every fit each member is scored by the sum of its exact-GP leave-one-out log
    predictive densities of the measurements (GP units,
    :meth:`DKLModel.leave_one_out`), and the mixture weights are
    ``softmax(score / temperature)`` floored at ``floor`` per member
    (:func:`mixture_weights`), so a scale is never discarded on a handful of points.
    ``predict`` returns the weighted Gaussian mixture's mean and std; ``sample`` (Thompson)
    draws each sample's member by weight.

    Parameters
    ----------
    members : sequence of DKLModel
        One unfitted model per patch side (:func:`auto_patch_sizes`), each with its own seed
        (:func:`member_seed`); they share the first one's outcome transform.
    temperature : float
        Tempering of the LOO scores (nats).
    floor : float
        Minimum weight of each member.
    """

    def __init__(
        self, members: Sequence[DKLModel], *, temperature: float = 1.0, floor: float = 0.1
    ) -> None:
        super().__init__(members)
        check_number(temperature, "auto_temperature", low=0, low_open=True)
        check_number(floor, "auto_floor (minimum weight of a patch size)", low=0, high=1)
        self.patch_sizes = [m.patch_size for m in self.members]
        self.temperature, self.floor = float(temperature), float(floor)
        self.weights = np.full(len(self.members), 1.0 / len(self.members))
        self.loo = np.zeros(len(self.members))
        self.patch_size = "auto"

    @property
    def best(self) -> DKLModel:
        """The member with the largest weight."""
        return self.members[int(np.argmax(self.weights))]

    @property
    def state(self) -> MixtureState | None:
        """The heaviest member's state plus every member's patch size, weight and LOO score."""
        base = self.best.state
        if base is None:
            return None
        return MixtureState(
            **vars(base),
            patch_sizes=list(self.patch_sizes),
            weights=self.weights.tolist(),
            loo=self.loo.tolist(),
        )

    def _after_fit(self) -> None:
        self.loo = np.array([float(m.leave_one_out().sum()) for m in self.members])
        self.weights = mixture_weights(self.loo, temperature=self.temperature, floor=self.floor)

    def _mix(self, means: np.ndarray, stds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # in GP units (the members share them): the floor is then relative
        w = self.weights[:, None]
        second = stds**2 + means**2
        mean = (w * means).sum(0)
        return mean, np.sqrt(np.clip((w * second).sum(0) - mean**2, 1e-20, None))

    def _pick(self, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(len(self.members), size=n_samples, p=self.weights)

    def embed(self) -> np.ndarray:
        """Embedding of the heaviest member, (H*W, dim)."""
        return self.best.embed()
