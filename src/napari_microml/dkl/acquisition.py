"""Acquisition functions and batch selection, as small composable objects (BoTorch style).

An acquisition function scores every candidate from the posterior mean and standard
deviation (and, for Thompson sampling, from joint posterior samples). ``maximize=False``
turns any of them into a minimiser by negating the objective. Batch selection
(:func:`select_batch`) spreads a batch of ``q`` points by local penalisation around points
already chosen (and, optionally, points measured recently); Thompson sampling draws one
posterior sample per batch point instead.

Scores are numpy arrays; higher is better for every acquisition.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy.special import erfcx, log_ndtr, ndtr

_SQRT_HALF_PI = np.sqrt(np.pi / 2)
_LOG_SQRT_2PI = 0.5 * np.log(2 * np.pi)


def log_h(z: np.ndarray) -> np.ndarray:
    """``log(phi(z) + z * Phi(z))`` computed without underflow (the log-EI kernel)."""
    z = np.asarray(z, np.float64)
    out = np.empty_like(z)
    big = z > -1.0
    zb = z[big]
    out[big] = np.log(np.exp(-0.5 * zb**2 - _LOG_SQRT_2PI) + zb * ndtr(zb))
    zs = np.maximum(z[~big], -1e6)
    # phi(z) * (1 - |z| * Phi(z)/phi(z)); Phi(z)/phi(z) = erfcx(-z/sqrt2) * sqrt(pi/2)
    inner = 1.0 + zs * erfcx(-zs / np.sqrt(2)) * _SQRT_HALF_PI
    log_inner = np.where(inner > 1e-12, np.log(np.maximum(inner, 1e-300)), -2.0 * np.log(-zs))
    out[~big] = -0.5 * zs**2 - _LOG_SQRT_2PI + log_inner
    return out


@dataclass
class AcquisitionFunction:
    """Base class. ``maximize`` selects the direction of the objective."""

    maximize: bool = True
    needs_samples = False
    name = "base"

    def _signed(self, mean, best):
        mean = np.asarray(mean, np.float64)
        if self.maximize:
            return mean, best
        return -mean, (None if best is None else -best)

    def _improvement_z(self, mean, std, best, xi):
        """Standardised improvement z = (mean - best - xi) / std in the signed (maximise) frame,
        the incumbent defaulting to the best mean; returns ``(z, std)``."""
        mean, best = self._signed(mean, best)
        std = np.maximum(np.asarray(std, np.float64), 1e-12)
        if best is None:
            best = float(np.max(mean))
        return (mean - best - xi) / std, std

    def __call__(self, mean, std, best=None, samples=None) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


@dataclass
class LogExpectedImprovement(AcquisitionFunction):
    """log EI(x) = log E[max(f(x) - best - xi, 0)], numerically stable far from the incumbent."""

    xi: float = 0.0
    name = "ei"

    def __call__(self, mean, std, best=None, samples=None):
        z, std = self._improvement_z(mean, std, best, self.xi)
        return np.log(std) + log_h(z)


@dataclass
class UpperConfidenceBound(AcquisitionFunction):
    """UCB(x) = mean + sqrt(beta) * std (BoTorch convention)."""

    beta: float = 4.0
    name = "ucb"

    def __call__(self, mean, std, best=None, samples=None):
        mean, _ = self._signed(mean, best)
        return mean + np.sqrt(self.beta) * np.asarray(std, np.float64)


@dataclass
class ProbabilityOfImprovement(AcquisitionFunction):
    """log PI(x) = log P(f(x) > best + xi)."""

    xi: float = 0.0
    name = "pi"

    def __call__(self, mean, std, best=None, samples=None):
        z, _ = self._improvement_z(mean, std, best, self.xi)
        return log_ndtr(z)


@dataclass
class ThompsonSampling(AcquisitionFunction):
    """Score = one joint posterior sample (row ``k`` of ``samples`` for the k-th batch point)."""

    name = "ts"
    needs_samples = True

    def __call__(self, mean, std, best=None, samples=None):
        if samples is None:
            raise ValueError("Thompson sampling needs posterior samples.")
        samples = np.atleast_2d(np.asarray(samples, np.float64))
        return samples if self.maximize else -samples


@dataclass
class PosteriorStdDev(AcquisitionFunction):
    """Pure exploration: the posterior standard deviation (direction-free)."""

    name = "uncertainty"

    def __call__(self, mean, std, best=None, samples=None):
        return np.asarray(std, np.float64).copy()


_NAMES = {
    "ei": LogExpectedImprovement,
    "logei": LogExpectedImprovement,
    "log_ei": LogExpectedImprovement,
    "ucb": UpperConfidenceBound,
    "pi": ProbabilityOfImprovement,
    "ts": ThompsonSampling,
    "thompson": ThompsonSampling,
    "uncertainty": PosteriorStdDev,
    "std": PosteriorStdDev,
    "max_variance": PosteriorStdDev,
}
ACQUISITIONS = ("ei", "ucb", "pi", "ts", "uncertainty", "random")


def get_acquisition(acquisition, *, maximize: bool = True, **kwargs) -> AcquisitionFunction | None:
    """An :class:`AcquisitionFunction` from a name (``ei``, ``ucb``, ``pi``, ``ts``,
    ``uncertainty``) or an existing object; ``"random"`` returns ``None`` (random sampling)."""
    if isinstance(acquisition, AcquisitionFunction):
        return acquisition
    name = str(acquisition).lower()
    if name == "random":
        return None
    if name not in _NAMES:
        raise ValueError(
            f"Unknown acquisition {acquisition!r}: choose one of {', '.join(ACQUISITIONS)}."
        )
    cls = _NAMES[name]
    names = {f.name for f in dataclasses.fields(cls)}
    allowed = {k: v for k, v in kwargs.items() if k in names}
    return cls(maximize=maximize, **allowed)


def distance_penalty(coords: np.ndarray, centres: np.ndarray, radius: float) -> np.ndarray:
    """Local-penalisation factor in [0, 1): ``prod_j (1 - exp(-d_j^2 / 2 r^2))``."""
    coords = np.asarray(coords, np.float64).reshape(-1, 2)
    centres = np.asarray(centres, np.float64).reshape(-1, 2)
    factor = np.ones(len(coords))
    if radius <= 0 or len(centres) == 0:
        return factor
    for c in centres:
        d2 = np.sum((coords - c) ** 2, axis=1)
        factor *= 1.0 - np.exp(-d2 / (2.0 * radius**2))
    return factor


def _to_unit(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Map finite scores on ``valid`` to [0, 1] (rank-preserving), others to -1."""
    out = np.full(scores.shape, -1.0)
    s = scores[valid]
    if s.size:
        lo, hi = np.min(s), np.max(s)
        out[valid] = (s - lo) / (hi - lo) if hi > lo else 1.0
    return out


