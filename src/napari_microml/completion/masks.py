"""Sparse-scan masks: which pixels a partial (compressed-sensing) STEM scan measures.

Every kind returns a boolean ``(H, W)`` mask whose measured fraction matches the requested
``coverage`` (``1/17.9`` means 5.6 % of the pixels are measured). Curved trajectories (spiral,
Lissajous, random walk) are traced at sub-pixel arc-length steps and rasterised to the nearest
pixel; their free parameter (arm spacing, frequency, walk length) is tuned so the measured
fraction is within 2 % (relative) of the request.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

MASK_KINDS = ("spiral", "grid", "lines", "random", "random_walk", "lissajous", "line_hopping")
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


_MAKERS = {
    "spiral": _spiral,
    "grid": _grid,
    "lines": _lines,
    "random": _random,
    "random_walk": _random_walk,
    "lissajous": _lissajous,
    "line_hopping": _line_hopping,
}


def scan_mask(kind: str, shape: tuple[int, int], coverage: float, *, seed: int = 0) -> np.ndarray:
    """Boolean mask of the pixels a sparse scan of ``kind`` measures.

    Parameters
    ----------
    kind : str
        One of :data:`MASK_KINDS`: ``"spiral"`` (Archimedean, evenly spaced arms),
        ``"grid"`` (a regular point grid), ``"lines"`` (every k-th scan row), ``"random"``
        (random pixels), ``"random_walk"`` (a smoothly turning random path) or
        ``"lissajous"`` (a Lissajous figure) or ``"line_hopping"`` (every k-th line scanned in
        8-64 px segments, each on a random row of its line's band).
    shape : (int, int)
        Image height and width in pixels (each at least 8).
    coverage : float
        Fraction of pixels measured, in (0, 1]; ``1/17.9`` measures 5.6 % of the pixels.
    seed : int
        Seeds the random parts (start angle, offsets, random pixels/path).

    Returns
    -------
    ndarray of bool, shape (H, W)
        True where a pixel is measured. Spiral, Lissajous, random walk and random masks match
        ``coverage`` within 2 % (relative); grid, lines and line hopping are quantised to whole
        rows/columns.
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
