"""ActiveLearner / run_campaign: reproducibility, logs, clear errors; scalarizers; sources."""

import json

import numpy as np
import pytest

from napari_microml import ActiveLearner, run_campaign
from napari_microml.dkl.scalarizers import (
    CallableScalarizer,
    LoopArea,
    PeakArea,
    PeakCentroid,
    PeakHeight,
    WindowRatio,
)
from napari_microml.dkl.sources import CallableSource, ScalarMapSource, SpectrumImageSource
from napari_microml.synth.properties import property_spectrum_image, structure_property_pair

FAST = dict(patch_size=6, device="cpu", init_iters=25, warm_iters=5)


pytestmark = pytest.mark.usefixtures("one_torch_thread_module")


@pytest.fixture(scope="module")
def pair():
    return structure_property_pair((24, 24), kind="blobs", seed=1)


def test_campaign_is_reproducible_by_seed(pair):
    s, p = pair
    kw = dict(budget=14, n_initial=6, acquisition="ei", batch_size=4, **FAST)
    a = run_campaign(s, p, seed=3, **kw)
    b = run_campaign(s, p, seed=3, **kw)
    c = run_campaign(s, p, seed=4, **kw)
    np.testing.assert_array_equal(a.coords, b.coords)
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.array_equal(a.coords, c.coords)
    assert a.coords.shape == (14, 2) and a.values.shape == (14,)
    np.testing.assert_array_equal(a.values, p[a.coords[:, 0], a.coords[:, 1]])
    assert len({tuple(r) for r in a.coords}) == 14  # never measures a pixel twice


@pytest.mark.parametrize("acq", ["ucb", "ts", "pi", "uncertainty", "random"])
def test_campaign_runs_with_every_acquisition(pair, acq):
    s, p = pair
    steps = []
    h = run_campaign(
        s,
        p,
        budget=10,
        n_initial=4,
        acquisition=acq,
        batch_size=3,
        seed=0,
        callback=lambda step, learner, c, v: steps.append((step, len(c))),
        **FAST,
    )
    assert len(h.values) == 10 and steps == [(1, 4), (2, 3), (3, 3)]
    assert np.all(np.diff(h.best_so_far) >= 0)


def test_dkl_finds_structure_driven_maximum_better_than_chance():
    # property = a function of the local structure only: the brightest 4x4 squares
    rng = np.random.default_rng(0)
    s = np.zeros((28, 28), np.float32)
    for r, c in rng.integers(2, 24, (14, 2)):
        s[r : r + 4, c : c + 4] = rng.choice([0.5, 1.0])
    s += 0.02 * rng.standard_normal(s.shape).astype(np.float32)
    from scipy.ndimage import uniform_filter

    p = uniform_filter((s > 0.75).astype(float), 4)
    h = run_campaign(
        s,
        p,
        budget=30,
        n_initial=8,
        acquisition="ucb",
        batch_size=4,
        seed=0,
        patch_size=5,
        device="cpu",
        init_iters=60,
        warm_iters=15,
    )
    assert h.values.max() >= 0.99 * p.max()


def test_learner_api_suggest_observe_predict_and_log(tmp_path, pair):
    from scipy.ndimage import gaussian_filter

    s, _ = pair
    p = gaussian_filter(s.astype(float), 2)  # a smooth function of the local structure
    L = ActiveLearner(
        s, acquisition="ei", seed=0, patch_size=6, device="cpu", init_iters=80, warm_iters=40
    )
    c0 = L.suggest(5)
    assert c0.shape == (5, 2) and c0.dtype.kind == "i"
    L.observe(c0, p[c0[:, 0], c0[:, 1]])
    c1 = L.suggest(3)
    assert not ({tuple(r) for r in c1} & {tuple(r) for r in c0})
    L.observe(c1, p[c1[:, 0], c1[:, 1]])
    mean, std = L.predict()
    assert mean.shape == std.shape == s.shape and np.all(std > 0)
    # the posterior mean interpolates the measurements (low noise)
    assert np.corrcoef(mean[L.coords[:, 0], L.coords[:, 1]], L.values)[0, 1] > 0.8
    assert L.last_acquisition.shape == s.shape
    rows = L.log_records()
    assert [r["step"] for r in rows] == [1] * 5 + [2] * 3
    assert np.isnan(rows[0]["acquisition"]) and np.isfinite(rows[-1]["acquisition"])
    assert rows[-1]["model"]["n_train"] == 5
    csv_path = L.export_log(tmp_path / "log.csv")
    assert csv_path.read_text().splitlines()[0].startswith("step,row,col,value,acquisition")
    data = json.loads(L.export_log(tmp_path / "log.json").read_text())
    assert len(data["log"]) == 8 and data["parameters"]["seed"] == 0