def select_batch(
    scores: np.ndarray,
    coords: np.ndarray,
    q: int,
    *,
    available: np.ndarray | None = None,
    radius: float = 3.0,
    recent: np.ndarray | None = None,
    recent_radius: float = 0.0,
) -> np.ndarray:
    """Choose ``q`` candidate indices from acquisition ``scores``.

    Parameters
    ----------
    scores : (N,) or (q', N)
        One row: greedy local penalisation (each chosen point multiplies the shifted scores
        by :func:`distance_penalty` with ``radius`` px). Several rows (Thompson samples): the
        k-th point is the arg-max of row ``k`` among points not yet chosen.
    coords : (N, 2) candidate (row, col) in pixels.
    available : (N,) bool, optional
        Candidates that may be chosen (e.g. not yet measured).
    recent, recent_radius : optional
        Coordinates measured recently, penalised within ``recent_radius`` px.

    Returns
    -------
    (q,) int indices into the candidates (fewer if fewer are available).
    """
    scores = np.atleast_2d(np.asarray(scores, np.float64))
    n = scores.shape[1]
    avail = np.ones(n, bool) if available is None else np.asarray(available, bool).copy()
    avail &= np.isfinite(scores).all(axis=0)
    q = int(min(q, avail.sum()))
    chosen: list[int] = []
    if q <= 0:
        return np.zeros(0, int)
    base_factor = np.ones(n)
    if recent is not None and recent_radius > 0 and len(recent):
        base_factor = distance_penalty(coords, recent, recent_radius)
    if scores.shape[0] > 1:  # Thompson batch: one sample per point
        for k in range(q):
            row = scores[k % scores.shape[0]]
            u = _to_unit(row, avail) * base_factor
            u[~avail] = -np.inf
            i = int(np.argmax(u))
            chosen.append(i)
            avail[i] = False
        return np.asarray(chosen, int)
    u = _to_unit(scores[0], avail) * base_factor
    for _ in range(q):
        cur = np.where(avail, u, -np.inf)
        i = int(np.argmax(cur))
        chosen.append(i)
        avail[i] = False
        u = u * distance_penalty(coords, coords[i], radius)
    return np.asarray(chosen, int)
