"""Local strain, rotation and polarisation from column positions, with propagated errors.

Each column's deformation gradient F is the least-squares map of the ideal neighbour vectors
n·cell (n ∈ {-1, 0, 1}², n ≠ 0, same sublattice) onto the measured ones; a missing neighbour
(vacancy, edge) is simply absent from the sum and a badly misplaced one (dislocation core) is
left out by the match tolerance. F is linear in the positions, so its variance follows exactly
from each column's positional σ.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from napari_microml.lattice.sublattice import TOL

NEIGHBOURS = {1: 12, 2: 32}  # same-sublattice neighbours looked at for a fit over 3×3 or 5×5 cells


def _neighbour_table(positions, labels, k):
    """(N, k) global indices of each column's nearest same-sublattice columns (−1 if none)."""
    n = len(positions)
    nb = np.full((n, k), -1)
    for s in np.unique(labels):
        members = np.flatnonzero(labels == s)
        if len(members) < 2:
            continue
        kk = min(k + 1, len(members))
        _, j = cKDTree(positions[members]).query(positions[members], k=kk, workers=-1)
        nb[members, : kk - 1] = members[j[:, 1:]]
    return nb


def fit_deformation(
    positions: np.ndarray, labels: np.ndarray, cell: np.ndarray, *, shells: int = 1
):
    """Per-column deformation gradient against ``cell``, fitted to the neighbours n·cell with
    |n_i| ≤ ``shells`` (1: the 3×3 cells around the column; 2: 5×5, about 3× less noise, half the
    spatial resolution).

    Returns F (N, 2, 2) in (row, col) so that measured ≈ F @ ideal; the neighbour table (N, k);
    the weights W (N, k, 2) with F[:, a, :] = Σ_k (p_k − p_0)[a] W_k; the residual sum of
    squares (N,) and its expectation per unit positional variance (N,) (both NaN where the fit
    has fewer than three independent neighbours).
    """
    k = NEIGHBOURS[shells]
    nb = _neighbour_table(positions, labels, k)
    have = nb >= 0
    d = np.where(have[..., None], positions[np.where(have, nb, 0)] - positions[:, None, :], np.nan)
    inv = np.linalg.inv(cell)
    whole = np.round(np.nan_to_num(d @ inv))
    ideal = whole @ cell  # (N, k, 2) ideal vectors (row, col)
    resid = np.linalg.norm(d - ideal, axis=-1)
    tol = TOL * min(np.linalg.norm(cell, axis=1))
    use = (
        have
        & (np.abs(whole).max(axis=-1) >= 1)
        & (np.abs(whole).max(axis=-1) <= shells)
        & (resid < tol)
    )
    # drop a second neighbour matched to the same ideal vector (the farther one)
    code = np.where(use, (whole[..., 0] + shells) * (2 * shells + 1) + whole[..., 1] + shells, -1)
    for a in range(1, k):
        dup = (code[:, a : a + 1] == code[:, :a]).any(axis=1) & use[:, a]
        use[dup, a] = False
        code[dup, a] = -1
    r = np.where(use[..., None], ideal, 0.0)
    dd = np.where(use[..., None], np.nan_to_num(d), 0.0)
    M = r.transpose(0, 2, 1) @ r
    det = M[:, 0, 0] * M[:, 1, 1] - M[:, 0, 1] ** 2
    scale = np.einsum("ij,ij->", cell, cell) / 2
    ok = (use.sum(axis=1) >= 3) & (det > 0.25 * scale**2)
    Minv = np.full_like(M, np.nan)
    Minv[ok] = np.linalg.inv(M[ok])
    W = r @ Minv.transpose(0, 2, 1)  # (N, k, 2)
    F = dd.transpose(0, 2, 1) @ W
    fit = r @ F.transpose(0, 2, 1)
    rss = np.where(use, ((dd - fit) ** 2).sum(-1), 0.0).sum(1)
    m = use.sum(1)
    s = r.sum(axis=1)
    sms = (s[:, None, :] @ Minv @ s[:, :, None])[:, 0, 0]
    expected = 2.0 * (2 * m - 2 - sms)  # E[rss] / σ² (both coordinates)
    rss[~ok] = np.nan
    expected[~ok] = np.nan
    F[~ok] = np.nan
    W[~ok] = np.nan
    nb = np.where(use, nb, -1)
    return F, nb, W, rss, expected


def reference_deformation(F: np.ndarray) -> np.ndarray:
    """The reference columns' average deformation (2, 2): per component, the mean of the values
    between the 25th and 75th percentiles (the interquartile mean).

    Parameters
    ----------
    F : (N, 2, 2) float
        Local deformation gradients of the reference columns (rows with NaN are ignored).

    Returns
    -------
    (2, 2) float
        A linear average over the central half of the columns: unlike the median it does not
        jump with noise when the strain has two humps (a dislocation's two sides), and unlike the
        plain mean it ignores outlying fits.
    """
    F = np.asarray(F, float).reshape(-1, 4)
    F = F[np.isfinite(F).all(axis=1)]
    lo = len(F) // 4
    hi = len(F) - lo
    central = np.partition(F, (lo, hi - 1), axis=0)[lo:hi] if hi > lo + 1 else F
    return central.mean(axis=0).reshape(2, 2)


