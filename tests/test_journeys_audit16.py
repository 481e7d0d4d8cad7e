"""Session-16 audit journeys: what a microscopist met on the real files, each test failing on the
code before its fix. Real files through our reader, tools from the Plugins menu, defaults, Run."""

from __future__ import annotations

import numpy as np
from journey import assert_no_stall, click, open_file, open_tool
from scipy.spatial import cKDTree


def test_defects_at_the_image_edge_are_not_counted(make_napari_viewer, qtbot, shared_data):
    """Acquisition_18 (SrTiO3): an 'interstitial' 4 px from the bottom edge (row 1020 of 1024)
    was reported beside the one vacancy: the border cuts its neighbourhood, so the network cannot
    tell it from the cut (the benchmark ignores the same half-spacing band)."""
    viewer = make_napari_viewer()
    [layer] = open_file(viewer, shared_data / "formats" / "Acquisition_18.emd")
    widget = open_tool(viewer, "Defect segmenter")
    assert_no_stall(click(qtbot, widget.run_button, widget))
    table = widget.table_dock.table
    atoms = viewer.layers[f"{layer.name} environments"].data
    spacing = float(np.median(cKDTree(atoms).query(atoms, k=2)[0][:, 1]))
    band = 0.5 * spacing
    h, w = layer.data.shape
    point = table[table["class"] != "extended"]
    rows, cols = point["row"].to_numpy(), point["col"].to_numpy()
    inside = (rows >= band) & (rows <= h - 1 - band) & (cols >= band) & (cols <= w - 1 - band)
    assert inside.all(), point[~inside][["class", "row", "col"]]
    assert "at the image edge not counted" in widget.status.value, widget.status.value
    # the vacancy well inside the image is still found
    assert (table["class"] == "vacancy").sum() >= 1, table
