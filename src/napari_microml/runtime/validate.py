"""The input contract of every tool, in one place: clear sentences instead of stack traces.

Images, stacks, positions and parameters are checked here. Nothing here assumes the data's
units: every tolerance is relative to the data's own range (amperes and counts behave alike).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np


def _image_array(image, what: str, min_size: int, allow_stack: bool = True) -> np.ndarray:
    """The checks every image input shares; returns the input as an ndarray, unconverted."""
    arr = np.asarray(image)
    if arr.dtype.kind == "b":
        raise ValueError(
            f"The {what} holds True/False values (a mask?), not grey levels; "
            f"pass the micrograph itself, or {what}.astype(float) if you mean it."
        )
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"The {what} must contain numbers, not {arr.dtype} values.")
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.shape[0] > 4:
        raise ValueError(
            f"The {what} looks like an RGB(A) colour picture {arr.shape}; "
            "microscopy tools need a single-channel (grey) image. Convert it to grey first."
        )
    if arr.ndim not in ((2, 3) if allow_stack else (2,)):
        want = (
            "a 2D image (H, W) or a stack of frames (T, H, W)"
            if allow_stack
            else "one 2D image (H, W)"
        )
        raise ValueError(f"The {what} has {arr.ndim} dimensions {arr.shape}; expected {want}.")
    if arr.size == 0:
        raise ValueError(f"The {what} is empty {arr.shape}: there are no pixels to analyse.")
    h, w = arr.shape[-2:]
    if min(h, w) < min_size:
        raise ValueError(
            f"The {what} is only {h}×{w} pixels; at least {min_size}×{min_size} are needed."
        )
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr if arr.ndim == 3 else arr[None])
        if not finite.all():
            bad = [i for i in range(finite.shape[0]) if not finite[i].any()]
            if bad:
                where = f" in frame(s) {bad[:5]}" if arr.ndim == 3 else ""
                raise ValueError(f"The {what} has no valid pixels (all NaN/inf){where}.")
    return arr


def as_image_stack(image, *, what: str = "image", min_size: int = 8) -> tuple[np.ndarray, bool]:
    """Check a 2D image or a (frames, H, W) stack and return it as ``(T, H, W)``.

    Float64 input stays float64 (its precision and range are kept); everything else becomes
    float32.

    Returns
    -------
    stack : ndarray float32 or float64 (T, H, W)
    is_stack : bool
        True when the input was 3D.

    Raises
    ------
    ValueError
        For RGB/colour or True/False input, wrong dimensionality, images smaller than
        ``min_size`` pixels, empty stacks, non-numeric data or frames with no finite pixels.
    """
    arr = _image_array(image, what, min_size)
    stack = arr.astype(np.float64 if arr.dtype == np.float64 else np.float32, copy=False)
    return (stack if stack.ndim == 3 else stack[None]), arr.ndim == 3


@dataclass
class ScaledStack:
    """An image stack mapped to 0–1: ``stack = (image - offset) / scale`` (float32, NaN kept).

    The offset and scale are computed in float64 from the input's own values, so data in any
    units (× 1e-12 or × 1e300) gives the same float32 stack; multiply intensities by ``scale``
    to return to the input's units.
    """

    stack: np.ndarray
    is_stack: bool
    offset: float
    scale: float


def finite_range(arr: np.ndarray) -> tuple[float, float]:
    """(min, max) of the finite values of ``arr`` in float64 (the array must hold some)."""
    a = np.asarray(arr).ravel()
    lo, hi = float(np.fmin.reduce(a)), float(np.fmax.reduce(a))  # NaN-skipping, one pass each
    if not (np.isfinite(lo) and np.isfinite(hi)):  # an inf pixel: range of the finite ones
        a = a[np.isfinite(a)]
        lo, hi = float(a.min()), float(a.max())
    return lo, hi


def as_scaled_stack(
    image, *, what: str = "image", min_size: int = 8, allow_stack: bool = True
) -> ScaledStack:
    """Check an image or stack like :func:`as_image_stack` and map it to 0–1 (see
    :class:`ScaledStack`): the tools then work on the same numbers whatever the units."""
    arr = _image_array(image, what, min_size, allow_stack)
    lo, hi = finite_range(arr)
    span = hi - lo
    if not np.isfinite(span):
        raise ValueError(
            f"The {what}'s values span {lo:.3g} … {hi:.3g}, more than float64 can "
            "hold as a difference; rescale it first."
        )
    scale = span if span > 0 else (abs(lo) or 1.0)  # a flat image maps to zeros
    frames = arr if arr.ndim == 3 else arr[None]
    out = np.empty(frames.shape, np.float32)
    # float32 in, float32 arithmetic: x - lo is exact for neighbouring float32 values and the
    # range fits; float64 (and wide integers) go through float64, one frame at a time
    narrow = (
        arr.dtype.itemsize <= 4
        and arr.dtype != np.int32
        and arr.dtype != np.uint32
        and span < float(np.finfo(np.float32).max)
    )
    for t, frame in enumerate(frames):
        if narrow:
            np.subtract(frame, np.float32(lo), out=out[t], dtype=np.float32)
            out[t] /= np.float32(scale)
        else:
            out[t] = (frame.astype(np.float64) - lo) / scale
    return ScaledStack(out, arr.ndim == 3, lo, scale)


def fill_nonfinite(frame: np.ndarray) -> np.ndarray:
    """Replace NaN/inf pixels by the frame's median so networks see finite input."""
    finite = np.isfinite(frame)
    if finite.all():
        return frame
    out = frame.copy()
    out[~finite] = np.median(frame[finite])
    return out


