"""Where measurements come from: the ``measure(coords) -> values or spectra`` protocol.

A *source* is any callable taking integer pixel coordinates ``(n, 2)`` as (row, col) and
returning either ``(n,)`` scalar values or ``(n, E)`` spectra (then a scalarizer turns them
into values). Three sources are provided:

* :class:`SpectrumImageSource` replays a recorded spectrum image ``(H, W, E)`` and reveals
  only the pixels asked for (``revealed`` records which), so a campaign can be benchmarked
  on data recorded in full;
* :class:`ScalarMapSource` replays a scalar ground-truth map ``(H, W)``;
* :class:`CallableSource` wraps a user function, e.g. a microscope driver::

      def measure(coords):
          out = []
          for row, col in coords:
              microscope.move_beam(row, col)           # your instrument API
              out.append(microscope.acquire_spectrum())
          return np.array(out)

      source = CallableSource(measure, shape=(512, 512))
      h = run_campaign(haadf, source, budget=100, n_initial=10, acquisition="ei",
                       scalarizer=PeakArea((925, 960), axis=energy_axis))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Source(Protocol):
    """``source(coords (n, 2) int) -> (n,) values or (n, E) spectra``; ``shape`` is (H, W)."""

    shape: tuple

    def __call__(self, coords: np.ndarray) -> np.ndarray: ...


def check_coords(coords, shape) -> np.ndarray:
    """Validate (n, 2) integer pixel coordinates inside ``shape``."""
    c = np.asarray(coords)
    if c.size == 0:
        return np.zeros((0, 2), int)
    c = c.reshape(-1, 2) if c.ndim == 1 and c.size == 2 else c
    if c.ndim != 2 or c.shape[1] != 2:
        raise ValueError(f"Coordinates must be an (n, 2) array of (row, col), not shape {c.shape}.")
    if not np.isfinite(c.astype(float)).all():
        raise ValueError("Coordinates contain NaN or inf.")
    ci = np.rint(c).astype(int)
    h, w = shape
    bad = (ci[:, 0] < 0) | (ci[:, 0] >= h) | (ci[:, 1] < 0) | (ci[:, 1] >= w)
    if bad.any():
        raise ValueError(
            f"Point {tuple(int(v) for v in ci[bad][0])} lies outside the {h}×{w} px image; "
            "coordinates are (row, col) pixels."
        )
    return ci


class SpectrumImageSource:
    """Replay a spectrum image ``cube`` (H, W, E); returns spectra or scalarised values.

    Parameters
    ----------
    cube : (H, W, E) array
    axis : (E,) array, optional
        Spectral axis in physical units (given to the scalarizer if it has none).
    scalarizer : callable, optional
        ``(n, E) -> (n,)``; without it the source returns spectra.
    """

    def __init__(self, cube, axis=None, scalarizer=None):
        cube = np.asarray(cube)
        if cube.ndim != 3:
            raise ValueError(
                f"A spectrum image must be 3D (H, W, E); got {cube.ndim}D data {cube.shape}."
            )
        if cube.dtype.kind not in "biuf":
            raise ValueError(f"The spectrum image must contain numbers, not {cube.dtype}.")
        self.cube = cube
        self.shape = cube.shape[:2]
        self.axis = None if axis is None else np.asarray(axis, float)
        if self.axis is not None and self.axis.size != cube.shape[2]:
            raise ValueError(
                f"The spectral axis has {self.axis.size} values but the spectrum image has "
                f"{cube.shape[2]} channels."
            )
        no_axis = getattr(scalarizer, "axis", "n/a") is None
        if scalarizer is not None and no_axis and self.axis is not None:
            scalarizer.axis = self.axis
        self.scalarizer = scalarizer
        self.revealed = np.zeros(self.shape, bool)
        self.last_spectra: np.ndarray | None = None

    def spectra(self, coords) -> np.ndarray:
        c = check_coords(coords, self.shape)
        self.revealed[c[:, 0], c[:, 1]] = True
        self.last_spectra = np.asarray(self.cube[c[:, 0], c[:, 1]], np.float64)
        return self.last_spectra

    def __call__(self, coords) -> np.ndarray:
        s = self.spectra(coords)
        return s if self.scalarizer is None else np.asarray(self.scalarizer(s), float).reshape(-1)

    def ground_truth(self) -> np.ndarray:
        """The scalarised map of the whole cube (for benchmarks; not revealed)."""
        if self.scalarizer is None:
            raise ValueError("A ground-truth map needs a scalarizer.")
        h, w, e = self.cube.shape
        flat = self.cube.reshape(h * w, e).astype(np.float64)
        return np.asarray(self.scalarizer(flat)).reshape(h, w)


class ScalarMapSource:
    """Replay a scalar ground-truth map (H, W)."""

    def __init__(self, values):
        values = np.asarray(values)
        if values.ndim != 2:
            raise ValueError(f"A scalar map must be 2D (H, W); got shape {values.shape}.")
        self.values = values.astype(np.float64)
        self.shape = values.shape
        self.revealed = np.zeros(self.shape, bool)
        self.last_spectra: np.ndarray | None = None

    def __call__(self, coords) -> np.ndarray:
        c = check_coords(coords, self.shape)
        self.revealed[c[:, 0], c[:, 1]] = True
        return self.values[c[:, 0], c[:, 1]].copy()

    def ground_truth(self) -> np.ndarray:
        return self.values


class CallableSource:
    """Wrap ``fn(coords (n, 2)) -> (n,) or (n, E)``; ``shape`` bounds-checks coordinates."""

    def __init__(self, fn: Callable, shape, scalarizer=None):
        if not callable(fn):
            raise ValueError("CallableSource needs a function measure(coords) -> values.")
        self.fn, self.shape, self.scalarizer = fn, tuple(shape), scalarizer
        self.last_spectra: np.ndarray | None = None

    def __call__(self, coords) -> np.ndarray:
        c = check_coords(coords, self.shape)
        out = np.asarray(self.fn(c), float)
        if out.ndim == 2:
            self.last_spectra = out
            if self.scalarizer is not None:
                out = np.asarray(self.scalarizer(out), float)
        return out


def as_source(measure, shape, scalarizer=None):
    """Turn an array or a callable into a source for an image of ``shape`` (H, W).

    A 2D array is a scalar map, a 3D array (H, W, E) a spectrum image. Shapes must match.
    """
    shape = tuple(int(s) for s in shape)
    if isinstance(measure, np.ndarray):
        if measure.ndim == 2:
            measure = ScalarMapSource(measure)
        elif measure.ndim == 3:
            measure = SpectrumImageSource(measure, scalarizer=scalarizer)
        else:
            raise ValueError(
                f"The measurement array has shape {measure.shape}; expected a scalar map (H, W) "
                "or a spectrum image (H, W, E)."
            )
    elif not callable(measure):
        raise ValueError("measure must be a callable measure(coords) or an array.")
    src_shape = getattr(measure, "shape", None)
    if src_shape is not None and tuple(src_shape)[:2] != shape:
        raise ValueError(
            f"The measurement source covers {tuple(src_shape)[:2]} pixels but the structure "
            f"image is {shape}; they must have the same (H, W)."
        )
    if src_shape is None:
        measure = CallableSource(measure, shape, scalarizer=scalarizer)
    return measure
