"""Kriging with a crystal-lattice mean (completion.periodic, kriging.lattice_kriging_iter)."""

import numpy as np
import pytest

from napari_microml.completion.kriging import (
    _calibration,
    holdout_squares,
    lattice_kriging_iter,
    local_gp_iter,
)
from napari_microml.completion.masks import scan_mask
from napari_microml.completion.periodic import (
    alias_vectors,
    fit_lattice_mean,
    lattice_basis,
    resolvable,
)
from napari_microml.runtime.workers import drain

SETTINGS = dict(k=64, block="auto", n_fit=48, fit_k=48, kernel="matern52")
A1, A2 = np.array([10.3, 1.2]), np.array([3.1, 11.7])  # lattice vectors (px, (row, col))


def crystal(shape=(192, 192), noise=0.08, seed=0):
    """Gaussian columns (σ 2 px) on an oblique lattice plus Gaussian noise; (noisy, clean)."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(float)
    clean = np.zeros(shape)
    for i in range(-30, 31):
        for j in range(-30, 31):
            y, x = 5 + i * A1 + j * A2
            if -8 < y < h + 8 and -8 < x < w + 8:
                clean += np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 2.0**2))
    rng = np.random.default_rng(seed)
    return clean + rng.normal(0, noise, shape), clean


def smooth_field(shape=(192, 192), seed=0):
    """A non-periodic smooth random image with a little noise."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    clean = ndi.gaussian_filter(rng.normal(size=shape), 6) * 20
    return clean + rng.normal(0, 0.02, shape), clean


def excess(pred, clean, mask):
    return float(np.sqrt(np.mean((pred - clean)[~mask] ** 2)))


def test_lattice_basis_finds_the_reciprocal_lattice_of_a_clean_crystal():
    _, clean = crystal(noise=0.0)
    basis = lattice_basis(clean - clean.mean())
    assert basis is not None and len(basis) == 2
    # every found vector is an integer combination of the true reciprocal basis
    recip = np.linalg.inv(np.stack([A1, A2])).T  # rows g with g·a = δ
    coords = basis @ np.linalg.inv(recip)
    assert np.allclose(coords, np.round(coords), atol=0.1)
    assert abs(np.linalg.det(np.round(coords))) == 1  # a primitive basis, not a sublattice


def test_lattice_mean_beats_plain_kriging_clearly_at_1_in_50():
    noisy, clean = crystal()
    mask = scan_mask("spiral", noisy.shape, 1 / 50, seed=0)
    plain, _, _ = drain(local_gp_iter(noisy, mask, **SETTINGS, overlap="auto"))
    image, std, info = drain(lattice_kriging_iter(noisy, mask, **SETTINGS))
    assert info["mean"] == "lattice"
    assert excess(image, clean, mask) < 0.6 * excess(plain, clean, mask)
    assert np.array_equal(image[mask], noisy[mask])  # measured pixels stay exact
    assert (std[~mask] > 0).all() and (std[mask] == 0).all()


def test_non_periodic_image_falls_back_to_plain_kriging():
    noisy, _ = smooth_field()
    mask = scan_mask("spiral", noisy.shape, 1 / 30, seed=1)
    plain, plain_std, p = drain(local_gp_iter(noisy, mask, **SETTINGS, overlap="auto"))
    image, std, info = drain(lattice_kriging_iter(noisy, mask, **SETTINGS))
    assert info["mean"] == "local"
    np.testing.assert_allclose(image, plain, rtol=0, atol=1e-9 * np.ptp(noisy))
    # only the latent part of σ is rescaled, by the held-out factor
    miss = ~mask
    noise_var = p["noise_sd"] ** 2
    ratio = (std[miss] ** 2 - noise_var) / (plain_std[miss] ** 2 - noise_var)
    np.testing.assert_allclose(ratio, info["latent_scale"], rtol=1e-6)


def test_a_grid_too_coarse_for_the_lattice_is_never_given_the_true_lattice():
    noisy, clean = crystal(noise=0.02)
    mask = np.zeros(noisy.shape, bool)
    mask[::7, ::7] = True  # step 7 px: the ~10 px lattice is above the grid's Nyquist limit
    aliases = alias_vectors(mask)
    shortest = np.sort(np.linalg.norm(aliases, axis=1))[0]
    assert shortest == pytest.approx(1 / 7, abs=0.01)
    recip = np.linalg.inv(np.stack([A1, A2])).T
    assert not resolvable(recip, aliases).all()
    pts = np.argwhere(mask).astype(float)
    assert fit_lattice_mean(pts, noisy[mask], recip, mask.shape, aliases=aliases) is None
    # the scan reads only a moiré (a ~23 px "lattice"): not fitted, plain kriging instead
    plain, _, _ = drain(local_gp_iter(noisy, mask, **SETTINGS, overlap="auto"))
    image, _, info = drain(lattice_kriging_iter(noisy, mask, **SETTINGS))
    assert info["mean"] == "local"
    np.testing.assert_allclose(image, plain, rtol=0, atol=1e-9)


def test_irregular_scans_have_no_alias_shifts():
    for kind in ("spiral", "random"):
        assert len(alias_vectors(scan_mask(kind, (128, 128), 1 / 20, seed=0))) == 0


def test_holdout_squares_are_gap_sized_and_never_adjacent():
    mask = scan_mask("spiral", (256, 256), 1 / 30, seed=0)
    rounds, side = holdout_squares(mask)
    assert 8 <= side <= 64
    for corners in rounds:
        for a in corners:
            d = np.abs(corners - a).max(1)
            assert ((d == 0) | (d >= 2 * side)).all()
            y, x = a
            assert mask[y : y + side, x : x + side].any()


@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])
def test_calibration_recovers_the_latent_scale_of_gaussian_errors(scale):
    rng = np.random.default_rng(0)
    lat = rng.uniform(0.5, 2.0, 20000)
    noise = 0.3
    e = rng.normal(0, np.sqrt(scale * lat + noise))
    factor = _calibration([(e, lat, noise)])
    assert factor == pytest.approx(scale, rel=0.1)


def test_complete_scan_default_uses_the_lattice_and_records_it():
    import json

    from napari_microml.completion.complete import complete_scan

    noisy, clean = crystal(shape=(128, 128))
    mask = scan_mask("spiral", noisy.shape, 1 / 20, seed=0)
    res = complete_scan(np.where(mask, noisy, np.nan), mask)
    fitted = res.provenance["parameters"]["fitted_hyperparameters"][0]
    assert fitted["mean"] == "lattice" and fitted["latent_scale"] > 0
    assert "lattice" in res.provenance["parameters"]["method"]
    json.dumps(res.provenance)  # the record stays plain data
    signal = complete_scan(np.where(mask, noisy, np.nan), mask, sigma="signal")
    np.testing.assert_array_equal(signal.image, res.image)
    assert (signal.uncertainty[~mask] < res.uncertainty[~mask]).all()
