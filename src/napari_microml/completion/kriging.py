"""Local Gaussian-process (kriging) completion of a partial scan.

Classic geostatistics: the image is cut into small blocks; each block is predicted from the k
measured pixels around its centre (octant-balanced neighbourhoods, so a pixel between two
spiral arms sees both arms) with a Matérn kernel (ν = 3/2 or 5/2) whose length scale, amplitude
and pixel-noise variance are fitted by maximising the marginal likelihood of random local
neighbourhoods (analytic gradients). No training, no network. Values are standardised by the
measured pixels' mean and std only, so the result scales with the data (no absolute floors).
Memory is bounded by ``chunk`` blocks at a time plus the output, so large frames run in pieces.
:func:`lattice_kriging_iter` adds a crystal-lattice mean (:mod:`.periodic`) where a held-out
check on the scan's own measured pixels favours it, and calibrates the σ on the same pixels.
Used by ``complete_scan(model="kriging")`` (Matérn-5/2, 8- or 16-px blocks, lattice mean and
calibration: the default) and ``complete_scan(model="local-gp")`` (Matérn-3/2, 8-px blocks,
plain: the benchmark's reference).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.spatial import cKDTree

from napari_microml.runtime.workers import drain


def check_pair(values, mask) -> tuple[np.ndarray, np.ndarray]:
    """float64 values and bool mask of one 2D frame, checked to match and to hold a measurement."""
    v = np.asarray(values, np.float64)
    m = np.asarray(mask, bool)
    if v.shape != m.shape or v.ndim != 2:
        raise ValueError("values and mask must be 2D images of the same shape.")
    if not m.any():
        raise ValueError("The mask marks no measured pixel.")
    return v, m


SIGMA_KINDS = ("measurement", "signal")


KERNELS = ("matern32", "matern52")


def _matern(d, length, amp, kernel: str = "matern32"):
    """Matérn covariance (ν = 3/2 or 5/2) of distances ``d``, computed in place (d is consumed
    when it is a float array the caller does not need again)."""
    r = np.multiply(
        d,
        (np.sqrt(3.0) if kernel == "matern32" else np.sqrt(5.0)) / length,
        out=d if isinstance(d, np.ndarray) and d.dtype.kind == "f" else None,
    )
    # in place, two arrays of d's size
    if kernel == "matern32":
        poly = r + 1.0
    else:
        poly = r * (1.0 / 3.0)
        poly += 1.0
        poly *= r
        poly += 1.0
    np.negative(r, out=r)
    np.exp(r, out=r)
    poly *= r
    poly *= amp
    return poly


MAX_TABLE = 1 << 20  # squared distances beyond this (> 1024 px apart) are computed directly


class MaternTable:
    """Matérn covariance (ν = 3/2 or 5/2) of pixel pairs by their integer squared distance.

    Pixel pairs are only ever an integer squared distance apart, so one table look-up
    replaces a square root, an exponential and a polynomial per pair (float64, for the
    neighbours' own covariance matrices). The table grows on demand up to ``MAX_TABLE``.

    Parameters
    ----------
    length, amp : kernel length (px) and signal variance.
    kernel : ``"matern32"`` or ``"matern52"``.
    """

    def __init__(self, *, length: float, amp: float, kernel: str):
        self.length, self.amp, self.kernel = length, amp, kernel
        self._cov = np.zeros(0)

    def __call__(self, d2: np.ndarray) -> np.ndarray:
        """float64 covariance of integer (intp) squared distances ``d2``."""
        n = int(d2.max()) + 1 if d2.size else 1
        if n > MAX_TABLE:
            return _matern(np.sqrt(d2, dtype=np.float64), self.length, self.amp, self.kernel)
        if n > len(self._cov):
            d = np.sqrt(np.arange(max(n, 2 * len(self._cov)), dtype=np.float64))
            self._cov = _matern(d, self.length, self.amp, self.kernel)
        return np.take(self._cov, d2, mode="clip")  # within the table: no bounds check


def _octant_neighbours(tree, pts, centres, k):
    """Indices ``(B, k)`` of measured points around each centre, balanced over 8 directions.

    Plain k-nearest neighbours of a point on a spiral arm all lie on that arm; classic kriging
    practice (octant search) takes up to k/8 nearest per 45° sector, topped up by the nearest.
    """
    kb = int(min(len(pts), 4 * k))
    _, idx = tree.query(centres, k=kb)
    idx = idx.reshape(len(centres), kb)
    d = pts[idx] - centres[:, None, :]
    octant = ((np.arctan2(d[..., 0], d[..., 1]) + np.pi) / (np.pi / 4)).astype(int) % 8
    onehot = octant[..., None] == np.arange(8)
    # rank within its octant, by distance
    rank = (
        np.take_along_axis(np.cumsum(onehot, 1, dtype=np.int16), octant[..., None], 2)[..., 0] - 1
    )
    prio = np.where(rank < max(1, k // 8), 0, 1) * kb + np.arange(kb)
    pick = np.argsort(prio, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(idx, pick, 1)


def _kernel_and_grads(d, length, amp, kernel: str = "matern32"):
    """Matérn covariance of distances ``d`` and its derivatives by log length and log amp."""
    r = (np.sqrt(3.0) if kernel == "matern32" else np.sqrt(5.0)) * d / length
    e = np.exp(-r)
    if kernel == "matern32":
        k = amp * (1.0 + r) * e
        return k, amp * r * r * e, k
    k = amp * (1.0 + r + r * r / 3.0) * e
    return k, amp * r * r * (1.0 + r) / 3.0 * e, k


def fit_gp_hyperparameters(
    values,
    mask,
    *,
    k: int = 64,
    n_fit: int = 96,
    seed: int = 0,
    kernel: str = "matern32",
    tree: cKDTree | None = None,
) -> dict:
    """Maximise the summed marginal likelihood of ``n_fit`` random local neighbourhoods.

    ``kernel``: ``"matern32"`` or ``"matern52"`` (smoother). Analytic gradients; the optimiser
    starts from the best of a few (length, noise) guesses. ``tree``: a cKDTree of
    ``np.argwhere(mask)``, when the caller has one.
    Returns ``{"length": px, "amp": variance, "noise": variance}`` in normalised units
    (measured values scaled to mean 0, std 1).
    """
    v, m = check_pair(values, mask)
    pts = np.argwhere(m).astype(np.float64)
    vals = standardise(v[m])[0]
    k = int(min(k, len(pts)))
    rng = np.random.default_rng(seed)
    tree = cKDTree(pts) if tree is None else tree
    centres = rng.uniform([0, 0], v.shape, (n_fit, 2))
    idx = _octant_neighbours(tree, pts, centres, k)
    p, y = pts[idx], vals[idx]
    y = y - y.mean(1, keepdims=True)
    d = np.sqrt(((p[:, :, None, :] - p[:, None, :, :]) ** 2).sum(-1))
    eye = np.eye(k)
    spacing = float(
        np.median(
            tree.query(pts[rng.choice(len(pts), min(2000, len(pts)), replace=False)], k=2)[0][:, 1]
        )
    )
    bounds = [(np.log(0.3), np.log(1000)), (np.log(1e-4), np.log(100)), (np.log(1e-6), np.log(10))]

    def nll(theta, grad=True):
        theta = np.clip(theta, [b[0] for b in bounds], [b[1] for b in bounds])
        length, amp, noise = np.exp(theta)
        kf, dk_dl, dk_da = _kernel_and_grads(d, length, amp, kernel)
        kmat = kf + (noise + 1e-6) * eye
        try:
            chol = np.linalg.cholesky(kmat)
        except np.linalg.LinAlgError:
            return (1e10, np.zeros(3)) if grad else 1e10
        logdet = np.log(np.diagonal(chol, axis1=1, axis2=2)).sum()
        if not grad:  # a solve is cheaper than the inverse the gradient needs
            alpha = np.linalg.solve(kmat, y[..., None])[..., 0]
            return float(0.5 * (alpha * y).sum() + logdet)
        kinv = np.linalg.inv(kmat)
        alpha = np.einsum("bij,bj->bi", kinv, y)
        value = float(0.5 * (alpha * y).sum() + logdet)
        w = kinv - alpha[:, :, None] * alpha[:, None, :]  # dNLL/dθ = ½ tr(W ∂K/∂θ)
        g = [
            0.5 * float((w * dk_dl).sum()),
            0.5 * float((w * dk_da).sum()),
            0.5 * noise * float(np.trace(w, axis1=1, axis2=2).sum()),
        ]
        return value, np.array(g)

    starts = [
        np.log([l0, 1.0, n0])
        for l0 in (spacing, 4 * spacing, 16 * spacing, 64 * spacing)
        for n0 in (0.3, 0.03, 0.003)
    ]
    x0 = min(starts, key=lambda t: nll(t, grad=False))
    best = minimize(nll, x0, jac=True, method="L-BFGS-B", bounds=bounds)
    length, amp, noise = np.exp(np.clip(best.x, [b[0] for b in bounds], [b[1] for b in bounds]))
    return {"length": float(length), "amp": float(amp), "noise": float(noise)}


def standardise(measured: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Measured values scaled to mean 0, std 1 (float64) with the mean and std used.

    Relative only (no absolute floor), so data in any unit or offset give the same fit;
    raises ValueError when the values do not vary (nothing sets a scale for the uncertainty).
    """
    x = np.asarray(measured, np.float64)
    mu = float(x.mean())
    sd = float(x.std())
    if not sd > 1e-12 * max(abs(mu), float(np.abs(x).max())) or not np.isfinite(sd):
        raise ValueError(
            f"All {x.size} measured pixels have the same value ({x.flat[0]:g}): the data give "
            "no scale for how the unmeasured pixels may differ, so no honest uncertainty "
            "can be given. Check the detector signal, or fill the image with that value."
        )
    return (x - mu) / sd, mu, sd


def _block_edge(block: int | str, k: int, mask: np.ndarray) -> int:
    """``block="auto"``: the block edge at most the neighbourhood's radius (8 px on dense
    scans, else 16 px)."""
    if block != "auto":
        return int(block)
    return 8 if np.sqrt(k / (np.pi * mask.mean())) < 16 else 16


def predict_blocks(
    tree,
    vals: np.ndarray,
    corners: np.ndarray,
    block: int,
    shape: tuple[int, int],
    *,
    length: float,
    amp: float,
    noise: float,
    k: int,
    kernel: str,
    offsets: np.ndarray | None = None,
    reach: int = 0,
    table: MaternTable | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Kriging of ``block``×``block`` pixel blocks from the measured points around each centre.

    Parameters
    ----------
    tree : cKDTree of the measured pixels (integer row, col), whose ``data`` are the points.
    vals : (N,) standardised measured values, in the tree's order.
    corners : (B, 2) int top-left pixel of each block.
    block : block edge (px); blocks are clipped to ``shape`` for their centre only.
    length, amp, noise : kernel length (px), signal and pixel-noise variances (standardised).
    k : neighbours per block (octant-balanced, see :func:`_octant_neighbours`).
    offsets : (B, q, 2) optional pixels to predict in each block, relative to its corner
        (default: the square window of ``(block + 2·reach)²`` pixels).
    reach : px the default window reaches past each block edge.
    table : the kernel's :class:`MaternTable`, to reuse over calls (made here when None).

    Returns
    -------
    rows, cols : (B, q) int pixel indices (may run past ``shape`` by < ``block + reach``;
        q = (block + 2·reach)² without ``offsets``).
    mean : (B, q) latent mean (standardised units); the local mean is the neighbours' mean.
    var : (B, q) latent variance (without the pixel noise).
    """
    pts = tree.data
    h, w = shape
    k = int(min(k, len(pts)))
    span = np.arange(-reach, block + reach)
    off = (
        np.stack(np.meshgrid(span, span, indexing="ij"), -1).reshape(1, -1, 2).astype(np.float64)
        if offsets is None
        else np.asarray(offsets, np.float64)
    )
    c0 = np.asarray(corners)
    centres = c0 + (np.minimum(block, np.stack([h - c0[:, 0], w - c0[:, 1]], 1)) - 1) / 2.0
    idx = _octant_neighbours(tree, pts, centres, k)
    nb = (pts[idx] - c0[:, None, :]).astype(np.intp)  # block-relative pixels (B, k, 2)
    y = vals[idx]
    cov = table or MaternTable(length=length, amp=amp, kernel=kernel)
    d2 = np.square(nb[:, :, None, 0] - nb[:, None, :, 0])
    d2 += np.square(nb[:, :, None, 1] - nb[:, None, :, 1])
    kmat = cov(d2)
    kmat += (noise + 1e-6) * np.eye(k)
    # K⁻¹ = L⁻ᵀL⁻¹: a Cholesky factor and its triangular inverse cost half of a general inverse
    linv = _lower_inverse(np.linalg.cholesky(kmat))
    ym = y.mean(1, keepdims=True)
    alpha = np.einsum("bji,bj->bi", linv, np.einsum("bij,bj->bi", linv, y - ym))
    # the q×k cross-covariances dominate the cost: float32 (their rounding is ~1e-7 of the
    # measured std, far below any noise)
    nb32 = nb.astype(np.float32)
    if offsets is None:  # a square window: squared distance = row part + column part
        s32 = span.astype(np.float32)[None, :, None]
        d_r = np.square(s32 - nb32[:, None, :, 0])
        d_c = np.square(s32 - nb32[:, None, :, 1])
        r = np.add(d_r[:, :, None, :], d_c[:, None, :, :]).reshape(len(c0), -1, k)
    else:
        off32 = off.astype(np.float32)
        r = np.square(off32[:, :, None, 0] - nb32[:, None, :, 0])
        r += np.square(off32[:, :, None, 1] - nb32[:, None, :, 1])
    ks = _matern(np.sqrt(r, out=r), length, 1.0, kernel)  # (B, q, k) correlations
    mu_b = ym + (ks @ (amp * alpha)[..., None].astype(np.float32))[..., 0]
    lk = ks @ linv.transpose(0, 2, 1).astype(np.float32)  # rows L⁻¹k*: variance k*ᵀK⁻¹k* = |L⁻¹k*|²
    var_b = amp - amp * amp * np.einsum("bqk,bqk->bq", lk, lk)
    rr = (c0[:, None, 0] + off[..., 0]).astype(int)
    cc = (c0[:, None, 1] + off[..., 1]).astype(int)
    return rr, cc, mu_b, var_b


def _lower_inverse(low: np.ndarray) -> np.ndarray:
    """Inverses of a stack of lower-triangular matrices (..., n, n), by halves:
    [[A, 0], [C, D]]⁻¹ = [[A⁻¹, 0], [−D⁻¹CA⁻¹, D⁻¹]] (batched products beat per-matrix LAPACK)."""
    n = low.shape[-1]
    if n <= 8:
        return np.tril(np.linalg.inv(low))  # LAPACK leaves rounding dust above the diagonal
    h = n // 2
    a_inv, d_inv = _lower_inverse(low[..., :h, :h]), _lower_inverse(low[..., h:, h:])
    out = np.zeros_like(low)
    out[..., :h, :h] = a_inv
    out[..., h:, h:] = d_inv
    out[..., h:, :h] = -(d_inv @ (low[..., h:, :h] @ a_inv))
    return out


def blend_weights(block: int, overlap: int) -> np.ndarray:
    """1-D weights over a block and ``overlap`` px either side: 1 inside, cos² ramps across
    each edge, so the weights of neighbouring blocks (``block`` apart) sum to exactly 1.

    Returns
    -------
    (block + 2·overlap,) float64 weights.
    """
    w = np.ones(block + 2 * overlap)
    if overlap:
        ramp = np.sin(np.pi * (np.arange(2 * overlap) + 0.5) / (4 * overlap)) ** 2
        w[: 2 * overlap] = ramp
        w[-2 * overlap :] = ramp[::-1]  # sin² + cos² = 1 with the next block's rising ramp
    return w


def _weight_sum(n: int, block: int, w1: np.ndarray) -> np.ndarray:
    """Sum along one axis of the blend weights ``w1`` of blocks starting every ``block`` px
    over ``n`` px (padded by the windows' reach on both sides)."""
    out = np.zeros(n + len(w1))
    for y in range(0, n, block):
        out[y : y + len(w1)] += w1
    return out


def local_gp_iter(
    values,
    mask,
    *,
    k: int = 64,
    block: int | str = 8,
    params: dict | None = None,
    chunk: int = 256,
    seed: int = 0,
    n_fit: int = 96,
    fit_k: int = 64,
    sigma: str = "measurement",
    kernel: str = "matern32",
    latent_scale: float = 1.0,
    overlap: int | str = 0,
    tree: cKDTree | None = None,
):
    """Generator twin of :func:`local_gp`: yields ``(done, total)`` block chunks (like
    ``runtime.tiling.tiled_predict``) and returns ``(image, std, params)`` (float64).

    ``sigma="measurement"``: 1σ of what a new measurement at the pixel would read (latent +
    fitted pixel noise); ``"signal"``: 1σ of the noise-free signal (latent only).
    ``block="auto"``: 8 px where the k neighbours lie within 16 px (dense scans), else 16 px.
    ``latent_scale``: factor on the latent (signal) variance, e.g. from a held-out calibration.
    ``tree``: a cKDTree of ``np.argwhere(mask)``, when the caller has one.
    ``chunk``: blocks per progress step.
    ``overlap``: px each block's prediction reaches past its edges (``"auto"``: half the
    block, so every pixel is a blend of the 2×2 blocks around it); neighbouring blocks are
    blended there with cos² weights that sum to 1, so the image has no step where one
    neighbour set hands over to the next. The blended variance is the weighted mean of the
    blocks' variances (an upper bound of the blend's error variance under the model).
    0: each block alone (steps at block edges).
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, not {kernel!r}.")
    if sigma not in SIGMA_KINDS:
        raise ValueError(f"sigma must be one of {', '.join(SIGMA_KINDS)}, not {sigma!r}.")
    v, m = check_pair(values, mask)
    h, w = v.shape
    pts = np.argwhere(m).astype(np.float64)
    vals, mu, sd = standardise(v[m])
    tree = cKDTree(pts) if tree is None else tree
    p = params or fit_gp_hyperparameters(
        v, m, k=fit_k, n_fit=n_fit, seed=seed, kernel=kernel, tree=tree
    )
    length, amp, noise = p["length"], p["amp"], p["noise"]
    k = int(min(k, len(pts)))
    block = _block_edge(block, k, m)
    o = block // 2 if overlap == "auto" else int(overlap)
    if not 0 <= o <= block // 2:
        raise ValueError(f"overlap must be 0 to half the block ({block // 2} px), not {o}.")
    by, bx = np.meshgrid(np.arange(0, h, block), np.arange(0, w, block), indexing="ij")
    corners = np.stack([by.ravel(), bx.ravel()], 1)
    # (block + 2o)² window per block, shifted by o in padded accumulators
    w1 = blend_weights(block, o)
    wgt = np.outer(w1, w1).ravel()
    # blocks of one parity class (row, column index mod 2) never overlap: plain += is exact
    parity = (corners[:, 0] // block % 2) * 2 + corners[:, 1] // block % 2
    # element-wise passes over a batch that stays in cache (~2²⁰ cross-covariances) run fastest
    batch = max(1, 2**20 // (len(wgt) * k))
    shape_p = (h + block + 2 * o, w + block + 2 * o)
    mean, var = np.zeros(shape_p), np.zeros(shape_p)
    table = MaternTable(length=length, amp=amp, kernel=kernel)
    for i in range(0, len(corners), chunk):
        for i0 in range(i, min(i + chunk, len(corners)), batch):
            c0 = corners[i0 : min(i0 + batch, i + chunk)]
            rr, cc, mu_b, var_b = predict_blocks(
                tree,
                vals,
                c0,
                block,
                (h, w),
                length=length,
                amp=amp,
                noise=noise,
                k=k,
                kernel=kernel,
                reach=o,
                table=table,
            )
            flat = (rr + o) * shape_p[1] + cc + o
            par = parity[i0 : i0 + len(c0)]
            for p_ in np.unique(par):
                sel = par == p_
                mean.reshape(-1)[flat[sel]] += wgt * mu_b[sel]  # flat views add fastest
                var.reshape(-1)[flat[sel]] += wgt * var_b[sel]
        yield min(i + chunk, len(corners)), len(corners)
    # the blocks form a full grid, so their summed weights are a product of two 1-D sums;
    # < 1 only within o px of the frame's edge
    wsum = np.outer(*(_weight_sum(n, block, w1) for n in (h, w)))[o : o + h, o : o + w]
    mean, var = mean[o : o + h, o : o + w] / wsum, var[o : o + h, o : o + w] / wsum
    out = np.where(m, v, mean * sd + mu)
    latent = np.maximum(
        var, 1e-6 * amp
    )  # rounding can push it to 0 or below off the measured pixels
    # "measurement": what a re-scan reads there = latent + the fitted pixel noise (the latent part
    # alone covered the noisy truth only ~75 % of the time)
    latent = latent * latent_scale
    total = latent + noise if sigma == "measurement" else latent
    std = np.where(m, 0.0, np.sqrt(total) * sd)
    return (
        out,
        std,
        {
            "length": length,
            "amp": amp,
            "noise": noise,
            "sigma": sigma,
            "noise_sd": float(np.sqrt(noise) * sd),
            "neighbours": k,
            "block": block,
        },
    )


def local_gp(
    values,
    mask,
    *,
    k: int = 64,
    block: int = 8,
    params: dict | None = None,
    chunk: int = 512,
    return_std: bool = False,
    seed: int = 0,
):
    """Local GP (kriging) interpolation with moving neighbourhoods.

    The image is cut into ``block``×``block`` pixel blocks; each block is predicted from the
    ``k`` measured pixels around its centre (octant-balanced, see :func:`_octant_neighbours`)
    with one batched solve per block (bounded memory: ``chunk`` blocks at a time). Matérn-3/2
    kernel; hyperparameters fitted by marginal likelihood (:func:`fit_gp_hyperparameters`)
    unless given; the local mean is the neighbourhood's sample mean.

    Returns
    -------
    (H, W) float32 image equal to ``values`` at measured pixels (and, if ``return_std``, the
    predictive 1σ of a measurement at each unmeasured pixel, in the input's units; 0 where
    measured).
    """
    out, std, _ = drain(
        local_gp_iter(values, mask, k=k, block=block, params=params, chunk=chunk, seed=seed)
    )
    return (
        (out.astype(np.float32), std.astype(np.float32)) if return_std else out.astype(np.float32)
    )


MAX_SQUARES = 256  # left-out squares of the held-out check, all rounds together
COVERAGE_TARGET = 0.9545  # the 2σ band of a Gaussian
GAIN_SE = 3.0  # the lattice mean must beat plain kriging by this many standard errors


def holdout_squares(mask: np.ndarray, *, seed: int = 0) -> tuple[list[np.ndarray], int]:
    """Squares whose measured pixels are left out to test a predictor on the scan itself.

    The edge is 6× the median distance of the unmeasured pixels to the nearest measured one
    (8–64 px, at most a quarter of the frame), so a left-out square is a gap like the scan's
    own. The frame is tiled by such squares and split into four rounds (a 2×2 checkerboard), so
    the squares left out together are never adjacent; at most ``MAX_SQUARES`` in all.

    Returns
    -------
    rounds : four (n, 2) arrays, top-left pixels of the squares (holding a measured pixel)
        left out together.
    side : the squares' edge (px).
    """
    from scipy.ndimage import distance_transform_edt

    h, w = mask.shape
    gap = float(np.median(distance_transform_edt(~mask)[~mask]))
    side = int(np.clip(round(6 * gap), 8, 64))
    side = max(4, min(side, h // 4, w // 4))
    rng = np.random.default_rng(seed)
    rounds = []
    for a, b in ((0, 0), (1, 1), (0, 1), (1, 0)):
        ys, xs = np.meshgrid(
            np.arange(a * side, h - side + 1, 2 * side),
            np.arange(b * side, w - side + 1, 2 * side),
            indexing="ij",
        )
        c = np.stack([ys.ravel(), xs.ravel()], 1)
        c = c[[mask[y : y + side, x : x + side].any() for y, x in c]]
        rounds.append(c[rng.permutation(len(c))[: MAX_SQUARES // 4]])
    return rounds, side


def _leave_out(m, corners, side):
    """The measured pixels left out in ``corners``' squares, those kept, and a tree of the kept
    ones (None when fewer than 8 remain or none is left out)."""
    held = np.zeros_like(m)
    for y, x in corners:
        held[y : y + side, x : x + side] = m[y : y + side, x : x + side]
    keep = m & ~held
    ok = keep.sum() >= 8 and held.any()
    return held, keep, cKDTree(np.argwhere(keep).astype(np.float64)) if ok else None


def _holdout_errors(v, m, corners, side, mean_fn, params, *, k, kernel, split=None):
    """Errors at the left-out measured pixels of each square when they are predicted from the
    rest: ``mean_fn(keep, held) -> (trend at the kept pixels, trend at the left-out ones)``.
    ``split``: :func:`_leave_out` of these squares, when already made.

    Returns per square lists of (error, latent variance, noise variance), in data units²;
    none when too few measured pixels would remain.
    """
    h, w = m.shape
    held, keep, tree = _leave_out(m, corners, side) if split is None else split
    if tree is None:
        return []
    trend_keep, trend_held = mean_fn(keep, held)
    r = v[keep] - trend_keep
    mu, sd = float(r.mean()), float(r.std())
    sd = sd if sd > 0 else 1.0  # a flat remainder: any scale predicts it
    # only the left-out pixels of each square are predicted (padded to the fullest square)
    inside = [np.argwhere(held[y : y + side, x : x + side]) for y, x in corners]
    q = max(len(a) for a in inside)
    offsets = np.stack([np.concatenate([a, np.repeat(a[-1:], q - len(a), 0)]) for a in inside])
    rr, cc, mu_b, var_b = predict_blocks(
        tree,
        (r - mu) / sd,
        corners,
        side,
        (h, w),
        length=params["length"],
        amp=params["amp"],
        noise=params["noise"],
        k=k,
        kernel=kernel,
        offsets=offsets,
    )
    flat_held = np.flatnonzero(held)  # the order of ``trend_held``
    out = []
    for a, r_b, c_b, mu_sq, var_sq in zip(inside, rr, cc, mu_b, var_b, strict=True):
        n = len(a)
        pos = np.searchsorted(flat_held, r_b[:n] * w + c_b[:n])
        e = v[r_b[:n], c_b[:n]] - (trend_held[pos] + (mu_sq[:n] * sd + mu))
        lat = np.maximum(var_sq[:n].astype(np.float64), 1e-6 * params["amp"]) * sd**2
        out.append((e, lat, params["noise"] * sd**2))
    return out


def _calibration(errors) -> float:
    """Factor on the latent variance so that 95.45 % of the left-out pixels fall within 2σ
    (bisection; 1/4–16)."""
    e = np.concatenate([x[0] for x in errors])
    lat = np.concatenate([x[1] for x in errors])
    noise = np.concatenate([np.full(len(x[0]), x[2]) for x in errors])

    def cover(c):
        return np.mean(np.abs(e) <= 2 * np.sqrt(c * lat + noise))

    lo, hi = np.log(0.25), np.log(16.0)
    if cover(np.exp(lo)) >= COVERAGE_TARGET:
        return float(np.exp(lo))
    if cover(np.exp(hi)) < COVERAGE_TARGET:
        return float(np.exp(hi))
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if cover(np.exp(mid)) < COVERAGE_TARGET else (lo, mid)
    return float(np.exp(hi))


def lattice_kriging_iter(
    values,
    mask,
    *,
    k: int = 64,
    block: int | str = "auto",
    n_fit: int = 48,
    fit_k: int = 48,
    kernel: str = "matern52",
    sigma: str = "measurement",
    lattice: bool = True,
    calibrate: bool = True,
    seed: int = 0,
    overlap: int | str = "auto",
):
    """Kriging with a crystal-lattice mean where the scan shows one, and a held-out σ check.

    When the scan's spectrum has a lattice reflection (:func:`periodic.lattice_basis` on a
    normalised-convolution fill), a Fourier-series mean on the reciprocal vectors is fitted to
    the measured pixels (:func:`periodic.fit_lattice_mean`) and the local GP krigs the rest.
    Whether to use it is decided on the scan itself: the measured pixels in non-adjacent
    gap-sized squares are left out (:func:`holdout_squares`) and predicted from the others with
    and without the lattice mean; the lattice mean is kept only when its squared error is lower
    by more than ``GAIN_SE`` standard errors over the squares. Otherwise this is plain kriging
    (:func:`local_gp_iter`, blocks blended over ``overlap`` px). With ``calibrate`` the latent
    variance is scaled so that 95.45 % of the left-out pixels of the chosen predictor fall
    within its 2σ.

    Yields ``(done, total)``; returns ``(image, std, params)`` like :func:`local_gp_iter`, with
    ``params["mean"]`` (``"local"`` or ``"lattice"``), the check's figures and the factor.
    """
    from dataclasses import replace

    from napari_microml.completion.periodic import (
        alias_vectors,
        design,
        fit_lattice_mean,
        lattice_basis,
        normal_equations,
        solve_normal,
    )

    v, m = check_pair(values, mask)
    h, w = v.shape
    pts = np.argwhere(m).astype(np.float64)
    _, mu, sd = standardise(v[m])
    kb = int(min(k, len(pts)))
    rounds, side = holdout_squares(m, seed=seed)
    tree = cKDTree(pts)  # one tree of the measured pixels for the fits and the final pass
    p_plain = fit_gp_hyperparameters(
        v, m, k=fit_k, n_fit=n_fit, seed=seed, kernel=kernel, tree=tree
    )
    n_sq = int(sum(len(c) for c in rounds))
    info: dict = {"mean": "local", "holdout_squares": n_sq, "holdout_side": side}

    edge = _block_edge(block, kb, m)
    n_blocks = -(-h // edge) * -(-w // edge)  # the full pass's progress total

    run_check = n_sq >= 8 and (lattice or calibrate)
    yield 0, n_blocks  # a chance to cancel after the fit
    aliases = alias_vectors(m)
    basis = (
        lattice_basis(np.where(m, (v - mu) / sd, 0.0), aliases=aliases)
        if lattice and run_check
        else None
    )
    lm = (
        fit_lattice_mean(pts, v[m], basis, (h, w), seed=seed, aliases=aliases)
        if basis is not None
        else None
    )
    trend_img = lm.image((h, w)) if lm is not None else None
    p_res = None
    if lm is not None and trend_img is not None:
        try:
            p_res = fit_gp_hyperparameters(
                np.where(m, v - trend_img, 0.0),
                m,
                k=fit_k,
                n_fit=n_fit,
                seed=seed,
                kernel=kernel,
                tree=tree,
            )
        except ValueError:  # the lattice leaves an exactly flat residual: nothing to krige
            lm = None
        yield 0, n_blocks
    lattice_trend = None
    if lm is not None and p_res is not None:
        gram, rhs = lm.normal or normal_equations(pts - lm.origin, v[m], lm.freqs)

        def lattice_trend(keep, held):
            # refitted without the left-out pixels: their rows taken out of the normal equations
            a_h = design(np.argwhere(held) - lm.origin, lm.freqs)
            c = solve_normal(gram - a_h.T @ a_h, rhs - a_h.T @ v[held], int(keep.sum()))
            img = replace(lm, coef=c).image((h, w))
            return img[keep], img[held]

    def plain_trend(keep, held):
        return np.zeros(int(keep.sum())), np.zeros(int(held.sum()))

    # both checks leave out the same pixels, one round at a time (one tree alive at a time)
    errs: list = []
    errs_l: list = []
    for c in rounds if run_check else []:
        if len(c):
            split = _leave_out(m, c, side)
            errs += _holdout_errors(
                v, m, c, side, plain_trend, p_plain, k=kb, kernel=kernel, split=split
            )
            yield 0, n_blocks  # a chance to cancel between checks
            if lattice_trend is not None:
                errs_l += _holdout_errors(
                    v, m, c, side, lattice_trend, p_res, k=kb, kernel=kernel, split=split
                )
        yield 0, n_blocks
    split = None  # the last round's masks and tree need not outlive the checks
    check = len(errs) >= 8  # enough left-out squares to compare and calibrate on
    chosen, params, trend = errs, p_plain, None
    if check and lm is not None and p_res is not None and lattice_trend is not None:
        d = np.array(
            [(a[0] ** 2).sum() - (b[0] ** 2).sum() for a, b in zip(errs, errs_l, strict=True)]
        )
        n_held = sum(len(a[0]) for a in errs)
        gain, se = float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))
        info.update(
            basis=lm.basis.round(6).tolist(),
            harmonics=int(len(lm.freqs)),
            holdout_mse_local=float(sum((a[0] ** 2).sum() for a in errs) / n_held),
            holdout_mse_lattice=float(sum((b[0] ** 2).sum() for b in errs_l) / n_held),
            holdout_gain_over_se=gain / max(se, 1e-300),
        )
        if gain > GAIN_SE * se:
            chosen, params, trend = errs_l, p_res, trend_img
            info["mean"] = "lattice"
    scale = _calibration(chosen) if calibrate and check else 1.0
    target = v if trend is None else np.where(m, v - trend, 0.0)
    image, std, fitted = yield from local_gp_iter(
        target,
        m,
        k=k,
        block=block,
        params=params,
        seed=seed,
        sigma=sigma,
        kernel=kernel,
        latent_scale=scale,
        overlap=overlap,
        tree=tree,
    )
    if trend is not None:
        image = np.where(m, v, image + trend)
    return image, std, {**fitted, **info, "latent_scale": scale}