def repair_outliers(frame: np.ndarray, *, reach: float = 2.0) -> int:
    """Replace dead/hot pixels of a float ``frame`` in place by their 3×3 median.

    A pixel is one when it lies more than ``reach`` × the 0.1–99.9 percentile range beyond that
    range (none in any real image here; a detector's stuck pixel at 10× the brightest column is);
    a few such pixels otherwise dominate background minima and the column search fails.

    Parameters
    ----------
    frame : (H, W) float array
        Changed in place; NaN/inf pixels are left as they are.
    reach : float
        How far outside the frame's own range a pixel must lie, in units of that range.

    Returns
    -------
    int
        The number of pixels replaced.
    """
    finite = np.isfinite(frame)
    if not finite.any():
        return 0
    lo, hi = np.percentile(frame[finite], (0.1, 99.9))
    span = reach * (hi - lo)
    with np.errstate(invalid="ignore"):
        bad = (frame < lo - span) | (frame > hi + span)
    n = int(bad.sum())
    if n:
        from scipy import ndimage as ndi

        frame[bad] = ndi.median_filter(np.where(finite, frame, np.median(frame[finite])), 3)[bad]
    return n


def robust_normalize(frame: np.ndarray, low: float = 0.5, high: float = 99.8) -> np.ndarray:
    """Scale a frame so its ``low``/``high`` percentiles map to 0 and 1 (float32).

    Computed in float64 from the frame's own values; a frame whose percentiles coincide falls
    back to its full range, and a flat frame maps to zeros (no absolute tolerance: the result
    does not depend on the data's units)."""
    x = fill_nonfinite(np.asarray(frame))
    if x.dtype != np.float64:  # float32 arithmetic keeps float32 data's precision
        x = x.astype(np.float32, copy=False)
    lo, hi = (float(v) for v in np.percentile(x, [low, high]))
    if not hi > lo:
        lo, hi = float(x.min()), float(x.max())
    if not hi - lo > 0:  # a flat frame (or a range float64 cannot hold)
        return np.zeros(x.shape, np.float32)
    out = np.subtract(x, x.dtype.type(lo), dtype=x.dtype)
    out /= x.dtype.type(hi - lo)  # divided: 1 / a subnormal range would overflow
    return out.astype(np.float32, copy=False)


# --- numbers -----------------------------------------------------------------------------------
def check_number(
    value,
    name: str,
    *,
    low=None,
    high=None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    unit: str = "",
    none_ok: bool = False,
):
    """``value`` as a float (or int with ``integer``), checked to lie in [low, high].

    ``low_open``/``high_open`` exclude the bound. Raises TypeError for text, True/False and
    other non-numbers, ValueError for NaN, inf, fractions where a whole number is needed and
    values out of range, each with a sentence naming the parameter.
    """
    if value is None and none_ok:
        return None
    units = f" {unit}" if unit else ""
    kind = "a whole number" if integer else "a number"
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        shown = f"the text {value!r}" if isinstance(value, str) else repr(value)
        raise TypeError(f"{name} must be {kind}{units}, not {shown}.")
    v = float(value)
    if not np.isfinite(v):
        raise ValueError(f"{name} must be a finite number{units}, not {value}.")
    if integer:
        if v != np.floor(v):
            raise ValueError(f"{name} must be a whole number{units}, not {value}.")
        v = int(v)
    too_low = low is not None and (v <= low if low_open else v < low)
    too_high = high is not None and (v >= high if high_open else v > high)
    if too_low or too_high:
        if low is not None and high is not None:
            rng = f"between {low} and {high}" + (" (exclusive)" if low_open and high_open else "")
        elif low is not None:
            rng = f"greater than {low}" if low_open else f"at least {low}"
        else:
            rng = f"less than {high}" if high_open else f"at most {high}"
        raise ValueError(f"{name} must be {rng}{units}, not {value}.")
    return v


def check_probability(value, name: str = "threshold") -> float:
    """A probability strictly between 0 and 1."""
    v = check_number(value, name, low=0, high=1, low_open=True, high_open=True)
    return v