@pytest.mark.parametrize("features", ["cnn", "mlp", "pca", "coords"])
def test_other_feature_maps(pair, features):
    s, p = pair
    h = run_campaign(
        s,
        p,
        budget=8,
        n_initial=4,
        acquisition="ei",
        batch_size=2,
        seed=0,
        features=features,
        patch_size=6,
        device="cpu",
        init_iters=10,
        warm_iters=3,
    )
    assert len(h.values) == 8


def test_bad_inputs_raise_clear_errors(pair):
    s, p = pair
    with pytest.raises(ValueError, match="patch size"):
        ActiveLearner(s, patch_size=40, device="cpu")
    with pytest.raises(ValueError, match="2D"):
        ActiveLearner(np.zeros((3, 8, 8)), patch_size=2, device="cpu")
    L = ActiveLearner(s, **FAST)
    with pytest.raises(ValueError, match="NaN"):
        L.observe([[1, 1], [2, 2]], [1.0, np.nan])
    with pytest.raises(ValueError, match=r"Point \(100, 1\) lies outside"):  # plain numbers
        L.observe(np.array([[100, 1]]), [1.0])
    with pytest.raises(ValueError, match="same"):
        run_campaign(s, np.zeros((10, 10)), budget=5, n_initial=2, **FAST)
    cube = np.zeros((10, 10, 8))
    with pytest.raises(ValueError, match="same"):
        run_campaign(s, SpectrumImageSource(cube), budget=5, n_initial=2, **FAST)
    with pytest.raises(ValueError, match="scalarizer"):
        run_campaign(
            s, SpectrumImageSource(np.random.rand(24, 24, 8)), budget=5, n_initial=2, **FAST
        )
    with pytest.raises(ValueError, match="NaN"):
        run_campaign(s, np.full((24, 24), np.nan), budget=5, n_initial=2, **FAST)
    with pytest.raises(ValueError, match="n_initial"):
        run_campaign(s, p, budget=3, n_initial=5, **FAST)


def test_spectrum_source_reveals_only_chosen_pixels_and_scalarizes():
    s, p = structure_property_pair((20, 20), kind="domains", seed=0)
    cube, axis = property_spectrum_image(p, n_channels=40, axis=np.linspace(700, 1012, 40))
    src = SpectrumImageSource(cube, axis=axis, scalarizer=PeakHeight((840, 880)))
    h = run_campaign(
        s,
        src,
        budget=9,
        n_initial=5,
        acquisition="ucb",
        batch_size=2,
        seed=0,
        patch_size=4,
        device="cpu",
        init_iters=10,
        warm_iters=3,
    )
    assert src.revealed.sum() == 9
    assert src.revealed[h.coords[:, 0], h.coords[:, 1]].all()
    np.testing.assert_allclose(h.values, 0.1 + p[h.coords[:, 0], h.coords[:, 1]], atol=0.02)
    assert src.last_spectra.shape == (2, 40)


def test_callable_source():
    calls = []

    def measure(coords):
        calls.append(coords.copy())
        return coords[:, 0] * 1.0 - coords[:, 1]

    src = CallableSource(measure, shape=(16, 16))
    np.testing.assert_array_equal(src(np.array([[3, 1], [5, 5]])), [2.0, 0.0])
    with pytest.raises(ValueError, match="outside"):
        src(np.array([[16, 0]]))
    m = ScalarMapSource(np.arange(16.0).reshape(4, 4))
    assert m(np.array([[1, 2]]))[0] == 6.0


