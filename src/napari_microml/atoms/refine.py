"""Batched sub-pixel refinement of atomic-column positions.

All columns are fitted at once: a vectorised Levenberg–Marquardt least-squares fit of an
isotropic 2D Gaussian plus a constant background in a circular window around every column
(numpy, float32 model and Jacobian, batched 5×5 normal equations, an active set that
shrinks as fits converge), not one scipy fit per atom. Columns whose fit fails or
runs away fall back to the background-subtracted intensity centre of mass.
"""

from __future__ import annotations

from collections.abc import Generator

import numpy as np
from scipy import ndimage as ndi

from napari_microml.runtime.noise import noise_sigma
from napari_microml.runtime.validate import (
    as_scaled_stack,
    check_number,
    check_positions,
    fill_nonfinite,
)
from napari_microml.runtime.workers import drain, progress

METHODS = ("gaussian", "com", "none")
NP = 5  # fitted parameters per column


def window_radius(positions: np.ndarray, default: int = 4, max_radius: int = 10, tree=None) -> int:
    """Return the fit-window radius: 0.4 of the median nearest-neighbour distance.

    Clipped to 2–``max_radius`` px; ``tree`` is a ``cKDTree`` of ``positions`` already built by
    the caller.
    """
    if len(positions) < 2:
        return default
    from scipy.spatial import cKDTree

    d, _ = (tree or cKDTree(positions)).query(positions, k=2)
    return int(np.clip(np.rint(0.4 * np.median(d[:, 1])), 2, max_radius))


def _patches(image: np.ndarray, centres: np.ndarray, r: int):
    """Pixels of the disk of radius ``r`` + ½ around every integer centre, flattened.

    Returns ``v`` (N, P) values, ``wgt`` (N, P) 1 inside the image / 0 outside, and the pixel
    offsets ``dy``, ``dx`` (P,) from the centre. The centre pixel is column ``P // 2``.
    """
    offs = np.arange(-r, r + 1)
    dy, dx = np.meshgrid(offs, offs, indexing="ij")
    disk = dy**2 + dx**2 <= (r + 0.5) ** 2
    dy, dx = dy[disk], dx[disk]
    rows = centres[:, 0, None] + dy
    cols = centres[:, 1, None] + dx
    inside = (rows >= 0) & (rows < image.shape[0]) & (cols >= 0) & (cols < image.shape[1])
    # pixels outside the image get weight 0; their (clipped) values are never used
    values = image[np.clip(rows, 0, image.shape[0] - 1), np.clip(cols, 0, image.shape[1] - 1)]
    return values, inside.astype(values.dtype), dy.astype(float), dx.astype(float)


def _own_pixels(wgt, dy, dx, starts, neighbours):
    """Zero the weight of window pixels that lie closer to another column than to this one.

    ``starts`` (N, 2): each column's position relative to its window centre; ``neighbours``
    (N, K, 2): the other columns near it, same frame, NaN where none. A column with a close
    neighbour (e.g. an interstitial 0.7 spacings away) then fits only its own side of the
    bisector; in a regular lattice the window (0.4 spacings) already stays inside that line.
    """
    valid = np.isfinite(neighbours[:, :, 0])
    rows = np.nonzero(valid.any(axis=1))[0]  # in a regular lattice: none, nothing to compute
    if not len(rows):
        return wgt
    st, nbs = starts[rows], neighbours[rows]
    own = (dy[None] - st[:, :1]) ** 2 + (dx[None] - st[:, 1:]) ** 2
    keep = np.ones(own.shape, bool)
    for k in range(int(valid[rows].sum(axis=1).max())):
        nb = nbs[:, k]
        other = (dy[None] - nb[:, :1]) ** 2 + (dx[None] - nb[:, 1:]) ** 2
        keep &= ~(other < own)  # NaN neighbours compare False: nothing removed
    out = wgt.copy()
    out[rows] *= keep
    return out


def _neighbours(positions: np.ndarray, r: int, k: int = 6, tree=None) -> np.ndarray:
    """Return (N, k, 2) positions of up to ``k`` other columns within 2r + 1 px of each column.

    NaN-padded; ``tree`` is a ``cKDTree`` of ``positions`` already built by the caller.
    """
    from scipy.spatial import cKDTree

    n = len(positions)
    out = np.full((n, k, 2), np.nan)
    if n < 2:
        return out
    d, idx = (tree or cKDTree(positions)).query(
        positions, k=min(k + 1, n), distance_upper_bound=2 * r + 1
    )
    d, idx = d[:, 1:], idx[:, 1:]  # the first hit is the column itself (or its exact duplicate)
    ok = np.isfinite(d)
    out[:, : d.shape[1]][ok] = positions[idx[ok]]
    return out


