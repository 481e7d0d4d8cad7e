"""The Lattice analysis dock widget on a simulated two-domain perovskite (exact truth)."""

import numpy as np
import pandas as pd
import pytest

from napari_microml.synth.strained import strained_lattice

pytest.importorskip("napari")


def _open(make_napari_viewer, *, scale=(0.02, 0.02)):
    s = strained_lattice("domains", structure="perovskite", dose=3000, seed=11)
    viewer = make_napari_viewer()
    image = viewer.add_image(s.image, name="pero", scale=scale, units=("nm", "nm"))
    points = viewer.add_points(
        s.positions,
        name="pero atoms",
        scale=scale,
        units=("nm", "nm"),
        features=pd.DataFrame({"position_std": np.full(len(s.positions), 0.05)}),
    )
    _, widget = viewer.window.add_plugin_dock_widget("napari-microml", "Lattice analysis")
    widget.image_layer.value = image
    widget.points_layer.value = points
    return viewer, widget, s, points


def _run(qtbot, widget):
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)


def test_run_writes_features_maps_vectors_and_plot(make_napari_viewer, qtbot, tmp_path):
    viewer, widget, s, points = _open(make_napari_viewer)
    # a reference rectangle on the left domain and a profile line across the domain wall (world nm)
    shapes = viewer.add_shapes(
        [np.array([[0.2, 0.2], [4.8, 2.4]])], shape_type="rectangle", name="regions"
    )
    shapes.add_lines(np.array([[2.5, 0.3], [2.5, 4.8]]))
    widget.shapes_layer.value = shapes
    _run(qtbot, widget)
    feats = points.features
    for col in ("sublattice", "exx", "eyy", "exy", "rotation", "d_abs", "count"):
        assert col in feats, col
    assert (feats["sublattice"].to_numpy() == s.sublattice).mean() >= 0.99
    # B columns are off-centre by 0.6 px in two domains; arrows show it
    b = (s.sublattice == 1) & np.isfinite(feats["d_abs"].to_numpy())
    assert np.median(feats["d_abs"].to_numpy()[b]) == pytest.approx(0.6, abs=0.1)
    for key in ("exx", "eyy", "exy", "rotation"):
        layer = viewer.layers[f"pero {key}"]
        assert layer.scale[0] == pytest.approx(0.02 * widget.run_result.step)
        lo, hi = layer.contrast_limits
        assert lo == pytest.approx(-hi)  # diverging, centred on 0
    vectors = viewer.layers["pero displacement"]
    assert vectors.length == 10
    widget.magnification.value = 25
    assert vectors.length == 25
    assert widget.run_result.lattice.reference.sum() < len(s.positions) / 2  # the rectangle
    assert widget.run_result.profile is not None and len(widget.run_result.profile[0][0]) > 5
    assert "pm" in widget.summary.value and "2 sublattice" in widget.summary.value
    assert (
        widget.shells.value == "auto"
        and "strain fit over 3×3 cells, auto (" in widget.summary.value
    )
    assert widget.plot_dock is not None
    assert points.metadata["napari_microml"]["lattice_analysis"]["tool"] == "lattice_analysis"

    # CSV export of the per-column table, never over an existing file unless asked
    out = tmp_path / "lattice.csv"
    widget.csv_path.value = out
    widget.export_button.native.click()
    table = pd.read_csv(out)
    assert len(table) == len(s.positions) and {"exx", "sublattice", "y_nm"} <= set(table.columns)
    out.write_text("mine")
    widget.export_button.native.click()
    assert out.read_text() == "mine" and "exists" in widget.status.value


def test_user_reassigns_sublattice_and_reruns(make_napari_viewer, qtbot):
    viewer, widget, s, points = _open(make_napari_viewer, scale=(1, 1))
    _run(qtbot, widget)
    first = points.features["sublattice"].to_numpy().copy()
    chosen = set(np.flatnonzero(first == 1)[:5].tolist())
    points.selected_data = chosen
    widget.set_value.value = 2
    widget.set_button.native.click()
    assert (points.features["sublattice"].to_numpy()[sorted(chosen)] == 2).all()
    _run(qtbot, widget)
    labels = points.features["sublattice"].to_numpy()
    assert (labels[sorted(chosen)] == 2).all() and widget.run_result.lattice.parameters[
        "user_sublattice"
    ]


def test_cancel_leaves_no_layers(make_napari_viewer, qtbot):
    viewer, widget, s, points = _open(make_napari_viewer)
    before = [layer.name for layer in viewer.layers]
    widget.run_button.native.click()
    widget.cancel()  # the job yields several times before its result, so this always stops it
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    assert "Cancelled" in widget.status.value
    assert [layer.name for layer in viewer.layers] == before
    assert "exx" not in points.features


def test_missing_image_and_points_says_so(make_napari_viewer, qtbot):
    # with an image but no Points layer, Run finds the columns (tests/test_lattice_autofind.py)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-microml", "Lattice analysis")
    widget.run_button.native.click()
    assert widget.worker is None and "Pick the image" in widget.status.value


def test_dark_columns_are_found_as_such(make_napari_viewer, qtbot):
    viewer, widget, s, points = _open(make_napari_viewer)
    image = widget.image_layer.value
    image.data = image.data.max() - image.data  # ABF-like: the columns are dark
    assert widget.contrast.value == "auto"
    _run(qtbot, widget)
    assert (points.features["sublattice"].to_numpy() == s.sublattice).mean() >= 0.99
    assert (points.features["count"] == -1).all() and "no atom counting" in widget.summary.value


def test_maps_interpolate_linearly_inside_the_columns():
    from napari_microml.lattice.maps import interpolated_maps

    pos = np.array([[0, 0], [0, 10], [10, 0], [10, 10]], float)
    maps = interpolated_maps(
        pos, {"v": pos[:, 1] * 0.1, "gap": np.array([1, np.nan, 1, 1.0])}, (14, 14), step=2
    )  # samples 0, 2, …, 12 px
    np.testing.assert_allclose(maps["v"][2, :6], [0, 0.2, 0.4, 0.6, 0.8, 1.0], atol=1e-6)
    assert np.isnan(maps["v"][6]).all() and np.isnan(maps["v"][:, 6]).all()  # outside the hull
    assert np.isfinite(maps["gap"]).sum() < np.isfinite(maps["v"]).sum()  # one triangle left
