"""Local Gaussian-process (kriging) completion of a partial scan.

Classic geostatistics: the image is cut into small blocks; each block is predicted from the k
measured pixels around its centre (octant-balanced neighbourhoods, so a pixel between two
spiral arms sees both arms) with a Matérn kernel (ν = 3/2 or 5/2) whose length scale, amplitude
and pixel-noise variance are fitted by maximising the marginal likelihood of random local
neighbourhoods (analytic gradients). No training, no network. Values are standardised by the
measured pixels' mean and std only, so the result scales with the data (no absolute floors).
Memory is bounded by ``chunk`` blocks at a time plus the output, so large frames run in pieces.
Used by ``complete_scan(model="kriging")`` (Matérn-5/2, 8- or 16-px blocks: the default) and
``complete_scan(model="local-gp")`` (Matérn-3/2, 8-px blocks: the benchmark's reference).
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
    e = np.exp(-r)
    poly = 1.0 + r if kernel == "matern32" else 1.0 + r + r * r / 3.0
    poly *= e
    poly *= amp
    return poly


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
    rank = (np.cumsum(onehot, 1) * onehot).sum(-1) - 1  # rank within its octant, by distance
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
    values, mask, *, k: int = 64, n_fit: int = 96, seed: int = 0, kernel: str = "matern32"
) -> dict:
    """Maximise the summed marginal likelihood of ``n_fit`` random local neighbourhoods.

    ``kernel``: ``"matern32"`` or ``"matern52"`` (smoother). Analytic gradients; the optimiser
    starts from the best of a few (length, noise) guesses.
    Returns ``{"length": px, "amp": variance, "noise": variance}`` in normalised units
    (measured values scaled to mean 0, std 1).
    """
    v, m = check_pair(values, mask)
    pts = np.argwhere(m).astype(np.float64)
    vals = standardise(v[m])[0]
    k = int(min(k, len(pts)))
    rng = np.random.default_rng(seed)
    tree = cKDTree(pts)
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
        kinv = np.linalg.inv(kmat)
        alpha = np.einsum("bij,bj->bi", kinv, y)
        value = float(0.5 * (alpha * y).sum() + np.log(np.diagonal(chol, axis1=1, axis2=2)).sum())
        if not grad:
            return value
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
):
    """Generator twin of :func:`local_gp`: yields ``(done, total)`` block chunks (like
    ``runtime.tiling.tiled_predict``) and returns ``(image, std, params)`` (float64).

    ``sigma="measurement"``: 1σ of what a new measurement at the pixel would read (latent +
    fitted pixel noise); ``"signal"``: 1σ of the noise-free signal (latent only).
    ``block="auto"``: 8 px where the k neighbours lie within 16 px (dense scans), else 16 px.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, not {kernel!r}.")
    if sigma not in SIGMA_KINDS:
        raise ValueError(f"sigma must be one of {', '.join(SIGMA_KINDS)}, not {sigma!r}.")
    v, m = check_pair(values, mask)
    h, w = v.shape
    pts = np.argwhere(m).astype(np.float64)
    vals, mu, sd = standardise(v[m])
    p = params or fit_gp_hyperparameters(v, m, k=fit_k, n_fit=n_fit, seed=seed, kernel=kernel)
    length, amp, noise = p["length"], p["amp"], p["noise"]
    k = int(min(k, len(pts)))
    if (
        block == "auto"
    ):  # the block edge at most the neighbourhood's radius: dense scans, smaller blocks
        radius = np.sqrt(k / (np.pi * m.mean()))
        block = 8 if radius < 16 else 16
    tree = cKDTree(pts)
    by, bx = np.meshgrid(np.arange(0, h, block), np.arange(0, w, block), indexing="ij")
    corners = np.stack([by.ravel(), bx.ravel()], 1)
    off = (
        np.stack(np.meshgrid(np.arange(block), np.arange(block), indexing="ij"), -1)
        .reshape(-1, 2)
        .astype(np.float64)
    )
    off32 = off.astype(np.float32)
    off2 = (off32**2).sum(-1)
    mean = np.zeros((h + block, w + block))
    var = np.zeros((h + block, w + block))
    eye = np.eye(k)
    for i in range(0, len(corners), chunk):
        c0 = corners[i : i + chunk]
        centres = c0 + (np.minimum(block, np.stack([h - c0[:, 0], w - c0[:, 1]], 1)) - 1) / 2.0
        idx = _octant_neighbours(tree, pts, centres, k)
        nb = pts[idx] - c0[:, None, :]  # block-relative (B, k, 2)
        y = vals[idx]
        kmat = _matern(np.sqrt(((nb[:, :, None] - nb[:, None]) ** 2).sum(-1)), length, amp, kernel)
        kmat += (noise + 1e-6) * eye
        kinv = np.linalg.inv(kmat)
        ym = y.mean(1, keepdims=True)
        alpha = np.einsum("bij,bj->bi", kinv, y - ym)
        # the b²×k cross-covariances dominate the cost: float32 (their rounding is ~1e-7 of the
        # measured std, far below any noise)
        nb32 = nb.astype(np.float32)
        d2 = (
            off2[None, :, None]
            + (nb32**2).sum(-1)[:, None, :]
            - 2.0 * (off32 @ nb32.transpose(0, 2, 1))
        )
        ks = _matern(np.sqrt(np.maximum(d2, 0, out=d2), out=d2), length, amp, kernel)  # (B, b², k)
        mu_b = ym + (ks @ alpha[..., None].astype(np.float32))[..., 0]
        var_b = amp - ((ks @ kinv.astype(np.float32)) * ks).sum(-1)
        rr = (c0[:, None, 0] + off[None, :, 0]).astype(int)
        cc = (c0[:, None, 1] + off[None, :, 1]).astype(int)
        mean[rr, cc] = mu_b
        var[rr, cc] = var_b
        yield min(i + chunk, len(corners)), len(corners)
    mean, var = mean[:h, :w], var[:h, :w]
    out = np.where(m, v, mean * sd + mu)
    latent = np.maximum(
        var, 1e-6 * amp
    )  # rounding can push it to 0 or below off the measured pixels
    # "measurement": what a re-scan reads there = latent + the fitted pixel noise (the latent part
    # alone covered the noisy truth only ~75 % of the time)
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