def test_scalarizers_on_known_spectra():
    axis = np.arange(700.0, 2000.0, 8.0)
    line = 5.0 * np.exp(-((axis - 940.0) ** 2) / (2 * 16.0**2))
    spec = np.stack([1.0 + line, 1.0 + 2 * line])
    assert PeakHeight((900, 980), axis=axis)(spec) == pytest.approx([6.0, 11.0], rel=1e-2)
    area = PeakArea((850, 1030), axis=axis, background="linear")(spec)
    assert area == pytest.approx(
        [5 * 16 * np.sqrt(2 * np.pi), 10 * 16 * np.sqrt(2 * np.pi)], rel=0.02
    )
    assert PeakCentroid((880, 1000), axis=axis, background="linear")(spec) == pytest.approx(
        [940, 940], abs=2
    )
    ratio = WindowRatio((900, 980), (1500, 1580), axis=axis)(spec)
    assert ratio[1] > ratio[0] > 1
    assert PeakArea((900, 980), axis=axis)(spec[0]) == pytest.approx(
        float(PeakArea((900, 980), axis=axis)(spec)[0])
    )
    with pytest.raises(ValueError, match="no channel"):
        PeakHeight((100, 200), axis=axis)(spec)
    f = CallableScalarizer(fn=lambda s: s.max(), per_spectrum=True)
    assert f(spec)[1] == pytest.approx(11.0, rel=1e-2)


@pytest.mark.parametrize("scale", [1e-15, 1e9])
def test_scalarizers_do_not_depend_on_the_spectra_units(scale):
    """An EELS edge above a power-law background and a window ratio, in amperes or counts."""
    from napari_microml.dkl.scalarizers import EdgeIntensity

    axis = np.arange(700.0, 1100.0, 4.0)
    edge = np.where(axis > 930, 0.3 * (axis / 930.0) ** -2, 0.0)
    spec = np.stack([1e3 * axis**-3.0 * 1e6 + k * edge * 1e-3 for k in (1.0, 2.0)])
    edges = EdgeIntensity(window=(940, 1000), pre_edge=(800, 920), axis=axis)
    np.testing.assert_allclose(edges(spec * scale) / scale, edges(spec), rtol=1e-6)
    ratio = WindowRatio((940, 1000), (800, 900), axis=axis)
    np.testing.assert_allclose(ratio(spec * scale), ratio(spec), rtol=1e-6)


def test_loop_area_with_spike_filtering():
    t = np.arange(64)
    bias = np.concatenate(
        [
            np.linspace(0, 8, 16, endpoint=False),
            np.linspace(8, -8, 32, endpoint=False),
            np.linspace(-8, 0, 16, endpoint=False),
        ]
    )
    # square-ish loop: response +1 on the way down from +8, -1 on the way up from -8
    branch_up = t < 16
    resp = np.where((t >= 16) & (t < 48), 1.0, -1.0)
    resp[branch_up] = -1.0
    clean = LoopArea(axis=bias, median_size=1)(resp)
    spiky = resp.copy()
    spiky[30] = 50.0
    assert LoopArea(axis=bias, median_size=1)(spiky) != pytest.approx(clean, rel=0.05)
    assert LoopArea(axis=bias, median_size=3)(spiky) == pytest.approx(clean, rel=0.05)
    assert clean > 0


def test_benchmark_top_sites_keep_ties_together():
    """The discovery metric's top-1% set: without ties exactly 1% of sites; with a plateau at
    the maximum, every tied site (never a subset picked by pixel order)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "dkl.py"
    spec = importlib.util.spec_from_file_location("dkl_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(0)
    smooth = rng.permutation(2500).reshape(50, 50).astype(float)
    np.testing.assert_array_equal(
        np.sort(bench.top_sites(smooth)), np.sort(np.argsort(smooth.ravel())[-25:])
    )
    plateau = smooth.copy()
    plateau[:10, :8] = 1e4  # 80 sites tie at the top
    top = bench.top_sites(plateau)
    assert len(top) == 80 and (plateau.ravel()[top] == 1e4).all()


@pytest.mark.parametrize("kw", [dict(patch_size=6), dict(patch_size="auto", target_warp="power")])
def test_maps_reuse_the_last_suggestion_and_match_a_fresh_prediction(pair, kw):
    s, p = pair
    L = ActiveLearner(s, seed=0, device="cpu", init_iters=20, warm_iters=5, **kw)
    c = L.suggest(8)
    L.observe(c, p[c[:, 0], c[:, 1]])
    L.suggest(3)
    assert L._maps is not None  # the suggestion's prediction is kept for the maps
    mean, std = L.predict()
    fresh = L.model.predict()  # in the measurement's units: the model unwarps
    np.testing.assert_allclose(mean.ravel(), fresh[0], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(std.ravel(), fresh[1], rtol=1e-5, atol=1e-9)
    c = L.suggest(2)
    L.observe(c, p[c[:, 0], c[:, 1]])
    mean2, _ = L.predict()  # refitted on the new points, not the kept maps
    assert L._maps is None
    np.testing.assert_allclose(mean2.ravel(), L.model.predict()[0], rtol=1e-5, atol=1e-9)


# --- the input contract (issue #27) --------------------------------------------------------------
def _dopant_map(shape=(32, 32), n=10, seed=1):
    """A Gaussian-blurred dopant map: mostly exact zeros (ties), a few smooth bumps."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    dop = np.zeros(shape)
    dop.flat[rng.choice(dop.size, n, replace=False)] = 1.0
    prop = ndi.gaussian_filter(dop, 1.0)
    prop[prop < 1e-3] = 0.0
    return prop


