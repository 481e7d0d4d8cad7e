"""Scanning-probe (STM/AFM) topographs: tilt, scan-line offsets and streaks are levelled and said
so; electron images are never levelled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
A18 = DATA / "formats" / "Acquisition_18.emd"
ABF = DATA / "formats" / "stem_abf_data.hspy"
PT = DATA / "atoms_pt_haadf" / "images"
needs_data = pytest.mark.skipif(not A18.exists(), reason="no shared data (../shared/data)")
A18_NM = 0.0122465


def _crop(path: Path, side: int) -> np.ndarray:
    import napari_microml as mm

    data = np.asarray(mm.read_file(str(path))[0][0], float)
    r, c = data.shape[0] // 2, data.shape[1] // 2
    return data[r - side // 2 : r + side // 2, c - side // 2 : c + side // 2]


def _sheared(positions: np.ndarray, shear: float) -> np.ndarray:
    return np.column_stack([positions[:, 0], positions[:, 1] - shear * positions[:, 0]])


def test_simulated_stm_scan_is_levelled_and_its_columns_found():
    """Without shared data: a simulated crystal as an STM topograph in nm (tilt 5× the
    corrugation, line offsets 2×, 3 % creep): F1 0.04 to its clean columns before levelling."""
    import napari_microml as mm
    from napari_microml.atoms.metrics import match_points
    from napari_microml.synth.lattice import simulate_lattice
    from napari_microml.synth.scanprobe import scanning_probe

    s = simulate_lattice((192, 192), scene="crystal", lattice="square", spacing=12.0, dose=500)
    clean = mm.find_atoms(s.image, model="default").positions
    stm = scanning_probe(s.image, plane=5, lines=2, shear=0.03)
    kept = stm.copy()
    got = mm.find_atoms(stm, model="default")
    np.testing.assert_array_equal(stm, kept)  # the user's data is not changed
    assert match_points(got.positions, _sheared(clean, 0.03), max_distance=1.5)["f1"] > 0.95
    assert got.parameters["levelling"] == "levelled: plane + line offsets removed"
    assert got.provenance["parameters"]["levelling"] == got.parameters["levelling"]


def test_simulated_electron_images_are_not_levelled():
    """Simulated STEM frames, line jitter at low dose, gradients and supports included (what the
    networks are trained on), are left as they are."""
    from napari_microml.runtime.level import level_scan
    from napari_microml.synth.lattice import simulate_lattice

    frames = [
        simulate_lattice((128, 128), scene="crystal", lattice=lat, spacing=10.0, dose=d, seed=s)
        for lat in ("square", "triangular", "perovskite")
        for d, s in ((20, 1000), (20, 1001), (100, 1002), (1000, 1000))
    ]
    frames += [
        simulate_lattice((128, 128), scene=sc, dose=200, seed=5001)
        for sc in ("single_atoms", "amorphous")
    ]
    for s in frames:
        x = s.image.astype(float)
        before = x.copy()
        assert level_scan(x).describe() is None
        assert level_scan(x, scan="auto").describe() is None  # the default, said
        np.testing.assert_array_equal(x, before)


def test_levelling_keeps_missing_pixels_missing():
    from napari_microml.runtime.level import level_scan
    from napari_microml.synth.lattice import simulate_lattice
    from napari_microml.synth.scanprobe import scanning_probe

    s = simulate_lattice((128, 128), scene="crystal", lattice="square", spacing=10.0, dose=500)
    x = scanning_probe(s.image, plane=5, lines=2, shear=0.0)
    x[10, 20:30] = np.nan
    assert level_scan(x).lines
    assert (
        np.isnan(x[10, 20:30]).all() and np.isfinite(np.delete(x.ravel(), np.s_[1300:1310])).all()
    )
    rows = np.nanmedian(np.diff(x, axis=0), axis=1)
    assert np.abs(rows).max() < 0.2 * 0.05  # no row steps left of the ±1 corrugation offsets


@needs_data
@pytest.mark.parametrize(
    ("variant", "f1"),
    [
        ({"plane": 10, "lines": 0, "shear": 0}, 0.98),  # was 0.60 (a 287 pm cell)
        ({"plane": 0, "lines": 3, "shear": 0}, 0.95),  # was 0.00
        ({"plane": 0, "lines": 1, "shear": 0, "streaks": 10}, 0.95),  # was 0.11
        ({"plane": 5, "lines": 1, "shear": 0.03, "noise": 0.1, "invert": True}, 0.85),  # 0.10
    ],
)
def test_acquisition_18_as_an_stm_topograph(variant, f1):
    """The real perovskite crop as an STM topograph in nm: same columns and lattice constant."""
    import napari_microml as mm
    from napari_microml.atoms.metrics import match_points
    from napari_microml.synth.scanprobe import scanning_probe

    img = _crop(A18, 512)
    base = mm.find_atoms(img, pixel_size=A18_NM)
    stm = scanning_probe(img, **variant)
    got = mm.find_atoms(stm, pixel_size=A18_NM)
    truth = _sheared(base.positions, variant["shear"])
    assert match_points(got.positions, truth, max_distance=1.5)["f1"] > f1
    assert got.parameters["levelling"].startswith("levelled: plane")
    if variant.get("streaks"):
        assert "scan-line streaks" in got.parameters["levelling"]
    a = mm.analyze_lattice(got.positions, image=stm, pixel_size=A18_NM).lattice["a_pm"]
    assert a == pytest.approx(409.5, abs=2 + 0.5 * 409.5 * variant["shear"])


@pytest.mark.skipif(not ABF.exists(), reason="no shared data (../shared/data)")
def test_tilted_abf_scan_keeps_its_sublattices():
    """A plane of 3× the corrugation ranked the columns by height along the tilt: a = 137.5 pm
    (half the cell) where the flat image gives 275.4 pm."""
    import napari_microml as mm
    from napari_microml.synth.scanprobe import scanning_probe

    img = _crop(ABF, 384)
    positions = mm.find_atoms(img, pixel_size=0.00933).positions
    tilted = scanning_probe(img, plane=3, lines=0, shear=0)
    flat = mm.analyze_lattice(positions, image=img, pixel_size=0.00933)
    got = mm.analyze_lattice(positions, image=tilted, pixel_size=0.00933)
    assert got.lattice["a_pm"] == pytest.approx(flat.lattice["a_pm"], rel=1e-3)
    np.testing.assert_array_equal(got.sublattice, flat.sublattice)


@needs_data
def test_stm_scan_has_the_same_defects():
    """The crop (one crystal, one bright dopant) as an STM topograph: before levelling the
    segmenter found nothing at all."""
    import napari_microml as mm
    from napari_microml.synth.scanprobe import scanning_probe

    img = _crop(A18, 512)
    stm = scanning_probe(img, plane=5, lines=1, shear=0, noise=0.1)
    clean, got = (
        mm.segment_defects(img, pixel_size=A18_NM),
        mm.segment_defects(stm, pixel_size=A18_NM),
    )
    assert list(got.table["class"]) == list(clean.table["class"]) != []
    assert got.provenance["parameters"]["levelling"] == "levelled: plane + line offsets removed"


@needs_data
def test_no_real_electron_image_is_levelled():
    """The 17 real electron images here (HAADF lattices, ABF, a survey, CuZn, the completion
    truths, 11 Pt/C frames): none is levelled, none changed."""
    import tifffile

    import napari_microml as mm
    from napari_microml.runtime.level import level_scan

    paths = [
        DATA / "formats" / "Acquisition_18.emd",
        DATA / "formats" / "stem_abf_data.hspy",
        DATA / "formats" / "DMReader_Image_SI-Survey.dm3",
        DATA / "dkl" / "CuZn_HAADF.hspy",
        DATA / "completion" / "truth-1.tif",
        DATA / "completion" / "truth-2.tif",
        *sorted(PT.glob("*.tif")),
    ]
    assert len(paths) == 17
    for path in paths:
        if path.suffix == ".tif":
            x = tifffile.imread(path).astype(float)
        else:
            x = np.asarray(mm.read_file(str(path))[0][0], float)
        x = np.squeeze(x)
        before = x.copy()
        assert level_scan(x).describe() is None, path.name
        np.testing.assert_array_equal(x, before)


def test_re_refining_points_of_an_stm_scan_fits_the_levelled_frame():
    """Edited points are re-fitted on the frame the finder fitted on: with line offsets left in,
    each column's fit window straddles rows a corrugation apart."""
    import napari_microml as mm
    from napari_microml.atoms.finder import refine_points_iter
    from napari_microml.runtime.workers import drain
    from napari_microml.synth.lattice import simulate_lattice
    from napari_microml.synth.scanprobe import scanning_probe

    s = simulate_lattice((160, 160), scene="crystal", lattice="square", spacing=12.0, dose=500)
    stm = scanning_probe(s.image, plane=5, lines=2, shear=0.0)
    found = mm.find_atoms(stm, model="default")
    again, _ = drain(refine_points_iter(stm, found.positions))
    same = np.abs(again - found.positions).max(axis=1) < 0.05  # px; the old code: 2 %
    assert same.mean() > 0.95


