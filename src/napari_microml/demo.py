"""``python -m napari_microml.demo``: napari with sample data and the Atom finder docked.

``--headless`` (used by ``make demo`` when there is no display; run it under xvfb-run) runs the
atom finder through its widget, writes the atoms CSV, the provenance JSON and a screenshot of
the whole window to ``--out``, and exits.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _wait(widget, timeout=300):
    from qtpy.QtWidgets import QApplication

    t0 = time.time()
    while widget.busy and time.time() - t0 < timeout:
        QApplication.processEvents()
        time.sleep(0.02)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--headless", action="store_true")
    p.add_argument("--out", default="demo_output")
    a = p.parse_args(argv)

    import napari

    viewer = napari.Viewer(title="napari-microml demo")
    # the way a user gets there: File → Open Sample, then Plugins → napari-microml → Atom finder
    (image,) = viewer.open_sample("napari-microml", "lattice")
    _, widget = viewer.window.add_plugin_dock_widget("napari-microml", "Atom finder")
    widget.image_layer.value = image
    widget.show_probability.value = False
    widget.start()
    if not a.headless:
        napari.run()
        return
    _wait(widget)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    points = viewer.layers[widget.points_name(image)]
    from napari_microml.io.writer import write_points_csv

    write_points_csv(  # as File → Save Layers does: px and nm columns, the .json sidecar
        str(out / "atoms.csv"),
        np.asarray(points.data),
        {
            "name": points.name,
            "scale": points.scale,
            "translate": points.translate,
            "units": getattr(points, "units", None),
            "features": points.features,
            "metadata": points.metadata,
        },
    )
    (out / "provenance.json").write_text(json.dumps(points.metadata["napari_microml"], indent=2))
    from napari_microml.runtime.widget import viewer_camera

    widget.native.window().resize(1400, 900)  # a laptop-sized window, not Xvfb's default
    camera = viewer_camera(viewer)
    camera.zoom = camera.zoom * 2.2
    napari_shot = viewer.screenshot(canvas_only=False, flash=False)
    from skimage.io import imsave

    imsave(out / "screenshot.png", napari_shot, check_contrast=False)
    print(
        f"{len(points.data)} columns found on {widget.ran_on.value}; "
        f"wrote {out}/atoms.csv (+ .json), provenance.json, screenshot.png"
    )
    viewer.close()


if __name__ == "__main__":
    main()
