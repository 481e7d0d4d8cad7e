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
    m = DKLModel(
        s, patch_size=5, features="pca_mlp", embedding_dim=3, pca_components=8, device="cpu"
    )
    idx, y = _some(p)
    m.fit(idx, y, iterations=0)  # no optimisation step: the embedding is still the start
    pca = pca_features(extract_patches(m.image, 5), 8)
    np.testing.assert_allclose(m.embed(), pca[:, :3], atol=1e-5)
    # after training the network has moved away from the start, but not arbitrarily far
    m2 = DKLModel(
        s,
        patch_size=5,
        features="pca_mlp",
        embedding_dim=3,
        pca_components=8,
        device="cpu",
        nn_lr_scale=1.0,
        weight_decay=1e-3,
    )
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
        m = DKLModel(
            s, patch_size=5, device="cpu", features="pca_mlp", coord_weight=cw, init_iters=80
        )
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
    ens = DKLEnsemble(
        DKLModel(s, patch_size=5, device="cpu", features="cnn", init_iters=20), n_models=3
    )
    ens.fit(idx, y)
    assert len({m.seed for m in ens.members}) == 3
    assert ens.members[0].inputs is ens.members[1].inputs  # shared, not copied
    preds = [m.predict() for m in ens.members]
    assert not np.allclose(preds[0][0], preds[1][0])  # different networks
    mean, std = ens.predict()
    np.testing.assert_allclose(mean, np.mean([q[0] for q in preds], 0), rtol=1e-6, atol=1e-9)
    # mixture variance >= the mean of the members' variances
    assert np.all(std**2 >= np.mean([q[1] ** 2 for q in preds], 0) - 1e-9)
    smp = ens.sample(np.arange(10), 4, np.random.default_rng(0))
    assert smp.shape == (4, 10) and np.isfinite(smp).all()
    with pytest.raises(ValueError, match="n_models"):
        DKLEnsemble(DKLModel(s, patch_size=5, device="cpu"), n_models=0)


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
        assert isinstance(
            ActiveLearner(s, patch_size=5, device="cpu", features=features).model, DKLModel
        )
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
        m = DKLModel(
            s,
            patch_size=3,
            device="cpu",
            features="pca",
            embedding_dim=2,
            trend=trend,
            init_iters=100,
        )
        m.fit(idx, p.ravel()[idx])
        mean, std = m.predict(bright)
        assert np.all(np.isfinite(mean)) and np.all(std > 0)
        means[trend] = float(np.mean(mean))
    truth = float(p.ravel()[bright].mean())
    assert means[True] > p.ravel()[idx].max()  # beyond every measured value
    assert abs(means[True] - truth) < 0.5 * abs(means[False] - truth), (means, truth)


# --- the input contract (issue #27): units, ties, safe linear algebra ----------------------------
def test_safe_cholesky_escalates_jitter_only_when_needed():
    import torch

    from napari_microml.dkl.model import safe_cholesky

    good = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    np.testing.assert_allclose(safe_cholesky(good), torch.linalg.cholesky(good))  # no jitter
    # tied sites: identical rows, and rounding makes the matrix slightly indefinite
    k = torch.ones(4, 4, dtype=torch.float64)
    k[0, 3] = k[3, 0] = 1 - 1e-7
    with pytest.raises(RuntimeError):
        torch.linalg.cholesky(k)
    chol = safe_cholesky(k)
    assert torch.isfinite(chol).all()
    assert (chol @ chol.T - k).abs().max() < 1e-3
    with pytest.raises(ValueError, match="not finite"):
        safe_cholesky(torch.full((2, 2), float("nan"), dtype=torch.float64))


@pytest.mark.parametrize("scale", [1e-15, 1e12])
def test_measurements_in_any_units_give_the_same_maps(pair, scale):
    s, p = pair
    idx, y = _some(p, n=20, seed=2)
    maps = []
    for factor in (1.0, scale):
        m = DKLModel(s, patch_size=5, features="pca", device="cpu", init_iters=30)
        m.fit(idx, y * factor)
        mean, std = m.predict()
        maps.append((mean / factor, std / factor))
    span = np.ptp(maps[0][0])
    np.testing.assert_allclose(maps[1][0], maps[0][0], atol=1e-4 * span)
    np.testing.assert_allclose(maps[1][1], maps[0][1], atol=1e-4 * span)


def test_constant_values_and_repeated_sites_are_handled(pair):
    s, _ = pair
    idx = np.array([3, 3, 3, 50, 50, 120, 121, 122])
    m = DKLModel(s, patch_size=5, device="cpu", init_iters=20)
    m.fit(idx, np.full(len(idx), 5e-20))  # constant, tiny, measured at repeated sites
    mean, std = m.predict()
    assert np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()
    np.testing.assert_allclose(mean, 5e-20, rtol=1e-3)
    assert std.max() < 1e-18  # uncertainty in the data's units, not in "1"s


