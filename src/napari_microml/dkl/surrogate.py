"""The surrogate contract of the active learner: :class:`Surrogate` and :class:`ModelState`.

:class:`~napari_microml.dkl.learner.ActiveLearner` talks to its model only through
:class:`Surrogate`; :class:`~napari_microml.dkl.model.DKLModel`,
:class:`~napari_microml.dkl.ensemble.DKLEnsemble` and
:class:`~napari_microml.dkl.ensemble.MultiScaleEnsemble` implement it. Candidates are the
pixels of the structure image, addressed by flat index ``row * W + col``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from napari_microml.dkl.warping import OutcomeTransform


@dataclass
class ModelState:
    """A JSON-friendly summary of the fitted surrogate (for logs).

    Attributes
    ----------
    n_train : int
        Number of measurements fitted.
    lengthscale : list of float
        ARD length-scales of the stationary kernel (embedding units).
    outputscale, noise : float
        Signal and noise variances (GP units).
    mll : float
        Exact marginal log-likelihood per point at the last optimiser step.
    iterations : int
        Optimiser iterations of the last fit.
    """

    n_train: int
    lengthscale: list
    outputscale: float
    noise: float
    mll: float
    iterations: int

    def as_dict(self) -> dict:
        """The summary as a dict of rounded plain numbers."""
        return {
            "n_train": self.n_train,
            "lengthscale": [round(float(v), 5) for v in self.lengthscale],
            "outputscale": round(float(self.outputscale), 5),
            "noise": round(float(self.noise), 6),
            "mll": round(float(self.mll), 5),
            "iterations": self.iterations,
        }


@runtime_checkable
class Surrogate(Protocol):
    """A probabilistic model of one measured value per pixel of a structure image.

    Values go in and come out in the measurement's units; the model's
    :attr:`outcome_transform` maps them to the GP's units (warped and standardised), in which
    acquisition functions score candidates (``standardized=True``).
    """

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the structure image: the candidate grid."""
        ...

    @property
    def image(self) -> np.ndarray:
        """The structure image, robustly scaled to about 0-1, float32 (H, W)."""
        ...

    @property
    def features(self) -> str:
        """Name of the feature map (``cnn``, ``pca_mlp``, ``mlp``, ``pca``, ``coords``)."""
        ...

    @property
    def device(self) -> Any:
        """The torch device the model runs on."""
        ...

    @property
    def outcome_transform(self) -> OutcomeTransform:
        """Measurement units to GP units (refitted on every :meth:`fit`)."""
        ...

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` has run."""
        ...

    @property
    def state(self) -> ModelState | None:
        """Summary of the last fit (``None`` before the first)."""
        ...

    def fit(
        self, indices: np.ndarray, values: np.ndarray, *, iterations: int | None = None
    ) -> ModelState:
        """Fit (warm-started if fitted) on flat pixel ``indices`` (n,) and ``values`` (n,)."""
        ...

    def predict(
        self, indices: np.ndarray | None = None, *, standardized: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and std (m,) at flat ``indices`` (default: every pixel)."""
        ...

    def sample(self, indices: np.ndarray, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        """Joint posterior samples (n_samples, m) in GP units at flat ``indices`` (m,)."""
        ...

    def embed(self) -> np.ndarray:
        """The learned embedding of every pixel, (H*W, dim)."""
        ...
