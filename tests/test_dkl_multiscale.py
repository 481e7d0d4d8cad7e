"""ActiveLearner(patch_size="auto"): multi-scale DKL ensemble with LOO-learned weights."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_microml import ActiveLearner, run_campaign
from napari_microml.dkl.ensemble import (
    DKLEnsemble,
    MultiScaleEnsemble,
    auto_patch_sizes,
    mixture_weights,
)
from napari_microml.dkl.model import DKLModel, loo_log_density
from napari_microml.synth.properties import structure_property_pair

FAST = dict(device="cpu", init_iters=25, warm_iters=5)


pytestmark = pytest.mark.usefixtures("one_torch_thread_module")


def test_auto_builds_one_member_per_scale_and_clips_to_the_image():
    rng = np.random.default_rng(0)
    big = ActiveLearner(rng.random((30, 32)), patch_size="auto", seed=2, **FAST)
    assert isinstance(big.model, MultiScaleEnsemble)
    assert [m.patch_size for m in big.model.members] == [8, 16, 24]
    assert len({m.seed for m in big.model.members}) == 3
    assert big.patch_size == "auto" and big.batch_radius == 4.0  # middle scale 16 / 4
    small = ActiveLearner(rng.random((10, 12)), patch_size="auto", **FAST)
    assert [m.patch_size for m in small.model.members] == [8, 10]
    assert auto_patch_sizes((5, 40)) == [5]
    tiny = ActiveLearner(rng.random((5, 40)), patch_size="auto", **FAST)
    assert isinstance(tiny.model, DKLModel) and tiny.model.patch_size == 5
    # integer patch sizes keep today's seed ensemble
    fixed = ActiveLearner(rng.random((20, 20)), patch_size=8, **FAST)
    assert isinstance(fixed.model, DKLEnsemble) and fixed.patch_size == 8


def test_bad_patch_size_text_is_a_clear_error():
    with pytest.raises(ValueError, match="'auto'"):
        ActiveLearner(np.ones((20, 20)), patch_size="big", **FAST)


def test_loo_equals_brute_force_leave_one_out():
    rng = np.random.default_rng(1)
    x = rng.random((7, 2))
    k = np.exp(-((x[:, None] - x[None]) ** 2).sum(-1) / 0.3) + 0.05 * np.eye(7)
    r = rng.standard_normal(7)
    fast = loo_log_density(np.linalg.cholesky(k), r)
    brute = []
    for i in range(7):
        o = np.delete(np.arange(7), i)
        kio = k[i, o]
        sol = np.linalg.solve(k[np.ix_(o, o)], np.column_stack([r[o], kio]))
        mu, var = kio @ sol[:, 0], k[i, i] - kio @ sol[:, 1]
        brute.append(-0.5 * np.log(2 * np.pi * var) - 0.5 * (r[i] - mu) ** 2 / var)
    np.testing.assert_allclose(fast, brute, rtol=1e-8, atol=1e-10)


def test_mixture_weights_are_floored_and_normalised():
    w = mixture_weights([0.0, -50.0, -1.0], floor=0.1)
    assert np.isclose(w.sum(), 1) and np.all(np.isfinite(w)) and w.min() >= 0.1 - 1e-12
    assert w[0] > w[2] > w[1]
    np.testing.assert_allclose(mixture_weights([3.0, 3.0]), [0.5, 0.5])
    np.testing.assert_allclose(mixture_weights([np.nan, -np.inf]), [0.5, 0.5])


@pytest.mark.parametrize("smooth, window, winner", [(3.0, 15, 1), (1.0, 3, 0)])
def test_weights_move_to_the_scale_that_made_the_data(smooth, window, winner):
    """The property is a local mean over ``window`` px: the member with that patch wins."""
    rng = np.random.default_rng(0)
    s = ndi.gaussian_filter(rng.standard_normal((40, 40)), smooth)
    y = ndi.uniform_filter(s, window, mode="reflect")
    idx = rng.choice(s.size, 60, replace=False)
    e = MultiScaleEnsemble(
        [DKLModel(s, patch_size=p, features="pca", device="cpu", init_iters=60) for p in (3, 15)]
    )
    e.fit(idx, y.ravel()[idx])
    assert np.isclose(e.weights.sum(), 1) and np.all(np.isfinite(e.weights))
    assert e.weights[winner] > 0.8 and e.loo[winner] > e.loo[1 - winner]
    assert e.state.as_dict()["patch_sizes"] == [3, 15]
    mean, std = e.predict()
    assert mean.shape == (1600,) and np.all(std > 0)
    # the mixture mean lies between the members' means (convex combination)
    means = np.stack([m.predict()[0] for m in e.members])
    assert np.all(mean >= means.min(0) - 1e-9) and np.all(mean <= means.max(0) + 1e-9)
    draws = e.sample(np.arange(10), 4, np.random.default_rng(0))
    assert draws.shape == (4, 10) and np.all(np.isfinite(draws))


def test_auto_campaign_is_reproducible_and_logs_the_weights():
    s, p = structure_property_pair((20, 20), kind="blobs", seed=1)
    kw = dict(budget=14, n_initial=6, acquisition="ts", batch_size=4, patch_size="auto", **FAST)
    a = run_campaign(s, p, seed=3, **kw)
    b = run_campaign(s, p, seed=3, **kw)
    c = run_campaign(s, p, seed=4, **kw)
    np.testing.assert_array_equal(a.coords, b.coords)
    assert not np.array_equal(a.coords, c.coords)
    assert len({tuple(r) for r in a.coords}) == 14
    last = a.log[-1]["model"]
    assert last["patch_sizes"] == [8, 16, 20] and np.isclose(sum(last["weights"]), 1, atol=1e-3)
    assert a.learner.model.weights.min() >= 0.1 - 1e-12
    mean, std = a.learner.predict()
    assert mean.shape == (20, 20) and np.all(np.isfinite(mean)) and np.all(std > 0)
