"""Regenerate docs/screenshot_lattice.png: Lattice analysis on the atom finder's output for a real
SrTiO3 HAADF image.

Run under a display (or `xvfb-run -a -s "-screen 0 1600x1200x24"`):
    python docs/make_screenshot_lattice.py
Reads ../shared/data/formats/Acquisition_18.emd (not shipped), opens both tools from the Plugins
menu, runs the atom finder, then the lattice analysis with a profile line, zooms on a corner so
the displacement arrows show, saves the window and prints the lattice summary.
"""

import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT.parent / "shared" / "data" / "formats" / "Acquisition_18.emd"
OUT = ROOT / "docs" / "screenshot_lattice.png"


def _wait(widget):
    while widget.worker is not None:
        QApplication.processEvents()
        time.sleep(0.01)


def main():
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    image = viewer.open(str(SRC), plugin="napari-microml")[0]
    _, finder = viewer.window.add_plugin_dock_widget("napari-microml", "Atom finder")
    finder.image_layer.value = image
    finder.run_button.native.click()
    _wait(finder)
    points = viewer.layers[f"{image.name} atoms"]
    dock, tool = viewer.window.add_plugin_dock_widget("napari-microml", "Lattice analysis")
    tool.image_layer.value = image
    tool.points_layer.value = points
    line = np.array([[2.0, 1.0], [2.0, 11.5]]) / image.scale[-1]  # 2 nm from the top
    tool.shapes_layer.value = viewer.add_shapes(
        line,
        shape_type="line",
        name="profile",
        edge_color="cyan",
        edge_width=4,
        scale=image.scale,
        units=image.units,
    )
    tool.magnification.value = 15
    tool.run_button.native.click()
    _wait(tool)
    for name, widget in list(viewer.window._dock_widgets.items()):  # room for the canvas
        if name.startswith("Atom finder"):
            viewer.window.remove_dock_widget(widget)
    viewer.layers.selection.active = viewer.layers[f"{image.name} exx"]
    viewer.camera.center = (3.2, 3.2)
    viewer.camera.zoom *= 2.2
    points.size = 6
    for _ in range(50):
        QApplication.processEvents()
        time.sleep(0.02)
    from PIL import Image

    shot = Image.fromarray(viewer.screenshot(canvas_only=False, flash=False)).convert("RGB")
    shot.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(OUT, optimize=True)  # ~0.7 MB
    print(tool.summary.value)


if __name__ == "__main__":
    main()
