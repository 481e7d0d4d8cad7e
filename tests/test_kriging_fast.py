"""The completer's faster paths give the same answers as the plain computations they replace."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from napari_microml.completion.kriging import predict_blocks
from napari_microml.completion.periodic import design, harmonics, projected_residual


def numerical_jacobian(fn, b, step=1e-8):
    return np.stack([(fn(b + e) - fn(b - e)) / (2 * step) for e in np.eye(b.size) * step], 1)


def test_lattice_refinement_jacobian_equals_finite_differences():
    """The exact variable-projection Jacobian (used by fit_lattice_mean) matches central
    differences of the projected residual, for a 2D lattice and for fringes, on noisy data
    whose residual is far from zero (where Kaufman's shortcut would be off)."""
    rng = np.random.default_rng(0)
    for basis in (np.array([[0.097, 0.011], [0.027, 0.085]]), np.array([[0.061, 0.023]])):
        rel = rng.uniform(-100, 100, (500, 2))
        f = harmonics(basis, 2)
        y = design(rel, f) @ rng.normal(size=1 + 2 * len(f)) + rng.normal(0, 0.5, len(rel))
        b = basis.ravel() + rng.normal(0, 3e-4, basis.size)  # off the optimum
        resid, jac = projected_residual(rel, y, shape=basis.shape, order=2)
        analytic, numeric = jac(b), numerical_jacobian(resid, b)
        assert analytic.shape == (len(rel), basis.size)
        assert np.abs(analytic - numeric).max() <= 1e-5 * np.abs(numeric).max()


def test_square_window_equals_the_same_pixels_given_one_by_one():
    """predict_blocks' square window (``reach``, distances by rows plus columns) predicts what
    the general path predicts for the same pixels listed as offsets."""
    rng = np.random.default_rng(1)
    mask = rng.random((64, 64)) < 0.2
    pts = np.argwhere(mask).astype(np.float64)
    vals = rng.normal(size=len(pts))
    corners = np.array([[0, 0], [8, 16], [56, 56], [24, 40]])
    span = np.arange(-4, 12)
    off = np.stack(np.meshgrid(span, span, indexing="ij"), -1).reshape(1, -1, 2)
    common = dict(length=4.0, amp=0.9, noise=0.05, k=32, kernel="matern52")
    tree = cKDTree(pts)
    a = predict_blocks(tree, vals, corners, 8, mask.shape, reach=4, **common)
    b = predict_blocks(
        tree, vals, corners, 8, mask.shape, offsets=np.repeat(off, len(corners), 0), **common
    )
    for x, y in zip(a[:2], b[:2], strict=True):
        assert np.array_equal(x, y)
    assert np.allclose(a[2], b[2], atol=1e-5) and np.allclose(a[3], b[3], atol=1e-5)
    assert a[3].min() > 0 and a[3].max() < 0.9 + 1e-6  # latent variance within (0, amp]


@pytest.mark.parametrize(
    ("length", "amp", "noise", "density", "rtol"),
    [
        (3.5, 1.2, 0.1, 0.15, 1e-5),
        # a smooth, nearly noise-free image (truth-1 at 1/87 fits ℓ ≈ 100 px): the latent
        # variance is a tiny difference of two numbers near amp, float32 products lose it
        (100.0, 0.5, 2e-4, 0.02, 0.01),
    ],
)
def test_block_prediction_equals_the_textbook_kriging_formulas(length, amp, noise, density, rtol):
    """One block's mean and latent variance equal ȳ + k*ᵀK⁻¹(y − ȳ) and amp − k*ᵀK⁻¹k*
    computed directly in float64 (the pass uses a Cholesky factor, its inverse by halves and
    float32 cross-covariances)."""
    from napari_microml.completion.kriging import _matern, _octant_neighbours

    rng = np.random.default_rng(2)
    mask = rng.random((96, 96)) < density
    pts = np.argwhere(mask).astype(np.float64)
    vals = np.sin(pts[:, 0] / 20) + np.cos(pts[:, 1] / 25)  # smooth, as the kernel assumes
    tree = cKDTree(pts)
    k = 40
    span = np.arange(-4, 12)
    off = np.stack(np.meshgrid(span, span, indexing="ij"), -1).reshape(1, -1, 2)
    rr, cc, mean, var = predict_blocks(
        tree,
        vals,
        np.array([[40, 48]]),
        8,
        mask.shape,
        length=length,
        amp=amp,
        noise=noise,
        k=k,
        kernel="matern52",
        offsets=off,
    )
    idx = _octant_neighbours(tree, pts, np.array([[43.5, 51.5]]), k)[0]
    p, y = pts[idx], vals[idx]
    dist = np.linalg.norm(p[:, None] - p[None], axis=-1)
    kmat = _matern(dist, length, amp, "matern52") + (noise + 1e-6) * np.eye(k)
    q = np.stack([rr[0], cc[0]], 1).astype(np.float64)
    kstar = _matern(np.linalg.norm(q[:, None] - p[None], axis=-1), length, amp, "matern52")
    sol = np.linalg.solve(kmat, np.concatenate([(y - y.mean())[:, None], kstar.T], 1))
    latent = amp - np.einsum("qk,kq->q", kstar, sol[:, 1:])
    assert np.allclose(mean[0], y.mean() + kstar @ sol[:, 0], atol=1e-4)
    assert np.allclose(var[0], latent, rtol=rtol, atol=1e-6 * amp)


def test_lower_triangular_inverse_by_halves():
    from napari_microml.completion.kriging import _lower_inverse

    rng = np.random.default_rng(4)
    for n in (64, 48, 13, 5):
        x = rng.normal(size=(3, n, n + 4))
        low = np.linalg.cholesky(x @ x.transpose(0, 2, 1) / n + 0.05 * np.eye(n))
        inv = _lower_inverse(low)
        assert np.allclose(inv @ low, np.eye(n), atol=1e-10)
        assert np.array_equal(np.triu(inv, 1), np.zeros_like(inv))
