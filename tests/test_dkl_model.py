"""DKLModel / DKLEnsemble: PCA-initialised embedding, coordinate kernel, ensemble, synth sets."""
import numpy as np
import pytest

from napari_microml.dkl.ensemble import DKLEnsemble
from napari_microml.dkl.features import pca_features
from napari_microml.dkl.model import DKLModel, extract_patches
from napari_microml.synth.properties import KINDS, structure_property_pair

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pair():
    return structure_property_pair((20, 24), kind="phases", seed=5, noise=0.02)


def _some(p, n=25, seed=0):
    idx = np.random.default_rng(seed).choice(p.size, n, replace=False)
    return idx, p.ravel()[idx]


def test_pca_mlp_embedding_starts_as_the_unsupervised_pca_projection(pair):
    s, p = pair
    m = DKLModel(s, patch_size=5, features="pca_mlp", embedding_dim=3, pca_components=8,
                 device="cpu")
    idx, y = _some(p)
    m.fit(idx, y, iterations=0)  # no optimisation step: the embedding is still the start
    pca = pca_features(extract_patches(m.image, 5), 8)
    np.testing.assert_allclose(m.embed(), pca[:, :3], atol=1e-5)
    # after training the network has moved away from the start, but not arbitrarily far
    m2 = DKLModel(s, patch_size=5, features="pca_mlp", embedding_dim=3, pca_components=8,
                  device="cpu", nn_lr_scale=1.0, weight_decay=1e-3)
    m2.fit(idx, y, iterations=40)
    moved = np.abs(m2.embed() - pca[:, :3]).max()
    assert 1e-4 < moved < 10


def test_pca_mlp_is_seed_independent_before_training(pair):
    s, p = pair
    idx, y = _some(p)
    a = DKLModel(s, patch_size=5, device="cpu", seed=0, features="pca_mlp")
    b = DKLModel(s, patch_size=5, device="cpu", seed=1, features="pca_mlp")
    a.fit(idx, y, iterations=0)
    b.fit(idx, y, iterations=0)
    np.testing.assert_allclose(a.embed(), b.embed(), atol=1e-6)


def test_coordinate_kernel_learns_a_position_only_property():
    # a structure-free image (pure noise) and a smooth ramp in position: only (row, col) helps
    rng = np.random.default_rng(0)
    s = rng.standard_normal((24, 24)).astype(np.float32)
    rr, cc = np.mgrid[0:24, 0:24]
    p = np.sin(rr / 6.0) + np.cos(cc / 7.0)
    idx = rng.choice(p.size, 60, replace=False)
    test = np.setdiff1d(np.arange(p.size), idx)
    errs = {}
    for cw in (0.0, 0.3):
        m = DKLModel(s, patch_size=5, device="cpu", features="pca_mlp", coord_weight=cw,
                     init_iters=80)
        m.fit(idx, p.ravel()[idx])
        mean, std = m.predict(test)
        assert mean.shape == std.shape == test.shape and np.all(std > 0)
        errs[cw] = np.sqrt(np.mean((mean - p.ravel()[test]) ** 2))
    assert errs[0.3] < 0.5 * errs[0.0]
    assert errs[0.3] < 0.3 * p.std()
    with pytest.raises(ValueError, match="coord_weight"):
        DKLModel(s, patch_size=5, device="cpu", coord_weight=-1)


def test_ensemble_mixes_members(pair):
    s, p = pair
    idx, y = _some(p, 30)
    ens = DKLEnsemble(s, n_models=3, patch_size=5, device="cpu", features="cnn", init_iters=20)
    ens.fit(idx, y)
    assert len({m.seed for m in ens.members}) == 3
    assert ens.members[0].inputs is ens.members[1].inputs  # shared, not copied
    preds = [m.predict() for m in ens.members]
    assert not np.allclose(preds[0][0], preds[1][0])  # different networks
    mean, std = ens.predict()
    np.testing.assert_allclose(mean, np.mean([q[0] for q in preds], 0), rtol=1e-6, atol=1e-9)
    # mixture variance >= the mean of the members' variances
    assert np.all(std ** 2 >= np.mean([q[1] ** 2 for q in preds], 0) - 1e-9)
    smp = ens.sample(np.arange(10), 4, np.random.default_rng(0))
    assert smp.shape == (4, 10) and np.isfinite(smp).all()
    with pytest.raises(ValueError, match="n_models"):
        DKLEnsemble(s, n_models=0, patch_size=5, device="cpu")


@pytest.mark.parametrize("kind", KINDS)
def test_synthetic_pairs_are_reproducible_and_scaled(kind):
    a = structure_property_pair((30, 34), kind=kind, seed=3)
    b = structure_property_pair((30, 34), kind=kind, seed=3)
    c = structure_property_pair((30, 34), kind=kind, seed=4)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[1], c[1])
    assert a[0].shape == a[1].shape == (30, 34) and a[0].dtype == np.float32
    assert a[1].min() == pytest.approx(0) and a[1].max() == pytest.approx(1)
    noisy = structure_property_pair((30, 34), kind=kind, seed=3, noise=0.05)[1]
    assert 0.03 < np.std(noisy - a[1]) < 0.07


def test_lattice_property_sits_on_defects():
    s, p = structure_property_pair((40, 40), kind="lattice", seed=2)
    # the property is a sum of bumps: a few local maxima, most of the field near zero
    assert np.mean(p < 0.1) > 0.5
    with pytest.raises(ValueError, match="Unknown kind"):
        structure_property_pair(kind="nope")


def test_learner_defaults_to_an_ensemble_only_for_trainable_feature_maps(pair):
    from napari_microml import ActiveLearner

    s, _ = pair
    assert isinstance(ActiveLearner(s, patch_size=5, device="cpu").model, DKLEnsemble)
    for features in ("pca", "coords"):
        assert isinstance(ActiveLearner(s, patch_size=5, device="cpu", features=features).model,
                          DKLModel)
    assert isinstance(ActiveLearner(s, patch_size=5, device="cpu", n_models=1).model, DKLModel)


def test_trend_kernel_extrapolates_beyond_the_measured_structure():
    # the property grows with the local brightness; only the darker two thirds are measured:
    # a stationary GP falls back towards the mean in the bright third, the trend carries on
    rng = np.random.default_rng(1)
    rr, cc = np.mgrid[0:24, 0:36]
    s = (cc / 35.0 + 0.02 * rng.standard_normal(cc.shape)).astype(np.float32)
    p = 2.0 * s.astype(np.float64)
    seen = np.flatnonzero((cc < 24).ravel())
    idx = rng.choice(seen, 40, replace=False)
    bright = np.flatnonzero((cc >= 32).ravel())
    means = {}
    for trend in (False, True):
        m = DKLModel(s, patch_size=3, device="cpu", features="pca", embedding_dim=2, trend=trend,
                     init_iters=100)
        m.fit(idx, p.ravel()[idx])
        mean, std = m.predict(bright)
        assert np.all(np.isfinite(mean)) and np.all(std > 0)
        means[trend] = float(np.mean(mean))
    truth = float(p.ravel()[bright].mean())
    assert means[True] > p.ravel()[idx].max()  # beyond every measured value
    assert abs(means[True] - truth) < 0.5 * abs(means[False] - truth), (means, truth)
