"""Journeys from the session-18 GUI audit (helper C): each test drives a dock the way the
Plugins menu opens it, with its defaults, and fails on the code before its fix."""

from __future__ import annotations

import numpy as np
import pytest
from journey import click, open_tool
from test_journeys_audit17 import _shown_in

from napari_microml.synth.lattice import simulate_lattice

pytestmark = pytest.mark.usefixtures("one_torch_thread", "user_models_folder")


def _single_atoms(viewer, name, seed):
    sample = simulate_lattice((192, 192), scene="single_atoms", dose=1000, seed=seed)
    return viewer.add_image(sample.image.astype(np.float32), name=name), sample


@pytest.mark.slow  # a 30-step fine-tune: ~17 s
def test_finder_status_names_the_model_teach_selected(make_napari_viewer, qtbot):
    """Teach saves a model trained on every image it was shown, so nothing is re-run: the Atom
    finder's Model list showed the new model while its status still described the old run, as
    if the points were the new model's."""
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1500, 1000)
    teach = open_tool(viewer, "Teach the atom finder")
    finder = open_tool(viewer, "Atom finder")
    truth = {}
    for name, seed in (("pt", 2), ("second", 4)):
        image, sample = _single_atoms(viewer, name, seed)
        truth[name] = sample.positions
        finder.image_layer.value = image
        click(qtbot, finder.run_button, finder)
    found = finder.status.value
    assert found.startswith("Found") and "pt-single-atoms" in found, found
    for name, positions in truth.items():  # the user's corrections: the true atoms
        viewer.layers[f"{name} atoms"].data = positions
    qtbot.waitUntil(lambda: len(teach.pairs.value) == 2, timeout=5_000)
    teach.steps.value = 30
    click(qtbot, teach.run_button, teach, timeout_ms=180_000)
    assert teach.status.value.startswith("Saved"), teach.status.value
    assert "press Run there" in teach.status.value
    new = finder.model.value
    assert new.startswith("tuned-"), new
    assert finder.status.value == (
        f"Model is now {new!r}; the points on 'second' were found with 'pt-single-atoms'. "
        f"Press Run to find them with {new!r}."
    )
    qtbot.wait(500)  # the finder's new status must not push Teach's curve out of its column
    assert _shown_in(teach.native, teach._plot), "the training curve is out of view"
    assert _shown_in(teach.native, teach.status.native), teach.status.value
    finder.model.value = "pt-single-atoms"  # back to the model that found them: their sentence
    assert finder.status.value == found


def _headers(table) -> list[str]:
    return [table.horizontalHeaderItem(j).text() for j in range(table.columnCount())]


def test_defect_table_shows_nm_on_a_calibrated_image_and_px_otherwise(make_napari_viewer, qtbot):
    """Acquisition_18 (0.01225 nm/px): the defect list showed area_px and nearest_atom_px first and
    the nm columns last, cut off at the dock's right edge; an uncalibrated image showed nm
    columns full of '–'."""
    from napari_microml.synth.defects import simulate_defects

    sample = simulate_defects(
        (128, 128), seed=5_700_001, dose=500, scene="crystal", lattice="square", spacing=11
    )
    viewer = make_napari_viewer()
    calibrated = viewer.add_image(sample.image, name="cal", scale=(0.02, 0.02), units="nm")
    raw = viewer.add_image(sample.image, name="raw")
    widget = open_tool(viewer, "Defect segmenter")
    for layer, shown, hidden in (
        (calibrated, ("area_nm2", "nearest_atom_nm"), ("area_px", "nearest_atom_px")),
        (raw, ("area_px", "nearest_atom_px"), ("area_nm2", "nearest_atom_nm")),
    ):
        widget.image_layer.value = layer
        click(qtbot, widget.run_button, widget)
        dock = widget.table_dock
        headers = _headers(dock.defects)
        assert set(shown) <= set(headers) and not set(hidden) & set(headers), headers
        n = len(dock.table)
        assert dock.title.text().startswith(f"{layer.name}: {n} defect{'' if n == 1 else 's'}")
        assert set(shown) | set(hidden) <= set(dock.table.columns)  # the export keeps both
        assert "dopant_" not in widget.status.value, widget.status.value  # said in words


@pytest.mark.realdata
def test_lattice_on_isolated_atoms_says_whose_columns_failed(
    make_napari_viewer, qtbot, shared_data
):
    """Pt atoms on carbon, no Points layer picked: Run found the columns itself and then said
    'The points do not form a 2D lattice…; check the atom positions' about points the user never
    gave."""
    from journey import open_file

    path = sorted((shared_data / "atoms_pt_haadf" / "images").glob("021_*.tif"))[0]
    viewer = make_napari_viewer()
    [layer] = open_file(viewer, path)
    widget = open_tool(viewer, "Lattice analysis")
    assert widget.points_layer.value is None
    click(qtbot, widget.run_button, widget)
    status = widget.status.value
    assert status.startswith("Cannot run: The Atom finder found "), status
    assert f"columns in {layer.name!r}" in status and "Isolated atoms" in status, status
    assert [lyr.name for lyr in viewer.layers] == [layer.name]  # nothing half-written
    assert widget.progress.value == 0  # not a full bar beside 'Cannot run'


