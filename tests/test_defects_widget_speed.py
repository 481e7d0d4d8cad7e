"""The Defect segmenter dock's run costs what the API's work costs, and no more.

- Opening any tool dock starts numba's threading layer on a thread of its own, so a labels layer
  drawn on the GUI thread before any segmenter run (a completion mask) does not start it there
  and set the GUI thread's OpenMP count, which torch typed in napari's console then uses.
- The dock's layers are the API's output on the same image (the speed-ups change no result).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from journey import click, open_tool
from test_defects_widget import HELD_OUT
from test_numba_torch_threads import run_with_two_numba_threads

import napari_microml as mm
from napari_microml.synth.defects import simulate_defects

SCRIPT = r"""
import json, sys, threading
import numpy as np, pandas as pd, torch
torch.set_num_threads(1)
import napari, npe2
npe2.PluginManager.instance().discover()
from napari.utils.colormaps import _accelerated_cmap as acc
from napari_microml.defects.widget import class_colormap
viewer = napari.Viewer(show=False)
viewer.window.add_plugin_dock_widget("napari-microml", "Atom finder")
torch.ones(1 << 20).sum()  # torch used on the GUI thread (napari's console): its count is set up
labels = np.zeros((8, 8), np.int64)  # int64: the segmenter's own int32 kernel is left to it
labels[1:3, 1:3] = 1
# what napari runs on the GUI thread to draw a labels layer with a class colour map
class_colormap(pd.DataFrame({"label": [1], "class": ["vacancy"]})).map(labels)
gui = torch.get_num_threads()
before = (len(acc._labels_raw_to_texture_direct_inner_loop.signatures),
          "sklearn.mixture" in sys.modules)
viewer.window.add_plugin_dock_widget("napari-microml", "Defect segmenter")
for thread in threading.enumerate():
    if thread.name == "defects-prepare":
        thread.join()
after = (len(acc._labels_raw_to_texture_direct_inner_loop.signatures),
         "sklearn.mixture" in sys.modules)
import numba
print("RESULT " + json.dumps({"gui": gui, "numba": numba.get_num_threads(),
                              "before": before, "after": after}))
viewer.close()
"""


def test_opening_a_dock_keeps_numbas_start_off_the_gui_thread_and_prepares_the_segmenter():
    result = run_with_two_numba_threads(SCRIPT)
    assert result["numba"] == 2
    assert result["gui"] == 1, result  # numba started on the GUI thread at the draw: 2
    # the Defect segmenter's dock prepares its first Run while the user picks the settings
    assert result["before"] == [1, False], result
    assert result["after"] == [2, True], result


def test_the_docks_layers_are_the_apis_output(make_napari_viewer, qtbot):
    """Opened the Plugins way, defaults, Run on a small held-out lattice: the labels, markers,
    table and environments are what segment_defects and classify_environments give."""
    sample = simulate_defects(
        (160, 160), seed=HELD_OUT, dose=500, scene="crystal", lattice="square", spacing=11
    )
    viewer = make_napari_viewer()
    layer = viewer.add_image(sample.image, name="haadf", scale=(0.02, 0.02), units=("nm", "nm"))
    widget = open_tool(viewer, "Defect segmenter")
    widget.image_layer.value = layer
    click(qtbot, widget.run_button, widget)
    assert not widget.status.value.startswith(("Failed", "Cannot")), widget.status.value

    image = np.asarray(layer.data, np.float32)
    res = mm.segment_defects(image, pixel_size=0.02, threshold=widget.threshold.value)
    assert len(res.table) and len(res.atoms) >= 10  # something to compare
    np.testing.assert_array_equal(viewer.layers["haadf defects"].data, res.labels)
    table = widget.table_dock.table
    pd.testing.assert_frame_equal(table.reset_index(drop=True), res.table.reset_index(drop=True))
    markers = viewer.layers["haadf defect markers"].data
    np.testing.assert_allclose(markers, res.table[["row", "col"]].to_numpy(float))

    grey = -image if res.provenance["parameters"]["contrast"] == "dark" else image
    env = mm.classify_environments(grey, res.atoms)
    shown = viewer.layers["haadf environments"]
    np.testing.assert_allclose(shown.data, np.asarray(res.atoms, float))
    np.testing.assert_array_equal(shown.features["environment"], env.classes)
    np.testing.assert_allclose(shown.features["unusualness"], env.unusualness, rtol=1e-6)


def test_a_run_waits_for_the_preparation_and_cancel_still_works(
    make_napari_viewer, qtbot, monkeypatch
):
    import threading
    import time

    import napari_microml.defects.widget as dw

    release = threading.Event()
    monkeypatch.setattr(dw, "_prepare_first_run", lambda: release.wait(30))
    viewer = make_napari_viewer()
    image = simulate_defects((96, 96), seed=HELD_OUT, dose=500, scene="crystal", spacing=11)
    layer = viewer.add_image(image.image, name="haadf")
    widget = open_tool(viewer, "Defect segmenter")
    widget.image_layer.value = layer
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: "preparing the first run" in widget.status.value, timeout=10_000)
    start = time.perf_counter()
    widget.run_button.native.click()  # Cancel, while the preparation still runs
    qtbot.waitUntil(lambda: widget.worker is None, timeout=10_000)
    assert time.perf_counter() - start < 5  # not held until the preparation ends
    assert widget.status.value.startswith("Cancelled"), widget.status.value
    assert [lyr.name for lyr in viewer.layers] == ["haadf"]
    release.set()
