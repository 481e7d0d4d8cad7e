"""Journeys from the session-17 GUI audit (helper C): each test drives a dock the way the
Plugins menu opens it, with its defaults, and fails on the code before its fix."""

from __future__ import annotations

import numpy as np
import pytest
from journey import click, open_tool

from napari_microml.atoms.finetune import review_order
from napari_microml.synth.lattice import simulate_lattice

pytestmark = pytest.mark.usefixtures("one_torch_thread", "user_models_folder")


def _finder_result(viewer, qtbot, name="pt", seed=2):
    """The Atom finder (defaults) run on a synthetic single-atom frame: its Points layer."""
    sample = simulate_lattice((192, 192), scene="single_atoms", dose=1000, seed=seed)
    image = viewer.add_image(sample.image.astype(np.float32), name=name)
    finder = open_tool(viewer, "Atom finder")
    finder.image_layer.value = image
    click(qtbot, finder.run_button, finder)
    return finder, viewer.layers[f"{name} atoms"]


def test_review_walks_the_finder_result_before_any_correction(make_napari_viewer, qtbot):
    """Proofreading starts on the finder's own points: Review must not wait for an edit (it
    said "Nothing to review: run the Atom finder" right after the finder ran), and deleting the
    point under review moves on to the next one in the list, not to a shifted index."""
    from scipy.spatial import cKDTree

    from napari_microml.runtime.widget import canvas_view

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1500, 1000)
    teach = open_tool(viewer, "Teach the atom finder")  # open before the finder runs
    _, points = _finder_result(viewer, qtbot)
    finder, other = _finder_result(viewer, qtbot, name="second", seed=4)  # drawn on top of "pt"
    assert teach.pairs.value == []  # nothing corrected yet, so nothing selected for teaching
    before = np.asarray(points.data, float).copy()
    order, _ = review_order(
        before,
        features=points.features,
        threshold=points.metadata["napari_microml"]["parameters"]["threshold"],
    )
    assert len(order) >= 3

    teach.next_uncertain.native.click()
    assert f"point 1 of {len(order)}" in teach.status.value, teach.status.value
    assert points.selected_data == {int(order[0])}
    # the image these points were found on is the one shown, close enough to click on
    assert viewer.layers["pt"].visible and points.visible
    assert not viewer.layers["second"].visible and not other.visible
    assert "hidden while you review this image" in teach.status.value
    view = canvas_view(viewer)
    nn = np.median(cKDTree(before).query(before, k=2)[0][:, 1])
    assert min(view[1] - view[0], view[3] - view[2]) <= 12.1 * nn < 192  # about 12 neighbours
    qtbot.wait(100)
    assert _shown_in(teach.native, teach.status.native)  # the reason is in the squeezed dock
    assert _shown_in(teach.native, teach.next_uncertain.native)  # and the button for the next
    teach.next_uncertain.native.click()
    assert points.selected_data == {int(order[1])}

    points.remove_selected()  # the user deletes the false detection under review
    qtbot.wait(50)
    teach.next_uncertain.native.click()
    assert f"point 3 of {len(order)}" in teach.status.value, teach.status.value
    (i,) = points.selected_data
    np.testing.assert_allclose(points.data[i], before[order[2]])

    # a new model re-run on the image the review hid: its result is shown on its own image
    teach._rerun(finder, [viewer.layers["second"]])
    qtbot.waitUntil(lambda: not finder.busy, timeout=60_000)
    assert viewer.layers["second"].visible and other.visible
    assert not viewer.layers["pt"].visible and not points.visible


def _shown_in(area, widget) -> bool:
    """Whether ``widget`` lies wholly inside the visible part of the scroll ``area``."""
    from qtpy.QtCore import QPoint

    viewport = area.viewport()
    top = widget.mapTo(viewport, QPoint(0, 0)).y()
    return widget.isVisible() and 0 <= top and top + widget.height() <= viewport.height()


