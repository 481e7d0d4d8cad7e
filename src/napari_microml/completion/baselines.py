"""Classical baselines for partial-scan completion (benchmarks and tests).

``griddata_linear`` (Delaunay linear interpolation, nearest outside the hull),
``biharmonic`` (skimage ``inpaint_biharmonic``) and ``local_gp`` (local Gaussian-process /
kriging interpolation, :mod:`napari_microml.completion.kriging`, also offered to users as
``complete_scan(model="local-gp")``). Each returns a float32 (H, W) image equal to ``values``
at measured pixels.
"""

from __future__ import annotations

import numpy as np

from napari_microml.completion.kriging import check_pair as _prep
from napari_microml.completion.kriging import local_gp

__all__ = ["griddata_linear", "biharmonic", "local_gp"]


def griddata_linear(values, mask) -> np.ndarray:
    """Linear interpolation on the Delaunay triangulation of measured pixels (scipy)."""
    from scipy.interpolate import griddata

    v, m = _prep(values, mask)
    pts = np.argwhere(m)
    miss = np.argwhere(~m)
    out = v.copy()
    lin = griddata(pts, v[m], miss, method="linear")
    bad = ~np.isfinite(lin)
    if bad.any():
        lin[bad] = griddata(pts, v[m], miss[bad], method="nearest")
    out[~m] = lin
    return out.astype(np.float32)


def biharmonic(values, mask) -> np.ndarray:
    """Biharmonic inpainting of the unmeasured pixels (skimage.restoration.inpaint_biharmonic)."""
    from skimage.restoration import inpaint_biharmonic

    v, m = _prep(values, mask)
    lo, hi = v[m].min(), v[m].max()
    span = hi - lo if hi > lo else 1.0
    filled = np.where(m, (v - lo) / span, 0.0)
    out = inpaint_biharmonic(filled, ~m) * span + lo
    out[m] = v[m]
    return out.astype(np.float32)
