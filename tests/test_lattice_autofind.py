"""Lattice analysis on an image with no Points layer: Run finds the columns with the Atom
finder's defaults first (the lead's journey on Acquisition_18 refused: 'Pick the Points layer')."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from napari_microml.synth.strained import strained_lattice

pytest.importorskip("napari")


def _open(make_napari_viewer):
    s = strained_lattice("domains", structure="perovskite", dose=3000, seed=11)
    viewer = make_napari_viewer()
    image = viewer.add_image(s.image, name="pero", scale=(0.02, 0.02), units=("nm", "nm"))
    _, widget = viewer.window.add_plugin_dock_widget("napari-microml", "Lattice analysis")
    return viewer, widget, image, s


def test_run_without_points_finds_the_columns_then_analyses(make_napari_viewer, qtbot):
    viewer, widget, image, s = _open(make_napari_viewer)
    assert widget.image_layer.value is image and widget.points_layer.value is None  # defaults
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    status = widget.status.value
    assert status.startswith("Done: "), status
    points = viewer.layers["pero atoms"]  # the layer the Atom finder writes, picked for re-runs
    assert widget.points_layer.value is points
    assert points.metadata["napari_microml"]["tool"] == "atom_finder"
    assert points.metadata["napari_microml"]["lattice_analysis"]["tool"] == "lattice_analysis"
    assert {"score", "position_std", "manual", "sublattice", "exx", "count"} <= set(
        points.features.columns
    )
    assert tuple(points.scale) == pytest.approx((0.02, 0.02))
    # the found columns are the simulated ones (within 1.5 px), and the lattice is the truth's
    found_px = np.asarray(points.data)  # data coordinates: the image's pixels
    dist, nearest = cKDTree(s.positions).query(found_px)
    assert len(points.data) >= 0.9 * len(s.positions) and (dist < 1.5).mean() >= 0.95
    labels = points.features["sublattice"].to_numpy()
    ok = dist < 1.5
    agree = (labels[ok] == s.sublattice[nearest[ok]]).mean()
    assert max(agree, 1 - agree) >= 0.95  # the two sublattices, up to their numbering
    for key in ("exx", "eyy", "exy", "rotation", "displacement"):
        assert f"pero {key}" in viewer.layers, key
    n = len(points.data)
    assert f"Columns: found by the Atom finder ({n} columns, model default" in status, status
    assert "2 sublattice" in status, status


def test_cancel_while_finding_leaves_no_layers(make_napari_viewer, qtbot):
    viewer, widget, image, s = _open(make_napari_viewer)
    before = [layer.name for layer in viewer.layers]
    widget.run_button.native.click()
    widget.cancel()  # the finder yields per tile before any layer is written
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert "Cancelled" in widget.status.value
    assert [layer.name for layer in viewer.layers] == before


def test_too_few_columns_says_so_and_writes_nothing(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64)), name="empty")
    _, widget = viewer.window.add_plugin_dock_widget("napari-microml", "Lattice analysis")
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    status = widget.status.value
    assert "found 0 atom columns in 'empty'" in status and "at least 6" in status, status
    assert [layer.name for layer in viewer.layers] == ["empty"]