@pytest.mark.realdata
def test_atom_tools_on_a_coarse_image_say_it_cannot_show_columns(
    make_napari_viewer, qtbot, shared_data
):
    """CuZn HAADF (0.921 nm/px): the Atom finder said 'Found 0 columns, dark columns (detected,
    but uncertain; set 'Columns are' if that is wrong)', a setting that cannot help; the Defect
    segmenter drew a ring over the whole image for one 992 nm² 'extended defect'."""
    from journey import open_file

    viewer = make_napari_viewer()
    [layer] = open_file(viewer, shared_data / "dkl" / "CuZn_HAADF.hspy")
    for tool, needs in (("Defect segmenter", "defect"), ("Lattice analysis", "lattice")):
        widget = open_tool(viewer, tool)  # refused before running: no layer to mislead
        widget.image_layer.value = layer
        widget.run_button.native.click()
        assert not widget.busy
        assert widget.status.value.startswith(
            "Cannot run: the pixels of 'CuZn_HAADF' are 0.921 nm, and atom columns lie "
            f"0.1–0.5 nm apart, so the image cannot show them. The {needs}"
        ), widget.status.value
        assert [lyr.name for lyr in viewer.layers] == [layer.name]
    finder = open_tool(viewer, "Atom finder")
    click(qtbot, finder.run_button, finder)
    assert finder.status.value == (
        "Found no atom columns: its pixels are 0.921 nm, and atom columns lie 0.1–0.5 nm apart, "
        "so the image cannot show them. The Atom finder needs an atomic-resolution image."
    )


@pytest.mark.realdata
def test_a_file_opened_after_a_run_is_the_one_run_works_on(make_napari_viewer, qtbot, shared_data):
    """Pt 021, Run, then File > Open 025: the docks kept 021, so Run re-ran 021 and wrote its
    points under 025 (same size, drawn on top) while the status repeated 'Found 27 atoms'."""
    from journey import open_file

    a, b = sorted((shared_data / "atoms_pt_haadf" / "images").glob("*.tif"))[:2]
    viewer = make_napari_viewer()
    [first] = open_file(viewer, a)
    finder = open_tool(viewer, "Atom finder")
    defects = open_tool(viewer, "Defect segmenter")
    click(qtbot, finder.run_button, finder)
    defects.atoms_layer.value = viewer.layers[f"{first.name} atoms"]
    [second] = open_file(viewer, b)
    for tool, ready in ((finder, "finds the atoms in"), (defects, "segments the defects in")):
        assert tool.image_layer.value.name == second.name
        assert tool.status.value == f"Ready: Run {ready} {second.name!r}.", tool.status.value
    assert defects.atoms_layer.value is None  # 021's points do not belong to 025
    open_file(viewer, shared_data / "formats" / "EELS_SI.dm4")  # for the Shift-VAE: not followed
    assert finder.image_layer.value.name == defects.image_layer.value.name == second.name
    lattice = open_tool(viewer, "Lattice analysis")
    opened = open_file(viewer, shared_data / "formats" / "ROI_Random_Scan_movie.mrc")
    movie = next(layer for layer in opened if layer.ndim == 3)  # then its sparse scan, not taken
    assert finder.image_layer.value.name == movie.name  # it finds columns in every frame
    assert lattice.image_layer.value.name == second.name  # one 2D image only
    finder.image_layer.value = defects.image_layer.value = viewer.layers[second.name]
    click(qtbot, finder.run_button, finder)
    click(qtbot, defects.run_button, defects)
    assert f"{second.name} atoms" in viewer.layers and f"{second.name} defects" in viewer.layers
    assert finder.image_layer.value.name == second.name  # a tool's result is not followed


def test_lattice_columns_follow_the_image(make_napari_viewer, qtbot):
    """Lattice analysis after a second image arrived: it kept the first image and its columns
    (Columns cannot be emptied), so the new image could not be analysed at all; and the columns
    of one image were offered against another."""
    from napari_microml.synth.lattice import simulate_lattice

    viewer = make_napari_viewer()
    sims = {
        n: simulate_lattice((160, 160), scene="crystal", seed=s) for n, s in (("a", 1), ("b", 2))
    }
    a = viewer.add_image(sims["a"].image.astype(np.float32), name="a")
    tool = open_tool(viewer, "Lattice analysis")
    finder = open_tool(viewer, "Atom finder")
    click(qtbot, finder.run_button, finder)
    assert tool.points_layer.value.name == "a atoms"  # the finder's columns, picked when found
    b = viewer.add_image(sims["b"].image.astype(np.float32), name="b")
    tool.image_layer.value = b
    assert tool.points_layer.value is None  # not a's columns: Run finds b's
    click(qtbot, tool.run_button, tool)
    assert "found by the Atom finder" in tool.status.value, tool.status.value
    assert tool.points_layer.value.name == "b atoms"
    tool.image_layer.value = a
    assert tool.points_layer.value.name == "a atoms"
    before = np.asarray(viewer.layers["a atoms"].data).copy()
    tool.points_layer.value = None  # emptied by the user: a's own columns are still used
    click(qtbot, tool.run_button, tool)
    assert tool.status.value.startswith("Done"), tool.status.value
    np.testing.assert_array_equal(viewer.layers["a atoms"].data, before)


