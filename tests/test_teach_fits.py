"""The Teach dock fits its column with long layer names: no sideways scrolling, the status
sentence wholly visible (audit 7: "021_HAADF_15nm_Sample_PtNC_21Oct20 ← … atoms" widened it)."""

from __future__ import annotations

import numpy as np
from journey import open_tool

from napari_microml.atoms.teach_widget import short

NAMES = ("021_HAADF_15nm_Sample_PtNC_21Oct20", "025_HAADF_15nm_Sample_PtNC_21Oct20")
SAVED = (
    "Saved 'tuned-20261205-192232': F1 on your held-out points 0.700 (default) → 0.785 "
    "(threshold 0.55), best at step 20. It is now selected in the Atom finder: press Run there "
    "on your other images."
)


def test_long_layer_names_do_not_widen_the_teach_dock(make_napari_viewer, qtbot):
    from qtpy.QtCore import QPoint

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1500, 1000)
    teach = open_tool(viewer, "Teach the atom finder")
    open_tool(viewer, "Atom finder")  # shares the column, as in the audit
    rng = np.random.default_rng(0)
    for name in NAMES:
        viewer.add_image(rng.random((64, 64), np.float32), name=name)
        viewer.add_points(rng.random((10, 2)) * 60, name=f"{name} atoms")
    qtbot.wait(50)
    for name in NAMES:  # corrections: the pairs are selected, the edits listed
        points = viewer.layers[f"{name} atoms"]
        points.data = np.asarray(points.data)[1:]
    qtbot.waitUntil(lambda: len(teach.pairs.value) == 2, timeout=5_000)
    teach._say(SAVED)
    qtbot.wait(200)

    area = teach.native
    viewport = area.viewport()
    assert area.widget().minimumSizeHint().width() <= viewport.width()
    assert area.horizontalScrollBar().maximum() == 0, "the dock scrolls sideways"
    label = teach.status.native
    left = label.mapTo(viewport, QPoint(0, 0)).x()
    assert 0 <= left and left + label.width() <= viewport.width()
    assert label.heightForWidth(label.width()) <= label.height()  # no line cut off below
    assert teach.status.value == SAVED
    # the names are cut in the middle in the dock, whole in the tooltip
    assert teach.edits.value.splitlines()[0].startswith(short(f"{NAMES[0]} atoms") + ": ")
    assert f"{NAMES[0]} atoms: +0 added, −1 removed" in teach.edits.tooltip


def test_short_keeps_both_ends_of_a_long_name():
    assert short("img atoms") == "img atoms"
    cut = short("021_HAADF_15nm_Sample_PtNC_21Oct20 atoms")
    assert len(cut) == 26 and cut.startswith("021_HAADF_15") and cut.endswith("1Oct20 atoms")
