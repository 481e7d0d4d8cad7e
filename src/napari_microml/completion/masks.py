"""Sparse-scan masks: which pixels a partial (compressed-sensing) STEM scan measures.

Every kind returns a boolean ``(H, W)`` mask whose measured fraction matches the requested
``coverage`` (``1/17.9`` means 5.6 % of the pixels are measured). Curved trajectories (spiral,
Lissajous, random walk) are traced at sub-pixel arc-length steps and rasterised to the nearest
pixel; their free parameter (arm spacing, frequency, walk length) is tuned so the measured
fraction is within 2 % (relative) of the request. The instrument-like kinds (thick traces,
partial lines, jittered and drifting grids, regions of interest) imitate what real scans measure:
beams wider than a pixel and paths that wobble, lines cut short, positions that miss their
targets or drift with time, and a dense region inside a sparse survey.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage as ndi

MASK_KINDS = (
    "spiral",
    "grid",
    "lines",
    "random",
    "random_walk",
    "lissajous",
    "line_hopping",
    "thick_trace",
    "partial_lines",
    "jittered_grid",
    "drifting_grid",
    "roi",
)
_STEP = 0.5  # arc-length sampling of traced trajectories (px)


_CHUNK = 1 << 20  # trajectory samples rasterised at a time (bounded memory on large fields)


def _rasterise(
    path: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], n: int, shape: tuple[int, int]
) -> np.ndarray:
    """Mark the pixels nearest to ``n`` trajectory samples ``path(index) -> (rows, cols)``.

    In chunks; samples outside the field are dropped.
    """
    h, w = shape
    mask = np.zeros(shape, bool)
    for start in range(0, n, _CHUNK):
        rows, cols = path(np.arange(start, min(n, start + _CHUNK), dtype=np.float64))
        r, c = np.rint(rows).astype(np.int64), np.rint(cols).astype(np.int64)
        ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        mask[r[ok], c[ok]] = True
    return mask


def _tune(
    make: Callable[[float], np.ndarray],
    target: int,
    lo: float,
    hi: float,
    increasing: bool,
    iters: int = 40,
) -> np.ndarray:
    """Bisect the parameter of ``make`` so the mask holds ~``target`` measured pixels."""
    best, best_err = None, np.inf
    for _ in range(iters):
        mid = 0.5 * (lo + hi) if hi / max(lo, 1e-12) < 4 else np.sqrt(lo * hi)
        mask = make(mid)
        n = int(mask.sum())
        err = abs(n - target)
        if err < best_err:
            best, best_err = mask, err
        if err <= 0.002 * target:
            break
        if (n < target) == increasing:
            lo = mid
        else:
            hi = mid
    assert best is not None  # iters ≥ 1: at least one mask was made
    return best


def _spiral(shape, coverage, rng) -> np.ndarray:
    h, w = shape
    cy = (h - 1) / 2 + rng.uniform(-0.5, 0.5)
    cx = (w - 1) / 2 + rng.uniform(-0.5, 0.5)
    phase = rng.uniform(0, 2 * np.pi)
    r_max = np.hypot(max(cy, h - 1 - cy), max(cx, w - 1 - cx)) + 1.0

    def make(spacing: float) -> np.ndarray:
        # Archimedean r = spacing * theta / 2pi; arc length s ~ spacing * theta^2 / (4 pi)
        total = np.pi * (r_max + spacing) ** 2 / spacing

        def path(i):
            theta = np.sqrt(4 * np.pi * i * _STEP / spacing)
            r = spacing * theta / (2 * np.pi)
            return cy + r * np.sin(theta + phase), cx + r * np.cos(theta + phase)

        return _rasterise(path, int(total / _STEP) + 1, shape)

    # about one measured pixel per px of trace, so the arm spacing is near 1 / coverage
    lo, hi = max(0.2, 0.25 / coverage), min(2.0 * max(h, w), 4.0 / coverage)
    return _tune(make, int(round(coverage * h * w)), min(lo, hi / 2), hi, increasing=False)


def _lissajous(shape, coverage, rng) -> np.ndarray:
    h, w = shape
    ratio = (
        (1 + np.sqrt(5)) / 2 * rng.uniform(0.97, 1.03)
    )  # irrational-ish: the curve fills the field
    phase = rng.uniform(0, 2 * np.pi, 2)

    def make(freq: float) -> np.ndarray:
        fx, fy = freq, freq * ratio
        length = 2.0 * np.pi * np.hypot(fx * (w - 1) / 2, fy * (h - 1) / 2) * 1.3 + 10
        n = int(length / _STEP) + 2

        def path(i):
            t = i / (n - 1)
            return (
                (h - 1) / 2 * (1 + np.sin(2 * np.pi * fy * t + phase[0])),
                (w - 1) / 2 * (1 + np.sin(2 * np.pi * fx * t + phase[1])),
            )

        return _rasterise(path, n, shape)

    # trace length ~ 2 pi freq (h + w) / 2 * 1.6 px; bracket the frequency around it
    guess = coverage * h * w / (1.6 * np.pi * (h + w) / 2)
    return _tune(
        make,
        int(round(coverage * h * w)),
        max(0.05, guess / 8),
        min(4.0 * max(h, w), guess * 8 + 1),
        increasing=True,
    )


def _mirror(x: np.ndarray, size: int) -> np.ndarray:
    """Reflect coordinates into ``[0, size - 1]`` (a walker bouncing off the field edges)."""
    period = 2.0 * max(size - 1, 1)
    x = np.mod(x, period)
    return np.where(x > size - 1, period - x, x)


def _random_walk(shape, coverage, rng) -> np.ndarray:
    """Trace a persistent random walk (smoothly turning, unit speed) until coverage is met."""
    h, w = shape
    target = int(round(coverage * h * w))
    turn = rng.uniform(0.05, 0.25)  # heading change per px (rad, std)
    pos = rng.uniform([0, 0], [h - 1, w - 1])
    heading = rng.uniform(0, 2 * np.pi)
    mask = np.zeros(shape, bool)
    count = 0
    chunk = max(4096, target)
    while True:
        n = int(chunk / _STEP)
        ang = heading + np.cumsum(rng.normal(0, turn * np.sqrt(_STEP), n))
        path = pos + np.cumsum(_STEP * np.stack([np.sin(ang), np.cos(ang)], 1), axis=0)
        r = np.rint(_mirror(path[:, 0], h)).astype(np.int64)
        c = np.rint(_mirror(path[:, 1], w)).astype(np.int64)
        flat = r * w + c
        new = ~mask.ravel()[flat]
        # first visit of each new pixel, in walk order
        _, first = np.unique(flat, return_index=True)
        first = np.sort(first[new[first]])
        if count + len(first) >= target:
            keep = flat[first[: target - count]]
            mask.ravel()[keep] = True
            return mask
        mask.ravel()[flat[first]] = True
        count += len(first)
        pos, heading = path[-1], ang[-1]


def _grid(shape, coverage, rng) -> np.ndarray:
    h, w = shape
    target = coverage * h * w
    n_rows = int(np.clip(round(np.sqrt(target * h / w)), 1, h))
    n_cols = int(np.clip(round(target / n_rows), 1, w))
    step_r, step_c = h / n_rows, w / n_cols
    rows = np.floor(np.arange(n_rows) * step_r + rng.uniform(0, step_r)).astype(int).clip(0, h - 1)
    cols = np.floor(np.arange(n_cols) * step_c + rng.uniform(0, step_c)).astype(int).clip(0, w - 1)
    mask = np.zeros(shape, bool)
    mask[np.ix_(rows, cols)] = True
    return mask


def _lines(shape, coverage, rng) -> np.ndarray:
    h, w = shape
    n_rows = int(np.clip(round(coverage * h), 1, h))
    step = h / n_rows
    rows = np.floor(np.arange(n_rows) * step + rng.uniform(0, step)).astype(int).clip(0, h - 1)
    mask = np.zeros(shape, bool)
    mask[rows] = True
    return mask


def _line_hopping(shape, coverage, rng) -> np.ndarray:
    """Scan partial lines that hop (a line-hopping / partial-line acquisition).

    Every k-th row is scanned in segments of 8-64 px, each on a row drawn at random within its
    line's band.
    """
    h, w = shape
    n_rows = int(np.clip(round(coverage * h), 1, h))
    step = h / n_rows
    mask = np.zeros(shape, bool)
    for i in range(n_rows):
        col = 0
        while col < w:
            seg = int(rng.integers(8, 65))
            row = int(np.clip(np.floor(i * step + rng.uniform(0, step)), 0, h - 1))
            mask[row, col : col + seg] = True
            col += seg
    return mask


def _random(shape, coverage, rng) -> np.ndarray:
    h, w = shape
    n = max(1, int(round(coverage * h * w)))
    mask = np.zeros(h * w, bool)
    mask[rng.choice(h * w, n, replace=False)] = True
    return mask.reshape(shape)


def _smooth_field(shape, amplitude: float, length: float, rng) -> np.ndarray:
    """Draw a smooth random displacement field (2, H, W) in px.

    White noise blurred over ``length`` px, scaled so its RMS is ``amplitude``.
    """
    h, w = shape
    step = max(1, int(length // 4))  # blur on a coarse grid, then upsample: cheap on big fields
    small = rng.normal(size=(2, -(-h // step) + 1, -(-w // step) + 1))
    small = ndi.gaussian_filter(small, (0, length / step, length / step), mode="wrap")
    field = ndi.zoom(small, (1, step, step), order=1)[:, :h, :w]
    field -= field.mean(axis=(1, 2), keepdims=True)
    return field * (amplitude / max(float(np.sqrt(np.mean(field**2))), 1e-12))


def _thick_trace(shape, coverage, rng) -> np.ndarray:
    """Trace a thick, wobbling spiral, Lissajous or random walk (a real beam's path).

    The beam is 1-4 px wide, its path wobbles (drift, 0-3 px RMS) and the trace's edges are
    ragged (a blurred probe).
    """
    base = str(rng.choice(["spiral", "lissajous", "random_walk"], p=[0.6, 0.3, 0.1]))
    width = int(rng.integers(1, 5))
    amp, length = rng.uniform(0, 3), rng.uniform(16, 96)
    ragged = rng.uniform(0, 0.3)  # share of the trace's edge pixels not measured
    seeds = rng.integers(2**31, size=3)
    shift = _smooth_field(shape, amp, length, np.random.default_rng(seeds[1]))
    grid = np.indices(shape, dtype=np.float64)
    rows = np.clip(np.rint(grid[0] + shift[0]), 0, shape[0] - 1).astype(np.int64)
    cols = np.clip(np.rint(grid[1] + shift[1]), 0, shape[1] - 1).astype(np.int64)
    edge_draw = np.random.default_rng(seeds[2]).uniform(size=shape)

    def make(thin_cov: float) -> np.ndarray:
        thin = _MAKERS[base](shape, thin_cov, np.random.default_rng(seeds[0]))[rows, cols]
        if width == 1:
            return thin
        thick = ndi.binary_dilation(thin, np.ones((width, width), bool))
        edge = thick & ~ndi.binary_erosion(thick, border_value=1)
        return thick & ~(edge & (edge_draw < ragged))

    target = coverage * shape[0] * shape[1]
    thin_cov, best, best_err = coverage / width, np.zeros(shape, bool), np.inf
    for _ in range(6):  # fixed point on the thickening factor, which varies slowly with thin_cov
        mask = make(min(thin_cov, 1.0))
        n = int(mask.sum())
        if abs(n - target) < best_err:
            best, best_err = mask, abs(n - target)
        if best_err <= 0.01 * target:
            break
        thin_cov = min(1.0, thin_cov * target / n if n else thin_cov * 2)
    # the exact count: fray the trace's edge or widen it by single pixels along its border
    # (several rounds where the path cannot get shorter, e.g. a spiral's last arm)
    pick = np.random.default_rng(seeds[2])
    for _ in range(8):
        diff = int(best.sum()) - max(1, int(round(target)))
        if diff > 0:
            pool = np.flatnonzero((best & ~ndi.binary_erosion(best, border_value=1)).ravel())
        else:
            pool = np.flatnonzero((ndi.binary_dilation(best) & ~best).ravel())
        if diff == 0 or pool.size == 0:
            break
        best.ravel()[pick.choice(pool, min(abs(diff), pool.size), replace=False)] = diff < 0
    return best


def _partial_lines(shape, coverage, rng) -> np.ndarray:
    """Scan evenly spaced rows, each over one random stretch of 20-100 % of the width.

    A line scan cut short: a partial-line acquisition.
    """
    h, w = shape
    target = coverage * h * w
    frac = rng.uniform(0.2, 1.0, size=h)
    n_rows = int(np.clip(np.searchsorted(np.cumsum(frac * w), target) + 1, 1, h))
    step = h / n_rows
    rows = np.floor(np.arange(n_rows) * step + rng.uniform(0, step)).astype(int).clip(0, h - 1)
    lengths = frac[:n_rows] * w * target / max(float(np.sum(frac[:n_rows] * w)), 1.0)
    lengths = np.clip(np.rint(lengths), 1, w).astype(int)
    mask = np.zeros(shape, bool)
    for row, n in zip(rows, lengths, strict=True):
        start = int(rng.integers(0, w - n + 1))
        mask[row, start : start + n] = True
    return mask


def _grid_points(shape, coverage, rng) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Row and column coordinates (float, raster order) of a regular point grid, and its steps."""
    h, w = shape
    target = coverage * h * w
    n_rows = int(np.clip(round(np.sqrt(target * h / w)), 1, h))
    n_cols = int(np.clip(round(target / n_rows), 1, w))
    step_r, step_c = h / n_rows, w / n_cols
    r = np.arange(n_rows) * step_r + rng.uniform(0, step_r)
    c = np.arange(n_cols) * step_c + rng.uniform(0, step_c)
    rr, cc = np.meshgrid(r, c, indexing="ij")
    return rr.ravel(), cc.ravel(), step_r, step_c


def _place(shape, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Mark the pixels at float positions, reflected back into the field at its edges."""
    h, w = shape
    r = np.clip(np.floor(_mirror(rows, h)), 0, h - 1).astype(np.int64)
    c = np.clip(np.floor(_mirror(cols, w)), 0, w - 1).astype(np.int64)
    mask = np.zeros(shape, bool)
    mask[r, c] = True
    return mask


def _jittered_grid(shape, coverage, rng) -> np.ndarray:
    """Scan a point grid whose every position misses its target by up to 10-45 % of a step."""
    rows, cols, sr, sc = _grid_points(shape, coverage, rng)
    j = rng.uniform(0.1, 0.45)
    return _place(
        shape,
        rows + rng.uniform(-j, j, rows.size) * sr,
        cols + rng.uniform(-j, j, cols.size) * sc,
    )


def _drifting_grid(shape, coverage, rng) -> np.ndarray:
    """Scan a point grid in raster order while the specimen drifts.

    A steady drift of 0.5-3 steps over the scan (a sheared, stretched grid), a slow wander and
    a small jitter.
    """
    rows, cols, sr, sc = _grid_points(shape, coverage, rng)
    t = np.linspace(0.0, 1.0, rows.size)
    out = []
    for pos, step in ((rows, sr), (cols, sc)):
        steady = rng.uniform(0.5, 3.0) * rng.choice([-1, 1]) * t
        freq, phase = rng.uniform(0.5, 3.0), rng.uniform(0, 2 * np.pi)
        wander = rng.uniform(0, 0.5) * np.sin(2 * np.pi * freq * t + phase)
        jitter = rng.normal(0, 0.05, t.size)
        out.append(pos + (steady + wander + jitter) * step)
    return _place(shape, out[0], out[1])


def _roi(shape, coverage, rng) -> np.ndarray:
    """Scan one to three regions of interest densely and the rest sparsely.

    The rectangles (every pixel, or every 2nd-3rd row) hold 30-80 % of the measured pixels; a
    random, grid or spiral survey covers the rest of the field.
    """
    h, w = shape
    target = max(1, int(round(coverage * h * w)))
    roi_share = rng.uniform(0.3, 0.8)
    n_roi = int(rng.integers(1, 4))
    every = int(rng.choice([1, 1, 2, 3]))  # row spacing inside the rectangles
    area = min(0.5 * h * w, roi_share * target * every)  # rectangles: at most half the field
    mask = np.zeros(shape, bool)
    for a in rng.dirichlet(np.ones(n_roi)) * area:
        aspect = np.exp(rng.uniform(-0.7, 0.7))
        rh = int(np.clip(round(np.sqrt(a * aspect)), 1, h))
        rw = int(np.clip(round(a / rh), 1, w))
        y, x = int(rng.integers(0, h - rh + 1)), int(rng.integers(0, w - rw + 1))
        block = np.zeros((rh, rw), bool)
        block[int(rng.integers(every)) :: every] = True
        mask[y : y + rh, x : x + rw] |= block
    survey = str(rng.choice(["random", "grid", "spiral"]))
    rest = target - int(mask.sum())
    if rest > 0:
        cov = min(1.0, rest / max(1, int((~mask).sum())))
        mask |= _MAKERS[survey](shape, cov, rng) & ~mask
    # exact count: drop surplus measured pixels or add missing ones at random
    diff = int(mask.sum()) - target
    pool = np.flatnonzero(mask.ravel() if diff > 0 else ~mask.ravel())
    flip = rng.choice(pool, min(abs(diff), pool.size), replace=False)
    mask.ravel()[flip] = diff < 0
    return mask


_MAKERS = {
    "spiral": _spiral,
    "grid": _grid,
    "lines": _lines,
    "random": _random,
    "random_walk": _random_walk,
    "lissajous": _lissajous,
    "line_hopping": _line_hopping,
    "thick_trace": _thick_trace,
    "partial_lines": _partial_lines,
    "jittered_grid": _jittered_grid,
    "drifting_grid": _drifting_grid,
    "roi": _roi,
}


def scan_mask(kind: str, shape: tuple[int, int], coverage: float, *, seed: int = 0) -> np.ndarray:
    """Boolean mask of the pixels a sparse scan of ``kind`` measures.

    Parameters
    ----------
    kind : str
        One of :data:`MASK_KINDS`: ``"spiral"`` (Archimedean, evenly spaced arms),
        ``"grid"`` (a regular point grid), ``"lines"`` (every k-th scan row), ``"random"``
        (random pixels), ``"random_walk"`` (a smoothly turning random path),
        ``"lissajous"`` (a Lissajous figure), ``"line_hopping"`` (every k-th line scanned in
        8-64 px segments, each on a random row of its line's band), ``"thick_trace"`` (a spiral,
        Lissajous or random walk traced by a 1-4 px wide beam on a wobbling path, ragged
        edges), ``"partial_lines"`` (evenly spaced rows, each scanned over one random stretch
        of 20-100 % of the width), ``"jittered_grid"`` (a point grid, each position off by up
        to 45 % of a step), ``"drifting_grid"`` (a point grid sheared and stretched by drift
        during the scan) or ``"roi"`` (1-3 densely scanned rectangles and a sparse survey
        elsewhere).
    shape : (int, int)
        Image height and width in pixels (each at least 8).
    coverage : float
        Fraction of pixels measured, in (0, 1]; ``1/17.9`` measures 5.6 % of the pixels.
    seed : int
        Seeds the random parts (start angle, offsets, random pixels/path).

    Returns
    -------
    ndarray of bool, shape (H, W)
        True where a pixel is measured. Spiral, Lissajous, random walk, random, thick trace,
        partial lines and ROI masks match ``coverage`` within 2 % (relative); grid, lines, line
        hopping and the jittered and drifting grids are quantised to whole rows/columns (and
        grid points that drift onto one pixel count once).
    """
    if kind not in _MAKERS:
        raise ValueError(f"Unknown scan kind {kind!r}; choose one of {', '.join(MASK_KINDS)}.")
    try:
        h, w = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(
            f"The scan shape must be (height, width) in pixels, not {shape!r}."
        ) from None
    if min(h, w) < 8:
        raise ValueError(f"The scan field is only {h}×{w} pixels; at least 8×8 are needed.")
    coverage = float(coverage)
    if not (0.0 < coverage <= 1.0) or not np.isfinite(coverage):
        raise ValueError(
            f"Coverage is the fraction of pixels measured and must lie in (0, 1]; got {coverage}. "
            "For '1 in 18 pixels' pass 1/18."
        )
    if coverage * h * w < 1:
        raise ValueError(
            f"Coverage {coverage:.3g} of a {h}×{w} field measures less than one pixel."
        )
    if coverage >= 1.0:
        return np.ones((h, w), bool)
    return _MAKERS[kind]((h, w), coverage, np.random.default_rng(seed))