@pytest.mark.parametrize("tool", ["Atom finder", "Defect segmenter", "Lattice analysis"])
def test_a_dock_opened_after_two_files_works_on_the_last_one(make_napari_viewer, tool):
    """Acquisition_18, then the DM3 survey opened (napari selects it), then the tool from the
    Plugins menu: its Image was the first layer, so Run analysed Acquisition_18."""
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64), np.float32), name="first")
    viewer.add_image(np.zeros((64, 64), np.float32), name="second")
    assert viewer.layers.selection.active.name == "second"
    assert open_tool(viewer, tool).image_layer.value.name == "second"


def test_cancel_after_the_last_step_says_cancelled(make_napari_viewer, qtbot, monkeypatch):
    """Lattice analysis, Cancel pressed during its last step (the maps): superqt then emits
    neither 'returned' nor 'aborted', and the status kept 'atom counting: done' (DM3 survey,
    Cancel 0.5 s into a run) as if the run were still going or had finished."""
    import threading

    from napari_microml.lattice import maps

    sample = simulate_lattice((128, 128), scene="crystal", seed=1)
    viewer = make_napari_viewer()
    viewer.add_image(sample.image.astype(np.float32), name="xtal")
    viewer.add_points(sample.positions, name="xtal atoms")
    tool = open_tool(viewer, "Lattice analysis")
    reached, go = threading.Event(), threading.Event()
    real = maps.interpolated_maps

    def held(*args, **kwargs):
        reached.set()
        go.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(maps, "interpolated_maps", held)
    names = [layer.name for layer in viewer.layers]
    tool.run_button.native.click()
    qtbot.waitUntil(reached.is_set, timeout=60_000)
    tool.run_button.native.click()  # Cancel, while the worker makes the maps
    go.set()
    qtbot.waitUntil(lambda: tool.worker is None, timeout=60_000)
    qtbot.wait(100)
    assert tool.status.value == "Cancelled: no layers were changed.", tool.status.value
    assert [layer.name for layer in viewer.layers] == names
    assert tool.run_button.text == "Run"


def test_one_colour_bar_after_a_second_image_is_analysed(make_napari_viewer, qtbot):
    """Lattice analysis on Acquisition_18, then on the DM3 survey: both exx colour bars showed,
    stacked, under one title 'colour bar: exx (%), ±20 %' that named only the second."""
    viewer = make_napari_viewer()
    tool = open_tool(viewer, "Lattice analysis")
    for name, seed in (("first", 1), ("second", 2)):
        sample = simulate_lattice((128, 128), scene="crystal", seed=seed)
        image = viewer.add_image(sample.image.astype(np.float32), name=name)
        viewer.add_points(sample.positions, name=f"{name} atoms")
        tool.image_layer.value = image
        click(qtbot, tool.run_button, tool)
        assert tool.status.value.startswith("Done"), tool.status.value
    bars = [
        layer.name
        for layer in viewer.layers
        if getattr(layer, "colorbar", None) is not None and layer.colorbar.visible
    ]
    assert bars == ["second exx"], bars
    # nor the first image's maps (their own limits) beside that bar (session 19, in_pm.hspy and
    # the sample opened over it: in_pm's exx stayed visible where the sample did not cover it)
    maps = [
        layer.name
        for layer in viewer.layers
        if layer.visible and layer.name.split(" ")[-1] in ("exx", "eyy", "exy", "rotation")
    ]
    assert maps == ["second exx"], maps
    assert viewer.layers["first"].visible and viewer.layers["first atoms"].visible


def test_defect_counts_are_said_in_words():
    """The DM3 survey's status read 'Found 9 interstitial, 6 dopant_bright': class ids, no
    plurals."""
    from napari_microml.defects.classes import CLASS_NAMES
    from napari_microml.defects.widget import said

    assert said("dopant_bright", 6) == "6 bright dopants"
    assert said("interstitial", 9) == "9 interstitials"
    assert said("vacancy", 1) == "1 vacancy" and said("vacancy", 2) == "2 vacancies"
    assert all("_" not in said(name, 2) for name in CLASS_NAMES)
