"""Input checks shared by every tool: clear sentences instead of stack traces."""
from __future__ import annotations

import numpy as np


def as_image_stack(image, *, what: str = "image", min_size: int = 8) -> tuple[np.ndarray, bool]:
    """Check a 2D image or a (frames, H, W) stack and return it as float32 ``(T, H, W)``.

    Returns
    -------
    stack : ndarray float32 (T, H, W)
    is_stack : bool
        True when the input was 3D.

    Raises
    ------
    ValueError
        For RGB/colour input, wrong dimensionality, images smaller than ``min_size`` pixels,
        empty stacks, non-numeric data or images with no finite pixels.
    """
    arr = np.asarray(image)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"The {what} must contain numbers, not {arr.dtype} values.")
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.shape[0] > 4:
        raise ValueError(
            f"The {what} looks like an RGB(A) colour picture {arr.shape}; "
            "microscopy tools need a single-channel (grey) image. Convert it to grey first."
        )
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"The {what} has {arr.ndim} dimensions {arr.shape}; expected a 2D image (H, W) "
            "or a stack of frames (T, H, W)."
        )
    if arr.size == 0 or (arr.ndim == 3 and arr.shape[0] == 0):
        raise ValueError(f"The {what} is empty {arr.shape}: there are no pixels to analyse.")
    h, w = arr.shape[-2:]
    if min(h, w) < min_size:
        raise ValueError(
            f"The {what} is only {h}×{w} pixels; at least {min_size}×{min_size} are needed."
        )
    stack = arr.astype(np.float32, copy=False)
    if stack.ndim == 2:
        stack = stack[None]
    finite = np.isfinite(stack)
    if not finite.all():
        bad = [i for i in range(stack.shape[0]) if not finite[i].any()]
        if bad:
            raise ValueError(
                f"The {what} has no valid pixels (all NaN/inf) in frame(s) {bad[:5]}."
            )
    return stack, arr.ndim == 3


def fill_nonfinite(frame: np.ndarray) -> np.ndarray:
    """Replace NaN/inf pixels by the frame's median so networks see finite input."""
    finite = np.isfinite(frame)
    if finite.all():
        return frame
    out = frame.copy()
    out[~finite] = np.median(frame[finite])
    return out


def robust_normalize(frame: np.ndarray, low: float = 0.5, high: float = 99.8) -> np.ndarray:
    """Scale a frame so its ``low``/``high`` percentiles map to 0 and 1 (float32)."""
    frame = fill_nonfinite(np.asarray(frame, np.float32))
    lo, hi = np.percentile(frame, [low, high])
    if hi - lo < 1e-12:
        hi = lo + 1.0
    return ((frame - lo) / (hi - lo)).astype(np.float32)
