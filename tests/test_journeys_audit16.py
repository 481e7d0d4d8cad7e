"""Session-16 audit journeys: what a microscopist met on the real files, each test failing on the
code before its fix. Real files through our reader, tools from the Plugins menu, defaults, Run."""

from __future__ import annotations

import numpy as np
from journey import click, open_file, open_tool
from scipy.spatial import cKDTree


def _status_in_view(widget) -> tuple[int, int, int]:
    """(top, bottom, viewport height) of the status line inside its dock's scroll area."""
    viewport = widget.native.viewport()
    label = widget.status.native
    top = label.mapTo(viewport, label.rect().topLeft()).y()
    return top, top + label.height(), viewport.height()


def test_defects_at_the_image_edge_are_not_counted(make_napari_viewer, qtbot, shared_data):
    """Acquisition_18 (SrTiO3): an 'interstitial' 4 px from the bottom edge (row 1020 of 1024)
    was reported beside the one vacancy: the border cuts its neighbourhood, so the network cannot
    tell it from the cut (the benchmark ignores the same half-spacing band)."""
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 1000)
    [layer] = open_file(viewer, shared_data / "formats" / "Acquisition_18.emd")
    widget = open_tool(viewer, "Defect segmenter")
    qtbot.wait(300)  # a user's pace: each dock is laid out before the next action
    finder = open_tool(viewer, "Atom finder")  # docked below: the column is shared
    qtbot.wait(300)
    click(qtbot, finder.run_button, finder)
    qtbot.wait(300)
    click(qtbot, widget.run_button, widget)
    qtbot.wait(300)
    # the whole status is on screen: the dock scrolled to it before the defect table docked
    # below and shrank the column, and the status ended cut mid-sentence (rows 160-322 of 198)
    top, bottom, height = _status_in_view(widget)
    assert 0 <= top and bottom <= height, (top, bottom, height, widget.status.value)
    table = widget.table_dock.table
    atoms = viewer.layers[f"{layer.name} environments"].data
    spacing = float(np.median(cKDTree(atoms).query(atoms, k=2)[0][:, 1]))
    band = 0.5 * spacing
    h, w = layer.data.shape
    point = table[table["class"] != "extended"]
    rows, cols = point["row"].to_numpy(), point["col"].to_numpy()
    inside = (rows >= band) & (rows <= h - 1 - band) & (cols >= band) & (cols <= w - 1 - band)
    assert inside.all(), point[~inside][["class", "row", "col"]]
    # what the band dropped is said (the drop itself: test_defects_segment)
    labels = next(ly for ly in viewer.layers if ly.name.endswith("defects"))
    dropped = labels.metadata["napari_microml"]["parameters"]["dropped_at_edge"]
    said = "at the image edge not counted" in widget.status.value
    assert said == (dropped > 0), (dropped, widget.status.value)
    # the vacancy well inside the image is still found
    assert (table["class"] == "vacancy").sum() >= 1, table


def test_lattice_result_is_in_the_status_line(make_napari_viewer, qtbot, shared_data):
    """The lattice parameters were only in a summary row below the status ('Done.'), out of
    sight when the dock shares its column with the Atom finder (stem_abf_data, Acquisition_18)."""
    viewer = make_napari_viewer()
    [image] = open_file(viewer, shared_data / "formats" / "stem_abf_data.hspy")
    finder = open_tool(viewer, "Atom finder")
    click(qtbot, finder.run_button, finder)
    tool = open_tool(viewer, "Lattice analysis")
    tool.image_layer.value = image
    tool.points_layer.value = viewer.layers[f"{image.name} atoms"]
    click(qtbot, tool.run_button, tool)
    status = tool.status.value
    # uncalibrated file (the 0.00933 has no unit): the cell in px, three sublattices (SrTiO3 [110])
    assert status.startswith("Done: ") and "3 sublattice" in status, status
    assert "a = " in status and " px" in status and "γ = " in status, status
    assert status == f"Done: {tool.summary.value}."


def test_beps_bias_axis_is_not_labelled_in_volts_per_step(make_napari_viewer, shared_data):
    """BEPS_PTO_50x50.h5: the bias waveform 0 → 8.5 → −8.5 → 0 V is not uniform, yet the layer's
    first axis said scale 1 in V (step 5 read as 5 V; it is 2.66 V). The layer counts steps; the
    volts stay in the spectral axis record the tools use."""
    viewer = make_napari_viewer()
    [cube] = open_file(viewer, shared_data / "dkl" / "BEPS_PTO_50x50.h5")
    spec = cube.metadata["napari_microml"]["spectral_axis"]
    assert spec["units"] == "V" and np.asarray(spec["values"])[5] == 2.65625
    assert str(cube.units[0]) == "pixel", cube.units
    assert cube.scale[0] == 1.0
    assert [str(u) for u in cube.units[1:]] == ["nanometer", "nanometer"]  # the file's m


