"""Seed ensemble of DKL surrogates (the active learner's default: 3 members)."""
from __future__ import annotations

import numpy as np

from napari_microml.dkl.model import DKLModel


class DKLEnsemble:
    """Average of ``n_models`` :class:`DKLModel` surrogates that differ only in their seed.

    The posterior is the equal-weight mixture of the members' Gaussians (mean of means;
    variance = mean of variances + variance of means), which steadies the suggestions
    against one unlucky network initialisation. Thompson samples come from one member,
    drawn at random. Same interface as :class:`DKLModel` (``fit``, ``predict``, ``sample``,
    ``embed``, ``state``). All members share the candidate inputs (computed once).
    """

    def __init__(self, structure, *, n_models: int = 3, seed: int = 0, **kwargs):
        import copy

        n_models = int(n_models)
        if n_models < 1:
            raise ValueError(f"n_models must be at least 1, not {n_models}.")
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

    @property
    def fitted(self) -> bool:
        return self.members[0].fitted

    @property
    def _y_mean(self):
        return self.members[0]._y_mean

    @property
    def _y_std(self):
        return self.members[0]._y_std

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