def test_a_scan_turned_by_90_degrees_is_levelled_along_its_columns():
    """The fast-scan axis vertical: the offsets run down the columns."""
    import napari_microml as mm
    from napari_microml.atoms.metrics import match_points
    from napari_microml.runtime.level import level_scan
    from napari_microml.synth.lattice import simulate_lattice
    from napari_microml.synth.scanprobe import scanning_probe

    s = simulate_lattice((192, 192), scene="crystal", lattice="square", spacing=12.0, dose=500)
    clean = mm.find_atoms(s.image, model="default").positions
    turned = scanning_probe(s.image.T, plane=5, lines=2, shear=0.0, streaks=5).T
    how = level_scan(turned.copy())
    assert how.lines and how.axis == 1 and how.streaks > 0
    got = mm.find_atoms(turned, model="default")
    assert match_points(got.positions, clean, max_distance=1.5)["f1"] > 0.95


@needs_data
def test_dark_or_bright_columns_of_a_tilted_scan():
    """The columns' values were read on the levelled image but compared with the unlevelled
    image's median: a tilted ABF scan's columns read as bright, a tilted HAADF one's as dark."""
    import napari_microml as mm
    from napari_microml.lattice.analyze import columns_are_dark
    from napari_microml.synth.scanprobe import scanning_probe

    abf = _crop(ABF, 384)
    positions = mm.find_atoms(abf, pixel_size=0.00933).positions
    for variant in ({"plane": 5, "lines": 0}, {"plane": 0, "lines": 2}):
        assert columns_are_dark(scanning_probe(abf, shear=0, **variant), positions)
    haadf = _crop(A18, 512)
    positions = mm.find_atoms(haadf, pixel_size=A18_NM).positions
    assert not columns_are_dark(scanning_probe(haadf, plane=10, lines=0, shear=0), positions)