def test_completer_says_how_it_filled_a_real_partial_scan(
    make_napari_viewer, qtbot, shared_data, tmp_path
):
    """The paper's spiral trace (mask-1) over truth-1, saved as a microscope would (zeros where
    nothing was measured) with its mask: the status said 'filled the 82.5 % unmeasured pixels'
    without saying whether the crystal-lattice mean or a local mean filled them."""
    import tifffile

    from napari_microml.completion.widget import COMPLETE

    truth = tifffile.imread(shared_data / "completion" / "truth-1.tif")
    mask = tifffile.imread(shared_data / "completion" / "mask-1.tif") > 0
    tifffile.imwrite(tmp_path / "partial.tif", np.where(mask, truth, 0).astype(np.float32))
    tifffile.imwrite(tmp_path / "trace.tif", mask.astype(np.uint8))
    viewer = make_napari_viewer()
    [partial] = open_file(viewer, tmp_path / "partial.tif")
    [trace] = open_file(viewer, tmp_path / "trace.tif")
    widget = open_tool(viewer, "Partial-scan completer")
    widget.mode.value = COMPLETE
    widget.sparse_layer.value = partial
    widget.mask_layer.value = trace
    assert widget.model.value == "kriging"  # the default method
    click(qtbot, widget.run_button, widget)
    status = widget.status.value
    assert status.startswith("Done: filled the 82.5 % unmeasured pixels by kriging"), status
    assert "mean" in status, status
    completed = np.asarray(viewer.layers["partial completed"].data)
    assert np.array_equal(completed[mask], truth[mask])  # measured pixels kept exactly


