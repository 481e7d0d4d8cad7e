"""User journey: Lattice analysis from the Plugins menu on the atom finder's output.

Acquisition_18.emd is SrTiO3 seen along [001] (its metadata names the sample "STO laser cut"):
a square lattice of Sr columns with a Ti–O column at each cell centre. The file's calibration
(0.01225 nm/px) gives a = 4.09–4.11 Å, about 5 % above SrTiO3's 3.905 Å, so the reference here
is the geometry (two equal sublattices, a = b, γ = 90°) and the file's own scale.
"""

import numpy as np
import pytest
from journey import assert_no_stall, assert_visible, click, open_file, open_tool

import napari_microml as mm

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_lattice_on_atom_finder_output_acquisition_18(
    make_napari_viewer, qtbot, shared_data, tmp_path
):
    viewer = make_napari_viewer()
    image = open_file(viewer, shared_data / "formats" / "Acquisition_18.emd")[0]
    finder = open_tool(viewer, "Atom finder")
    finder.image_layer.value = image
    assert_no_stall(click(qtbot, finder.run_button, finder), "the atom finder")
    points = viewer.layers[f"{image.name} atoms"]

    tool = open_tool(viewer, "Lattice analysis")
    tool.image_layer.value = image
    tool.points_layer.value = points
    pos = np.asarray(points.data)

    def api():
        lat = mm.analyze_lattice(
            pos,
            image=np.asarray(image.data),
            pixel_size=0.01225,
            position_std=points.features["position_std"].to_numpy(),
        )
        # the dock fits one mixture per sublattice (columns of different elements)
        mm.count_atoms(np.asarray(image.data), pos, sublattice=lat.sublattice)

    stall = click(qtbot, tool.run_button, tool, journey="lattice-Acquisition_18", api=api)
    assert tool.status.value.startswith("Done: ") and "pm" in tool.status.value, tool.status.value
    lat = tool.run_result.lattice
    # two sublattices (Sr, Ti–O), nearly one column each per cell
    assert lat.n_sublattices == 2
    share = np.bincount(lat.sublattice) / len(lat.sublattice)
    assert share.min() > 0.4, share
    # a square cell in the file's calibration: a = b within 1.5 %, γ = 90 ± 2°, 400–420 pm
    L = lat.lattice
    assert 400 < L["a_pm"] < 420 and 400 < L["b_pm"] < 420, L
    assert abs(L["a_pm"] - L["b_pm"]) < 0.015 * L["a_pm"]
    assert abs(L["gamma_deg"] - 90) < 2
    # an unstrained single crystal: the mean strain is ~0 and most columns have a value
    assert np.isfinite(lat.strain).all(axis=1).mean() > 0.9
    assert np.all(np.abs(np.nanmean(lat.strain, axis=0)) < 0.002)
    assert {"sublattice", "exx", "count"} <= set(points.features.columns)
    assert_visible(
        viewer, viewer.layers[f"{image.name} exx"], screenshot=tmp_path / "lattice_exx.png"
    )
    assert_visible(
        viewer,
        viewer.layers[f"{image.name} displacement"],
        screenshot=tmp_path / "lattice_vectors.png",
    )
    assert_no_stall(stall)