def strain_rotation(F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) exx, eyy, exy and (N,) rotation (rad) from F in (row, col).

    The polar decomposition F = R U in (x = col, y = row); strain is U − I. A positive rotation
    turns +x towards +y (clockwise on the screen, where rows grow downwards)."""
    Fx = F[:, ::-1, ::-1]  # (row, col) → (x, y)
    theta = np.arctan2(Fx[:, 1, 0] - Fx[:, 0, 1], Fx[:, 0, 0] + Fx[:, 1, 1])
    c, s = np.cos(theta), np.sin(theta)
    Rt = np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], -2)  # R(θ)^T
    U = Rt @ Fx
    exy = 0.5 * (U[:, 0, 1] + U[:, 1, 0])
    return np.column_stack([U[:, 0, 0] - 1, U[:, 1, 1] - 1, exy]), theta


def strain_std(nb: np.ndarray, W: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1σ of exx, eyy, exy (N, 3) and rotation (N,) from independent isotropic positional σ (N,)."""
    s_nb = np.where(nb >= 0, sigma[np.where(nb >= 0, nb, 0)], 0.0)
    Wz = np.where((nb >= 0)[..., None], W, 0.0)
    # var F[a, b] = Σ_k σ_k² W_kb² + σ_0² (Σ_k W_kb)², the same for a = row and a = col
    var_b = (s_nb[..., None] ** 2 * Wz**2).sum(1) + sigma[:, None] ** 2 * Wz.sum(1) ** 2
    var_b[np.isnan(W).any(axis=(1, 2))] = np.nan
    vx, vy = var_b[:, 1], var_b[:, 0]  # b = col → x, b = row → y
    std = np.column_stack([np.sqrt(vx), np.sqrt(vy), 0.5 * np.sqrt(vx + vy)])
    return std, 0.5 * np.sqrt(vx + vy)


def residual_sigma(nb: np.ndarray, rss: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Positional σ (px) from the affine fits' residuals, pooled over each column and its fitted
    neighbours ``nb`` (N, k) (about 250 degrees of freedom)."""
    idx = np.column_stack([np.arange(len(nb)), nb])
    valid = idx >= 0
    r = np.where(valid, rss[np.where(valid, idx, 0)], np.nan)
    e = np.where(valid, expected[np.where(valid, idx, 0)], np.nan)
    good = np.isfinite(r) & np.isfinite(e) & (e > 0)
    num = np.where(good, r, 0).sum(1)
    den = np.where(good, e, 0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sig = np.sqrt(num / den)
    fallback = np.sqrt(np.nansum(rss) / np.nansum(expected)) if np.nansum(expected) > 0 else np.nan
    return np.where(den > 0, sig, fallback)


def displacement(
    positions: np.ndarray,
    labels: np.ndarray,
    F: np.ndarray,
    sigma: np.ndarray,
    *,
    k: int = 8,
    shell_factor: float = 1.25,
):
    """Offset (N, 2) of each column from the centre of its nearest shell of the other
    sublattice (sublattice 1 for columns of 0, else 0), and its 1σ (N, 2).

    The shell size is the typical count of other-sublattice columns within ``shell_factor`` ×
    the typical nearest distance; a column whose shell is incomplete (edge, vacancy) gets NaN.
    """
    n = len(positions)
    out = np.full((n, 2), np.nan)
    std = np.full((n, 2), np.nan)
    subs = np.unique(labels[labels >= 0])
    if len(subs) < 2:
        return out, std
    trees = {s: (np.flatnonzero(labels == s), None) for s in subs[:2]}
    for s in subs:
        t = subs[1] if s == subs[0] else subs[0]
        src = np.flatnonzero(labels == s)
        dst = trees[t][0]
        kk = min(k, len(dst))
        dist, j = cKDTree(positions[dst]).query(positions[src], k=kk)
        dist, j = dist.reshape(len(src), kk), j.reshape(len(src), kk)
        d1 = np.median(dist[:, 0])
        # the local scale follows the strain, so a stretched region keeps its whole shell
        Fs = F[src]
        scale = np.sqrt(np.abs(Fs[:, 0, 0] * Fs[:, 1, 1] - Fs[:, 0, 1] * Fs[:, 1, 0]))
        scale = np.where(np.isfinite(scale), scale, 1.0)
        inside = dist < shell_factor * d1 * scale[:, None]
        counts = inside.sum(1)
        m = int(np.bincount(counts).argmax())
        if m == 0:
            continue
        full = counts == m
        nbp = positions[dst[j]]  # (n_src, kk, 2)
        centre = np.where(inside[..., None], nbp, 0.0).sum(1) / np.maximum(counts, 1)[:, None]
        off = positions[src] - centre
        sj = np.where(inside, sigma[dst[j]], 0.0)
        var = sigma[src] ** 2 + (sj**2).sum(1) / np.maximum(counts, 1) ** 2
        out[src[full]] = off[full]
        std[src[full]] = np.sqrt(var[full])[:, None]
    return out, std
