"""Outcome transforms: warps (round trips, order, Gaussianity), standardisation, real units."""

import numpy as np
import pytest
from scipy import stats

from napari_microml import ActiveLearner
from napari_microml.dkl.warping import TARGET_WARPS, OutcomeTransform, make_warp, unwarp_moments
from napari_microml.synth.properties import structure_property_pair

pytestmark = pytest.mark.usefixtures("one_torch_thread_module")


@pytest.fixture(scope="module")
def skewed():
    return np.exp(np.random.default_rng(3).normal(0, 1.2, 60))  # log-normal: strongly skewed


@pytest.mark.parametrize("name", TARGET_WARPS)
def test_warp_round_trip_and_order(skewed, name):
    w = make_warp(name)
    z = w.fit(skewed)
    np.testing.assert_allclose(w.forward(skewed), z, atol=1e-12)
    np.testing.assert_allclose(w.inverse(z), skewed, rtol=1e-9)
    order = np.argsort(skewed)
    assert np.all(np.diff(z[order]) > 0)  # monotone: the best point stays the best
    grid = np.linspace(z.min() - 1, z.max() + 1, 50)  # and the inverse too, beyond the data
    assert np.all(np.diff(w.inverse(grid)) >= 0)
    assert np.ndim(w.forward(float(skewed[0]))) == 0


def test_power_and_rank_make_skewed_values_gaussian(skewed):
    before = stats.skew(skewed)
    assert before > 1.5
    assert abs(stats.skew(make_warp("power").fit(skewed))) < before / 2.5
    assert abs(stats.skew(make_warp("rank").fit(skewed))) < 0.05
    ranks = make_warp("rank").fit(np.array([5.0, 1.0, 3.0, 3.0]))
    assert ranks[2] == ranks[3] and ranks[1] < ranks[2] < ranks[0]  # ties share a score
    np.testing.assert_allclose(ranks[1], -ranks[0])


def test_unwarped_moments_are_in_measurement_units():
    w = make_warp("power")
    y = np.array([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4])
    z = w.fit(y)
    mean, std = unwarp_moments(w, z, np.full_like(z, 1e-3))
    np.testing.assert_allclose(mean, y, rtol=1e-6)
    assert np.all(std > 0) and std[-1] > std[0]  # a warped unit is worth more at the top
    ident = make_warp("none")
    m, s = unwarp_moments(ident, ident.fit(y), np.ones_like(y))
    assert m is not None and np.array_equal(s, np.ones_like(y))


def test_learner_with_a_warp_predicts_in_measurement_units():
    s, p = structure_property_pair((24, 24), kind="blobs", seed=1)
    prop = np.exp(4 * p)  # skewed, positive
    L = ActiveLearner(
        s, target_warp="rank", seed=0, patch_size=6, device="cpu", init_iters=60, warm_iters=20
    )
    c = L.suggest(12)
    L.observe(c, prop[c[:, 0], c[:, 1]])
    c2 = L.suggest(4)
    assert c2.shape == (4, 2)
    L.observe(c2, prop[c2[:, 0], c2[:, 1]])
    mean, std = L.predict()
    at = mean[L.coords[:, 0], L.coords[:, 1]]
    assert stats.spearmanr(at, L.values)[0] > 0.8
    assert 0.5 * prop.min() < np.median(mean) < 2 * prop.max() and np.all(std >= 0)
    with pytest.raises(ValueError, match="target_warp"):
        ActiveLearner(s, target_warp="log", patch_size=6, device="cpu")


@pytest.mark.parametrize("name", TARGET_WARPS)
def test_warps_survive_constant_and_single_values(name):
    for y in (np.full(4, 2.5), np.array([7.0])):
        w = make_warp(name)
        z = w.fit(y)
        assert np.all(np.isfinite(z))
        np.testing.assert_allclose(w.inverse(w.forward(y)), y, rtol=1e-9)


@pytest.mark.parametrize("name", TARGET_WARPS)
def test_outcome_transform_standardises_the_warped_values_and_maps_back(skewed, name):
    y = 1e-9 * skewed + 3e-8  # units far from 1: nothing may depend on them
    t = OutcomeTransform(name)
    z = t.fit(y)
    assert abs(z.mean()) < 1e-12 and np.isclose(z.std(), 1.0)
    np.testing.assert_allclose(t.forward(y), z, atol=1e-9)  # forward repeats the fit's map
    assert np.array_equal(np.argsort(z, kind="stable"), np.argsort(y, kind="stable"))
    mean, std = t.untransform(z, np.full_like(z, 1e-6))  # a sharp posterior on the data
    np.testing.assert_allclose(mean, y, rtol=1e-6)
    assert np.all(std > 0) and np.all(std < 1e-3 * np.ptp(y))
    if name == "none":  # standardisation alone is affine: the std scales with the data's
        np.testing.assert_allclose(t.untransform(z, np.ones_like(z))[1], y.std(), rtol=1e-12)
