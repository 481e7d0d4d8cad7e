"""Scalarizers: turn a measured spectrum (or loop) into the one number the learner optimises.

Every scalarizer is a callable ``s(spectra) -> (n,)`` taking ``(n, E)`` or ``(E,)`` arrays.
Windows are given in the units of the spectral ``axis`` (eV, V, …); when ``axis`` is ``None``
they are channel indices. Any plain callable can be wrapped with :class:`CallableScalarizer`.

Examples
--------
>>> import numpy as np
>>> axis = np.arange(700.0, 2000.0, 8.0)            # eV
>>> cu = PeakArea((920.0, 1000.0), axis=axis, background="linear")
>>> cu(np.ones((3, axis.size))).shape
(3,)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import median_filter


def _as_2d(spectra) -> tuple[np.ndarray, bool]:
    arr = np.asarray(spectra, np.float64)
    if arr.ndim == 1:
        return arr[None], True
    if arr.ndim != 2:
        raise ValueError(f"Spectra must be (n, E) or (E,), not an array of shape {arr.shape}.")
    return arr, False


def _axis(axis, n: int) -> np.ndarray:
    if axis is None:
        return np.arange(n, dtype=np.float64)
    axis = np.asarray(axis, np.float64).ravel()
    if axis.size != n:
        raise ValueError(
            f"The spectral axis has {axis.size} values but the spectra have {n} channels."
        )
    return axis


def window_mask(axis: np.ndarray, window) -> np.ndarray:
    """Boolean mask of channels with ``lo <= axis <= hi``; ValueError if the window is empty."""
    lo, hi = sorted(float(v) for v in window)
    mask = (axis >= lo) & (axis <= hi)
    if not mask.any():
        raise ValueError(
            f"The window {lo:g}–{hi:g} contains no channel of the spectral axis "
            f"({axis.min():g}–{axis.max():g})."
        )
    return mask


@dataclass
class Scalarizer:
    """Base class: ``axis`` (E,) in physical units or ``None`` for channel indices."""

    axis: np.ndarray | None = field(default=None, kw_only=True, repr=False)
    name = "scalarizer"

    def __call__(self, spectra) -> np.ndarray | float:
        arr, single = _as_2d(spectra)
        out = self.compute(arr, _axis(self.axis, arr.shape[1]))
        return float(out[0]) if single else out

    def compute(self, spectra: np.ndarray, axis: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


def _window_signal(spectra, axis, window, background):
    mask = window_mask(axis, window)
    x, y = axis[mask], spectra[:, mask]
    if background == "linear" and mask.sum() >= 2:
        slope = (y[:, -1] - y[:, 0]) / (x[-1] - x[0])
        y = y - (y[:, :1] + slope[:, None] * (x[None] - x[0]))
    elif background not in (None, "none", "linear"):
        raise ValueError(f"Unknown background {background!r}: use None or 'linear'.")
    return x, y


@dataclass
class PeakHeight(Scalarizer):
    """Maximum of the spectrum in ``window`` (optionally above a linear background)."""

    window: tuple = (0.0, 1.0)
    background: str | None = None
    name = "peak height"

    def compute(self, spectra, axis):
        _, y = _window_signal(spectra, axis, self.window, self.background)
        return y.max(axis=1)


@dataclass
class PeakArea(Scalarizer):
    """Integral (trapezoid, axis units) of the spectrum in ``window``."""

    window: tuple = (0.0, 1.0)
    background: str | None = None
    name = "peak area"

    def compute(self, spectra, axis):
        x, y = _window_signal(spectra, axis, self.window, self.background)
        if len(x) < 2:
            return y[:, 0]
        return np.trapezoid(y, x, axis=1)


@dataclass
class PeakCentroid(Scalarizer):
    """Intensity-weighted mean position (axis units) in ``window`` (negative parts clipped)."""

    window: tuple = (0.0, 1.0)
    background: str | None = None
    name = "peak centroid"

    def compute(self, spectra, axis):
        x, y = _window_signal(spectra, axis, self.window, self.background)
        y = np.clip(y, 0, None)
        w = y.sum(axis=1)
        cen = (y * x[None]).sum(axis=1) / np.where(w > 0, w, 1)
        return np.where(w > 0, cen, x.mean())


@dataclass
class EdgeIntensity(Scalarizer):
    """Core-loss edge intensity: integral in ``window`` above a power-law background.

    The background ``A * E**-r`` is fitted (least squares in log-log) to the ``pre_edge``
    window and extrapolated under the edge, as in standard EELS quantification.
    """

    window: tuple = (0.0, 1.0)
    pre_edge: tuple = (0.0, 1.0)
    name = "edge intensity"

    def compute(self, spectra, axis):
        pre = window_mask(axis, self.pre_edge)
        win = window_mask(axis, self.window)
        if pre.sum() < 2:
            raise ValueError("The pre-edge window needs at least two channels.")
        if np.any(axis[pre] <= 0):
            raise ValueError("A power-law background needs a positive spectral axis (e.g. eV).")
        lx = np.log(axis[pre])
        counts = spectra[:, pre]
        floor = 1e-6 * np.abs(counts).max(axis=1, keepdims=True)  # relative: any units
        ly = np.log(np.clip(counts, np.maximum(floor, np.finfo(float).tiny), None))
        a = np.column_stack([np.ones_like(lx), lx])
        coef, *_ = np.linalg.lstsq(a, ly.T, rcond=None)  # (2, n)
        bg = np.exp(coef[0][:, None] + coef[1][:, None] * np.log(axis[win])[None])
        sig = spectra[:, win] - bg
        x = axis[win]
        return np.trapezoid(sig, x, axis=1) if len(x) > 1 else sig[:, 0]


@dataclass
class WindowRatio(Scalarizer):
    """Ratio of the areas of two windows, ``area(numerator) / area(denominator)``.

    A denominator smaller than ``eps`` in magnitude is replaced by ``eps`` (default: 1e-12 ×
    the largest denominator, so the guard does not depend on the spectra's units).
    """

    numerator: tuple = (0.0, 1.0)
    denominator: tuple = (1.0, 2.0)
    background: str | None = None
    eps: float | None = None
    name = "window ratio"

    def compute(self, spectra, axis):
        a = PeakArea(self.numerator, self.background).compute(spectra, axis)
        b = PeakArea(self.denominator, self.background).compute(spectra, axis)
        eps = 1e-12 * float(np.abs(b).max(initial=0.0)) if self.eps is None else self.eps
        eps = eps or np.finfo(float).tiny
        return a / np.where(np.abs(b) > eps, b, eps)


@dataclass
class LoopArea(Scalarizer):
    """Area enclosed by a hysteresis loop (e.g. PFM/BEPS response vs. bias).

    ``axis`` is the bias waveform (one value per point in acquisition order, e.g. the
    triangular 0 → +V → 0 → −V → 0 sweep). Spikes are removed with a median filter of
    ``median_size`` points along the loop (default 5: BEPS spikes often span 2–3 points)
    before the shoelace area ``|∮ R dV|`` is taken.
    """

    median_size: int = 5
    name = "loop area"

    def despiked(self, spectra):
        """``spectra`` (n, E) with the spikes median-filtered out: the loops the area is taken
        of (the dock plots these, so one spike does not flatten the loop on screen)."""
        y = np.asarray(spectra, float)
        if self.median_size and self.median_size > 1:
            y = median_filter(y, size=(1, int(self.median_size)), mode="wrap")
        return y

    def compute(self, spectra, axis):
        y = self.despiked(spectra)
        v = axis[None]
        v2, y2 = np.roll(v, -1, axis=1), np.roll(y, -1, axis=1)
        return 0.5 * np.abs(np.sum(v * y2 - v2 * y, axis=1))


@dataclass
class CallableScalarizer(Scalarizer):
    """Wrap any ``fn(spectra (n, E), axis (E,)) -> (n,)`` (or ``fn(spectrum) -> float``)."""

    fn: Callable | None = None
    per_spectrum: bool = False
    name = "callable"

    def compute(self, spectra, axis):
        if self.fn is None:
            raise ValueError("CallableScalarizer needs a function.")
        if self.per_spectrum:
            return np.array([float(self.fn(s)) for s in spectra])
        return np.asarray(self.fn(spectra, axis), np.float64).reshape(len(spectra))


SCALARIZERS = {
    "peak height": PeakHeight,
    "peak area": PeakArea,
    "peak centroid": PeakCentroid,
    "window ratio": WindowRatio,
    "edge intensity": EdgeIntensity,
    "loop area": LoopArea,
}


def as_scalarizer(obj) -> Callable | None:
    """``None`` → ``None``; a Scalarizer or callable is returned as is."""
    if obj is None or isinstance(obj, Scalarizer):
        return obj
    if callable(obj):
        return obj
    raise ValueError(f"A scalarizer must be callable, not {type(obj).__name__}.")