def test_training_curve_is_in_view_in_a_shared_dock_column(make_napari_viewer, qtbot):
    """Teach opened beside the Atom finder gets ~200 px of the column: the loss / held-out F1
    curve below its status line stayed out of sight during and after the fine-tune."""
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1500, 1000)
    teach = open_tool(viewer, "Teach the atom finder")  # the Atom finder docks below it
    finder, points = _finder_result(viewer, qtbot, name="021_HAADF_15nm_Sample_PtNC_21Oct20")
    _, other = _finder_result(viewer, qtbot, name="025_HAADF_15nm_Sample_PtNC_21Oct20", seed=4)
    for layer in (points, other):  # corrections: two false detections deleted on each
        layer.data = np.asarray(layer.data)[2:]
    qtbot.waitUntil(lambda: len(teach.pairs.value) == 2, timeout=5_000)
    teach.steps.value = 2
    teach.run_button.native.click()
    qtbot.waitUntil(lambda: len(teach._history) >= 1, timeout=60_000)
    qtbot.wait(300)
    if teach.busy:  # still training: the curve is drawn where the user can see it
        assert _shown_in(teach.native, teach._plot)
    qtbot.waitUntil(lambda: teach.worker is None, timeout=120_000)
    qtbot.wait(500)
    assert _shown_in(teach.native, teach._plot), "the training curve is out of view"
    assert _shown_in(teach.native, teach.status.native), teach.status.value
    if teach.status.value.startswith("Saved"):  # 2 steps may keep the model in use instead
        # the new model is shown selected, or named on the finder's status line in view (the
        # finder's dock, scrolled to its status after its runs, may hide its Model row)
        new = finder.model.value
        assert _shown_in(finder.native, finder.model.native) or (
            _shown_in(finder.native, finder.status.native) and repr(new) in finder.status.value
        ), finder.status.value


def test_dkl_last_loop_plot_is_not_flattened_by_a_spike(make_napari_viewer, qtbot, shared_data):
    """BEPS loops carry spikes ~100x the loop: the 'last spectrum' plot showed a flat line and
    one spike. It now draws the despiked loop the loop area is measured on, scaled to it."""
    from journey import open_file

    from napari_microml.dkl.scalarizers import LoopArea

    viewer = make_napari_viewer()
    open_file(viewer, shared_data / "dkl" / "BEPS_PTO_50x50.h5")
    dkl = open_tool(viewer, "Active learning (DKL)")
    assert dkl.scalarizer.value == "loop area"  # the default for a bias sweep
    click(qtbot, dkl.init_button, dkl)
    for _ in range(8):  # measure until the last loop read has a spike
        raw = np.asarray(dkl.ax_spec.lines[0].get_ydata(), float)
        loop = LoopArea().despiked(raw[None])[0]
        if np.abs(raw - loop).max() > 5 * np.ptp(loop):
            break
        click(qtbot, dkl.step_button, dkl)
    else:
        pytest.fail("no spiky loop among the first measurements")
    low, high = dkl.ax_spec.get_ylim()
    assert high - low < 2 * np.ptp(loop), "the plot's scale is set by the spike"
    assert low <= loop.min() and loop.max() <= high
    shown = [np.asarray(line.get_ydata(), float) for line in dkl.ax_spec.lines]
    assert any(np.allclose(y, loop) for y in shown)


