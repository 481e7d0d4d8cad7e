"""The one place that knows where a spectrum image keeps its spectral axis.

The reader records the axis in ``metadata['napari_microml']['spectral_axis']`` as
``{'scale', 'offset', 'units', 'name'}`` (or ``'values'`` for a non-uniform axis)
plus, when the data are not laid out with the spectral axis last, ``'index'`` (the array
axis that is spectral). In napari a spectrum image
(H, W, E) is laid out energy-first, (E, H, W), so the image plane is what the canvas shows,
energy is a slider, and 2D result maps (H, W) line up with the image plane (napari aligns the
trailing axes of layers). Line scans (N, E) keep energy last: they show as a position × energy
image. The tools and the CLI always compute on spectra with the axis last
(:func:`spectra_last`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np

KEY = "napari_microml"


@dataclass(frozen=True)
class SpectralAxis:
    """A spectral axis: ``values`` (E,) in ``units`` (channel numbers when the file has none)
    and the array axis ``index`` (non-negative) it occupies in the data."""

    values: np.ndarray
    units: str
    name: str
    index: int
    calibrated: bool

    @property
    def label(self) -> str:
        """ "Energy loss (eV)"-style text for controls and plot axes."""
        return f"{self.name} ({self.units})" if self.units else self.name


def _record(metadata) -> dict | None:
    meta = (metadata or {}).get(KEY) if isinstance(metadata, dict) else None
    spec = meta.get("spectral_axis") if isinstance(meta, dict) else None
    return spec if isinstance(spec, dict) and spec else None


def spectral_axis(metadata, shape, *, required: bool = False) -> SpectralAxis | None:
    """The spectral axis of data of ``shape`` described by layer/reader ``metadata``.

    Without a record: ``None``, or (``required``) channel numbers along the last axis.
    """
    shape = tuple(int(s) for s in shape)
    spec = _record(metadata)
    if spec is None:
        if not required:
            return None
        n = shape[-1]
        return SpectralAxis(np.arange(n, dtype=float), "channel", "channel", len(shape) - 1, False)
    index = int(spec.get("index", -1)) % len(shape)
    n = shape[index]
    if spec.get("values") is not None:  # a non-uniform axis, e.g. a BEPS bias waveform
        values = np.asarray(spec["values"], float).ravel()
        if values.size != n:
            raise ValueError(
                f"The spectral axis lists {values.size} values but the data have "
                f"{n} channels along axis {index}."
            )
    else:
        values = float(spec.get("offset", 0.0)) + float(spec.get("scale", 1.0)) * np.arange(n)
    units = str(spec.get("units") or "")
    return SpectralAxis(
        values,
        units if units != "pixel" else "channel",
        str(spec.get("name") or "spectral axis"),
        index,
        True,
    )


def spectra_last(data, metadata, *, required: bool = True):
    """``(data with the spectral axis last, SpectralAxis)`` - a view, so lazy data stay lazy.

    ``metadata`` is a layer's (or the reader's) metadata dict. Without a spectral-axis record
    the last axis is taken as channels (``required=False``: ``(data, None)`` instead).
    """
    ax = spectral_axis(metadata, np.shape(data), required=required)
    if ax is None or ax.index == np.ndim(data) - 1:
        return data, ax
    if hasattr(data, "compute"):
        import dask.array as da

        return da.moveaxis(data, ax.index, -1), ax
    return np.moveaxis(data, ax.index, -1), ax


def image_plane_layout(data, kwargs: dict):
    """Lay spectral data out for napari; returns ``(data, kwargs)``, other data unchanged.

    A spectrum image (…, H, W, E) goes energy-first (E, …, H, W), its axis record gains
    ``'index'`` and its contrast limits come from the slice shown first. A line scan (N, E)
    stays (N, E) but is drawn in channels with each spectrum a band ``E / 2N`` channels high:
    in physical units (nm × eV) it would be a hairline. Its position calibration moves to
    ``metadata['napari_microml']['line_axis']``.
    """
    spec = _record(kwargs.get("metadata"))
    ndim = np.ndim(data)
    if spec is None or kwargs.get("rgb") or ndim < 2:
        return data, kwargs
    if ndim == 2:
        return data, _line_scan_layout(data, kwargs, spec)
    src = int(spec.get("index", -1)) % ndim
    if src == 0:
        return data, _slice_contrast(data, kwargs)
    if hasattr(data, "compute"):
        import dask.array as da

        data = da.moveaxis(data, src, 0)
    else:
        data = np.moveaxis(data, src, 0)
    order = [src] + [i for i in range(ndim) if i != src]
    out = _slice_contrast(data, kwargs)
    for key in ("scale", "translate", "units", "axis_labels"):
        if key in out and out[key] is not None and len(out[key]) == ndim:
            out[key] = tuple(out[key][i] for i in order)
    meta = dict(out.get("metadata") or {})
    info = dict(meta.get(KEY) or {})
    info["spectral_axis"] = {**spec, "index": 0}
    meta[KEY] = info
    out["metadata"] = meta
    return data, out


def _slice_contrast(data, kwargs: dict) -> dict:
    """Contrast limits from the slice napari shows first (the middle energy channel), 1st to
    99th percentile of at most ~10⁶ of its pixels: limits over the whole cube are set by the
    zero-loss peak or the first channels and leave every other slice black."""
    if "contrast_limits" in kwargs:
        return dict(kwargs)
    plane = data[np.shape(data)[0] // 2]
    stride = max(1, int(np.ceil((np.size(plane) / 1e6) ** (1 / max(np.ndim(plane), 1)))))
    sample = plane[(slice(None, None, stride),) * np.ndim(plane)]
    values = np.asarray(sample.compute() if hasattr(sample, "compute") else sample, float)
    values = values[np.isfinite(values)]
    out = dict(kwargs)
    if values.size:
        lo, hi = np.percentile(values, [1, 99])
        if hi <= lo:  # a flat slice: any positive width shows it
            hi = lo + max(abs(lo), 1.0)
        out["contrast_limits"] = (float(lo), float(hi))
    return out


def sample_spectra(data, metadata, *, max_spectra: int = 4096):
    """A strided subsample of a spectrum image's spectra, cheap enough for the GUI thread
    (e.g. to choose a default window when a layer is picked).

    Parameters
    ----------
    data : array (any layout with one spectral axis)
        A layer's data; a lazy array is read only where the stride lands.
    metadata : dict
        The layer's metadata (spectral-axis record).
    max_spectra : int
        At most about this many spectra are read.

    Returns
    -------
    spectra : ndarray (N, E) float
        The sampled spectra, axis last.
    axis : SpectralAxis
        Their spectral axis.
    """
    ax = cast(SpectralAxis, spectral_axis(metadata, np.shape(data), required=True))
    shape = np.shape(data)
    spatial = [n for i, n in enumerate(shape) if i != ax.index]
    stride = 1
    while int(np.prod([-(-n // stride) for n in spatial])) > max_spectra:
        stride += 1
    key = tuple(
        slice(None) if i == ax.index else slice(None, None, stride) for i in range(len(shape))
    )
    sample = data[key]
    sample = np.asarray(sample.compute() if hasattr(sample, "compute") else sample, float)
    sample = np.moveaxis(sample, ax.index, -1)
    return sample.reshape(-1, sample.shape[-1]), ax


def spectral_layer(layer) -> bool:
    """True when a napari layer carries a spectral-axis record."""
    return _record(getattr(layer, "metadata", None)) is not None


def _line_scan_layout(data, kwargs: dict, spec: dict) -> dict:
    if int(spec.get("index", -1)) % 2 != 1:
        return kwargs
    n, length = np.shape(data)
    out = dict(kwargs)

    def first(key, default):
        value = out.get(key)
        return value[0] if value is not None and len(value) == 2 else default

    line = {
        "scale": float(first("scale", 1.0)),
        "offset": float(first("translate", 0.0)),
        "units": str(first("units", "pixel")),
        "name": str(first("axis_labels", "position")),
    }
    out["scale"] = (max(1.0, length / (2.0 * max(n, 1))), 1.0)
    if "contrast_limits" not in out and not hasattr(data, "compute"):
        lo, hi = np.percentile(np.asarray(data, float), [1, 99])  # a zero-loss peak would
        if hi > lo:  # otherwise leave everything else black
            out["contrast_limits"] = (float(lo), float(hi))
    out["translate"] = (0.0, 0.0)
    out["units"] = ("pixel", "pixel")
    meta = dict(out.get("metadata") or {})
    info = dict(meta.get(KEY) or {})
    info["line_axis"] = line
    meta[KEY] = info
    out["metadata"] = meta
    return out


def line_positions(metadata, n: int) -> tuple[np.ndarray, str]:
    """Positions (n,) along a line scan and their units (spectrum numbers without a record)."""
    meta = (metadata or {}).get(KEY) if isinstance(metadata, dict) else None
    line = meta.get("line_axis") if isinstance(meta, dict) else None
    if not line or line.get("units") in (None, "pixel"):
        return np.arange(n, dtype=float), "spectrum"
    return float(line["offset"]) + float(line["scale"]) * np.arange(n), str(line["units"])