def _lm_gaussian(v, wgt, dy, dx, p, iters=10, tol=5e-3):
    """Vectorised Levenberg–Marquardt for f = A·exp(-((y-y0)²+(x-x0)²)/2s²) + b.

    ``v``, ``wgt``: (N, P) window values and weights; ``dy``, ``dx``: (P,) pixel offsets;
    ``p``: (N, 5) start [A, y0, x0, s, b]. Model and Jacobian are evaluated in float32 (the
    positional precision needed is ~1e-3 px), normal equations solved in float64. Columns whose
    step falls below ``tol`` px leave the active set, so the work shrinks as fits converge.
    Returns the fitted (N, 5) parameters and the (N, 2, 2) covariance of the position (y0, x0).
    """
    dt = np.float32
    v, wgt, dy, dx = v.astype(dt), wgt.astype(dt), dy.astype(dt), dx.astype(dt)
    p = np.asarray(p, np.float64).copy()

    def evaluate(q, idx=slice(None)):
        a, y0, x0, s, b = (q[:, i, None].astype(dt) for i in range(NP))
        w = wgt[idx]
        jac = np.empty((len(w), NP, w.shape[1]), dt)
        ry, rx, r2 = jac[:, 1], jac[:, 2], jac[:, 3]  # filled in place, scaled below
        np.subtract(dy, y0, out=ry)
        np.subtract(dx, x0, out=rx)
        np.multiply(ry, ry, out=r2)
        r2 += rx * rx
        inv = 1.0 / (s * s)
        g = np.exp(r2 * (-0.5 * inv))
        gw = np.multiply(g, w, out=jac[:, 0])  # ∂f/∂A
        agw = gw * (a * inv)
        res = v[idx] * w - a * gw - b * w
        ry *= agw  # ∂f/∂y0 = A·g·(y − y0)/s²
        rx *= agw
        r2 *= agw * (1.0 / s)  # ∂f/∂s = A·g·r²/s³
        jac[:, 4] = w
        return res, jac, np.einsum("np,np->n", res, res)

    res, jac, cost = evaluate(p)
    lam = np.full(len(v), 1e-2, dt)
    eye = np.eye(NP)
    active = np.arange(len(v))
    for _ in range(iters):
        if not len(active):
            break
        every = len(active) == len(v)  # no copies while every fit is still running
        jj, rr = (jac, res) if every else (jac[active], res[active])
        h = (jj @ jj.transpose(0, 2, 1)).astype(np.float64)
        grad = (jj @ rr[..., None])[..., 0].astype(np.float64)
        diag = np.diagonal(h, axis1=1, axis2=2)
        damp = h + (lam[active, None, None] * diag[:, None, :] + 1e-9) * eye
        step = np.nan_to_num(np.linalg.solve(damp, grad[..., None])[..., 0])
        trial = p[active] + step
        trial[:, 3] = np.clip(np.abs(trial[:, 3]), 0.3, 50)
        res2, jac2, cost2 = evaluate(trial, active)
        better = np.isfinite(cost2) & (cost2 < cost[active])
        idx = active[better]
        p[idx], jac[idx], res[idx], cost[idx] = (
            trial[better],
            jac2[better],
            res2[better],
            cost2[better],
        )
        lam[active] = np.where(better, lam[active] / 3, lam[active] * 4)
        done = (better & (np.abs(step[:, 1:3]).max(axis=1) < tol)) | (lam[active] > 1e6)
        active = active[~done]
    h = (jac @ jac.transpose(0, 2, 1)).astype(np.float64)
    h += 1e-9 * eye * np.diagonal(h, axis1=1, axis2=2).max(axis=1)[:, None, None]
    dof = np.maximum(wgt.sum(axis=1) - NP, 1)
    with np.errstate(all="ignore"):  # only the position block of the covariance is needed
        unit = np.zeros((len(v), NP, 2))
        unit[:, 1, 0] = unit[:, 2, 1] = 1.0
        var = np.linalg.solve(h, unit)[:, 1:3, :] * (cost / dof)[:, None, None]
    return p, var


