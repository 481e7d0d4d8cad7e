"""Journeys from the session-19 GUI audit (helper C): each test drives a dock the way the
Plugins menu opens it, with its defaults, and fails on the code before its fix."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from journey import click, open_tool

from napari_microml.synth.lattice import simulate_lattice

pytestmark = pytest.mark.usefixtures("one_torch_thread", "user_models_folder")


def _crystal(viewer, name="xtal", seed=1, with_points=True):
    sample = simulate_lattice((128, 128), scene="crystal", seed=seed)
    image = viewer.add_image(sample.image.astype(np.float32), name=name)
    if with_points:
        viewer.add_points(sample.positions, name=f"{name} atoms")
    return image


def _pump(ms: int) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.005)


def test_cancel_is_not_offered_while_the_result_is_written(make_napari_viewer, qtbot):
    """Lattice analysis: Cancel pressed while a finished run's layers were still being written
    (one per event-loop turn) said "Cancelling…" and then wrote the whole result ("Done: …"). Now
    the button is disabled and says so while the result is written: it never offers a Cancel it
    cannot honour."""
    viewer = make_napari_viewer()
    _crystal(viewer)
    tool = open_tool(viewer, "Lattice analysis")
    said, offered = [], []
    tool.status.changed.connect(lambda value: said.append(value))
    tool.run_button.native.click()
    qtbot.waitUntil(lambda: bool(tool._ui_queue) and tool._ended, timeout=60_000)
    # the result is being written: the user presses the button at once
    offered.append((tool.run_button.enabled, tool.run_button.text))
    tool.run_button.native.click()
    qtbot.waitUntil(lambda: tool.worker is None, timeout=60_000)
    assert offered == [(False, "Showing results…")], offered
    assert "Cancelling…" not in said, said
    assert tool.status.value.startswith("Done"), tool.status.value
    assert (tool.run_button.enabled, tool.run_button.text) == (True, "Run")
    assert "xtal exx" in viewer.layers


def test_cancel_pressed_before_the_result_arrives_is_honoured(
    make_napari_viewer, qtbot, monkeypatch
):
    """Cancel pressed after the worker's last step but before its result reached the window
    (the GUI thread busy for a moment): the result was written in full under "Cancelling…"."""
    from napari_microml.lattice import widget as lattice_widget

    viewer = make_napari_viewer()
    _crystal(viewer)
    tool = open_tool(viewer, "Lattice analysis")
    names = [layer.name for layer in viewer.layers]
    go, returned = threading.Event(), threading.Event()
    real = lattice_widget.LatticeRun

    def held(*args, **kwargs):  # the worker's last line builds the run it returns
        go.wait(30)
        returned.set()
        return real(*args, **kwargs)

    monkeypatch.setattr(lattice_widget, "LatticeRun", held)
    tool.run_button.native.click()
    _pump(300)
    go.set()
    assert returned.wait(30)
    time.sleep(0.3)  # the worker returns; its result waits in the GUI thread's queue
    tool.run_button.native.click()  # Cancel, before the result is handled
    qtbot.waitUntil(lambda: tool.worker is None, timeout=60_000)
    _pump(100)
    assert tool.status.value == "Cancelled: no layers were changed.", tool.status.value
    assert [layer.name for layer in viewer.layers] == names
    assert (tool.run_button.enabled, tool.run_button.text) == (True, "Run")
    click(qtbot, tool.run_button, tool)  # and a new run is not cancelled by the old press
    assert tool.status.value.startswith("Done"), tool.status.value


def test_docks_follow_a_sample_opened_after_a_run(make_napari_viewer, qtbot):
    """File → Open Sample → 'STEM lattice with defects (synthetic)' after an Atom finder run:
    the Atom finder, Defect segmenter and Lattice analysis stayed on the image before, so Run
    re-ran it and drew its result under the sample (files were followed since session 18)."""
    viewer = make_napari_viewer()
    _crystal(viewer, with_points=False)
    docks = {
        name: open_tool(viewer, name)
        for name in ("Atom finder", "Defect segmenter", "Lattice analysis")
    }
    finder = docks["Atom finder"]
    click(qtbot, finder.run_button, finder)
    assert finder.status.value.startswith("Found"), finder.status.value
    viewer.open_sample("napari-microml", "lattice")
    sample = "synthetic lattice"
    assert sample in viewer.layers
    for name, dock in docks.items():
        assert dock.image_layer.value.name == sample, name
        assert dock.status.value.startswith("Ready:") and repr(sample) in dock.status.value, (
            name,
            dock.status.value,
        )
    # the Lattice dock's columns are not the first image's
    assert docks["Lattice analysis"].points_layer.value is None
    # a sample of several images (the partial scan: its truth, then the zero-filled scan) is
    # analysed on its first image, not on the sparse scan
    viewer.open_sample("napari-microml", "partial_scan")
    for name, dock in docks.items():
        assert dock.image_layer.value.name == "full scan (truth)", name


def test_lattice_uses_the_finders_contrast_for_its_columns(make_napari_viewer, qtbot, monkeypatch):
    """The Lattice dock read the columns' contrast from the image again (0.3 s of a 1024² run,
    repeating the Atom finder's decision) for columns the Atom finder had just found there; a
    Points layer of the user's own is still read from the image."""
    from napari_microml.lattice import analyze

    viewer = make_napari_viewer()
    _crystal(viewer, with_points=False)
    finder = open_tool(viewer, "Atom finder")
    click(qtbot, finder.run_button, finder)
    assert "bright columns" in finder.status.value, finder.status.value
    calls = []
    real = analyze.columns_are_dark
    monkeypatch.setattr(
        analyze, "columns_are_dark", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    tool = open_tool(viewer, "Lattice analysis")
    assert tool.points_layer.value.name == "xtal atoms"
    click(qtbot, tool.run_button, tool)
    assert tool.status.value.startswith("Done"), tool.status.value
    assert calls == [], "the finder's contrast was read from the image again"
    assert tool.run_result.counts is not None  # bright columns: the atoms were counted
    # the user's own points (no Atom finder record): the image decides
    viewer.add_points(viewer.layers["xtal atoms"].data, name="mine")
    tool.points_layer.value = viewer.layers["mine"]
    click(qtbot, tool.run_button, tool)
    assert tool.status.value.startswith("Done"), tool.status.value
    assert calls == [1]


def test_quick_result_updates_share_an_event_loop_turn(make_napari_viewer):
    """Each queued result update had an event-loop turn (and a canvas redraw) of its own: a
    re-run's eight quick layer updates on the Lattice dock took eight redraws."""
    from qtpy.QtWidgets import QApplication

    viewer = make_napari_viewer()
    tool = open_tool(viewer, "Lattice analysis")
    done = []
    tool.later(*[lambda i=i: done.append(i) for i in range(8)])
    QApplication.processEvents()  # one turn
    assert done == list(range(8))
    slow = []
    tool.later(*[lambda i=i: (time.sleep(0.06), slow.append(i)) for i in range(3)])
    QApplication.processEvents()
    assert slow == [0]  # a slow update still ends its turn: the window is redrawn between them
    while tool._ui_queue:
        QApplication.processEvents()
    assert slow == [0, 1, 2]


@pytest.mark.realdata
def test_a_small_crop_of_a_crystal_is_not_called_isolated_atoms(
    make_napari_viewer, qtbot, shared_data
):
    """A 64 × 64 px crop of Acquisition_18 (SrTiO3, columns 22 px apart: under 3 cells across):
    the Atom finder said 'no lattice: isolated atoms on an amorphous support', the Defect
    segmenter 'no crystal lattice … not in a periodic arrangement' and the Lattice analysis 'Is
    it an atomic-resolution image?'. Each now says the field is too small to show the lattice."""
    from napari_microml.io.reader import read_file

    data = read_file(str(shared_data / "formats" / "Acquisition_18.emd"))[0][0]
    crop = np.asarray(data, np.float32)[300:364, 300:364].copy()
    viewer = make_napari_viewer()
    viewer.add_image(crop, name="crop64")  # a crop saved by another program: no calibration
    said = {}
    for name in ("Atom finder", "Defect segmenter", "Lattice analysis"):
        dock = open_tool(viewer, name)
        click(qtbot, dock.run_button, dock)
        said[name] = dock.status.value
    for name, sentence in said.items():
        assert "the image is 64 × 64 px, about" in sentence.lower(), (name, sentence)
        assert "amorphous support" not in sentence or "choose Model 'default'" in sentence, (
            name,
            sentence,
        )
    assert "larger field of view" in said["Defect segmenter"], said
    assert "larger field of view" in said["Lattice analysis"], said
    assert "Is it an atomic-resolution image" not in said["Lattice analysis"], said
    # no columns picked: the Lattice dock finds them itself (4 here) and refuses, saying why
    viewer.layers.remove("crop64 atoms")
    lattice = open_tool(viewer, "Lattice analysis")
    click(qtbot, lattice.run_button, lattice)
    refusal = lattice.status.value
    assert refusal.startswith("Cannot run: The Atom finder found"), refusal
    assert "64 × 64 px" in refusal and "larger field of view" in refusal, refusal


def test_long_displacement_arrows_do_not_shrink_the_image(make_napari_viewer, qtbot):
    """Lattice analysis of a 4096² mosaic: columns off their lattice sites (its seams) got
    arrows of hundreds of px, × 10, and the view was refit to their tips: the image shrank to a
    small square in a spray of arrows. The view now frames the image and its columns."""
    import napari_microml as mm
    from napari_microml.runtime.widget import canvas_view

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1500, 1000)
    # two sublattices: the arrows are one's displacements within the other's cells
    sample = simulate_lattice((256, 256), scene="crystal", lattice="perovskite", spacing=24.0)
    viewer.add_image(sample.image.astype(np.float32), name="xtal")
    positions = sample.positions.copy()
    arrowed = np.isfinite(mm.analyze_lattice(positions, image=sample.image).displacement).all(1)
    inner = arrowed & (positions > 60).all(1) & (positions < 196).all(1)
    moved = np.flatnonzero(inner)[np.argmax(positions[inner, 1])]  # 5 px off its site
    positions[moved, 1] += 5
    viewer.add_points(positions, name="xtal atoms")
    tool = open_tool(viewer, "Lattice analysis")
    tool.magnification.value = 50  # arrows drawn 50 × their length (the slider's end)
    click(qtbot, tool.run_button, tool)
    assert tool.status.value.startswith("Done"), tool.status.value
    arrows = viewer.layers["xtal displacement"]
    tips = arrows.data[:, 0] + arrows.length * arrows.data[:, 1]
    far = tips[:, 1].max()
    assert far > 400, f"the test needs an arrow reaching far past the image ({far:.0f} px)"
    y0, y1, x0, x1 = canvas_view(viewer)
    assert x1 < far - 50, f"the view was stretched to the arrows' tips: {x1:.0f} of {far:.0f}"
    assert x0 <= 0 and x1 >= 256 and y0 <= 0 and y1 >= 256, "the image is not wholly in view"
