"""The completer's faster paths give the same answers as the plain computations they replace."""

import numpy as np
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
        resid, jac = projected_residual(rel, y, basis.shape, 2)
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