def test_saved_results_reopen_calibrated(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """File > Save with the microml writers, then File > Open: the atoms CSV, the image TIFF and
    the bundle come back in nm on top of the image. Before, the reader refused .csv and .zarr
    (napari's own readers gave px: the atoms landed 20x off a 0.05 nm/px image) and no
    microml writer took an Image layer (a completed image was saved without its scale)."""
    viewer = make_napari_viewer()
    sample = simulate_lattice((128, 128), scene="single_atoms", dose=1000, seed=2)
    image = viewer.add_image(
        sample.image.astype(np.float32), name="scan", scale=(0.05, 0.05), units=("nm", "nm")
    )
    finder = open_tool(viewer, "Atom finder")
    finder.image_layer.value = image
    click(qtbot, finder.run_button, finder)
    points = viewer.layers["scan atoms"]
    first = points.data_to_world(points.data[0])

    def save_and_reopen(layer, name):
        viewer.layers.selection = {layer}
        viewer.layers.save(str(tmp_path / name), selected=True, plugin="napari-microml")
        return viewer.open(str(tmp_path / name), plugin="napari-microml")

    (back,) = save_and_reopen(points, "atoms.csv")
    assert isinstance(back, type(points)) and len(back.data) == len(points.data)
    np.testing.assert_allclose(back.scale, points.scale)
    assert [str(u) for u in back.units] == [str(u) for u in points.units]
    np.testing.assert_allclose(back.data_to_world(back.data[0]), first)

    # the Atom finder's own Save points… writes the same calibrated CSV (no file-type choice)
    from qtpy.QtWidgets import QFileDialog

    target = str(tmp_path / "mine")
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (target, "")))
    finder.save_button.native.click()
    assert "Saved" in finder.status.value and "nanometer" in finder.status.value
    (mine,) = viewer.open(target + ".csv", plugin="napari-microml")
    np.testing.assert_allclose(mine.data_to_world(mine.data[0]), first)

    (again,) = save_and_reopen(image, "scan.tif")
    np.testing.assert_allclose(again.scale, image.scale)
    assert str(again.units[-1]) == str(image.units[-1])
    np.testing.assert_array_equal(again.data, image.data)

    viewer.layers.selection = {image, points}
    viewer.layers.save(str(tmp_path / "both.zarr"), selected=True, plugin="napari-microml")
    bundle = viewer.open(str(tmp_path / "both.zarr"), plugin="napari-microml")
    assert sorted(type(lyr).__name__ for lyr in bundle) == ["Image", "Points"]
    for lyr in bundle:
        np.testing.assert_allclose(lyr.scale, image.scale)


def test_defect_table_dock_does_not_cut_the_image(make_napari_viewer, qtbot):
    """The defect table docks at the bottom after the run's view fit: the canvas lost ~200 px
    of height and the image's top and bottom rows (and any defect there) were out of view
    (Acquisition_18: 90 % of the image in view)."""
    from napari_microml.runtime.widget import fraction_in_view

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1500, 1000)
    sample = simulate_lattice((256, 256), dose=1000, seed=3)
    image = viewer.add_image(sample.image.astype(np.float32), name="lattice")
    seg = open_tool(viewer, "Defect segmenter")
    seg.image_layer.value = image
    click(qtbot, seg.run_button, seg)
    qtbot.waitUntil(lambda: seg.table_dock is not None, timeout=10_000)
    qtbot.wait(500)  # the dock is laid out and the canvas resized
    assert fraction_in_view(viewer, image) >= 0.98, fraction_in_view(viewer, image)


def test_one_found_atom_is_singular():
    """An 8x8 crop gave 'Found 1 atoms'."""
    from napari_microml.atoms.widget import found_what

    single = {"model_choice": {"chosen": "pt-single-atoms"}}
    assert found_what(single, 1) == "atom" and found_what(single, 0) == "atoms"
    assert found_what({}, 1) == "column" and found_what({}, 27) == "columns"


def test_closing_a_dock_mid_run_cancels_it(make_napari_viewer, qtbot):
    """The dock's x during a run: the run went on and its layers arrived from a tool no longer
    on screen (Defect segmenter, DKL, Shift-VAE on the real files). It is cancelled now."""
    viewer = make_napari_viewer()
    sample = simulate_lattice((256, 256), dose=1000, seed=3)
    image = viewer.add_image(sample.image.astype(np.float32), name="lattice")
    dock, seg = viewer.window.add_plugin_dock_widget("napari-microml", "Defect segmenter")
    seg.image_layer.value = image
    seg.run_button.native.click()
    assert seg.busy
    viewer.window.remove_dock_widget(dock)  # what the dock's close button does
    qtbot.waitUntil(lambda: seg.worker is None, timeout=60_000)
    qtbot.wait(200)
    assert [layer.name for layer in viewer.layers] == ["lattice"]
