"""Audit findings on the user path: Refine points with a few points just off the image edge,
and the Defect segmenter on an image with no crystal lattice (single atoms on a support)."""

import numpy as np
import pytest

from napari_microml.atoms.widget import BORDER_SLACK_PX, just_outside
from napari_microml.synth.lattice import simulate_lattice

PLUGIN = "napari-microml"


def test_just_outside_picks_points_within_the_slack_of_the_edge():
    pos = np.array(
        [
            [10.0, 10.0],  # inside
            [-0.5, 159.5],  # on the outer pixel edges: inside
            [-1.2, 50.0],  # 0.7 px above the image
            [50.0, 159.5 + BORDER_SLACK_PX],  # exactly at the slack
            [50.0, 162.0],  # 2.5 px to the right: beyond the slack
            [1600.0, 3.0],  # far away (a unit mix-up)
        ]
    )
    assert just_outside(pos, (160, 160)).tolist() == [False, False, True, True, False, False]


@pytest.fixture
def crystal():
    s = simulate_lattice(
        (160, 160), scene="crystal", lattice="square", spacing=10, dose=1000, seed=2
    )
    return s.image, s.positions


def _finder(make_napari_viewer, image):
    viewer = make_napari_viewer()
    layer = viewer.add_image(image, name="haadf")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Atom finder")
    widget.image_layer.value = layer
    return viewer, widget


def test_refine_skips_and_reports_points_just_outside_the_image(make_napari_viewer, qtbot, crystal):
    image, truth = crystal
    viewer, widget = _finder(make_napari_viewer, image)
    inside = truth[(truth > 3).all(1) & (truth < 156).all(1)]
    edge = np.array([[40.0, 160.4], [-1.3, 80.0], [100.0, -0.9]])  # ≤ 1 px outside
    start = np.vstack([inside + 0.4, edge])
    pts = viewer.add_points(start, name="haadf atoms")
    widget.refine_button.native.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    status = widget.status.value
    assert status.startswith("Refined"), status
    assert f"Refined {len(inside)} points" in status and "Skipped 3 points just outside" in status
    assert len(pts.data) == len(start) == len(pts.features)
    np.testing.assert_array_equal(pts.data[-3:], edge)  # left where they were
    err = np.linalg.norm(pts.data[: len(inside)] - inside, axis=1)
    assert np.median(err) < 0.2  # the others were refined onto their columns (0.57 px off before)
    record = pts.metadata["napari_microml"]["refined_points"]
    assert record["n_skipped_outside"] == 3 and record["n_points"] == len(inside)


def test_refine_still_refuses_points_in_the_wrong_units(make_napari_viewer, qtbot, crystal):
    image, truth = crystal
    viewer, widget = _finder(make_napari_viewer, image)
    pts = viewer.add_points(truth * 50.0, name="haadf atoms")  # e.g. pm instead of pixels
    before = pts.data.copy()
    widget.refine_button.native.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    status = widget.status.value
    assert "outside the 160×160 px image" in status and "rows 0–159 and columns 0–159" in status
    assert "Refined" not in status
    np.testing.assert_array_equal(pts.data, before)


def test_defects_on_single_atoms_says_there_is_no_lattice(make_napari_viewer, qtbot):
    s = simulate_lattice((192, 192), scene="single_atoms", spacing=10, dose=500, seed=5_700_001)
    viewer = make_napari_viewer()
    layer = viewer.add_image(s.image, name="pt_on_carbon")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Defect segmenter")
    widget.image_layer.value = layer
    widget.device_choice.value = "cpu"
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    status = widget.status.value
    assert "no crystal lattice in pt_on_carbon" in status, status
    assert "needs a crystalline image" in status and "Atom finder" in status
    assert "environment classes" not in status
