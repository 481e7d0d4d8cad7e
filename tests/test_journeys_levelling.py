"""A scanning-probe topograph in the docks: the status says it was levelled, the layer is not."""

from __future__ import annotations

import numpy as np
import pytest
from journey import click, open_tool

from napari_microml.synth.lattice import simulate_lattice
from napari_microml.synth.scanprobe import scanning_probe

pytestmark = pytest.mark.usefixtures("one_torch_thread", "user_models_folder")


@pytest.mark.parametrize(
    "tool, layer_kwargs",
    [("Atom finder", {}), ("Defect segmenter", {"scale": (0.03, 0.03), "units": "nm"})],
)
def test_a_levelled_scan_is_said_and_the_layer_kept(make_napari_viewer, qtbot, tool, layer_kwargs):
    s = simulate_lattice((192, 192), scene="crystal", lattice="square", spacing=12.0, dose=500)
    stm = scanning_probe(s.image, plane=5, lines=2, shear=0.03)
    viewer = make_napari_viewer()
    layer = viewer.add_image(stm.copy(), name="stm", **layer_kwargs)
    widget = open_tool(viewer, tool)
    click(qtbot, widget.run_button, widget)
    status = str(widget.status.value)
    assert "Levelled as a scanning-probe scan first (plane + line offsets removed)" in status
    assert "your layer is unchanged" in status
    np.testing.assert_array_equal(layer.data, stm)


def test_an_electron_image_is_not_said_to_be_levelled(make_napari_viewer, qtbot):
    s = simulate_lattice((192, 192), scene="crystal", lattice="square", spacing=12.0, dose=500)
    viewer = make_napari_viewer()
    viewer.add_image(s.image, name="haadf")
    widget = open_tool(viewer, "Atom finder")
    click(qtbot, widget.run_button, widget)
    assert "Found" in str(widget.status.value)
    assert "Levelled" not in str(widget.status.value)
