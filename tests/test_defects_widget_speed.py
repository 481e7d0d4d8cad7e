"""The Defect segmenter dock's run costs what the API's work costs, and no more.

- Opening any tool dock starts numba's threading layer on a thread of its own, so a labels layer
  drawn on the GUI thread before any segmenter run (a completion mask) does not start it there
  and set the GUI thread's OpenMP count, which torch typed in napari's console then uses.
- The dock's layers are the API's output on the same image (the speed-ups change no result).
"""

from __future__ import annotations

from test_numba_torch_threads import run_with_two_numba_threads

SCRIPT = r"""
import json
import numpy as np, torch
torch.set_num_threads(1)
import napari, npe2
npe2.PluginManager.instance().discover()
viewer = napari.Viewer(show=False)
viewer.window.add_plugin_dock_widget("napari-microml", "Atom finder")
torch.ones(1 << 20).sum()  # torch used on the GUI thread (napari's console): its count is set up
labels = np.zeros((8, 8), np.int32)
labels[1:3, 1:3] = 1
# what napari runs on the GUI thread to draw a labels layer with a class colour map
from napari_microml.defects.widget import class_colormap
import pandas as pd
class_colormap(pd.DataFrame({"label": [1], "class": ["vacancy"]})).map(labels)
import numba
print("RESULT " + json.dumps({"gui": torch.get_num_threads(), "numba": numba.get_num_threads()}))
viewer.close()
"""


def test_opening_a_dock_keeps_numbas_start_off_the_gui_thread():
    result = run_with_two_numba_threads(SCRIPT)
    assert result["numba"] == 2
    assert result["gui"] == 1, result  # numba started on the GUI thread at the draw: 2