def flatten_background(image: np.ndarray, radius: int) -> np.ndarray:
    """Subtract the slowly varying background (gradients, thickness changes).

    So the constant-background fit is not biased: a grey-scale minimum over 2·(2r+1) px, smoothed.

    The background varies on the scale of the filter (≥ 11 px), so the minimum is taken at half
    resolution and the smoothing on a grid ~``size / 4`` times coarser, interpolated back:
    the same background to within noise, a fraction of the time on large images. Float32
    throughout (the result feeds a float32 fit). Returns a float32 image.
    """
    size = 2 * (2 * radius + 1) + 1
    q = max(size // 8, 1)  # the coarse grid is every 2q px
    img = np.asarray(image, np.float32)
    h, w = img.shape
    if min(h, w) < 4 * q:
        return img - np.median(img)
    half = block_reduce(img, k=2, ufunc=np.add) / 4  # 2×2 means: less noise in the minimum
    low = block_reduce(half, k=q, ufunc=np.minimum)
    low = ndi.minimum_filter(low, size=max(-(-(size // 2 + 1) // q), 1), mode="reflect")
    coarse = ndi.gaussian_filter(low, size / (4 * q), mode="reflect")
    # block centres sit at (2q·i + q − ½) px; the upsampler's grid starts at 0
    return img - upsample_linear(coarse, step=2 * q, shape=img.shape, offset=q - 0.5)


def block_reduce(a: np.ndarray, *, k: int, ufunc) -> np.ndarray:
    """Reduce non-overlapping k×k blocks of an image with a numpy ufunc.

    Parameters
    ----------
    a : numpy.ndarray, (H, W)
        The image.
    k : int
        Block edge in pixels; the ragged edge (the last H mod k rows, W mod k columns) is
        dropped.
    ufunc : numpy.ufunc
        A binary ufunc applied in place, e.g. ``np.add`` (block sums) or ``np.minimum``.

    Returns
    -------
    numpy.ndarray, (H // k, W // k)
        One value per block, in ``a``'s dtype.
    """
    h, w = a.shape[0] // k * k, a.shape[1] // k * k
    out = a[:h:k, :w:k].copy()
    for i in range(k):
        for j in range(k):
            if i or j:
                ufunc(out, a[i:h:k, j:w:k], out=out)
    return out


def upsample_linear(
    coarse: np.ndarray, *, step: int, shape: tuple, offset: float = 0.0
) -> np.ndarray:
    """Interpolate a coarse grid bilinearly onto a full-size image.

    Rows first on the coarse columns, then columns, so the full-size work is one pass.

    Parameters
    ----------
    coarse : numpy.ndarray, (h, w)
        Samples on a grid ``step`` px apart.
    step : int
        Coarse grid spacing in full-size pixels.
    shape : tuple of int
        (H, W) of the result.
    offset : float
        Full-size pixel position of sample 0: sample i sits at ``offset + step·i`` (beyond
        the first and last samples the values are held constant).

    Returns
    -------
    numpy.ndarray, ``shape``
        The interpolated image, in ``coarse``'s dtype.
    """
    out = coarse
    for axis, n in enumerate(shape):
        x = np.clip((np.arange(n) - offset) / step, 0, out.shape[axis] - 1)
        i0 = x.astype(int)
        i1 = np.minimum(i0 + 1, out.shape[axis] - 1)
        f = (x - i0).astype(out.dtype).reshape((-1, 1) if axis == 0 else (1, -1))
        a, b = (out[i0], out[i1]) if axis == 0 else (out[:, i0], out[:, i1])
        out = a + (b - a) * f
    return out


def refine_positions(
    image,
    positions,
    *,
    method: str = "gaussian",
    radius: int | None = None,
    max_radius: int = 10,
    chunk: int = 1024,
) -> tuple[np.ndarray, dict]:
    """Refine atom-column ``positions`` to sub-pixel precision on ``image``.

    The window radius is ``radius`` or 0.4 × the median nearest-neighbour distance, clipped to
    2–``max_radius`` px (sparse single atoms must not get huge windows; a lattice the finder
    resampled because its columns are very wide passes a larger cap).

    The fit runs on the image mapped to 0–1 (offset and scale from its own values, float64),
    so positions do not depend on the image's units; intensities are returned in those units.

    Parameters
    ----------
    image : array_like, (H, W)
        One image, any real dtype and units; NaN/inf pixels are filled before fitting.
    positions : array_like, (N, 2)
        Column positions as (row, col) in pixels, inside the image and finite.
    method : {"gaussian", "com", "none"}
        ``"gaussian"``: a 2-D Gaussian fit per column (falls back to the centre of mass where
        the fit fails); ``"com"``: background-subtracted centre of mass; ``"none"``: positions
        unchanged, intensities and centre-of-mass uncertainties still measured.
    radius : int or None
        Window radius in pixels (≥ 1); None picks it from the column spacing as above.
    max_radius : int
        Upper bound in pixels (≥ 2) for the automatic radius and for the one wider refit of
        columns broader than their window.
    chunk : int
        Columns fitted per batch (≥ 1): 1,024 keeps a batch's float32 Jacobian (~1.7 MB at a
        5 px window) inside a 2 MiB L2 cache.

    Returns
    -------
    positions : numpy.ndarray, (N, 2) float64
        Refined (row, col) positions in pixels, in the input order.
    features : dict of str to numpy.ndarray
        (N,) arrays: ``intensity`` (peak height above background, image units), ``sigma``
        (Gaussian width, px; NaN where not fitted), ``position_std`` (1σ positional
        uncertainty, px, from the fit covariance or the centre-of-mass noise propagation),
        ``fit_ok`` (bool: the Gaussian fit converged sensibly).

    Raises
    ------
    ValueError
        A bad image, positions that are not (N, 2), NaN or outside the image, a bad method,
        radius, max_radius or chunk.
    """
    return drain(
        refine_positions_iter(
            image, positions, method=method, radius=radius, max_radius=max_radius, chunk=chunk
        )
    )


def refine_positions_iter(
    image,
    positions,
    *,
    method: str = "gaussian",
    radius: int | None = None,
    max_radius: int = 10,
    chunk: int = 1024,
) -> Generator[tuple, None, tuple[np.ndarray, dict]]:
    """Refine like :func:`refine_positions`, as a generator that reports progress.

    It takes the same parameters as :func:`refine_positions`. Stopping the generator between
    chunks cancels the refinement.

    Yields
    ------
    tuple
        ``("progress", done, total, message)`` after every ``chunk`` of columns (a cancel
        point for the widgets).

    Returns
    -------
    tuple of (numpy.ndarray, dict)
        The generator's return value, ``(positions, features)`` as :func:`refine_positions`
        returns them.

    Raises
    ------
    ValueError
        As :func:`refine_positions`.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown refinement {method!r}; choose one of {', '.join(METHODS)}.")
    if radius is not None:
        radius = check_number(radius, "radius", low=1, integer=True, unit="pixels")
    max_radius = check_number(max_radius, "max_radius", low=2, integer=True, unit="pixels")
    chunk = check_number(chunk, "chunk", low=1, integer=True)
    scaled = as_scaled_stack(image, what="image", min_size=3, allow_stack=False)
    image = fill_nonfinite(scaled.stack[0])
    pos0, _ = check_positions(positions, image.shape, frame_column=False)
    n = len(pos0)
    feats = {k: np.full(n, np.nan) for k in ("intensity", "sigma", "position_std")}
    feats["fit_ok"] = np.zeros(n, bool)
    if n == 0:
        return pos0.copy(), feats
    from scipy.spatial import cKDTree

    tree = cKDTree(pos0)  # one tree for the window size and the neighbours
    r = int(radius or window_radius(pos0, max_radius=max_radius, tree=tree))
    noise = noise_sigma(image)
    raw, out = image, pos0.copy()
    passes = [(np.arange(n), r)]
    while passes:
        todo, r = passes.pop()
        image = flatten_background(raw, r)
        others = _neighbours(pos0, r, tree=tree)
        too_wide = []
        for lo in range(0, len(todo), chunk):
            sl = todo[lo : lo + chunk]
            centres = np.clip(np.rint(pos0[sl]).astype(int), 0, np.array(image.shape) - 1)
            v, wgt, dy, dx = _patches(image, centres, r)
            wgt = _own_pixels(wgt, dy, dx, pos0[sl] - centres, others[sl] - centres[:, None])
            k = (0.1 * (wgt.sum(axis=1) - 1)).astype(int)
            ordered = np.sort(np.where(wgt > 0, v, np.inf), axis=1)
            b0 = ordered[np.arange(len(v)), k]  # 10th percentile inside the window
            centre_value = v[:, v.shape[1] // 2]
            com_pos, com_std, com_amp = _com(v - b0[:, None], wgt, dy, dx, noise)
            feats["intensity"][sl] = com_amp
            if method == "none":
                feats["position_std"][sl] = com_std
                yield progress(lo + len(sl), len(todo), f"measured {lo + len(sl)} columns")
                continue
            if method == "gaussian":
                start = pos0[sl] - centres
                # the centre of mass is a closer first guess than the maximum: fewer LM iterations
                near = np.isfinite(com_pos).all(1) & (np.abs(com_pos - start).max(1) < 1.0)
                guess = np.where(near[:, None], com_pos, start)
                amp = np.maximum(centre_value - b0, 1e-6)  # the image is 0–1 here: a relative floor
                # width from the peak volume (2π·A·s² for a Gaussian): a start close to the answer
                volume = (np.clip(v - b0[:, None], 0, None) * wgt).sum(axis=1)
                width = np.clip(np.sqrt(volume / (2 * np.pi * amp)), 0.6, max(r / 1.5, 0.8))
                p = np.column_stack([amp, guess[:, 0], guess[:, 1], width, b0])
                p, cov = _lm_gaussian(v, wgt, dy, dx, p)
                std = np.sqrt(np.clip(0.5 * (cov[:, 0, 0] + cov[:, 1, 1]), 0, None))
                moved = np.hypot(p[:, 1] - start[:, 0], p[:, 2] - start[:, 1])
                ok = (
                    np.isfinite(p).all(1)
                    & (p[:, 0] > 0)
                    & (p[:, 3] > 0.5)
                    & (p[:, 3] < 1.5 * r)
                    & (moved < max(1.0, 0.5 * r))
                    & (np.abs(p[:, 1]) <= r)
                    & (np.abs(p[:, 2]) <= r)
                    & np.isfinite(std)
                    & (std < 1.0)
                )
                fitted = centres + p[:, 1:3]
                out[sl] = np.where(ok[:, None], fitted, centres + com_pos)
                feats["sigma"][sl] = np.where(ok, p[:, 3], np.nan)
                feats["intensity"][sl] = np.where(ok, p[:, 0], com_amp)
                feats["position_std"][sl] = np.where(ok, std, com_std)
                feats["fit_ok"][sl] = ok
                too_wide.append(sl[~ok & (p[:, 3] >= 1.5 * r)])
            else:  # centre of mass
                out[sl] = centres + com_pos
                feats["position_std"][sl] = com_std
            what = "columns" if len(todo) == n else f"wide columns again, {2 * r + 1} px windows"
            yield progress(lo + len(sl), len(todo), f"fitted {lo + len(sl)}/{len(todo)} {what}")
        # a column wider than its window (the fit's width runs to its 1.5 r bound and the
        # background goes negative: ABF dips, ~5 px wide where O columns are 13 px apart) is
        # fitted once more in a window 1.6× as wide; _own_pixels keeps its neighbours out
        wider = min(int(np.ceil(1.6 * r)), max(max_radius, r))
        again = np.concatenate(too_wide) if too_wide else np.zeros(0, int)
        if method == "gaussian" and radius is None and len(todo) == n and len(again) and wider > r:
            passes.append((again, wider))
    feats["intensity"] = feats["intensity"] * scaled.scale
    return out, feats


def _com(v, wgt, dy, dx, noise):
    """Background-subtracted centre of mass, its noise-propagated 1σ error, and peak height.

    ``v``, ``wgt``: (N, P) window values (background removed) and weights; ``dy``, ``dx``: (P,).
    """
    w = np.clip(v, 0, None) * wgt
    total = w.sum(axis=1)
    safe = np.where(total > 0, total, 1.0)
    cy = (w @ dy) / safe
    cx = (w @ dx) / safe
    var = noise**2 * (wgt * ((dy - cy[:, None]) ** 2 + (dx - cx[:, None]) ** 2)).sum(axis=1) / 2
    std = np.sqrt(var) / safe
    cy, cx = np.where(total > 0, cy, 0.0), np.where(total > 0, cx, 0.0)
    return np.column_stack([cy, cx]), np.where(total > 0, std, np.nan), v[:, v.shape[1] // 2]
