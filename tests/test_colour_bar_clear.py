"""The lattice strain map's colour bar (top right of the canvas) does not cover the image: in a
canvas taller than wide the image was fitted to its width and the bar hid its top-right corner."""

from __future__ import annotations

import numpy as np
from journey import click, open_tool

from napari_microml.runtime.widget import canvas_view, viewer_camera


def _image_on_screen(viewer, layer) -> tuple[float, float, float, float]:
    """(left, right, top, width) of ``layer`` in canvas pixels, and the canvas width."""
    view = canvas_view(viewer)
    assert view is not None
    zoom = float(viewer_camera(viewer).zoom)
    extent = np.asarray(layer.extent.world, float)[:, -2:]
    left = (extent[0, 1] - view[2]) * zoom
    right = (extent[1, 1] - view[2]) * zoom
    top = (extent[0, 0] - view[0]) * zoom
    return left, right, top, (view[3] - view[2]) * zoom


def test_lattice_colour_bar_leaves_the_image_corner_free(make_napari_viewer, qtbot):
    from napari_microml.synth.strained import strained_lattice

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 1000)
    s = strained_lattice("domains", structure="perovskite", dose=3000, seed=11)
    image = viewer.add_image(s.image, name="pero")
    points = viewer.add_points(s.positions, name="pero atoms")
    tool = open_tool(viewer, "Lattice analysis")
    qtbot.wait(300)
    tool.image_layer.value, tool.points_layer.value = image, points
    viewer.reset_view()
    left, right, top, width = _image_on_screen(viewer, image)
    assert right > width - 80 and top < 240, "the canvas is not tall enough to test this"
    click(qtbot, tool.run_button, tool)
    qtbot.wait(300)
    exx = viewer.layers["pero exx"]
    assert exx.visible and exx.colorbar.visible
    # the bar at the canvas's right edge, its name above it (side by side they took ~300 px)
    assert viewer.canvas.overlay_tiling.top_right == "vertical"
    bar_w, bar_h = exx.colorbar.size[:2]
    left, right, top, width = _image_on_screen(viewer, image)
    # the bar and its tick labels sit at the top right; the image is left of them or below
    assert right <= width - (bar_w + 40) or top >= bar_h + 10, (left, right, top, width)
    assert left >= 0 and right <= width  # still whole in view
