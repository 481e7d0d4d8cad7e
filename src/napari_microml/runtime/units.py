"""The image calibration in nm per pixel, read the same way by the docks and the CLI."""

from __future__ import annotations

import math
from typing import Any

# pint reads these as printer's lengths (1 px = 1/96 inch); for an image they mean "no unit"
_NOT_LENGTHS = {"", "px", "pixel", "pixels", "pt", "point", "dot", "dots", "pica"}


def nm_per_pixel(*, scale: Any, units: Any) -> float | None:
    """The in-plane pixel size in nm from a layer's or a file's geometry.

    Parameters
    ----------
    scale : sequence of float or None
        Per-axis scale (napari's ``layer.scale``, a reader's ``kwargs['scale']``); the last
        axis (x) is used.
    units : sequence of str or pint units, or None
        Per-axis units; the last one must be a length (nm, Å, pm, µm, m ...).

    Returns
    -------
    float or None
        nm per pixel, or ``None`` when the image has no length unit (pixel units, no units,
        an energy axis) or a scale that is not a positive number: results then stay in px.
    """
    if scale is None or units is None or len(scale) == 0 or len(units) == 0:
        return None
    unit = units[-1]
    if unit is None or str(unit).strip().lower() in _NOT_LENGTHS:
        return None
    try:
        import pint

        ureg = pint.get_application_registry()
        unit = ureg.Unit(unit.strip()) if isinstance(unit, str) else unit
        value = float((float(scale[-1]) * unit).to("nm").magnitude)
    except Exception:  # noqa: BLE001 - anything pint cannot turn into a length is no calibration
        return None
    return value if math.isfinite(value) and value > 0 else None


COARSE_PIXEL_NM = 0.1  # atom columns lie 0.1-0.5 nm apart: coarser pixels cannot show them


def too_coarse(pixel_size: float | None, subject: str = "its pixels are") -> str:
    """Why an image of ``pixel_size`` nm cannot show atom columns ('' when it can, or when its
    pixel size is unknown): '<subject> 0.921 nm, and atom columns lie 0.1–0.5 nm apart, so the
    image cannot show them'."""
    if pixel_size is None or pixel_size <= COARSE_PIXEL_NM:
        return ""
    return (
        f"{subject} {pixel_size:.3g} nm, and atom columns lie 0.1–0.5 nm apart, so the image "
        "cannot show them"
    )
