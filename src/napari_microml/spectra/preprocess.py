"""Spectrum preprocessing shared by the shift-VAE core and the benchmarks (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NORMALIZATIONS = ("max", "global", "none")


def despike(spectra: np.ndarray, *, size: int = 3, threshold: float = 5.0) -> np.ndarray:
    """Replace single-channel spikes (cosmic rays, switching glitches) by the local median.

    A channel is a spike when it differs from the running median of ``size`` channels by
    more than ``threshold`` robust standard deviations (1.4826 × median absolute residual of
    that spectrum). Works on the last axis of an ``(..., L)`` array and returns float32.
    """
    from scipy.ndimage import median_filter

    x = np.asarray(spectra, np.float32)
    med = median_filter(x, size=[1] * (x.ndim - 1) + [int(size)], mode="nearest")
    resid = x - med
    sigma = 1.4826 * np.median(np.abs(resid), axis=-1, keepdims=True)
    sigma = np.maximum(sigma, 1e-12 + 1e-6 * np.abs(med).max(axis=-1, keepdims=True))
    spikes = np.abs(resid) > threshold * sigma
    return np.where(spikes, med, x).astype(np.float32)


def normalize(spectra: np.ndarray, how: str = "max") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scale spectra for the network; returns ``(normed, offset, scale)``.

    ``normed = (spectra - offset) / scale`` with ``offset``/``scale`` shaped ``(N, 1)``:

    * ``"max"``: each spectrum to [0, 1] (its own min and max) – shapes only, intensity removed;
    * ``"global"``: the whole set to [0, 1] with one min and max – keeps relative intensities;
    * ``"none"``: unchanged.
    """
    x = np.asarray(spectra, np.float32)
    n = x.shape[0]
    if how == "max":
        lo = x.min(axis=1, keepdims=True)
        hi = x.max(axis=1, keepdims=True)
    elif how == "global":
        lo = np.full((n, 1), x.min(), np.float32)
        hi = np.full((n, 1), x.max(), np.float32)
    elif how == "none":
        lo = np.zeros((n, 1), np.float32)
        hi = np.ones((n, 1), np.float32)
    else:
        raise ValueError(
            f"Unknown normalisation {how!r}: choose one of {', '.join(NORMALIZATIONS)}."
        )
    scale = np.where(hi - lo > 1e-12, hi - lo, 1.0).astype(np.float32)
    return ((x - lo) / scale).astype(np.float32), lo.astype(np.float32), scale