def test_a_scan_known_to_be_spm_has_its_raster_noise_levelled():
    """Without shared data: 1/f feedback noise along the raster alone (0.3 corrugation) is not
    levelled when the frame alone decides (F1 0.875), and is with ``scan="spm"`` (a layer from an
    SPM file): rows aligned, noise along the lines smoothed (0.988); a clean crystal told it is an
    SPM scan keeps every column (only its plane is removed)."""
    import napari_microml as mm
    from napari_microml.atoms.metrics import match_points
    from napari_microml.synth.lattice import simulate_lattice
    from napari_microml.synth.scanprobe import scanning_probe

    s = simulate_lattice((192, 192), scene="crystal", lattice="square", spacing=12.0, dose=500)
    clean = mm.find_atoms(s.image, model="default").positions
    x = scanning_probe(s.image, plane=0, lines=0, shear=0, noise=0.3, seed=1)
    kept = x.copy()
    auto = mm.find_atoms(x, model="default")
    spm = mm.find_atoms(x, model="default", scan="spm")
    np.testing.assert_array_equal(x, kept)
    assert auto.parameters["levelling"] is None and "scan" not in auto.parameters
    assert match_points(auto.positions, clean, max_distance=1.5)["f1"] < 0.9
    assert match_points(spm.positions, clean, max_distance=1.5)["f1"] > 0.97
    said = "levelled: plane + line offsets + scan-line noise removed"
    assert spm.parameters["levelling"] == said and spm.parameters["scan"] == "spm"
    again = mm.find_atoms(s.image, model="default", scan="spm")
    assert again.parameters["levelling"] == "levelled: plane removed"
    assert match_points(again.positions, clean, max_distance=0.1)["f1"] == 1.0


@needs_data
def test_acquisition_18_with_raster_noise_known_to_be_spm():
    """The s19 weakness: 1/f raster noise 0.1× / 0.2× the corrugation alone gave F1 0.81 /
    0.42; told it is an SPM scan, 0.93 / 0.75."""
    import napari_microml as mm
    from napari_microml.atoms.metrics import match_points
    from napari_microml.synth.scanprobe import scanning_probe

    img = _crop(A18, 512)
    base = mm.find_atoms(img, pixel_size=A18_NM).positions
    for noise, low in ((0.1, 0.9), (0.2, 0.7)):
        x = scanning_probe(img, plane=0, lines=0, shear=0, noise=noise)
        got = mm.find_atoms(x, pixel_size=A18_NM, scan="spm")
        assert match_points(got.positions, base, max_distance=1.5)["f1"] > low, noise


def test_scan_must_be_auto_or_spm():
    import napari_microml as mm
    from napari_microml.runtime.level import level_scan

    with pytest.raises(ValueError, match="scan must be 'auto' .* or 'spm' .* not 'stm'"):
        mm.find_atoms(np.zeros((64, 64)), scan="stm")
    with pytest.raises(ValueError, match="scan must be"):
        level_scan(np.random.default_rng(0).normal(size=(64, 64)), scan="STM")
