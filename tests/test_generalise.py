"""Defaults on data another instrument would record: resampled, with dead/hot pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
A18 = DATA / "formats" / "Acquisition_18.emd"
needs_a18 = pytest.mark.skipif(not A18.exists(), reason="no shared data (../shared/data)")


def _a18_crop(side: int) -> np.ndarray:
    import napari_microml as mm

    data = np.asarray(mm.read_file(str(A18))[0][0], float)
    c = data.shape[0] // 2
    return data[c - side // 2 : c + side // 2, c - side // 2 : c + side // 2]


@needs_a18
def test_period_of_an_interpolated_image_is_the_lattice_not_its_noise():
    """A ×1.2 bicubic resampling (a resized or drift-corrected export) read as a 3 px lattice."""
    from skimage.transform import rescale

    from napari_microml.runtime.spacing import estimate_spacing

    img = _a18_crop(160)
    native = estimate_spacing(img).period
    assert native == pytest.approx(22.8, abs=1.0)
    got = estimate_spacing(rescale(img, 1.2, order=3)).period
    assert got == pytest.approx(1.2 * native, rel=0.1)


@needs_a18
def test_atoms_on_an_interpolated_image_are_the_same_columns():
    """The same field of view at 1.2× finer pixels gives the same columns: not a 3 px lattice
    upsampled 4.7× into four times as many false ones, nor a 26 px one left at native scale
    where the network finds a third of them."""
    from scipy.ndimage import gaussian_filter
    from skimage.transform import rescale

    import napari_microml as mm
    from napari_microml.atoms.metrics import match_points

    img = _a18_crop(160)
    base = mm.find_atoms(img, model="default")
    truth = (base.positions + 0.5) * 1.2 - 0.5
    smooth = rescale(img, 1.2, order=3)
    got = mm.find_atoms(smooth, model="default")
    assert got.parameters["zoom"] < 1.0  # wide smooth columns: the network's native scale fails
    assert match_points(got.positions, truth, max_distance=2.0)["f1"] > 0.9
    # detector noise on top of the interpolated frame, as a finer scan of the same area has
    noise = np.std(img - gaussian_filter(img, 1.0))
    noisy = smooth + np.random.default_rng(0).normal(0.0, noise, smooth.shape)
    got = mm.find_atoms(noisy, model="default")
    assert match_points(got.positions, truth, max_distance=2.0)["f1"] > 0.8


@needs_a18
def test_period_ignores_a_few_hot_and_dead_pixels():
    from napari_microml.runtime.spacing import estimate_spacing

    img = _a18_crop(256)
    k = np.random.default_rng(0).choice(img.size, 20, replace=False)
    bad = img.copy()
    bad.flat[k[:10]] = 0
    bad.flat[k[10:]] = 50 * img.max()
    assert estimate_spacing(bad).period == pytest.approx(estimate_spacing(img).period, abs=0.5)


def test_dark_columns_stay_dark_with_a_few_hot_pixels():
    """An ABF/BF frame with hot pixels (×50 the brightest) read as bright columns before."""
    from napari_microml.runtime.contrast import decide
    from napari_microml.synth.lattice import simulate_lattice

    s = simulate_lattice((192, 192), scene="crystal", lattice="perovskite", spacing=14.0, dose=100)
    dark = s.image.max() - s.image.astype(float)
    k = np.random.default_rng(0).choice(dark.size, 10, replace=False)
    dark.flat[k[:5]] = 0.0
    dark.flat[k[5:]] = 50 * dark.max()
    assert decide(dark).contrast == "dark"


PT = DATA / "atoms_pt_haadf" / "images" / "021_HAADF_15nm_Sample_PtNC_21Oct20.tif"


@pytest.mark.skipif(not PT.exists(), reason="no shared data (../shared/data)")
def test_single_atoms_at_twice_the_magnification_with_its_calibration():
    """Pt on carbon at 2× finer pixels, calibrated: the single-atom model runs at its training
    pixel size and finds the same atoms (at native scale it found 77 where there are 27)."""
    import tifffile
    from skimage.transform import rescale

    import napari_microml as mm
    from napari_microml.atoms.metrics import match_points

    img = tifffile.imread(PT).astype(float)
    base = mm.find_atoms(img, pixel_size=15 / 512)
    got = mm.find_atoms(rescale(img, 2.0, order=3), pixel_size=15 / 1024)
    assert got.parameters["model_choice"]["chosen"] == "pt-single-atoms"
    assert got.parameters["zoom"] == pytest.approx(0.5)
    truth = (base.positions + 0.5) * 2 - 0.5
    assert match_points(got.positions, truth, max_distance=6.0)["f1"] > 0.8


def test_lattice_search_of_a_counts_image_raises_no_overflow_warning():
    """Values in counts (here up to 3e4) overflowed p / 1e-300 outside the searched band: a
    RuntimeWarning on the console of every kriging run on such a scan."""
    import warnings

    from napari_microml.completion.periodic import lattice_basis

    img = np.random.default_rng(0).random((64, 64)) * 3e4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lattice_basis(img - img.mean()) is None


def test_a_few_stuck_pixels_leave_the_columns_as_they_were():
    """10 pixels at 50× the brightest column (or as far below the darkest) in an ABF-like frame:
    the background flattening took them for the background and the network found no column."""
    import napari_microml as mm
    from napari_microml.atoms.metrics import match_points
    from napari_microml.synth.lattice import simulate_lattice

    s = simulate_lattice((192, 192), scene="crystal", lattice="perovskite", spacing=14.0, dose=300)
    dark = (s.image.max() - s.image).astype(float)
    clean = mm.find_atoms(dark, model="default", contrast="dark").positions
    k = np.random.default_rng(0).choice(dark.size, 20, replace=False)
    span = dark.max() - dark.min()
    for bad, value in ((k[:10], dark.min() + 50 * span), (k[10:], dark.min() - 50 * span)):
        stuck = dark.copy()
        stuck.flat[bad] = value
        got = mm.find_atoms(stuck, model="default", contrast="dark").positions
        assert match_points(got, clean, max_distance=1.0)["f1"] > 0.98


@needs_a18
def test_sublattices_and_lattice_constants_ignore_stuck_pixels():
    """20 stuck pixels (10 at 0, 10 at 50× the brightest) turned 2 sublattices of a 409 pm cell
    into one of 287 pm: a stuck pixel made its column the brightest."""
    import napari_microml as mm

    img = _a18_crop(512)
    bad = img.copy()
    k = np.random.default_rng(0).choice(img.size, 20, replace=False)
    bad.flat[k[:10]] = 0
    bad.flat[k[10:]] = 50 * img.max()
    positions = mm.find_atoms(img, model="default").positions
    clean = mm.analyze_lattice(positions, image=img, pixel_size=0.0122465)
    got = mm.analyze_lattice(positions, image=bad, pixel_size=0.0122465)
    np.testing.assert_array_equal(got.sublattice, clean.sublattice)
    assert got.lattice["a_pm"] == pytest.approx(clean.lattice["a_pm"], rel=1e-6)


@needs_a18
def test_the_second_fitting_pass_does_not_read_as_the_column_count():
    """The last progress message of a run was "fitted 4/4 columns" for 118 columns: the second
    pass over the columns too wide for their window."""
    from napari_microml.atoms.finder import find_atoms_iter

    gen, fitted = find_atoms_iter(_a18_crop(256), model="default"), []
    while True:
        try:
            fitted += [m for m in [next(gen)[3]] if "fitted" in m]
        except StopIteration as stop:
            n = len(stop.value.positions)
            break
    assert fitted[0].endswith(f"fitted {n}/{n} columns")
    assert all("again" in m for m in fitted[1:]) and len(fitted) > 1


def test_stuck_pixels_are_no_defects():
    """20 stuck pixels in a 160² crystal were called vacancies, dopants and interstitials."""
    import napari_microml as mm
    from napari_microml.synth.lattice import simulate_lattice

    image = simulate_lattice(
        (160, 160), scene="crystal", lattice="perovskite", spacing=12.0, dose=300, seed=4
    ).image.astype(float)
    stuck = image.copy()
    k = np.random.default_rng(0).choice(image.size, 20, replace=False)
    span = np.ptp(image)
    stuck.flat[k[:10]] = image.min() - 50 * span
    stuck.flat[k[10:]] = image.max() + 50 * span
    clean, got = mm.segment_defects(image), mm.segment_defects(stuck)
    assert list(got.table["class"]) == list(clean.table["class"])


def test_a_3px_triangular_lattice_is_not_read_as_a_shoulder():
    """A 3 px triangular lattice whose autocorrelation's radial mean stays above zero up to
    12 px was read at 9.9 px (its first ring taken for a shoulder of the central lobe), so the
    network ran at native scale on a blur."""
    from napari_microml.runtime.spacing import estimate_spacing
    from napari_microml.synth.lattice import simulate_lattice

    s = simulate_lattice(
        (192, 192), scene="crystal", lattice="triangular", spacing=3.0, dose=500, seed=2000
    )
    got = estimate_spacing(s.image)
    assert got.periodic and got.period == pytest.approx(3.0, abs=0.3)


@needs_a18
def test_an_image_interpolated_to_twice_the_pixels_is_still_a_lattice():
    """Bicubic ×2 (a resized export): the interpolated noise raised the autocorrelation's
    origin so the 46 px period's strength read 0.286 < 0.3, "no lattice"; the single-atom
    model then ran (F1 0.90 on the 512² crop)."""
    from skimage.transform import rescale

    import napari_microml as mm
    from napari_microml.atoms.metrics import match_points
    from napari_microml.runtime.spacing import estimate_spacing

    img = _a18_crop(256)
    base = mm.find_atoms(img, model="default")
    x2 = rescale(img, 2.0, order=3)
    got = estimate_spacing(x2)
    assert got.periodic and got.period == pytest.approx(2 * 22.8, rel=0.05)
    r = mm.find_atoms(x2)
    assert r.parameters["model_choice"]["chosen"] == "default"
    truth = (base.positions + 0.5) * 2 - 0.5
    assert match_points(r.positions, truth, max_distance=3.0)["f1"] > 0.95


@pytest.mark.skipif(not PT.exists(), reason="no shared data (../shared/data)")
@pytest.mark.parametrize(
    ("name", "factor"), [("045", 1.5), ("049", 1.2), ("045", 2.0), ("047", 0.7)]
)
def test_resampled_single_atoms_stay_without_a_lattice(name, factor):
    """Pt/C single atoms resampled: neither the interpolated-noise shoulder nor a low origin
    estimate turns the support into a lattice."""
    import tifffile
    from skimage.transform import rescale

    from napari_microml.runtime.spacing import estimate_spacing

    path = next(PT.parent.glob(f"{name}_*.tif"))
    img = tifffile.imread(path).astype(float)
    assert not estimate_spacing(rescale(img, factor, order=3, anti_aliasing=factor < 1)).periodic


def test_a_repeating_support_with_few_columns_is_no_lattice():
    """The image's repeat counts as a lattice only when the lattice model found a fair share
    of the columns it implies (without the frame's size: as before)."""
    from napari_microml.atoms.choose import LATTICE_MODEL, SINGLE_ATOMS_MODEL, choose_atoms_model

    two = np.array([[100.0, 100.0], [180.0, 260.0]])
    got = choose_atoms_model(positions=two, period=29.8, shape=(358, 358), pixel_size=0.0419)
    assert got.chosen == SINGLE_ATOMS_MODEL and "only 2 of the ~144 columns" in got.reason
    assert choose_atoms_model(positions=two, period=29.8).chosen == LATTICE_MODEL
    many = np.random.default_rng(0).uniform(0, 358, (60, 2))  # ≥ ¼ of 144: half missed
    assert choose_atoms_model(positions=many, period=29.8, shape=(358, 358)).chosen == (
        LATTICE_MODEL
    )


@pytest.mark.skipif(not PT.exists(), reason="no shared data (../shared/data)")
def test_pt_045_at_coarser_pixels_runs_the_single_atom_model():
    """Pt/C 045 at 0.7× the pixels: its support repeats every 1.25 nm (strength 0.40), so the
    lattice model was kept and, like the single-atom model, run at a 14 px period: 2 atoms of
    29 (F1 0.13)."""
    import pandas as pd
    import tifffile
    from skimage.transform import rescale

    import napari_microml as mm
    from napari_microml.atoms.metrics import match_boxes

    path = next(PT.parent.glob("045_*.tif"))
    img = rescale(tifffile.imread(path).astype(float), 0.7, order=3, anti_aliasing=True)
    lab = pd.read_csv(PT.parents[1] / "labels" / "045_Results.csv")[["Y", "X"]].to_numpy(float)
    got = mm.find_atoms(img, pixel_size=15 / 512 / 0.7)
    assert got.parameters["model_choice"]["chosen"] == "pt-single-atoms"
    assert got.parameters["zoom"] == pytest.approx(1 / 0.7, rel=0.01)
    assert match_boxes(got.positions, (lab + 0.5) * 0.7 - 0.5, box=21 * 0.7)["f1"] > 0.3