def test_lattice_cli_refuses_a_spectrum_image_in_one_sentence(shared_data, tmp_path, capsys):
    """`microml lattice EELS_SI.dm4` said "EELS_SI.dm4: EELS_SI.dm4 is not one 2D image …; the
    lattice analysis takes one frame at a time.; nothing was written." (name twice, '.;')."""
    from napari_microml.cli import main

    code = main(["lattice", str(shared_data / "formats" / "EELS_SI.dm4"), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and not any(tmp_path.iterdir())
    assert err.startswith("microml: error: EELS_SI.dm4 is not one 2D image"), err
    assert err.count("EELS_SI.dm4") == 1 and ".;" not in err, err


def test_lattice_csv_says_the_unit_of_every_column(shared_data, tmp_path):
    """`microml lattice` wrote exx/eyy/exy as fractions and rotation in radians (the dock shows
    % and °) with no unit anywhere in its files: 'rotation 0.0051' could be read as degrees."""
    import json

    from napari_microml.cli import main

    path = shared_data / "formats" / "stem_abf_data.hspy"
    assert main(["lattice", str(path), "--out", str(tmp_path), "--quiet"]) == 0
    header = (tmp_path / "stem_abf_data_lattice.csv").read_text().splitlines()[0].split(",")
    for doc in ("stem_abf_data_lattice.csv.json", "stem_abf_data_lattice.json"):
        units = json.loads((tmp_path / doc).read_text())["column_units"]
        assert units["rotation"] == "rad" and units["exx"].startswith("fraction"), units
        assert units["d_row"] == "px" and units["position_std"] == "px", units
        named = set(header) - {"row_px", "col_px", "y_pixel", "x_pixel"}
        assert named <= set(units), named - set(units)


def test_shift_map_colour_bar_is_named_with_its_unit(make_napari_viewer, qtbot, shared_data):
    """CuZn EELS SI: the shift map's colour bar showed −20 … 20 with no name or unit on the
    canvas (the eV range was only in the status line); the lattice maps name theirs."""
    viewer = make_napari_viewer()
    [cube] = open_file(viewer, shared_data / "dkl" / "CuZn_EELS_mapping_tutorial.hspy")
    widget = open_tool(viewer, "Spectral shift-VAE")
    widget.epochs.value = 3  # the colour bar, not the fit, is under test
    click(qtbot, widget.run_button, widget)
    shift = viewer.layers[f"{cube.name} shift"]
    assert shift.colorbar.visible
    text = viewer.canvas.overlays["text"]
    lim = shift.contrast_limits[1]
    assert text.visible and text.text == f"colour bar: shift (eV), ±{lim:.3g} eV", text.text


def test_line_scan_is_refitted_into_view_with_its_shift_track(
    make_napari_viewer, qtbot, shared_data
):
    """LSMO core loss: the line scan was opened before the Shift-VAE dock narrowed the canvas; the
    new shift track was in view, so the view was not refit and 37 % of the spectra stayed cut."""
    from napari_microml.runtime.widget import fraction_in_view

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 1000)
    [scan] = open_file(viewer, shared_data / "spectra" / "LSMO_linescan.hspy")
    qtbot.wait(300)
    widget = open_tool(viewer, "Spectral shift-VAE")
    widget.epochs.value = 3  # the view, not the fit, is under test
    qtbot.wait(300)
    click(qtbot, widget.run_button, widget)
    qtbot.wait(300)
    assert f"{scan.name} shift track" in viewer.layers
    assert fraction_in_view(viewer, scan) >= 0.98, fraction_in_view(viewer, scan)


def test_defect_segmenter_can_be_cancelled_before_its_contrast_decision(monkeypatch):
    """Cancel clicked 1 s into a Defect segmenter run on Acquisition_18 took effect only at the
    core's first yield, 2.3-4.8 s after Run (under load): the image scaling, the lattice period
    and the bright/dark decision ran before any cancel point."""
    import napari_microml.defects.segment as seg
    from napari_microml.synth.lattice import simulate_lattice

    calls = []
    real = seg.decide
    monkeypatch.setattr(seg, "decide", lambda *a, **k: calls.append(1) or real(*a, **k))
    image = simulate_lattice((128, 128), seed=0).image
    steps = seg.segment_defects_iter(image)
    next(steps)
    assert not calls, "the contrast decision ran before the first cancel point"
    next(steps)
    assert not calls
    steps.close()  # what a Cancel does between steps


def test_dkl_export_log_never_replaces_a_file_unasked(
    make_napari_viewer, qtbot, shared_data, tmp_path
):
    """Active learning's Export log wrote over any file of the chosen name (the file picker
    does not ask), e.g. the log of yesterday's campaign: it is kept unless the user ticks
    'Overwrite an existing file'."""
    viewer = make_napari_viewer()
    open_file(viewer, shared_data / "dkl" / "CuZn_HAADF.hspy")
    open_file(viewer, shared_data / "dkl" / "CuZn_EELS_mapping_tutorial.hspy")
    widget = open_tool(viewer, "Active learning (DKL)")
    click(qtbot, widget.init_button, widget)
    yesterday = tmp_path / "campaign.csv"
    yesterday.write_text("row,col,value\n1,2,3\n")
    widget.log_path.value = yesterday
    widget.export_button.native.click()
    assert yesterday.read_text() == "row,col,value\n1,2,3\n"
    assert "exists" in widget.status.value and "Nothing was written" in widget.status.value
    widget.overwrite.value = True
    widget.export_button.native.click()
    rows = yesterday.read_text().splitlines()
    assert rows[0].startswith("step,row,col") and len(rows) == 1 + widget.learner.n_observed
    assert [p.name for p in tmp_path.iterdir()] == ["campaign.csv"]  # no staging file left


def test_lattice_atom_count_levels_are_named_per_sublattice(make_napari_viewer, qtbot):
    """Acquisition_18's status read 'atom counts: 1/1 levels (per sublattice)', which reads as a
    fraction; each sublattice's number of thickness levels is now named."""
    from napari_microml.synth.strained import strained_lattice

    viewer = make_napari_viewer()
    s = strained_lattice("domains", structure="perovskite", dose=3000, seed=11)
    image = viewer.add_image(s.image, name="pero")
    points = viewer.add_points(s.positions, name="pero atoms")
    tool = open_tool(viewer, "Lattice analysis")
    tool.image_layer.value, tool.points_layer.value = image, points
    click(qtbot, tool.run_button, tool)
    status = tool.status.value
    assert "atom-count levels (column thicknesses): " in status, status
    assert " in sublattice 0, " in status and " in sublattice 1" in status, status
    assert "/" not in status.split("atom-count levels")[1].split(";")[0], status
    title = tool.figure.axes[0].get_title()  # the plot said "atom counts: 0: 1, 1: 1 levels …"
    assert title.startswith("atom-count levels: ") and " in sublattice 1" in title, title
