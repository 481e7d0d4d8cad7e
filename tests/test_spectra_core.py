"""Shift-VAE core: recovers known shifts, reproducible, clear errors, real LSMO data."""

import numpy as np
import pytest

from napari_microml.spectra.preprocess import cross_correlation_shift, despike
from napari_microml.spectra.shift_vae import fit_shift_vae, fit_shift_vae_iter
from napari_microml.synth.spectra import gaussian_peaks, simulate_spectrum_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_recovers_known_shift_in_axis_units():
    y, x, truth = gaussian_peaks(400, 64, seed=1)
    r = fit_shift_vae(y, axis=x, epochs=40, shift_prior=2.0, seed=0, device="cpu")
    true = truth["centre"] - np.median(truth["centre"])
    assert r.shift.shape == (400,) and r.latents.shape == (400, 2)
    assert r.reconstruction.shape == y.shape
    assert np.corrcoef(r.shift, true)[0, 1] ** 2 > 0.9
    slope = np.polyfit(true, r.shift, 1)[0]
    assert 0.8 < slope < 1.2  # axis units, positive = to larger axis values
    assert abs(np.median(r.shift)) < 1e-5  # reported relative to the median
    assert len(r.loss_history) == 40 and r.loss_history[-1] < r.loss_history[0]
    assert r.device.startswith("cpu")


def test_spectrum_image_maps_and_sign_with_decreasing_axis():
    cube, axis, true_shift = simulate_spectrum_image((12, 12), n_channels=64, seed=0)
    r = fit_shift_vae(cube, axis=axis, epochs=40, shift_prior=1.0, seed=0, device="cpu")
    assert r.shift.shape == (12, 12) and r.latents.shape == (12, 12, 2)
    assert r.reconstruction.shape == cube.shape
    assert np.corrcoef(r.shift.ravel(), true_shift.ravel())[0, 1] > 0.9
    # reversing the axis and the channels describes the same physics: same signed shift
    r2 = fit_shift_vae(
        cube[..., ::-1], axis=axis[::-1], epochs=40, shift_prior=1.0, seed=0, device="cpu"
    )
    assert np.corrcoef(r2.shift.ravel(), true_shift.ravel())[0, 1] > 0.9


def test_seeded_reproducible_and_iter_yields_loss():
    y, x, _ = gaussian_peaks(64, 32, seed=2)
    a = fit_shift_vae(y, epochs=3, seed=5, device="cpu")
    b = fit_shift_vae(y, epochs=3, seed=5, device="cpu")
    np.testing.assert_array_equal(a.shift, b.shift)
    np.testing.assert_array_equal(a.latents, b.latents)
    gen = fit_shift_vae_iter(y, epochs=2, device="cpu")
    msg = next(gen)
    assert msg[:3] == ("progress", 1, 2) and "loss" in msg[4]


def test_plain_vae_and_traversal():
    y, x, _ = gaussian_peaks(64, 32, seed=3)
    r = fit_shift_vae(y, axis=x, epochs=3, model="plain", latent_dim=3, device="cpu")
    assert r.shift is None and r.latents.shape == (64, 3)
    values, spectra = r.traverse(0, n=5)
    assert values.shape == (5,) and spectra.shape == (5, 32)
    s = fit_shift_vae(y, axis=x, epochs=2, channel_range=(4, 28), despike=True, device="cpu")
    assert s.reconstruction.shape == (64, 24) and s.axis.shape == (24,)
    assert s.traverse(1, n=3)[1].shape == (3, 24)


@pytest.mark.parametrize(
    "bad, kwargs, words",
    [
        (np.zeros((10, 1)), {}, "only 1 channel"),
        (np.zeros(10), {}, "dimensions"),
        (np.zeros((2, 3, 4, 5)), {}, "dimensions"),
        (np.vstack([np.ones((3, 8)), np.full((1, 8), np.nan)]), {}, "NaN"),
        (np.ones((5, 8)), {"axis": np.arange(7)}, "must match"),
        (np.ones((5, 8)), {"model": "wavelet"}, "Unknown model"),
        (np.ones((5, 8)), {"channel_range": (3, 4)}, "at least 2"),
    ],
)
def test_bad_input_raises_clear_error(bad, kwargs, words):
    with pytest.raises(ValueError, match=words):
        fit_shift_vae(bad, epochs=1, device="cpu", **kwargs)


def test_preprocess_helpers():
    y, x, truth = gaussian_peaks(50, 64, seed=4)
    spiky = y.copy()
    spiky[3, 10] += 50
    assert despike(spiky)[3, 10] < 2
    cc = cross_correlation_shift(y, x)
    true = truth["centre"] - np.median(truth["centre"])
    assert np.corrcoef(cc, true)[0, 1] > 0.8


def _zlp_centres(X, e):
    from napari_microml.spectra.preprocess import gaussian_peak_centres

    return gaussian_peak_centres(X, e)


@pytest.mark.realdata
def test_lsmo_zero_loss_shift_matches_gaussian_centroid(shared_data):
    from rsciio.hspy import file_reader

    path = shared_data / "spectra" / "LSMO_linescan_low_loss.hspy"
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    d = file_reader(str(path))[0]
    X = np.asarray(d["data"], np.float32)
    ax = d["axes"][-1]
    e = float(ax["offset"]) + float(ax["scale"]) * np.arange(X.shape[-1])
    centres = _zlp_centres(X, e)
    k = int(np.argmax(X.mean(0)))
    r = fit_shift_vae(
        X, axis=e, channel_range=(k - 16, k + 19), shift_prior=1.0, seed=0, device="cpu"
    )
    assert np.corrcoef(r.shift, centres)[0, 1] >= 0.9