def test_campaign_on_a_map_of_ties_runs_and_is_thread_independent():
    """A seeded campaign picks the same points on 1 or 2 torch threads (the surrogate runs on
    one thread whatever the session's setting) and does not crash on exact ties. (Before, the
    2-thread run chose other points from the 6th measurement on.)"""
    import torch

    prop = _dopant_map()
    assert (prop == 0).mean() > 0.6
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs.append(
                run_campaign(
                    prop,
                    prop,
                    budget=10,
                    n_initial=4,
                    seed=0,
                    device="cpu",
                    init_iters=40,
                    warm_iters=10,
                )
            )
            assert torch.get_num_threads() == threads  # the session's setting is restored
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(runs[0].coords, runs[1].coords)
    assert len(np.unique(runs[0].coords, axis=0)) == 10


def test_log_records_how_the_campaign_was_made_reproducible(pair, tmp_path):
    s, p = pair
    r = run_campaign(s, p, budget=5, n_initial=3, **FAST)
    meta = json.loads(r.export_log(tmp_path / "log.json").read_text())["parameters"]
    assert meta["deterministic"] is True and meta["torch_threads"] == 1


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"budget": "10"}, TypeError, "budget .* must be a whole number, not the text '10'"),
        ({"budget": 0}, ValueError, "budget .* must be at least 1"),
        ({"batch_size": 0}, ValueError, "batch_size .* must be at least 1"),
        ({"n_initial": 1.5}, ValueError, "n_initial .* must be a whole number"),
        ({"lr": 1e6}, ValueError, "lr .* must be between 0 and 1"),
        ({"beta": -1}, ValueError, "beta .* must be at least 0"),
        ({"n_models": 0}, ValueError, "n_models must be at least 1"),
    ],
)
def test_bad_campaign_parameters_are_clear_errors(pair, kwargs, error, words):
    s, p = pair
    kwargs = {"budget": 6, "n_initial": 3, **FAST, **kwargs}
    with pytest.raises(error, match=words):
        run_campaign(s, p, **kwargs)


def test_observations_in_any_units_give_the_same_suggestions(pair):
    s, p = pair
    picks = []
    for scale in (1.0, 1e-15):
        L = ActiveLearner(s, acquisition="ei", n_models=1, seed=0, **FAST)
        rng = np.random.default_rng(0)
        coords = np.column_stack([rng.integers(0, 24, 8), rng.integers(0, 24, 8)])
        L.observe(coords, p[coords[:, 0], coords[:, 1]] * scale)
        picks.append(L.suggest(3))
    np.testing.assert_array_equal(picks[0], picks[1])


def test_n_recent_zero_penalises_no_past_measurement(pair):
    from scipy.ndimage import gaussian_filter

    s, _ = pair
    p = gaussian_filter(s.astype(float), 2)

    def second_batch(**penalty):
        L = ActiveLearner(s, acquisition="ucb", seed=0, **FAST, **penalty)
        c = L.suggest(5)
        L.observe(c, p[c[:, 0], c[:, 1]])
        return L.suggest(3)

    off = second_batch(recent_radius=0.0)
    np.testing.assert_array_equal(second_batch(recent_radius=6.0, n_recent=0), off)
