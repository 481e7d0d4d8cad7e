"""Lattice-period estimate and the resampling that brings it into the trained range."""

import numpy as np
import pytest

from napari_microml.runtime.noise import noise_fraction
from napari_microml.runtime.spacing import (
    Spacing,
    auto_zoom,
    estimate_spacing,
    resample,
    to_original,
    zoom_for,
)
from napari_microml.synth.lattice import simulate_lattice


@pytest.mark.parametrize("spacing", [4.0, 11.0, 27.0, 55.0])
def test_triangular_period_is_the_column_spacing(spacing):
    s = simulate_lattice(
        (384, 384), scene="crystal", lattice="triangular", spacing=spacing, dose=300, seed=2
    )
    est = estimate_spacing(s.image)
    assert est.periodic, est
    assert est.period == pytest.approx(spacing, rel=0.08)


def test_honeycomb_period_is_within_the_documented_factor():
    s = simulate_lattice(
        (256, 256), scene="crystal", lattice="honeycomb", spacing=9.0, dose=500, seed=4
    )
    est = estimate_spacing(s.image)
    assert est.periodic and 0.85 * 9 <= est.period <= 1.8 * 9


def test_single_atoms_and_noise_are_not_periodic():
    rng = np.random.default_rng(0)
    assert not estimate_spacing(rng.normal(size=(256, 256))).periodic
    s = simulate_lattice((256, 256), scene="single_atoms", spacing=12, dose=300, seed=1)
    assert not estimate_spacing(s.image).periodic
    assert estimate_spacing(np.zeros((8, 8))) == Spacing(None, 0.0)


@pytest.mark.parametrize("seed", range(6))
def test_frames_of_pure_shot_noise_have_no_period(seed):
    """A blank frame (vacuum, a very low dose) must not be read as a 2–4 px lattice and blown up:
    its autocorrelation peaks do not stand out of their own noise."""
    rng = np.random.default_rng(seed)
    lam = (0.5, 2.0, 10.0, 100.0, 1000.0, None)[seed]
    frame = (
        rng.normal(size=(256, 256)) if lam is None else rng.poisson(lam, (256, 256)).astype(float)
    )
    assert estimate_spacing(frame) == Spacing(None, 0.0)


def test_a_fine_noisy_lattice_keeps_its_period():
    s = simulate_lattice(
        (256, 256), scene="crystal", lattice="square", spacing=3.0, dose=20, seed=5
    )
    est = estimate_spacing(s.image)
    assert est.periodic and est.period == pytest.approx(3.0, rel=0.1)


def test_auto_zoom_only_outside_the_range():
    assert auto_zoom(Spacing(12.0, 0.8), (512, 512)) == 1.0
    assert auto_zoom(Spacing(70.0, 0.8), (512, 512)) == pytest.approx(0.2)
    assert auto_zoom(Spacing(3.5, 0.8), (512, 512)) == pytest.approx(4.0)
    assert auto_zoom(Spacing(70.0, 0.1), (512, 512)) == 1.0  # not a lattice: never resampled
    assert auto_zoom(Spacing(2.0, 0.9), (4096, 4096)) == pytest.approx(2.0)  # capped at 8192 px


def test_always_brings_any_lattice_to_the_target_period_and_leaves_the_rest():
    s = simulate_lattice(
        (256, 256), scene="crystal", lattice="square", spacing=24.0, dose=300, seed=9
    )
    assert zoom_for(s.image, "auto")[0] == 1.0  # 24 px is inside the trained range
    zoom, period = zoom_for(s.image, "always")
    assert period == pytest.approx(24.0, rel=0.08) and zoom == pytest.approx(
        14.0 / period, rel=1e-3
    )
    atoms = simulate_lattice((256, 256), scene="single_atoms", spacing=12, dose=300, seed=1)
    assert zoom_for(atoms.image, "always") == (1.0, None)  # no lattice: never resampled
    with pytest.raises(ValueError, match="'always'"):
        zoom_for(s.image, "sometimes")


def test_noisy_high_resamples_lattices_above_it_noisy_or_not():
    noisy = simulate_lattice(
        (320, 320), scene="crystal", lattice="square", spacing=28.0, dose=10, seed=9
    )
    exposed = simulate_lattice(
        (320, 320), scene="crystal", lattice="square", spacing=28.0, dose=2000, seed=9
    )
    assert noise_fraction(noisy.image) > 0.1 > 0.05 > noise_fraction(exposed.image)
    zoom, period = zoom_for(noisy.image, "auto", noisy_high=22.0)
    assert period == pytest.approx(28.0, rel=0.08) and zoom == pytest.approx(
        14.0 / period, rel=1e-3
    )
    assert zoom_for(noisy.image, "auto", noisy_high=30.0)[0] == 1.0  # period below the bound
    assert zoom_for(noisy.image, "auto")[0] == 1.0  # without the option: the trained range only
    # smooth wide columns too: real ABF at 1.5x finer pixels, F1 0.29 at native scale
    assert zoom_for(exposed.image, "auto", noisy_high=22.0)[0] == pytest.approx(zoom, rel=0.05)
    assert zoom_for(noisy.image, "off", noisy_high=22.0) == (1.0, None)
    atoms = simulate_lattice((256, 256), scene="single_atoms", spacing=30, dose=10, seed=1)
    assert zoom_for(atoms.image, "auto", noisy_high=22.0)[0] == 1.0  # no lattice: never resampled


def test_noise_fraction_of_a_flat_frame_is_infinite_and_of_white_noise_is_its_share():
    assert noise_fraction(np.ones((64, 64))) == np.inf
    rng = np.random.default_rng(3)
    ramp = np.linspace(0, 1, 256)[None, :] * np.ones((256, 1))
    assert noise_fraction(ramp + rng.normal(0, 0.01, (256, 256))) == pytest.approx(0.01, rel=0.15)


def test_positions_map_back_to_the_original_grid():
    img = np.zeros((100, 120), np.float32)
    img[40, 70] = 1
    for zoom in (0.5, 2.5):
        small = resample(img, zoom)
        peak = np.array(np.unravel_index(np.argmax(small), small.shape), float)
        np.testing.assert_allclose(to_original(peak[None], zoom)[0], [40, 70], atol=1.0 / zoom)