def centroid(spectra: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Intensity-weighted centre of each spectrum (negative values clipped to 0)."""
    w = np.clip(np.asarray(spectra, float), 0, None)
    return (w * axis).sum(-1) / np.maximum(w.sum(-1), 1e-30)


def cross_correlation_shift(
    spectra: np.ndarray, axis: np.ndarray, reference=None, iterations: int = 2
) -> np.ndarray:
    """Shift of each spectrum against a reference (default: the mean) by cross-correlation.

    Sub-channel precision from a parabola through the correlation peak; the reference is
    re-built from the aligned spectra ``iterations`` times. Returns axis units, positive =
    features at larger axis values, relative to the median shift.
    """
    x = np.asarray(spectra, float)
    x = x - x.mean(axis=1, keepdims=True)
    n, L = x.shape
    step = (axis[-1] - axis[0]) / (L - 1)
    ref = x.mean(0) if reference is None else np.asarray(reference, float) - np.mean(reference)
    shifts = np.zeros(n)
    for _ in range(max(1, iterations)):
        fx = np.fft.rfft(x, 2 * L)
        fr = np.fft.rfft(ref, 2 * L)
        cc = np.fft.irfft(fx * np.conj(fr), 2 * L)
        cc = np.concatenate([cc[:, -(L - 1) :], cc[:, :L]], axis=1)  # lags -(L-1)..(L-1)
        k = np.argmax(cc, axis=1)
        k = np.clip(k, 1, cc.shape[1] - 2)
        y0, y1, y2 = cc[np.arange(n), k - 1], cc[np.arange(n), k], cc[np.arange(n), k + 1]
        den = y0 - 2 * y1 + y2
        frac = np.where(np.abs(den) > 1e-30, 0.5 * (y0 - y2) / np.where(den == 0, 1, den), 0.0)
        lag = k - (L - 1) + frac
        shifts = lag.astype(float)
        # rebuild the reference from spectra shifted back onto a common grid
        idx = np.arange(L)
        aligned = np.stack([np.interp(idx + s, idx, row) for s, row in zip(shifts, x, strict=True)])
        ref = aligned.mean(0)
    shifts = shifts * step
    return shifts - np.median(shifts)


def gaussian_peak_centres(spectra, axis, half_width: int = 4) -> np.ndarray:
    """Centre of the strongest peak of every spectrum by a Gaussian + offset least-squares fit
    over ±``half_width`` channels around its maximum (axis units). Used as a measured ground
    truth, e.g. the zero-loss-peak position in low-loss EELS."""
    from scipy.optimize import curve_fit

    def g(x, a, c, w, b):
        return a * np.exp(-((x - c) ** 2) / (2 * w * w)) + b

    axis = np.asarray(axis, float)
    out = []
    for s in np.asarray(spectra, float):
        k = int(np.argmax(s))
        sl = slice(max(k - half_width, 0), k + half_width + 1)
        p, _ = curve_fit(g, axis[sl], s[sl], p0=[s[k], axis[k], 0.5, 0.0])
        out.append(p[1])
    return np.array(out)


# --- automatic spectral window ------------------------------------------------------------
EDGE_BELOW = 20.0  # eV of pre-edge background kept in an edge window
EDGE_ABOVE = 60.0  # eV of near-edge structure kept above the onset
EDGE_FIT = 80.0  # eV of pre-edge used for each local power-law fit
EDGE_PROBE = 30.0  # eV above a candidate onset compared with the extrapolated background
MIN_JUMP = 0.01  # an edge must raise the signal by at least 1 % above the background
LOW_LOSS_BELOW = 5.0  # eV: an axis starting below this holds the zero-loss peak
MAX_CORE_LOSS_SHIFT = 10.0  # eV: chemical shifts and energy drift of an edge are a few eV


@dataclass(frozen=True)
class Edge:
    """A core-loss edge of the mean spectrum: ``onset`` (axis units), the first channel above
    the background (``channel``) and the largest relative ``jump`` above the extrapolated power
    law within :data:`EDGE_PROBE` eV of the onset (0.05 = 5 %)."""

    onset: float
    channel: int
    jump: float


@dataclass(frozen=True)
class AutoWindow:
    """The automatic spectral window: channels ``[start, stop)`` around a ``kind`` = "peak" or
    "edge" feature at ``position`` (axis units), or ``kind`` = "none" (``start``/``stop`` are
    then the whole axis and must not be fitted as if a feature were there). ``edges`` lists
    every core-loss edge found."""

    start: int
    stop: int
    kind: str
    position: float
    edges: tuple[Edge, ...] = ()
    eds: bool = False  # an EDS spectrum: X-ray lines, no edges
    zero_peak: float | None = None  # an EDS detector's zero peak (eV), stronger, skipped

    @property
    def found(self) -> bool:
        return self.kind != "none"

    def describe(self, units: str = "") -> str:
        """The window's reason in words, e.g. "auto, around the edge at 932 eV"."""
        u = f" {units}" if units else ""
        if self.kind == "peak" and self.eds:
            text = f"auto, around the X-ray line at {self.position:.4g}{u}"
            if self.zero_peak is not None:
                text += f"; the detector's zero peak at {self.zero_peak:.3g}{u} is not a line"
            return text
        if self.kind == "peak":
            return f"auto, around the peak at {self.position:.4g}{u}"
        if self.kind == "edge":
            text = f"auto, around the edge at {self.position:.4g}{u}"
            others = [e.onset for e in self.edges if e.onset != self.position]
            if others:
                text += "; other edges at " + ", ".join(f"{o:.4g}" for o in others) + u
            return text
        return "auto: no peak or edge stands out"


def find_edges(spectra, axis, *, min_jump: float = MIN_JUMP) -> list[Edge]:
    """Core-loss edges of the mean spectrum, strongest first.

    At every channel a power law ``A E**-r`` is fitted (log-log least squares) to the
    :data:`EDGE_FIT` eV below it and extrapolated over the :data:`EDGE_PROBE` eV above it. An
    edge is a local maximum of the relative excess above that background that beats both
    ``min_jump`` and 3 × the fit's own scatter (so noise and detector wiggles do not count).
    Edges are ranked by their largest excess (a white line counts fully).

    Parameters
    ----------
    spectra : array (..., L)
        Spectra with the energy axis last (counts; the mean must be positive).
    axis : array (L,)
        Energy loss in eV, positive and monotonic.
    min_jump : float
        Smallest relative jump counted as an edge (0.01 = 1 %).

    Returns
    -------
    list of Edge
        Onsets in eV, strongest first; empty when the mean is not positive or the axis is too
        short for a background fit.
    """
    from scipy.ndimage import uniform_filter1d
    from scipy.signal import find_peaks

    x = np.asarray(spectra, float)
    mean = x.reshape(-1, x.shape[-1]).mean(0)
    e = np.asarray(axis, float).ravel()
    if e.size != mean.size or e.size < 12 or np.any(e <= 0) or np.any(mean <= 0):
        return []
    flip = e[-1] < e[0]
    if flip:
        e, mean = e[::-1], mean[::-1]
    n = e.size
    step = float(np.median(np.diff(e)))
    fit = max(8, int(round(EDGE_FIT / step)))
    probe = max(3, int(round(EDGE_PROBE / step)))
    ks = np.arange(fit, n - probe + 1)
    if ks.size < 3:
        return []
    lx, ly = np.log(e), np.log(mean)
    # sliding least-squares line of ly on lx over [k - fit, k) from cumulative sums
    sums = [np.concatenate([[0.0], np.cumsum(v)]) for v in (lx, ly, lx * lx, lx * ly, ly * ly)]
    sx, sy, sxx, sxy, syy = (c[ks] - c[ks - fit] for c in sums)
    slope = (fit * sxy - sx * sy) / np.maximum(fit * sxx - sx * sx, 1e-300)
    icpt = (sy - slope * sx) / fit
    scatter = np.sqrt(np.maximum(syy - icpt * sy - slope * sxy, 0.0) / (fit - 2))
    ahead = ks[:, None] + np.arange(probe)  # (K, probe) channels above each candidate
    background = np.exp(icpt[:, None] + slope[:, None] * lx[ahead])
    excess = np.log(mean[ahead].sum(1) / background.sum(1))
    smooth = uniform_filter1d(mean, 3, mode="nearest")
    strength = (smooth[ahead] / background - 1).max(1)
    peaks, _ = find_peaks(excess, distance=probe)
    keep = [i for i in peaks if excess[i] > max(np.log1p(min_jump), 3 * scatter[i])]
    out = []
    for i in sorted(keep, key=lambda i: -strength[i]):
        frac = 0.0
        if 0 < i < excess.size - 1:  # sub-channel: the vertex of a parabola through the maximum
            y0, y1, y2 = excess[i - 1 : i + 2]
            den = y0 - 2 * y1 + y2
            frac = float(np.clip(0.5 * (y0 - y2) / den, -0.5, 0.5)) if den < 0 else 0.0
        k = int(ks[i])
        onset = float(e[k] + (frac - 0.5) * step)  # between the last background channel and k
        out.append(Edge(onset, n - 1 - k if flip else k, float(strength[i])))
    return out


def _dominant_peak(
    mean: np.ndarray, *, share: float, axis: np.ndarray | None = None
) -> tuple[int, float] | None:
    """``(channel, FWHM in channels)`` of the most prominent peak of ``mean``, or ``None`` when
    there is none or its prominence is under ``share`` of the spectrum's range. With ``axis``
    (eV), a peak centred within its own FWHM of 0 eV is skipped: an EDS detector's zero peak."""
    from scipy.signal import find_peaks, peak_widths

    peaks, props = find_peaks(mean, prominence=0)
    widths = peak_widths(mean, peaks, rel_height=0.5)[0] if len(peaks) else np.empty(0)
    if axis is not None and len(peaks):
        step = float(np.median(np.abs(np.diff(axis))))
        real = np.abs(axis[peaks]) > widths * step
        peaks, widths, prominences = peaks[real], widths[real], props["prominences"][real]
    else:
        prominences = props["prominences"]
    if len(peaks) == 0:
        return None
    i = int(np.argmax(prominences))
    if prominences[i] < share * (np.nanmax(mean) - np.nanmin(mean)):
        return None
    return int(peaks[i]), float(widths[i])


def _peak_window(
    x: np.ndarray, widths: float, min_channels: int, skip_zero: np.ndarray | None = None
) -> tuple[int, int, int] | None:
    """``(start, stop, peak channel)`` around the most prominent peak of the mean of ``x``
    (N, L), or ``None`` when no peak stands out of the wiggles; ``skip_zero`` (the eV axis)
    skips a peak at 0 eV."""
    n = x.shape[1]
    peak = _dominant_peak(x.mean(0), share=0.05, axis=skip_zero)  # a peak above the wiggles
    if peak is None:
        return None
    k, fwhm = peak
    reach = int(np.ceil(max(2.0, 3 * fwhm)))  # where each spectrum's own maximum is looked for
    lo0, hi0 = max(k - reach, 0), min(k + reach + 1, n)
    own = lo0 + np.argmax(x[:, lo0:hi0], axis=1)
    spread = float(own.max() - own.min())
    half = max(widths * fwhm + spread, min_channels / 2)
    start, stop = int(max(np.floor(k - half), 0)), int(min(np.ceil(k + half) + 1, n))
    return start, stop, k


def _edge_top(edges: list[Edge] | tuple[Edge, ...]) -> float:
    """Upper end (eV) of the strongest edge's window: :data:`EDGE_ABOVE` eV above its onset,
    stopping 5 eV short of the next edge so one element's edge is followed at a time."""
    onset = edges[0].onset
    later = [d.onset for d in edges if d.onset > onset + 5.0]
    return min([onset + EDGE_ABOVE] + [o - 5.0 for o in later])


def _edge_window(edges: list[Edge], e: np.ndarray) -> tuple[int, int]:
    """Channels from :data:`EDGE_BELOW` eV under the strongest edge to :func:`_edge_top`."""
    onset = edges[0].onset
    inside = np.flatnonzero((e >= onset - EDGE_BELOW) & (e <= _edge_top(edges)))
    return int(inside[0]), int(inside[-1]) + 1


def edge_quantification_windows(edges, axis) -> tuple[tuple[float, float], tuple[float, float]]:
    """Windows (eV) to measure the strongest edge above its background: the signal from the
    onset to :func:`_edge_top`, and the pre-edge :data:`EDGE_FIT` eV below the onset (within
    the axis) where the power-law background is fitted.

    Parameters
    ----------
    edges : sequence of Edge
        As :func:`find_edges` returns them (strongest first; at least one).
    axis : array (L,)
        Energy loss (eV).

    Returns
    -------
    signal, pre_edge : (float, float)
        ``(from, to)`` in eV each.
    """
    e = np.asarray(axis, float)
    onset = edges[0].onset
    step = float(np.median(np.abs(np.diff(e)))) if e.size > 1 else 1.0
    pre = (max(onset - EDGE_FIT, float(e.min())), onset - step / 2)
    return (onset, min(_edge_top(edges), float(e.max()))), pre


def auto_window(
    spectra,
    axis=None,
    *,
    units: str = "",
    signal_type: str = "",
    widths: float = 4.0,
    min_channels: int = 32,
) -> AutoWindow:
    """Choose the spectral window a microscopist would fit.

    Low-loss EELS (an eV axis reaching below :data:`LOW_LOSS_BELOW` eV) and any non-eV axis:
    the most prominent peak of the mean spectrum (e.g. the zero-loss peak), ``widths`` full
    widths at half maximum each side plus the spread of the spectra's own maxima, at least
    ``min_channels``. Core-loss EELS: the strongest edge (:func:`find_edges`), from
    :data:`EDGE_BELOW` eV below its onset to :data:`EDGE_ABOVE` eV above it (short of the next
    edge), else the most prominent peak. ``kind == "none"`` when nothing stands out.

    Parameters
    ----------
    spectra : array (..., L)
        Spectra with the spectral axis last.
    axis : array (L,), optional
        Axis values (channel numbers when omitted).
    units : str
        The axis's units; edges are looked for only in "eV".
    signal_type : str
        The file's signal type: "EDS_TEM", "EDS_SEM" (any "EDS…") hold X-ray lines, never
        edges; a peak at 0 eV (the detector's zero peak) is skipped.
    widths, min_channels
        Size of a peak window (FWHMs each side; smallest channel count).

    Returns
    -------
    AutoWindow
        Channels ``[start, stop)``, the kind of feature, its position in axis units and the
        edges found.
    """
    x = np.asarray(spectra, float)
    x = x.reshape(-1, x.shape[-1])
    n = x.shape[1]
    e = np.arange(n, dtype=float) if axis is None else np.asarray(axis, float).ravel()
    edges: list[Edge] = []
    eds = is_eds(signal_type)
    if units == "eV" and axis is not None and float(e.min()) >= LOW_LOSS_BELOW and not eds:
        edges = find_edges(x, e)
        if edges:
            start, stop = _edge_window(edges, e)
            return AutoWindow(start, stop, "edge", edges[0].onset, tuple(edges))
    zero = e if eds and units == "eV" and axis is not None else None
    if eds:  # X-ray lines sit a few detector FWHM apart: two each side keep one line
        widths = min(widths, 2.0)
    skipped = None
    if zero is not None:  # would the zero peak have been chosen?
        first = _dominant_peak(x.mean(0), share=0.05)
        if first is not None and abs(e[first[0]]) <= first[1] * abs(e[1] - e[0]):
            skipped = float(e[first[0]])
    peak = _peak_window(x, widths, min_channels, skip_zero=zero)
    if peak is None:
        return AutoWindow(0, n, "none", float("nan"), tuple(edges), eds, skipped)
    start, stop, k = peak
    return AutoWindow(start, stop, "peak", float(e[k]), tuple(edges), eds, skipped)


def signal_type_of(metadata) -> str:
    """The file's signal type from a layer's or the reader's metadata ("EELS", "EDS_TEM", …;
    "" when the file gives none)."""
    info = metadata.get("napari_microml") if isinstance(metadata, dict) else None
    return str((info or {}).get("signal_type") or "")


def is_eds(signal_type: str) -> bool:
    """Whether a file's signal type (HyperSpy's "EDS_TEM", "EDS_SEM") is X-ray spectroscopy."""
    return str(signal_type or "").strip().upper().startswith("EDS")


NARROW_PEAK_CHANNELS = (
    1.6  # LSMO's zero-loss peak: shifts right at 2.2 channels, about half at 1.0-1.2
)


def narrow_peak(spectra) -> str | None:
    """A sentence when the fitted window's dominant peak is too few channels wide for the
    shift-VAE to report the full size of a shift, else ``None``.

    Parameters
    ----------
    spectra : array (..., L)
        The spectra inside the fitted window, spectral axis last.

    Returns
    -------
    str or None
        "The peak is … channels wide …", or ``None`` (a wider peak, or no dominant peak, e.g. an
        edge).
    """
    x = np.asarray(spectra, float)
    peak = _dominant_peak(np.nanmean(x.reshape(-1, x.shape[-1]), axis=0), share=0.5)
    if peak is None or peak[1] >= NARROW_PEAK_CHANNELS:  # wide enough, or no dominant peak
        return None
    fwhm = peak[1]
    return (
        f"The peak is {fwhm:.1f} channels wide at half maximum: on so narrow a peak the shifts "
        "come out about half their size (their pattern holds); where the size matters, record "
        "finer channels or fit a Gaussian to each spectrum."
    )


SATURATED_CHANNELS = 3  # a maximum held over this many channels is a clipped peak


def size_caveats(spectra) -> str | None:
    """Why the fitted shifts' size cannot be trusted, as sentences: the peak is too narrow
    (:func:`narrow_peak`), or flat-topped in at least a tenth of the spectra over
    :data:`SATURATED_CHANNELS` or more channels (a saturated detector clipped it); ``None``
    when neither.

    Parameters
    ----------
    spectra : array (..., L)
        As for :func:`narrow_peak`.

    Returns
    -------
    str or None
        The sentences, or ``None``.
    """
    return " ".join(c for c in (narrow_peak(spectra), _saturated(spectra)) if c) or None


def _saturated(spectra) -> str | None:
    x = np.asarray(spectra, float)
    x = x.reshape(-1, x.shape[-1])
    top = np.nanmax(x, axis=1, keepdims=True)
    flat = np.sum(x >= top - 1e-6 * np.abs(top), axis=1) >= SATURATED_CHANNELS
    flat &= top[:, 0] > np.nanmedian(x, axis=1)  # not a constant or empty spectrum
    if flat.sum() < max(1, 0.1 * len(x)):
        return None
    level = float(np.median(top[flat, 0]))
    return (
        f"The peak is flat-topped at {level:.6g} in {int(flat.sum())} of {len(x)} spectra: the "
        "detector saturated, so the shifts come from its flanks only and come out smaller "
        "(their pattern holds); where the size matters, record with a shorter exposure."
    )


def implausible_shift(
    shift, *, window: tuple[float, float], units: str = "", signal_type: str = ""
) -> str | None:
    """A sentence when a fitted shift map does not look like a real shift, else ``None``.

    Flags shifts spanning more than a quarter of the fitted window (one feature does not move
    that far: the spectra differ in shape, e.g. composition), core-loss EELS shifts spanning more
    than :data:`MAX_CORE_LOSS_SHIFT` eV (chemical shifts and drift are a few eV), and maps of at
    least 16 spectra whose neighbouring shifts are uncorrelated (noise, not structure).

    Parameters
    ----------
    shift : array (H, W) or (N,)
        Fitted shift per spectrum (axis units); (N, 1) is a line scan.
    window : (float, float)
        The fitted window's first and last axis values.
    units : str
        Axis units, for the sentence and the core-loss rule ("eV").
    signal_type : str
        The file's signal type; the core-loss rule is not applied to EDS (X-ray lines).

    Returns
    -------
    str or None
        "Check this shift map: …" naming each problem, or ``None``.
    """
    s = np.asarray(shift, float)
    if s.ndim == 2 and 1 in s.shape:
        s = s.ravel()
    finite = s[np.isfinite(s)]
    if finite.size < 2:
        return None
    u = f" {units}" if units else ""
    lo, hi = sorted(float(w) for w in window)
    span = float(finite.max() - finite.min())
    problems = []
    if hi > lo and span > 0.25 * (hi - lo):
        problems.append(f"span {span:.3g}{u}, {100 * span / (hi - lo):.0f} % of the window")
    elif (
        units == "eV"
        and lo >= LOW_LOSS_BELOW
        and span > MAX_CORE_LOSS_SHIFT
        and not is_eds(signal_type)
    ):
        problems.append(f"span {span:.3g} eV, more than core-loss edges move")
    pairs = []
    if s.ndim == 1:
        pairs = [(s[:-1], s[1:])]
    elif s.ndim == 2:
        pairs = [(s[:, :-1], s[:, 1:]), (s[:-1], s[1:])]
    a = np.concatenate([p[0].ravel() for p in pairs]) if pairs else np.empty(0)
    b = np.concatenate([p[1].ravel() for p in pairs]) if pairs else np.empty(0)
    ok = np.isfinite(a) & np.isfinite(b)
    if s.size >= 16 and ok.sum() >= 8 and np.std(a[ok]) > 0 and np.std(b[ok]) > 0:
        r = float(np.corrcoef(a[ok], b[ok])[0, 1])
        if r < 0.2:
            problems.append(f"neighbouring shifts barely correlate (r = {r:.2f}): noise-like")
    if not problems:
        return None
    return (
        "Check this shift map: "
        + "; ".join(problems)
        + ". A real shift of one feature is small and smooth; these spectra may differ in "
        "shape (composition, thickness) instead: see the latent maps."
    )
