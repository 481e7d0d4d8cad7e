"""complete_scan: contract (exact measured pixels, σ, stacks, errors) and accuracy vs baselines."""

import numpy as np
import pytest

import napari_microml as mm
from napari_microml.completion.baselines import griddata_linear, local_gp
from napari_microml.completion.complete import CompletionResult, complete_scan, complete_scan_iter
from napari_microml.completion.fill import normalized_fill, smooth_fill
from napari_microml.completion.masks import scan_mask
from napari_microml.completion.metrics import completion_errors
from napari_microml.runtime.workers import collect, drain
from napari_microml.synth.scenes import simulate_scene


@pytest.fixture(scope="module")
def scene():
    noisy, clean = simulate_scene((96, 96), kind="lattice", dose=500, seed=424242)
    return (
        noisy * 1000.0 + 50.0,
        clean * 1000.0 + 50.0,
    )  # counts-like scale: normalisation must absorb it


@pytest.mark.parametrize("model", ["kriging", "default"])
def test_measured_pixels_are_returned_exactly_and_sigma_is_zero_there(scene, model):
    noisy, _ = scene
    mask = scan_mask("spiral", noisy.shape, 1 / 10, seed=1)
    values = np.where(mask, noisy, np.nan)  # unmeasured values are ignored, NaN is fine
    r = complete_scan(values, mask, model=model, device="cpu")
    assert isinstance(r, CompletionResult)
    assert (
        r.image.dtype == np.float32
        and r.uncertainty.dtype == np.float32
        and r.image.shape == noisy.shape
    )
    np.testing.assert_array_equal(r.image[mask], noisy[mask].astype(np.float32))
    assert np.isfinite(r.image).all() and np.isfinite(r.uncertainty).all()
    assert (r.uncertainty[mask] == 0).all() and (r.uncertainty[~mask] > 0).all()
    assert r.mask.dtype == bool and (r.mask == mask).all()
    assert r.device.startswith("cpu") and r.provenance["tool"] == "complete_scan"
    if model == "kriging":  # the default: no network, its fitted noise and σ kind recorded
        assert r.model == "kriging" and r.sigma == "measurement"
        assert r.provenance["parameters"]["fitted_hyperparameters"][0]["noise_sd"] > 0
    else:
        assert (
            r.model == "completion-default"
            and r.sigma == "measurement"
            and r.provenance["model"]["sha256"]
        )
        assert r.provenance["parameters"]["pixel_noise_sd"][0] > 0


@pytest.mark.parametrize("model", ["kriging", "default"])
@pytest.mark.parametrize("dtype", [np.uint32, np.float64, np.int64])
def test_wide_measured_values_come_back_exactly(model, dtype):
    """uint32 counts above 2**24 and float64 values differ in their last digits; float32 would
    round them (by up to 128 counts / 1e-9), so the result is float64 and exact."""
    rng = np.random.default_rng(0)
    base = 3_000_000_000 if dtype == np.uint32 else 2**40 if dtype == np.int64 else 1.0
    step = 1e-9 if dtype == np.float64 else 1
    values = (base + rng.integers(0, 1000, (48, 48)) * step).astype(dtype)
    mask = scan_mask("grid", values.shape, 1 / 6, seed=0)
    r = complete_scan(values, mask, model=model, device="cpu")
    assert r.image.dtype == np.float64 and r.uncertainty.dtype == np.float64
    assert (r.image[mask] == values[mask]).all()
    assert (r.uncertainty[~mask] > 0).all()