def test_multiscale_uncertainty_has_no_floor_in_the_data_units(pair):
    from napari_microml.dkl.ensemble import MultiScaleEnsemble

    s, p = pair
    idx, y = _some(p, n=20, seed=4)
    stds = []
    for factor in (1e-15, 1.0):  # a fresh ensemble each: a refit would be warm-started
        ens = MultiScaleEnsemble(
            [DKLModel(s, patch_size=p, device="cpu", init_iters=20) for p in (4, 6)]
        )
        ens.fit(idx, y * factor)
        stds.append(ens.predict()[1])
    std_small, std = stds
    np.testing.assert_allclose(std_small / 1e-15, std, rtol=1e-3, atol=1e-4 * np.ptp(y))


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"lr": 1e6}, ValueError, r"lr \(learning rate\) must be between 0 and 1"),
        ({"lr": "fast"}, TypeError, "lr .* must be a number"),
        ({"embedding_dim": 0}, ValueError, "embedding_dim must be at least 1"),
        ({"init_iters": -1}, ValueError, "init_iters must be at least 0"),
        ({"patch_size": 2.5}, ValueError, "patch size must be a whole number"),
        ({"weight_decay": float("nan")}, ValueError, "weight_decay must be a finite number"),
    ],
)
def test_bad_model_parameters_are_clear_errors(pair, kwargs, error, words):
    s, _ = pair
    kwargs = {"patch_size": 5, **kwargs}
    with pytest.raises(error, match=words):
        DKLModel(s, device="cpu", **kwargs)


def test_structure_images_in_any_units_or_dtype(pair):
    from napari_microml.dkl.model import check_structure

    s, _ = pair
    ref = check_structure(s, 5)
    np.testing.assert_allclose(check_structure(s.astype(np.float64) * 1e300, 5), ref, atol=1e-5)
    np.testing.assert_allclose(check_structure(s * 1e-30, 5), ref, atol=1e-5)
    with pytest.raises(ValueError, match="True/False"):
        check_structure(s > 0.5, 5)


# --- the surrogate in BoTorch's shape: module-level ExactGP, protocol, outcome transform ------
def test_deep_kernel_gp_with_identity_features_is_the_textbook_gp_posterior():
    import gpytorch
    import torch

    from napari_microml.dkl.networks import DeepKernelGP, make_covariance, make_likelihood

    rng = np.random.default_rng(2)
    x, xs = rng.random((12, 3)), rng.random((5, 3))
    y = np.sin(4 * x[:, 0]) + x[:, 1]
    covar, structure = make_covariance(kernel="rbf", dim=3, lengthscale=0.4)
    structure.outputscale = 1.3
    gp = DeepKernelGP(
        torch.as_tensor(x, dtype=torch.float64),
        torch.as_tensor(y, dtype=torch.float64),
        make_likelihood(noise=0.01),
        feature_extractor=torch.nn.Identity(),
        covar_module=covar,
        n_features=3,
        mean_module=gpytorch.means.ZeroMean(),  # the mean is pluggable
    ).double()
    gp.eval()
    with torch.no_grad():
        post = gp(torch.as_tensor(xs, dtype=torch.float64))
        mean, var = post.mean.numpy(), post.variance.numpy()

    def k(a, b):
        return 1.3 * np.exp(-0.5 * ((a[:, None] - b[None]) ** 2).sum(-1) / 0.4**2)

    kxx = k(x, x) + 0.01 * np.eye(len(x))
    np.testing.assert_allclose(mean, k(xs, x) @ np.linalg.solve(kxx, y), rtol=1e-6, atol=1e-8)
    expected = 1.3 - np.einsum("ij,ji->i", k(xs, x), np.linalg.solve(kxx, k(x, xs)))
    np.testing.assert_allclose(var, expected, rtol=1e-5, atol=1e-8)


def test_ensembles_share_one_outcome_transform_and_mix_in_gp_units(pair):
    from napari_microml.dkl.ensemble import MultiScaleEnsemble
    from napari_microml.dkl.surrogate import Surrogate
    from napari_microml.dkl.warping import OutcomeTransform

    s, p = pair
    idx, y = _some(p, 20)
    y = np.exp(3 * y)  # skewed: the warp matters
    members = [
        DKLModel(s, patch_size=q, device="cpu", init_iters=10, outcome_transform=t)
        for q, t in ((4, OutcomeTransform("rank")), (6, OutcomeTransform("none")))
    ]
    ens = MultiScaleEnsemble(members)
    assert isinstance(ens, Surrogate) and isinstance(members[0], Surrogate)
    assert all(m.outcome_transform is ens.outcome_transform for m in ens.members)
    assert ens.outcome_transform.warp.name == "rank"  # the first member's
    ens.fit(idx, y)
    mean_gp, std_gp = ens.predict(standardized=True)
    mean, std = ens.predict()
    ref = ens.outcome_transform.untransform(mean_gp, std_gp)
    np.testing.assert_allclose(mean, ref[0], rtol=1e-12)
    np.testing.assert_allclose(std, ref[1], rtol=1e-12)
    # every member was fitted on the same targets in GP units
    targets = [m._fitted_gp().train_targets.numpy() for m in ens.members]
    np.testing.assert_array_equal(targets[0], targets[1])
    np.testing.assert_allclose(targets[0], ens.outcome_transform.forward(y), atol=1e-6)


def test_the_learner_reads_the_surrogate_only_through_its_protocol():
    import ast
    import inspect

    from napari_microml.dkl import learner
    from napari_microml.dkl.surrogate import Surrogate

    allowed = {n for n in dir(Surrogate) if not n.startswith("_")}
    used = set()
    for node in ast.walk(ast.parse(inspect.getsource(learner))):
        # self.model.<name> / learner.model.<name>
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "model"
        ):
            used.add(node.attr)
    assert used and used <= allowed, used - allowed


def test_the_gp_module_loads_only_when_a_model_is_fitted():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import napari_microml.dkl.learner, napari_microml.dkl.ensemble\n"
        "print('torch' in sys.modules, 'gpytorch' in sys.modules,"
        " 'napari_microml.dkl.networks' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]
