"""The shift-VAE's per-spectrum table (``microml spectra``'s CSV, the dock's *Save shifts…*)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_microml.runtime.units import nm_per_pixel


def shift_table(
    shift: np.ndarray,
    latents: np.ndarray,
    *,
    axes: Sequence[tuple[float, float, Any]],
    shift_units: str | None,
    shift_std: np.ndarray | None = None,
):
    """One row per spectrum: its pixel index, its position in nm when the file is calibrated,
    the shift and the content latents.

    Parameters
    ----------
    shift : ndarray
        The shift map, shaped like the scan: ``(rows, cols)`` or ``(n,)`` along a line.
    latents : ndarray (n_spectra, k)
        The content latents, one row per spectrum in the order of ``shift.ravel()``.
    axes : sequence of (scale, translate, units)
        The geometry of each axis of ``shift`` (a length unit gives nm columns, ``"pixel"``
        none).
    shift_units : str or None
        The spectral axis's units (e.g. ``"eV"``); ``None``: shifts in channels.
    shift_std : ndarray, optional
        The shift's 1 s.d., shaped like ``shift``.

    Returns
    -------
    pandas.DataFrame
        Columns ``row, col[, y_nm, x_nm]`` (a line: ``index[, position_nm]``), then
        ``shift_<units>``, ``shift_sd_<units>`` when ``shift_std`` is given, ``latent_0 …``.
    """
    import pandas as pd

    shape = np.shape(shift)
    if len(axes) != len(shape):
        raise ValueError(f"{len(axes)} axes given for a shift map of shape {shape}.")
    idx = np.indices(shape).reshape(len(shape), -1)
    two_d = len(shape) == 2
    columns: dict[str, Any] = dict(zip(["row", "col"] if two_d else ["index"], idx, strict=True))
    for i, name in enumerate(["y_nm", "x_nm"] if two_d else ["position_nm"]):
        scale, translate, units = axes[i]
        to_nm = nm_per_pixel(scale=[scale], units=[units])
        if to_nm is not None:  # a calibrated file: where each spectrum is, in nm
            columns[name] = (float(translate) / float(scale) + idx[i]) * to_nm
    unit = shift_units or "channels"
    columns[f"shift_{unit}"] = np.asarray(shift).ravel()
    if shift_std is not None:
        columns[f"shift_sd_{unit}"] = np.asarray(shift_std).ravel()
    lat = np.asarray(latents).reshape(idx.shape[1], -1)
    columns.update({f"latent_{j}": lat[:, j] for j in range(lat.shape[1])})
    return pd.DataFrame(columns)