def test_both_sigmas_are_offered_and_never_zero_off_the_measured_pixels():
    """'measurement' = signal + the fitted pixel noise (what a re-scan reads) ≥ 'signal'; on a
    noisy scene the measurement σ covers the noisy truth and the signal σ the noise-free one."""
    noisy, clean = simulate_scene((128, 128), kind="particles", dose=200, seed=31)
    mask = scan_mask("spiral", noisy.shape, 1 / 12, seed=3)
    meas = complete_scan(noisy * mask, mask)
    sig = complete_scan(noisy * mask, mask, sigma="signal")
    miss = ~mask
    np.testing.assert_array_equal(meas.image, sig.image)
    assert (sig.uncertainty[miss] > 0).all() and (
        meas.uncertainty[miss] > sig.uncertainty[miss]
    ).all()
    noise_sd = meas.provenance["parameters"]["fitted_hyperparameters"][0]["noise_sd"]
    np.testing.assert_allclose(
        meas.uncertainty[miss] ** 2, sig.uncertainty[miss] ** 2 + noise_sd**2, rtol=1e-3
    )
    assert 0.85 <= np.mean(np.abs(meas.image - noisy)[miss] <= 2 * meas.uncertainty[miss]) <= 0.99
    assert 0.85 <= np.mean(np.abs(sig.image - clean)[miss] <= 2 * sig.uncertainty[miss]) <= 0.995
    assert sig.provenance["parameters"]["sigma"] == "signal"
    with pytest.raises(ValueError, match="re-scan"):
        complete_scan(noisy * mask, mask, sigma="latent")


def test_beats_mean_fill_on_synthetic_truth(scene):
    noisy, clean = scene
    for kind in ("grid", "spiral"):
        mask = scan_mask(kind, noisy.shape, 1 / 12, seed=2)
        r = complete_scan(noisy * mask, mask, device="cpu")
        net = completion_errors(r.image, clean, mask)["rms"]
        mean_fill = completion_errors(np.where(mask, noisy, noisy[mask].mean()), clean, mask)["rms"]
        assert net < 0.7 * mean_fill, (kind, net, mean_fill)


@pytest.mark.parametrize("model", ["kriging", "default"])
def test_result_does_not_depend_on_intensity_units(scene, model):
    """Data in SI units (amperes, counts per second) are normal: no absolute floors."""
    noisy, _ = scene
    mask = scan_mask("random", noisy.shape, 1 / 20, seed=3)
    a = complete_scan(noisy * mask, mask, model=model, device="cpu")
    span = float(noisy.max() - noisy.min())
    for scale, offset in ((1e-12, 0.0), (1e12, 3e12), (1e-3, -7.0)):
        values = (noisy.astype(np.float64) * scale + offset) * mask
        b = complete_scan(values, mask, model=model, device="cpu")
        np.testing.assert_allclose((b.image - offset) / scale, a.image, rtol=0, atol=1e-4 * span)
        np.testing.assert_allclose(b.uncertainty / scale, a.uncertainty, rtol=0, atol=1e-4 * span)


@pytest.mark.parametrize("model", ["kriging", "default"])
@pytest.mark.parametrize("level", [0.0, 1234.0, 3e-13])
def test_a_uniform_scan_is_refused_with_a_reason_not_a_false_certainty(level, model):
    """All measured pixels equal (vacuum, no counts): nothing tells how the unmeasured pixels may
    differ, so a clear error instead of σ = 0 everywhere; one count different is completed."""
    mask = scan_mask("spiral", (96, 96), 1 / 20, seed=1)
    with pytest.raises(ValueError, match="same value"):
        complete_scan(np.where(mask, level, np.nan), mask, model=model, device="cpu")
    varied = np.where(mask, level, np.nan)
    varied[np.argwhere(mask)[0][0], np.argwhere(mask)[0][1]] = level * 1.5 + 1e-13
    r = complete_scan(varied, mask, model=model, device="cpu")
    assert (r.uncertainty[~mask] > 0).all() and (r.image[mask] == varied[mask]).all()


def test_stack_is_completed_frame_by_frame_and_progress_is_reported(scene):
    noisy, _ = scene
    masks = np.stack([scan_mask(k, noisy.shape, 1 / 15, seed=4) for k in ("grid", "lissajous")])
    stack = np.stack([noisy, noisy[::-1]]) * masks
    msgs, r = collect(complete_scan_iter(stack, masks, device="cpu", uncertainty=False))
    assert msgs and all(m[0] == "progress" for m in msgs) and msgs[-1][1] == msgs[-1][2]
    assert r.image.shape == stack.shape and r.mask.shape == stack.shape
    assert (r.uncertainty == 0).all()
    one = complete_scan(stack[1], masks[1], device="cpu")
    np.testing.assert_allclose(r.image[1], one.image, atol=1e-5)


