"""Scanning-probe levelling: a tilted plane, scan-line offsets and streaks, removed when detected.

STM/AFM topography carries the sample's tilt (a plane spanning several times the atomic
corrugation), feedback offsets between scan lines (rows) and streaks (part of one line off
from both its neighbours). They defeat a network trained on electron images, so the tools level
such a frame the way an SPM user would (a least-squares plane, rows aligned by the median of
their differences, streaks replaced by their neighbours' mean) and say so. Electron images are
left alone: their row steps are as small as their column steps, their background is not a
plane and no line segment stands out of both neighbours; the thresholds sit well above what
the 17 real electron images here show (benchmarks/RESULTS.md, "scanning-probe images").

A frame known to be a scanning-probe scan (``scan="spm"``: a layer read from an SPM file,
see :func:`scan_kind`) is levelled with lower line thresholds, always loses its plane, and the
1/f feedback noise left along its lines is smoothed; the default ``scan="auto"`` decides from
the frame alone, as above, so electron images are read exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

# rows stepping this many times more than columns: line offsets (electron images: ≤ 2.2)
LINE_RATIO = 4.0
# and their steps' spread at least this fraction of the corrugation (real electron images:
# ≤ 0.031; simulated STEM line jitter at low dose, which the networks are trained on: ≤ 0.13)
LINE_STEP = 0.15
# a plane is a tilt when it spans this many corrugations and explains the background
PLANE_RANGE = 2.0
PLANE_FIT = 0.99
# a streak: at least this many pixels of one row, each this many vertical-step spreads above
# (or below) both neighbouring rows
STREAK_LENGTH = 16
STREAK_STEP = 4.0
_MAX_SIDE = 512  # statistics on a strided copy of at most this size
SCAN_KINDS = ("auto", "spm")
# a known SPM scan: line offsets from a smaller spread and ratio (clean scans: ratio ≈ 1)
SPM_LINE_RATIO = 2.5
SPM_LINE_STEP = 0.02
# the 1/f noise left within its lines: one-row detail (σ across the lines, px), smoothed
# along them over more than an atom (σ, px), is subtracted
RASTER_ACROSS = 3.0
RASTER_ALONG = 20.0


@dataclass(frozen=True)
class Levelling:
    """What :func:`level_scan` removed (or would remove) from a frame.

    Attributes
    ----------
    plane : bool
        A tilted background plane.
    lines : bool
        Per-scan-line offsets.
    streaks : int
        Pixels of scan-line streaks replaced.
    axis : int
        0: the scan lines are the image's rows; 1: its columns (a scan turned by 90°).
    raster : bool
        The 1/f noise along the scan lines smoothed (a known SPM scan only).
    """

    plane: bool = False
    lines: bool = False
    streaks: int = 0
    axis: int = 0
    raster: bool = False

    @property
    def applied(self) -> bool:
        return self.plane or self.lines or self.streaks > 0

    def describe(self) -> str | None:
        """The sentence a status line or provenance shows, or None when nothing was removed."""
        parts = [
            p
            for p, on in (
                ("plane", self.plane),
                ("line offsets", self.lines),
                ("scan-line streaks", self.streaks > 0),
                ("scan-line noise", self.raster),
            )
            if on
        ]
        return f"levelled: {' + '.join(parts)} removed" if parts else None

    def __or__(self, other: Levelling) -> Levelling:
        return Levelling(
            self.plane or other.plane,
            self.lines or other.lines,
            self.streaks + other.streaks,
            self.axis if self.lines else other.axis,
            self.raster or other.raster,
        )


def _plane(x: np.ndarray) -> np.ndarray:
    """Least-squares plane of ``x`` (fitted on a strided copy), evaluated on the full grid."""
    h, w = x.shape
    s = max(1, max(h, w) // _MAX_SIDE)
    sub = x[::s, ::s]
    yy, xx = np.mgrid[0 : sub.shape[0], 0 : sub.shape[1]] * float(s)
    a = np.column_stack([np.ones(sub.size), yy.ravel(), xx.ravel()])
    c = np.linalg.lstsq(a, sub.ravel(), rcond=None)[0]
    return c[0] + c[1] * np.arange(h)[:, None] + c[2] * np.arange(w)[None, :]


def _row_steps(x: np.ndarray) -> np.ndarray:
    """Median step from each row to the next (robust to the atoms a row crosses)."""
    s = max(1, x.shape[1] // _MAX_SIDE)
    return np.median(np.diff(x[:, ::s], axis=0), axis=1)


def _mad(v: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(v - np.median(v)))) if v.size else 0.0


def scan_statistics(frame: np.ndarray) -> dict:
    """The numbers :func:`detect_levelling` decides on, in units of the atomic corrugation.

    Parameters
    ----------
    frame : (H, W) array
        Finite values, any units.

    Returns
    -------
    dict
        ``plane_range`` (the fitted plane's span), ``plane_fit`` (the fraction of the smoothed
        background the plane explains), ``row_step`` and ``column_step`` (spread of the rows'
        and the columns' median steps) and ``step_ratio`` (rows' over columns').
    """
    x = np.asarray(frame, np.float64)
    s = max(1, max(x.shape) // _MAX_SIDE)
    x = x[::s, ::s]
    plane = _plane(x)
    r = x - plane
    # corrugation: the 1–99 % spread of the detail finer than ~8 px
    lo, hi = np.percentile(r - ndi.gaussian_filter(r, 8), (1, 99))
    corr = max(hi - lo, 1e-12)
    k = max(1, max(x.shape) // 128)  # the background is smooth: a coarse copy shows it
    back = ndi.gaussian_filter(x[::k, ::k], max(x.shape) / 16 / k)
    var = float(np.var(back))
    rows, cols = _mad(_row_steps(r)), _mad(_row_steps(r.T))
    return {
        "plane_range": float(np.ptp(plane)) / corr,
        "plane_fit": 1.0 - float(np.var(back - plane[::k, ::k])) / var if var > 0 else 0.0,
        "row_step": rows / corr,
        "column_step": cols / corr,
        "step_ratio": rows / max(cols, 1e-12 * corr),
    }


def check_scan(scan) -> str:
    """Return ``scan`` when it is one of :data:`SCAN_KINDS`, else raise a clear ValueError.

    Parameters
    ----------
    scan : str
        "auto" (decide from the frame) or "spm" (a scanning-probe scan).

    Returns
    -------
    str
    """
    if scan not in SCAN_KINDS:
        raise ValueError(
            f"scan must be 'auto' (decide from the image) or 'spm' (an STM/AFM scan), not {scan!r}."
        )
    return str(scan)


def scan_kind(metadata) -> str:
    """The ``scan`` a tool should use for a layer: "spm" when its metadata says it was read
    from a scanning-probe file (:mod:`napari_microml.io.spm`), else "auto".

    Parameters
    ----------
    metadata : dict or None
        A napari layer's ``metadata``.

    Returns
    -------
    str
    """
    record = ((metadata or {}).get("napari_microml") or {}).get("scan") or {}
    return "spm" if isinstance(record, dict) and record.get("kind") == "spm" else "auto"


def detect_levelling(frame: np.ndarray, *, scan: str = "auto") -> Levelling:
    """Decide whether ``frame`` looks like a scanning-probe scan that needs levelling.

    Parameters
    ----------
    frame : (H, W) array
        Finite values, any units (heights in nm, counts).
    scan : {"auto", "spm"}
        "spm": the frame is known to be a scanning-probe scan: the line thresholds are
        ``SPM_LINE_RATIO`` and ``SPM_LINE_STEP`` and the plane is always removed.

    Returns
    -------
    Levelling
        Line offsets when the rows (or the columns: ``axis=1``) step ``LINE_RATIO`` times
        more than the other way and by at least ``LINE_STEP`` corrugations; a plane when it
        spans ``PLANE_RANGE`` corrugations and explains ``PLANE_FIT`` of the smoothed
        background, or whenever line offsets are found (an SPM scan).
    """
    spm = check_scan(scan) == "spm"
    if min(np.shape(frame)) < 16:
        return Levelling()
    st = scan_statistics(frame)
    ratio, step = (SPM_LINE_RATIO, SPM_LINE_STEP) if spm else (LINE_RATIO, LINE_STEP)
    rows = st["step_ratio"] >= ratio and st["row_step"] >= step
    cols = st["step_ratio"] * ratio <= 1 and st["column_step"] >= step
    lines = rows or cols
    plane = spm or lines or (st["plane_range"] >= PLANE_RANGE and st["plane_fit"] >= PLANE_FIT)
    return Levelling(plane=plane, lines=lines, axis=int(cols and not rows))


def streak_mask(frame: np.ndarray) -> np.ndarray:
    """Pixels of scan-line streaks: runs of ``STREAK_LENGTH`` px of one row that stand
    ``STREAK_STEP`` vertical-step spreads above, or below, both neighbouring rows.

    Parameters
    ----------
    frame : (H, W) array
        Finite values, line offsets already removed.

    Returns
    -------
    (H, W) bool array
    """
    x = np.asarray(frame, np.float64)
    mask = np.zeros(x.shape, bool)
    if min(x.shape) < 3 or x.shape[1] < STREAK_LENGTH:
        return mask
    s = max(1, max(x.shape) // _MAX_SIDE)
    spread = _mad(np.diff(x[::s, ::s], axis=0).ravel())
    up, down = x[1:-1] - x[:-2], x[1:-1] - x[2:]
    run = np.ones((1, STREAK_LENGTH), bool)
    for sign in (1.0, -1.0):
        hit = (sign * up > STREAK_STEP * spread) & (sign * down > STREAK_STEP * spread)
        mask[1:-1] |= ndi.binary_opening(hit, structure=run)
    return mask


def level_scan(frame: np.ndarray, *, scan: str = "auto") -> Levelling:
    """Remove a tilted plane, scan-line offsets and streaks from a float ``frame``, in place.

    Parameters
    ----------
    frame : (H, W) float array
        Changed in place (pass a copy of a user's data); NaN/inf pixels stay as they are.
    scan : {"auto", "spm"}
        "spm": a known scanning-probe scan (:func:`detect_levelling`); where its lines are
        offset, the 1/f noise within them is smoothed too (``RASTER_ACROSS``,
        ``RASTER_ALONG``).

    Returns
    -------
    Levelling
        What was found and removed (:func:`detect_levelling`, :func:`streak_mask`);
        ``describe()`` gives the sentence to show.
    """
    finite = np.isfinite(frame)
    if not finite.any():
        return Levelling()
    gaps = not finite.all()
    x = np.where(finite, frame, np.median(frame[finite])) if gaps else frame
    how = detect_levelling(x, scan=scan)
    lines = x.T if how.axis else x  # a view: the scan lines as rows
    if how.lines:
        # offsets of the lines relative to the first: the cumulated median steps
        lines -= np.concatenate([[0.0], np.cumsum(_row_steps(lines))])[:, None]
    if how.plane:  # after aligning the lines: the tilt along them is left
        x -= _plane(x)
    bad = streak_mask(lines)
    if bad.any():
        r, c = np.nonzero(bad)
        lines[r, c] = 0.5 * (lines[r - 1, c] + lines[r + 1, c])
    raster = scan == "spm" and how.lines and min(x.shape) > 2 * RASTER_ACROSS
    if raster:  # feedback noise: one line off from its neighbours, smooth along the line
        detail = lines - ndi.gaussian_filter1d(lines, RASTER_ACROSS, axis=0, mode="nearest")
        lines -= ndi.gaussian_filter1d(detail, RASTER_ALONG, axis=1, mode="nearest")
    if gaps:
        frame[finite] = x[finite]
    return Levelling(how.plane, how.lines, int(bad.sum()), how.axis, raster)


def prepare_frame(frame: np.ndarray, *, scan: str = "auto") -> Levelling:
    """Repair stuck pixels, then level a scanning-probe scan: in place, the order every tool
    uses, so Refine points and the lattice read the frame the finder and segmenter read.

    Parameters
    ----------
    frame : (H, W) float array
        Changed in place (pass a copy of a user's data).
    scan : {"auto", "spm"}
        Passed to :func:`level_scan`.

    Returns
    -------
    Levelling
        What :func:`level_scan` removed.
    """
    from napari_microml.runtime.validate import repair_outliers

    repair_outliers(frame)
    return level_scan(frame, scan=scan)
