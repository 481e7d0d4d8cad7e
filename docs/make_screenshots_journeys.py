"""Regenerate docs/screenshot_atoms.png and docs/screenshot_defects.png the way a user meets the
tools: Acquisition_18.emd opened through the plugin's reader, the tool from
Plugins → napari-microml, default settings, Run (the user journeys of
tests/test_journeys_atoms.py and _defects.py).

Run under a display (or `xvfb-run -a -s "-screen 0 1600x1200x24"`):
    python docs/make_screenshots_journeys.py
Reads ../shared/data/formats/Acquisition_18.emd (not shipped) and prints each tool's status line.
"""

from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT.parent / "shared" / "data" / "formats" / "Acquisition_18.emd"


def _wait(widget):
    app = QApplication.instance()
    widget.run_button.native.click()
    while widget.worker is not None:
        app.processEvents()
    for _ in range(30):
        app.processEvents()


def _shoot(viewer, name: str):
    viewer.window._qt_window.resize(1600, 1000)
    app = QApplication.instance()
    for _ in range(30):
        app.processEvents()
    viewer.reset_view()
    for _ in range(10):
        app.processEvents()
    path = ROOT / "docs" / name
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    from PIL import Image

    # no alpha; full colour keeps the class colours
    Image.open(path).convert("RGB").save(path, optimize=True)


def main():
    for tool, name in (
        ("Atom finder", "screenshot_atoms.png"),
        ("Defect segmenter", "screenshot_defects.png"),
    ):
        viewer = napari.Viewer(show=True)
        viewer.window._qt_window.resize(1600, 1000)
        viewer.open(str(SRC), plugin="napari-microml")
        _, widget = viewer.window.add_plugin_dock_widget("napari-microml", tool)
        _wait(widget)
        print(f"{tool}:", widget.status.value)
        _shoot(viewer, name)
        viewer.close()


if __name__ == "__main__":
    main()