def test_tiled_run_matches_whole_image_away_from_seams():
    noisy, _ = simulate_scene((160, 160), kind="texture", dose=200, seed=8)
    mask = scan_mask("grid", noisy.shape, 1 / 16, seed=0)
    whole = complete_scan(noisy * mask, mask, model="default", device="cpu", tile=512)
    tiled = complete_scan(noisy * mask, mask, model="default", device="cpu", tile=96)
    assert np.sqrt(np.mean((whole.image - tiled.image) ** 2)) < 0.05 * noisy.std()


def test_normalized_fill_reproduces_a_constant_and_interpolates_a_ramp():
    mask = scan_mask("random", (64, 64), 1 / 30, seed=1)
    np.testing.assert_allclose(
        normalized_fill(np.full((64, 64), 3.0, np.float32), mask), 3.0, rtol=1e-5
    )
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    assert np.abs(normalized_fill(ramp, mask) - ramp)[8:-8, 8:-8].mean() < 0.05


def _ramp_and_bowl(shape=(90, 130)):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    return 0.3 * yy / shape[0] + 0.7 * xx / shape[1], ((yy - 40) ** 2 + (xx - 70) ** 2) / 5e3


@pytest.mark.parametrize("smoothing,tension", [(1.0, 32.0), (0.0, None)])
def test_smooth_fill_is_exact_at_measured_pixels_and_affine_equivariant(smoothing, tension):
    noisy, _ = simulate_scene((70, 90), kind="particles", dose=100, seed=3)  # non-square, noisy
    mask = scan_mask("random_walk", noisy.shape, 1 / 15, seed=2)
    values = np.where(mask, noisy, np.nan)
    f = smooth_fill(values, mask, smoothing, tension)
    assert f.shape == noisy.shape and f.dtype == np.float32 and np.isfinite(f).all()
    np.testing.assert_array_equal(f[mask], noisy[mask])
    g = smooth_fill(values * 250.0 - 40.0, mask, smoothing, tension)
    np.testing.assert_allclose(g, f * 250.0 - 40.0, rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("kind", ["grid", "random", "lines"])
def test_smooth_fill_reproduces_a_ramp_and_a_quadratic_from_sparse_samples(kind):
    ramp, bowl = _ramp_and_bowl()
    mask = scan_mask(kind, ramp.shape, 1 / 40, seed=1)
    inner = np.zeros(ramp.shape, bool)
    inner[10:-10, 10:-10] = True
    inner &= ~mask
    # default (smoothing + tension) and exact thin plate both follow a linear ramp (range 1)
    for args in ((), (0.0, None)):
        assert np.abs(smooth_fill(ramp, mask, *args) - ramp)[inner].mean() < 0.01
    if kind == "lines":  # 2-3 scan lines hold no information on curvature across them
        return
    # pure thin plate: a quadratic bowl (range ~2.3) to < 1 % of its range, better than NC
    err = np.abs(smooth_fill(bowl, mask, 0.0, None) - bowl)[inner].mean()
    err_nc = np.abs(normalized_fill(bowl, mask) - bowl)[inner].mean()
    assert err < 0.02 and err < 0.75 * err_nc, (err, err_nc)


def test_smooth_fill_carries_across_wide_gaps_better_than_normalized_convolution():
    yy, xx = np.mgrid[0:128, 0:160].astype(np.float32)
    smooth = np.sin(xx / 25.0) + np.cos(yy / 35.0)
    for kind, cov in (("grid", 1 / 87), ("random", 1 / 60), ("lines", 1 / 30)):
        mask = scan_mask(kind, smooth.shape, cov, seed=0)
        rms_smooth, rms_nc = (
            np.sqrt(np.mean((f - smooth)[~mask] ** 2))
            for f in (smooth_fill(smooth, mask), normalized_fill(smooth, mask))
        )
        assert rms_smooth < 0.65 * rms_nc, kind


def test_smooth_fill_edge_cases():
    v = np.random.default_rng(0).random((37, 53)).astype(np.float32)
    one = np.zeros(v.shape, bool)
    one[5, 7] = True
    np.testing.assert_allclose(smooth_fill(v, one), v[5, 7], rtol=1e-5)  # one sample: a constant
    np.testing.assert_array_equal(smooth_fill(v, np.ones(v.shape, bool)), v)  # nothing to fill
    border = np.zeros(v.shape, bool)
    border[0, :] = border[:, -1] = True  # measured only along two image borders
    f = smooth_fill(v, border)
    assert (
        np.isfinite(f).all()
        and v[border].min() - 0.1 <= f.min()
        and f.max() <= v[border].max() + 0.1
    )
    tiny = np.zeros((8, 8), bool)
    tiny[::3, ::3] = True
    assert np.isfinite(smooth_fill(v[:8, :8], tiny)).all()
    for bad, m, msg in (
        (v, np.zeros(v.shape, bool), "no measured"),
        (v, one[:, :10], "same shape"),
        (np.full(v.shape, np.nan), one, "NaN"),
    ):
        with pytest.raises(ValueError, match=msg):
            smooth_fill(bad, m)
    with pytest.raises(ValueError, match="smoothing"):
        smooth_fill(v, one, smoothing=-1.0)
    with pytest.raises(ValueError, match="tension"):
        smooth_fill(v, one, tension=0.0)


@pytest.mark.parametrize(
    "values,mask,msg",
    [
        (np.zeros((32, 32)), np.zeros((32, 33), bool), "same shape"),
        (np.zeros((32, 32)), np.zeros((32, 32), bool), "no measured"),
        (np.zeros((32, 32)), np.ones((32, 32), bool), "nothing to complete"),
        (np.full((32, 32), np.nan), np.eye(32, dtype=bool), "NaN"),
        (np.zeros((32, 32, 3)), np.zeros((32, 32, 3), bool), "RGB"),
        (np.zeros((2, 2, 32, 32)), np.zeros((2, 2, 32, 32), bool), "dimensions"),
        (np.zeros((4, 4)), np.eye(4, dtype=bool), "at least 8"),
        (np.zeros((0, 32, 32)), np.zeros((0, 32, 32), bool), "stack is empty"),
        ([], [], "stack is empty"),
        (
            np.arange(1024.0).reshape(32, 32),
            np.eye(32, dtype=bool) & (np.arange(32) < 3),
            "Only 3 pixels",
        ),
    ],
)
def test_bad_input_raises_a_plain_value_error(values, mask, msg):
    with pytest.raises(ValueError, match=msg):
        complete_scan(values, mask, device="cpu")


def test_public_api_and_pixel_model_are_available(scene):
    noisy, _ = scene
    mask = scan_mask("lines", noisy.shape, 1 / 8)
    r = mm.complete_scan(noisy * mask, mask, model="pixel", device="cpu")
    assert r.model == "completion-pixel"
    r2 = drain(complete_scan_iter(noisy * mask, mask, model="default", device="cpu"))
    assert r2.model == "completion-default"


def test_beats_griddata_on_a_real_crop(shared_data):
    import tifffile

    path = shared_data / "completion" / "truth-2.tif"
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    truth = tifffile.imread(path).astype(np.float32)[128:320, 128:320]
    for kind, cov in (("spiral", 1 / 17.9), ("grid", 1 / 50)):
        mask = scan_mask(kind, truth.shape, cov, seed=0)
        ours = completion_errors(complete_scan(truth * mask, mask, device="cpu").image, truth, mask)
        grid = completion_errors(griddata_linear(truth, mask), truth, mask)
        assert ours["rms_smooth"] < 0.9 * grid["rms_smooth"], (kind, ours, grid)
        assert ours["rms"] < grid["rms"]


def test_local_gp_baseline_is_an_exact_interpolator_with_sensible_error():
    noisy, clean = simulate_scene((64, 64), kind="edges", dose=np.inf, seed=5)
    mask = scan_mask("grid", noisy.shape, 1 / 9, seed=0)
    out, std = local_gp(noisy, mask, return_std=True)
    np.testing.assert_array_equal(out[mask], noisy[mask])
    assert (std[mask] == 0).all() and (std[~mask] >= 0).all()
    mean_fill = completion_errors(np.where(mask, noisy, noisy[mask].mean()), clean, mask)["rms"]
    assert completion_errors(out, clean, mask)["rms"] < 0.3 * mean_fill


def test_complete_scan_local_gp_keeps_measurements_and_covers_the_truth():
    """The kriging method through the public API: exact at measured pixels, a σ that covers
    the noisy truth about as often as a Gaussian should, progress and provenance."""
    from napari_microml.completion.complete import LOCAL_GP

    noisy, clean = simulate_scene((64, 64), kind="edges", dose=500, seed=11)
    mask = scan_mask("spiral", noisy.shape, 1 / 8, seed=0)
    steps, res = collect(complete_scan_iter(noisy * mask, mask, model=LOCAL_GP, input_name="scan"))
    assert steps and steps[-1][1] == steps[-1][2]  # progress reaches its total
    np.testing.assert_array_equal(res.image[mask], noisy[mask])
    assert (res.uncertainty[mask] == 0).all() and (res.uncertainty[~mask] > 0).all()
    inside = np.abs(res.image - noisy)[~mask] <= 2 * res.uncertainty[~mask]
    assert 0.85 <= inside.mean() <= 0.995, inside.mean()
    assert (
        res.model == LOCAL_GP
        and res.provenance["parameters"]["fitted_hyperparameters"][0]["length"] > 0
    )
    # a stack gives one result per frame, each exact where measured
    stack = complete_scan(np.stack([noisy, clean]) * mask, np.stack([mask, mask]), model=LOCAL_GP)
    assert stack.image.shape == (2, 64, 64)
    np.testing.assert_array_equal(stack.image[1][mask], clean[mask])


def test_network_stays_within_the_measured_range_in_flat_vacuum():
    """Between thick scan lines over a flat vacuum the network had predicted up to 0.05 of the
    range below the darkest measured pixel; nothing measured supports such values."""
    _, clean = simulate_scene((128, 128), dose=np.inf, seed=0, vacuum=1.0)
    mask = scan_mask("thick_trace", clean.shape, 1 / 10, seed=0)
    r = complete_scan(np.where(mask, clean, np.nan), mask, model="default", device="cpu")
    lo, hi = clean[mask].min(), clean[mask].max()
    assert r.image[~mask].min() >= lo and r.image[~mask].max() <= hi
    np.testing.assert_array_equal(r.image[mask], clean[mask])


def test_network_offers_both_sigmas_the_measurement_one_adds_the_fitted_pixel_noise():
    """A network's σ is of the signal (trained on noise-free targets); a re-scan also carries
    the pixel noise, so the measurement σ (the default) must cover the noisy image."""
    noisy, clean = simulate_scene((128, 128), kind="particles", dose=50, seed=31)
    mask = scan_mask("grid", noisy.shape, 1 / 10, seed=3)
    meas = complete_scan(noisy * mask, mask, model="default", device="cpu")
    sig = complete_scan(noisy * mask, mask, model="default", device="cpu", sigma="signal")
    miss = ~mask
    np.testing.assert_array_equal(meas.image, sig.image)
    noise_sd = meas.provenance["parameters"]["pixel_noise_sd"][0]
    assert sig.sigma == "signal" and sig.provenance["parameters"]["pixel_noise_sd"] is None
    np.testing.assert_allclose(
        meas.uncertainty[miss] ** 2, sig.uncertainty[miss] ** 2 + noise_sd**2, rtol=1e-3
    )
    true_sd = np.std(noisy - clean)
    assert 0.7 * true_sd < noise_sd < 1.3 * true_sd
    cover_meas = np.mean(np.abs(meas.image - noisy)[miss] <= 2 * meas.uncertainty[miss])
    cover_sig = np.mean(np.abs(sig.image - noisy)[miss] <= 2 * sig.uncertainty[miss])
    assert cover_sig < 0.85 <= cover_meas <= 0.99, (cover_sig, cover_meas)
