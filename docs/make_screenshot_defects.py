"""Regenerate docs/screenshot_defects_real.png: the Defect segmenter widget on a real HAADF image.

Run under a display (or `xvfb-run -a -s "-screen 0 1600x1200x24"`):
    python docs/make_screenshot_defects.py
Reads ../shared/data/formats/Acquisition_18.emd (not shipped), crops the central 512², drives the
widget as a user would (Run, wait), saves the window screenshot and prints what was found.
"""

from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_microml.defects.widget import DefectSegmenterWidget
from napari_microml.io.reader import get_reader

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT.parent / "shared" / "data" / "formats" / "Acquisition_18.emd"
OUT = ROOT / "docs" / "screenshot_defects_real.png"


def main():
    data, kwargs, _ = get_reader(str(SRC))(str(SRC))[0]
    img = np.asarray(data, np.float32)
    r0, c0 = (img.shape[0] - 512) // 2, (img.shape[1] - 512) // 2
    viewer = napari.Viewer(show=True)
    layer = viewer.add_image(
        img[r0 : r0 + 512, c0 : c0 + 512],
        name="Acquisition_18 (512² crop)",
        scale=kwargs.get("scale"),
        units=kwargs.get("units"),
    )
    widget = DefectSegmenterWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Defect segmenter")
    widget.image_layer.value = layer
    widget.run_button.native.click()
    app = QApplication.instance()
    while widget.busy:
        app.processEvents()
    viewer.window._qt_window.resize(1500, 950)
    for _ in range(20):
        app.processEvents()
    viewer.screenshot(str(OUT), canvas_only=False, flash=False)
    print(widget.status.value)
    print(widget.table_dock.table["class"].value_counts().to_dict())
    viewer.close()


if __name__ == "__main__":
    main()