def check_pixel_size(pixel_size) -> float | None:
    """``None`` (unknown) or a positive, finite pixel size in nm."""
    if pixel_size is None:
        return None
    try:
        return check_number(pixel_size, "pixel_size", low=0, low_open=True, unit="nm per pixel")
    except ValueError:
        raise ValueError(
            f"pixel_size must be a positive number of nm per pixel, not {pixel_size!r}."
        ) from None


def check_tile(tile) -> int:
    """Network tile side in px: a whole number of at least 16 (smaller tiles are mostly border)."""
    return check_number(tile, "tile", low=16, integer=True, unit="pixels")


# --- positions ---------------------------------------------------------------------------------
def check_positions(
    positions,
    shape,
    *,
    n_frames: int = 1,
    is_stack: bool = False,
    what: str = "atom positions",
    frame_column: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate (row, col) pixel positions against an image of ``shape`` (H, W).

    ``positions`` is (N, 2) (row, col), or (N, 3) (frame, row, col); a stack needs the frame
    column (``frame_column=False``: only (N, 2) is accepted). Positions must lie on the image
    (−0.5 … H − 0.5 px: pixel centres are whole numbers) and frames must be whole numbers of an
    existing frame. Returns float64 (N, 2) positions and (N,) int frames. An empty input gives
    (0, 2) and (0,).
    """
    try:
        pos = np.asarray(positions, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"The {what} must be an (N, 2) array of (row, col) numbers.") from None
    if pos.size == 0:
        return np.zeros((0, 2)), np.zeros(0, int)
    if pos.ndim != 2 or pos.shape[1] not in ((2, 3) if frame_column else (2,)):
        also = " or (N, 3) of (frame, row, col)" if frame_column else ""
        raise ValueError(
            f"The {what} must be an (N, 2) array of (row, col){also} in pixels; "
            f"got shape {pos.shape}."
        )
    if not np.isfinite(pos).all():
        n_bad = int((~np.isfinite(pos)).any(axis=1).sum())
        raise ValueError(
            f"{n_bad} of the {len(pos)} {what} are NaN or infinite; remove those points first."
        )
    if pos.shape[1] == 2:
        if is_stack:
            raise ValueError(
                f"The image is a stack of frames, so the {what} need a frame "
                "column: (N, 3) as (frame, row, col)."
            )
        frames = np.zeros(len(pos), int)
    else:
        f = pos[:, 0]
        if (f != np.round(f)).any():
            raise ValueError(f"The frame column of the {what} must hold whole frame numbers.")
        frames = f.astype(int)
        if frames.min() < 0 or frames.max() >= n_frames:
            raise ValueError(
                f"The {what}' frame indices run {frames.min()}…{frames.max()} but "
                f"the image has {n_frames} frame(s)."
            )
        pos = pos[:, 1:]
    h, w = shape[-2:]
    outside = (
        (pos[:, 0] < -0.5) | (pos[:, 0] > h - 0.5) | (pos[:, 1] < -0.5) | (pos[:, 1] > w - 0.5)
    )
    if outside.any():
        r, c = pos[np.argmax(outside)]
        raise ValueError(
            f"{int(outside.sum())} of the {len(pos)} {what} lie outside the {h}×{w} px image "
            f"(e.g. row {r:.6g}, col {c:.6g}); positions are pixels, rows 0–{h - 1} and "
            f"columns 0–{w - 1}. Are they in nm, or from another image?"
        )
    return np.ascontiguousarray(pos), frames


def check_image_layer(layer, *, tool: str) -> None:
    """Refuse, before a job starts, a napari layer an image tool cannot analyse.

    Parameters
    ----------
    layer : napari.layers.Image or None
        The layer picked in the tool's Image box.
    tool : str
        The tool's name in the sentence ("atom finder").

    Raises
    ------
    ValueError
        No layer, an RGB picture, a spectrum image or spectrum (its spectral axis is recorded
        in the layer's metadata), or frames smaller than 8×8 pixels.
    """
    from napari_microml.runtime.spectral import spectral_axis

    if layer is None:
        raise ValueError("Pick an image layer first.")
    name = layer.name
    if getattr(layer, "rgb", False):
        raise ValueError(f"Layer {name!r} is an RGB picture; the {tool} needs a grey image.")
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    shape = tuple(np.shape(data))
    axis = spectral_axis(getattr(layer, "metadata", None), shape) if shape else None
    if axis is not None:
        raise ValueError(
            f"Layer {name!r} is a spectrum image (axis {axis.name!r}); the {tool} needs a "
            "2D image: use the Spectral shift-VAE for it."
        )
    if len(shape) < 2:
        raise ValueError(
            f"Layer {name!r} is one-dimensional ({int(np.prod(shape))} values); the {tool} "
            "needs a 2D image."
        )
    if min(shape[-2:]) < 8:
        raise ValueError(
            f"Layer {name!r} is only {shape[-2]}×{shape[-1]} pixels; the {tool} needs at least "
            "8×8 pixels."
        )
