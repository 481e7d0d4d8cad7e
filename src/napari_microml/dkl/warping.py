"""Outcome transforms: measured values to the GP's units (monotone warp, then standardise).

A GP assumes Gaussian values; measured properties are often skewed (an edge intensity that is
near zero almost everywhere and large in a few precipitates). A monotone warp refitted on the
measurements at every fit keeps the order of the values, so the best point stays the best,
while making them look more Gaussian to the GP:

* ``"none"``: the values as measured (standardised by the model);
* ``"power"``: Yeo-Johnson power transform of the standardised values, its exponent chosen by
  maximum likelihood (as scikit-learn's ``PowerTransformer`` and HEBO do);
* ``"rank"``: normal scores of the ranks (a Gaussian copula), ties averaged.

Every warp maps values to warped units (``forward``) and back (``inverse``), so posterior maps
are shown in the measurement's units. :class:`OutcomeTransform` chains a warp with
standardisation (as BoTorch's ``ChainedOutcomeTransform(Power, Standardize)``); every surrogate
holds one.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

TARGET_WARPS = ("none", "power", "rank")


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


class Warp(Protocol):
    """A monotone map of measured values, refitted on the measurements."""

    name: str

    def fit(self, values: np.ndarray) -> np.ndarray:
        """Fit on ``values`` (n,) and return them warped (n,)."""
        ...

    def forward(self, values: np.ndarray) -> np.ndarray:
        """Measurement units to warped units."""
        ...

    def inverse(self, warped: np.ndarray) -> np.ndarray:
        """Warped units to measurement units."""
        ...


def make_warp(name: str) -> Warp:
    """A fresh, unfitted warp called ``name`` (one of ``TARGET_WARPS``)."""
    if name not in TARGET_WARPS:
        raise ValueError(f"target_warp must be one of {', '.join(TARGET_WARPS)}, not {name!r}.")
    warps: dict[str, type[Warp]] = {"none": IdentityWarp, "power": PowerWarp, "rank": RankWarp}
    return warps[name]()


class IdentityWarp:
    name = "none"

    def fit(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, float)

    def forward(self, values):
        return np.asarray(values, float)

    def inverse(self, warped):
        return np.asarray(warped, float)


class PowerWarp:
    """Yeo-Johnson transform of ``(y - mean) / sd`` with the maximum-likelihood exponent."""

    name = "power"

    def __init__(self):
        self.mean, self.sd, self.lmbda = 0.0, 1.0, 1.0
        self.bounds = (-np.inf, np.inf)

    def fit(self, values: np.ndarray) -> np.ndarray:
        from scipy import stats

        y = np.asarray(values, float)
        self.mean, self.sd = standardization(y)  # no floor in the data's units
        x = (y - self.mean) / self.sd
        self.bounds = (float(x.min() - np.ptp(x)), float(x.max() + np.ptp(x)))
        if len(y) >= 3 and np.ptp(x) > 0:
            with np.errstate(all="ignore"):
                lmbda = float(stats.yeojohnson_normmax(x))
            self.lmbda = float(np.clip(lmbda, -3.0, 5.0)) if np.isfinite(lmbda) else 1.0
        else:
            self.lmbda = 1.0
        return self.forward(y)

    def forward(self, values):
        from scipy import stats

        x = (np.asarray(values, float) - self.mean) / self.sd
        return stats.yeojohnson(x, lmbda=self.lmbda)

    def inverse(self, warped):
        w = np.asarray(warped, float)
        lam = self.lmbda
        x = np.empty_like(w)
        pos = w >= 0
        with np.errstate(all="ignore"):
            if abs(lam) < 1e-8:
                x[pos] = np.expm1(w[pos])
            else:  # beyond the transform's range (lam < 0) the value is clipped to its bound
                x[pos] = np.power(np.clip(lam * w[pos] + 1, 1e-12, None), 1 / lam) - 1
            if abs(lam - 2) < 1e-8:
                x[~pos] = -np.expm1(-w[~pos])
            else:
                x[~pos] = 1 - np.power(np.clip(1 - (2 - lam) * w[~pos], 1e-12, None), 1 / (2 - lam))
        # a GP mean far beyond the measurements would map to huge values (or none, lam < 0)
        return np.clip(x, *self.bounds) * self.sd + self.mean


class RankWarp:
    """Normal scores of the ranks; values between and beyond the measured ones are mapped by
    linear interpolation (extrapolation with the end slopes)."""

    name = "rank"

    def __init__(self):
        self.y = np.array([0.0, 1.0])
        self.z = np.array([0.0, 1.0])

    def fit(self, values: np.ndarray) -> np.ndarray:
        from scipy import stats

        y = np.asarray(values, float)
        if len(y) < 2 or np.ptp(y) == 0:  # nothing to rank: a unit shift through the value
            low = float(y[0]) if len(y) else 0.0
            self.y, self.z = np.array([low, low + 1.0]), np.array([0.0, 1.0])
            return self.forward(y)
        ranks = stats.rankdata(y)  # ties averaged
        scores = stats.norm.ppf((ranks - 0.5) / len(y))
        self.y, first = np.unique(y, return_index=True)
        self.z = scores[first]
        return scores

    @staticmethod
    def _interp(x, xp, fp):
        x = np.asarray(x, float)
        shape, x = x.shape, x.reshape(-1)
        out = np.interp(x, xp, fp)
        lo, hi = x < xp[0], x > xp[-1]
        out[lo] = fp[0] + (x[lo] - xp[0]) * (fp[1] - fp[0]) / (xp[1] - xp[0])
        out[hi] = fp[-1] + (x[hi] - xp[-1]) * (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
        return out.reshape(shape)

    def forward(self, values):
        return self._interp(values, self.y, self.z)

    def inverse(self, warped):
        return self._interp(warped, self.z, self.y)


def unwarp_moments(warp, mean_w: np.ndarray, std_w: np.ndarray):
    """Posterior mean and sd in the measurement's units from those in warped units: the median
    maps through the inverse warp, the sd is half the width of the mapped ±1 sd band."""
    if warp.name == "none":
        return mean_w, std_w
    mean = warp.inverse(mean_w)
    std = 0.5 * (warp.inverse(mean_w + std_w) - warp.inverse(mean_w - std_w))
    return mean, np.abs(std)


class OutcomeTransform:
    """Measurement units to the GP's units and back: a monotone warp, then standardisation.

    :meth:`fit` refits both on the measurements at every model fit; the surrogate trains on
    ``fit(values)`` and reports its posterior through :meth:`untransform`, so acquisition
    functions work in GP units and maps are shown in the measurement's units.

    Parameters
    ----------
    warp : {"none", "power", "rank"}
        The warp (:func:`make_warp`); ``"none"`` only standardises.
    """

    def __init__(self, warp: str = "none") -> None:
        self.warp = make_warp(warp)
        self.mean, self.std = 0.0, 1.0

    def fit(self, values: np.ndarray) -> np.ndarray:
        """Fit the warp and the standardisation on ``values`` (n,); return them in GP units."""
        warped = np.asarray(self.warp.fit(np.asarray(values, np.float64)), np.float64).ravel()
        self.mean, self.std = standardization(warped)
        return (warped - self.mean) / self.std

    def forward(self, values: np.ndarray) -> np.ndarray:
        """Values (any shape) in measurement units to GP units."""
        return (np.asarray(self.warp.forward(values), np.float64) - self.mean) / self.std

    def untransform(self, mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and std in GP units to measurement units (:func:`unwarp_moments`)."""
        return unwarp_moments(self.warp, mean * self.std + self.mean, std * self.std)
