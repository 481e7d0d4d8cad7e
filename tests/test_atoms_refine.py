import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_microml.atoms.metrics import match_boxes, match_points
from napari_microml.atoms.refine import refine_positions
from napari_microml.runtime.noise import noise_sigma
from napari_microml.synth.lattice import simulate_lattice
from napari_microml.synth.render import render_gaussians


def _inner(s, margin=12):
    am = ndi.binary_dilation(s.amorphous, iterations=int(s.params["spacing"]))
    ip = np.rint(s.positions).astype(int)
    h, w = s.image.shape
    return (
        (s.positions > margin).all(1)
        & (s.positions[:, 0] < h - margin)
        & (s.positions[:, 1] < w - margin)
        & ~am[ip[:, 0], ip[:, 1]]
    )


@pytest.mark.parametrize("spacing", [7, 12, 20])
def test_gaussian_fit_recovers_exact_positions(spacing):
    s = simulate_lattice(
        (160, 160),
        scene="crystal",
        lattice="triangular",
        spacing=spacing,
        dose=np.inf,
        defects=False,
        seed=4,
    )
    start = s.positions + np.random.default_rng(1).uniform(-0.5, 0.5, s.positions.shape)
    pos, f = refine_positions(s.image, start)
    inner = _inner(s)
    err = np.linalg.norm(pos - s.positions, axis=1)[inner]
    assert np.sqrt((err**2).mean()) < 0.06
    assert f["fit_ok"][inner].mean() > 0.98
    np.testing.assert_allclose(np.median(f["sigma"][inner]), np.median(s.sigma), rtol=0.1)


def test_position_std_tracks_the_real_error():
    s = simulate_lattice(
        (192, 192), scene="crystal", lattice="square", spacing=12, dose=200, defects=False, seed=9
    )
    pos, f = refine_positions(s.image, s.positions + 0.3)
    inner = _inner(s)
    err = (pos - s.positions)[inner]
    per_axis_rms = np.sqrt((err**2).mean())
    assert 0.5 < per_axis_rms / np.median(f["position_std"][inner]) < 2.0


def test_fallback_to_centre_of_mass_when_the_fit_runs_away():
    img = np.zeros((40, 40), np.float32)
    img[20, 20] = 1.0  # a single hot pixel: no Gaussian width to fit
    pos, f = refine_positions(img, [[20.4, 19.7]])
    assert not f["fit_ok"][0]
    np.testing.assert_allclose(pos[0], [20, 20], atol=0.05)


def test_com_and_none_methods_and_empty_input():
    img = render_gaussians((32, 32), np.array([[15.3, 16.6]]), np.array([2.0]), np.array([1.0]))
    p, _ = refine_positions(img, [[15, 17]], method="com")
    np.testing.assert_allclose(p[0], [15.3, 16.6], atol=0.1)
    p, _ = refine_positions(img, [[15, 17]], method="none")
    np.testing.assert_allclose(p[0], [15, 17])
    p, f = refine_positions(img, np.zeros((0, 2)))
    assert p.shape == (0, 2) and len(f["fit_ok"]) == 0
    with pytest.raises(ValueError, match="Unknown refinement"):
        refine_positions(img, [[15, 17]], method="magic")


def test_noise_estimate():
    rng = np.random.default_rng(0)
    assert abs(noise_sigma(rng.normal(0, 0.2, (256, 256))) - 0.2) < 0.01


def test_matching_scores():
    true = np.array([[10, 10], [30, 30], [50, 50.0]])
    pred = np.array([[10.5, 10], [30, 31], [80, 80.0]])
    m = match_points(pred, true, max_distance=2)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["rms"] == pytest.approx(np.sqrt((0.25 + 1) / 2))
    b = match_boxes(pred, true)
    assert b["f1"] == pytest.approx(2 / 3)
    assert match_boxes(np.array([[10, 17.0]]), np.array([[10, 10.0]]))["f1"] == 0  # IoU 14/28 ≤ 0.5


def test_a_close_neighbour_does_not_pull_the_fit():
    """A column with an interstitial 0.6 spacings away: each fits only its own side of the
    bisector."""
    spacing = 12.0
    yy, xx = np.mgrid[0:7, 0:7]
    host = np.column_stack([yy.ravel(), xx.ravel()]) * spacing + 16.0
    extra = host[24] + [0.0, 0.6 * spacing]  # between two hosts of the middle row
    truth = np.vstack([host, extra])
    img = render_gaussians(
        (112, 112), truth, np.full(len(truth), 1.6), np.r_[np.ones(len(host)), 0.7]
    )
    start = truth + np.random.default_rng(0).normal(0, 0.3, truth.shape)
    pos, feats = refine_positions(img, start, method="gaussian")
    err = np.hypot(*(pos - truth).T)
    crowded = [24, 25, len(truth) - 1]  # the hosts on either side of the interstitial, and it
    assert err[crowded].max() < 0.3, err[crowded]  # whole windows: host 25 was pulled ~1 px
    assert np.median(err[:-1]) < 0.02 and feats["fit_ok"].all()
    # windows of columns without a neighbour within reach are untouched
    from napari_microml.atoms.refine import _neighbours, _own_pixels, _patches, window_radius

    r = window_radius(host)
    centres = np.rint(host).astype(int)
    _, wgt, dy, dx = _patches(img, centres, r)
    np.testing.assert_array_equal(
        _own_pixels(wgt, dy, dx, host - centres, _neighbours(host, r) - centres[:, None]), wgt
    )
