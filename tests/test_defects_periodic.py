"""An interstitial is an exception to the lattice: a faint feature present in every unit cell (a
light column, a probe tail) is not one, an extra atom in one cell is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
A18 = DATA / "formats" / "Acquisition_18.emd"
SPACING = 12.0


def _crystal_with_a_faint_feature_in_every_cell(extra_atom: bool):
    """A triangular crystal whose every column has a faint partner 0.45 spacing below it (0.35
    of a column), Poisson noise; optionally one extra atom at the empty site nearest the centre.
    Returns (image, extra atom position or None)."""
    from scipy.spatial import cKDTree

    from napari_microml.synth.lattice import simulate_lattice
    from napari_microml.synth.render import render_gaussians

    s = simulate_lattice(
        (192, 192),
        scene="crystal",
        lattice="triangular",
        spacing=SPACING,
        dose=np.inf,
        defects=False,
        distort=False,
        seed=3,
    )
    peak = float(np.percentile(s.image, 99.5))
    partners = s.positions + np.array([0.45 * SPACING, 0.0])
    image = s.image + render_gaussians(
        s.image.shape, partners, np.full(len(partners), 1.6), np.full(len(partners), 0.35 * peak)
    )
    site = None
    if extra_atom:
        occupied = cKDTree(np.vstack([s.positions, partners]))
        rr, cc = np.mgrid[80:112, 80:112].reshape(2, -1)
        grid = np.column_stack([rr, cc]).astype(float)
        site = grid[np.argmax(occupied.query(grid)[0])]
        image = image + render_gaussians(image.shape, site[None], np.array([1.6]), 0.7 * peak)
    noisy = np.random.default_rng(0).poisson(np.clip(image, 0, None) * 200) / 200.0
    return noisy, site


def test_a_faint_feature_in_every_cell_is_not_an_interstitial():
    """Old code: 16 interstitials on this perfect crystal (every one a periodic partner)."""
    import napari_microml as mm

    image, _ = _crystal_with_a_faint_feature_in_every_cell(extra_atom=False)
    r = mm.segment_defects(image)
    n = int((r.table["class"] == "interstitial").sum())
    assert n <= 3, r.table
    assert r.provenance["parameters"]["dropped_periodic_interstitials"] >= 10


def test_an_extra_atom_in_one_cell_stays_an_interstitial():
    import napari_microml as mm
    from napari_microml.defects.periodic import site_excess

    image, site = _crystal_with_a_faint_feature_in_every_cell(extra_atom=True)
    r = mm.segment_defects(image)
    inter = r.table[r.table["class"] == "interstitial"][["row", "col"]].to_numpy()
    assert len(inter) and np.hypot(*(inter - site).T).min() < 0.5 * SPACING, r.table
    # the same site in the other cells is far dimmer; a partner site is not
    z = site_excess(image, np.array([site]), r.atoms, SPACING)
    assert z[0] > 10


def test_site_excess_needs_enough_equivalent_sites():
    from napari_microml.defects.periodic import site_excess

    cols = np.array([[10.0, 10.0], [10.0, 22.0], [22.0, 10.0]])
    z = site_excess(np.zeros((40, 40)), np.array([[16.0, 16.0]]), cols, SPACING)
    assert np.isnan(z).all()


@pytest.mark.skipif(not A18.exists(), reason="no shared data (../shared/data)")
def test_acquisition_18_has_no_interstitials_at_any_sampling():
    """Run at a 14 px column spacing (the resampling a coarser or finer frame gets), the real
    crystal read 22 interstitials (the network takes a faint feature beside every column for
    them); at its own 23 px none."""
    import napari_microml as mm

    data = np.asarray(mm.read_file(str(A18))[0][0], float)[256:768, 256:768]
    r = mm.segment_defects(data, pixel_size=0.0122465, rescale=0.61)
    assert int((r.table["class"] == "interstitial").sum()) <= 4, r.table


ABF = DATA / "formats" / "stem_abf_data.hspy"


@pytest.mark.skipif(not ABF.exists(), reason="no shared data (../shared/data)")
def test_the_oxygen_columns_of_an_abf_image_at_another_sampling_are_not_interstitials():
    """SrTiO3 ABF sampled 0.7× as finely: the network calls the O columns (found by the atom
    finder, in every cell) interstitials; old code 93 interstitials, at the native sampling 0."""
    from skimage.transform import rescale

    import napari_microml as mm

    data = np.asarray(mm.read_file(str(ABF))[0][0], float)
    crop = data[64:448, 64:448]
    coarser = rescale(crop, 0.7, order=3, anti_aliasing=True)
    r = mm.segment_defects(coarser, pixel_size=0.00933 / 0.7)
    assert r.provenance["parameters"]["contrast"] == "dark"
    assert int((r.table["class"] == "interstitial").sum()) <= 15, r.table


@pytest.mark.usefixtures("one_torch_thread")
def test_the_dock_says_how_many_interstitial_calls_the_lattice_explained(make_napari_viewer, qtbot):
    """Defect segmenter from the Plugins menu, defaults, Run: the status says the calls it
    dropped because the same site is as bright in every cell."""
    from journey import click, open_tool

    image, _ = _crystal_with_a_faint_feature_in_every_cell(extra_atom=False)
    viewer = make_napari_viewer()
    viewer.add_image(image.astype(np.float32), name="crystal")
    widget = open_tool(viewer, "Defect segmenter")
    click(qtbot, widget.run_button, widget, timeout_ms=120_000)
    status = str(widget.status.value)
    assert "interstitial calls dropped: the same site is as bright" in status, status
