"""User journeys through the Defect segmenter (issue #26): a real file through our reader, the tool
from the Plugins menu, default settings, Run; environments on the lattice's own columns, the same
defects whether or not the atom finder's points are given, nothing below the threshold, defects
visible at full view and every defect in the table."""

from __future__ import annotations

import numpy as np
from journey import assert_no_stall, assert_visible, click, open_file, open_tool
from scipy.spatial import cKDTree
from test_journeys_atoms import lattice_cell

import napari_microml as mm
from napari_microml.defects.table_dock import MIN_ROWS
from napari_microml.runtime.widget import pixel_size_nm

TOOL = "Defect segmenter"


def _api(widget, layer):
    """The dock's default work through the API: the defects, then the environments of the
    columns they were found on (a lattice's only)."""
    image = np.asarray(layer.data, np.float32)
    res = mm.segment_defects(
        image, pixel_size=pixel_size_nm(layer), threshold=widget.threshold.value
    )
    lattice = res.provenance["parameters"].get("estimated_period_px") is not None
    if widget.env_classes.value != "off" and lattice and len(res.atoms) >= 10:
        dark = res.provenance["parameters"]["contrast"] == "dark"
        mm.classify_environments(-image if dark else image, res.atoms)


def _run(viewer, qtbot, widget, layer, journey=None):
    stall = click(
        qtbot, widget.run_button, widget, journey=journey, api=lambda: _api(widget, layer)
    )
    assert_no_stall(stall)
    assert not widget.status.value.startswith(("Failed", "Cannot")), widget.status.value


def _check_table(widget, threshold):
    table = widget.table_dock.table
    assert (table["confidence"] >= threshold).all(), table["confidence"].min()
    view = widget.table_dock.defects
    assert view.rowCount() == len(table)
    return table


def test_acquisition_18_environments_on_the_lattice(
    make_napari_viewer, qtbot, shared_data, tmp_path
):
    """The old default put 862 'columns' on a 512² crop where the lattice has ~470 (extra ones
    between columns), and the defects changed 24 -> 3 when the atom finder's points were given."""
    viewer = make_napari_viewer()
    [layer] = open_file(viewer, shared_data / "formats" / "Acquisition_18.emd")
    finder = open_tool(viewer, "Atom finder")
    click(qtbot, finder.run_button, finder)
    atoms = viewer.layers[f"{layer.name} atoms"]
    widget = open_tool(viewer, TOOL)
    widget.image_layer.value = layer
    assert widget.atoms_layer.value is None  # the default: no atoms layer chosen
    _run(viewer, qtbot, widget, layer, journey="defects-Acquisition_18")

    env = viewer.layers[f"{layer.name} environments"]
    image = np.asarray(layer.data, float)
    expected = image.size / lattice_cell(image)[2]
    assert abs(len(env.data) - expected) < 0.05 * expected, (len(env.data), expected)
    assert abs(len(env.data) - len(atoms.data)) <= 0.02 * len(atoms.data)
    assert "bright columns (detected" in widget.status.value
    first = _check_table(widget, widget.threshold.value)[["class", "row", "col"]].copy()

    # the same image with the atom finder's points given: the same defects
    widget.atoms_layer.value = atoms
    _run(viewer, qtbot, widget, layer)
    again = _check_table(widget, widget.threshold.value)
    assert len(again) == len(first)
    assert sorted(again["class"]) == sorted(first["class"])
    if len(first):
        markers = viewer.layers[f"{layer.name} defect markers"]
        assert_visible(
            viewer, markers, min_fraction=0.0002, screenshot=tmp_path / "defects_acquisition_18.png"
        )


def test_pt_single_atoms_no_defects_in_vacuum(make_napari_viewer, qtbot, shared_data):
    """Pt atoms on carbon: the old default scattered ~1,900 'columns' over vacuum and support and
    showed a column-check dopant of confidence 0.010 at threshold 0.5."""
    viewer = make_napari_viewer()
    path = sorted((shared_data / "atoms_pt_haadf" / "images").glob("021_*.tif"))[0]
    [layer] = open_file(viewer, path)
    widget = open_tool(viewer, TOOL)
    _run(viewer, qtbot, widget, layer, journey="defects-Pt-021")
    found = mm.find_atoms(np.asarray(layer.data, np.float32), model="default").positions
    # the lattice model's columns, not the support's texture; isolated atoms have no
    # environment classes to show, and the status says why
    status = widget.status.value
    assert f"({len(found)} atom columns from the atom finder" in status, status
    assert "no crystal lattice" in status and "no environments were classified" in status
    assert f"{layer.name} environments" not in viewer.layers
    summary = widget.table_dock.summary
    rows = [summary.item(i, 0).text() for i in range(summary.rowCount())]
    assert not [r for r in rows if r.startswith("env ")], rows
    table = _check_table(widget, widget.threshold.value)
    # scattered single atoms have no sublattice: nothing comes from the column-intensity check,
    # and the Labels layer says where each defect came from
    assert "source" in table and not (table["source"] == "column check").any()
    assert "source" in viewer.layers[f"{layer.name} defects"].features
    point = table[table["class"] != "extended"]
    if len(point):  # a point defect needs columns around it
        d = cKDTree(found).query(point[["row", "col"]].to_numpy())[0]
        spacing = np.median(cKDTree(found).query(found, k=2)[0][:, 1])
        assert (d <= 1.5 * spacing).all()


def test_synthetic_sample_defects_visible_and_all_in_the_table(make_napari_viewer, qtbot, tmp_path):
    """File → Open Sample → STEM lattice with defects: every defect is a row the table shows
    without scrolling (the dock showed one row), and the markers show at full view."""
    viewer = make_napari_viewer()
    [layer] = viewer.open_sample("napari-microml", "lattice")
    widget = open_tool(viewer, TOOL)
    _run(viewer, qtbot, widget, layer, journey="defects-sample-lattice")
    table = _check_table(widget, widget.threshold.value)
    assert len(table) >= 3
    viewer.reset_view()
    markers = viewer.layers[f"{layer.name} defect markers"]
    assert len(markers.data) == len(table)
    assert_visible(viewer, markers, min_fraction=0.0005, screenshot=tmp_path / "defects_sample.png")
    view = widget.table_dock.defects
    shown = view.viewport().height() // max(view.rowHeight(0), 1)
    assert shown >= min(len(table), MIN_ROWS), f"the table shows {shown} of {len(table)} rows"


def test_every_control_explains_itself(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = open_tool(viewer, TOOL)
    for control in (
        widget.image_layer,
        widget.atoms_layer,
        widget.model,
        widget.threshold,
        widget.env_classes,
        widget.contrast,
        widget.rescale,
    ):
        assert control.tooltip, f"{control.label} has no tooltip"
    assert "0–1" in widget.threshold.tooltip and "nm" in widget.image_layer.tooltip
    assert widget.contrast.value == "auto"
