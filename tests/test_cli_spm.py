"""``microml atoms`` on a scanning-probe file levels it as an SPM scan, as the dock does."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_microml import cli


@pytest.mark.usefixtures("one_torch_thread", "user_models_folder")
def test_microml_atoms_levels_a_nanonis_topograph_as_the_dock_does(tmp_path):
    from napari_microml.atoms.metrics import match_points
    from napari_microml.synth.lattice import simulate_lattice
    from napari_microml.synth.scanprobe import scanning_probe, write_sxm

    s = simulate_lattice((128, 128), scene="crystal", lattice="square", spacing=12.0, dose=500)
    stm = scanning_probe(s.image, plane=5, lines=1, shear=0.0, noise=0.1, seed=3) * 1e-9
    write_sxm(tmp_path / "stm.sxm", {"Z": (stm, stm)}, size_nm=(12.8, 12.8))
    out = tmp_path / "out"
    assert cli.main(["atoms", str(tmp_path / "stm.sxm"), "--out", str(out), "--quiet"]) == 0
    prov = json.loads((out / "stm_0_atoms.provenance.json").read_text())
    text = json.dumps(prov)
    assert '"scan": "spm"' in text and "scan-line noise removed" in text, text[:400]
    found = np.loadtxt(out / "stm_0_atoms.csv", delimiter=",", skiprows=1, usecols=(0, 1))
    assert match_points(found, s.positions, max_distance=2.0)["f1"] > 0.9


def _raster_noise_sxm(path):
    """A crystal whose only SPM trait is 1/f feedback noise along the raster: levelled only
    when the tool knows the frame came from a scanning-probe file."""
    from napari_microml.synth.lattice import simulate_lattice
    from napari_microml.synth.scanprobe import scanning_probe, write_sxm

    s = simulate_lattice((192, 192), scene="crystal", lattice="square", spacing=12.0, dose=500)
    x = scanning_probe(s.image, plane=0, lines=0, shear=0, noise=0.3, seed=1) * 1e-9
    write_sxm(path, {"Z": (x, x)}, size_nm=(19.2, 19.2))
    return s


@pytest.mark.usefixtures("one_torch_thread", "user_models_folder")
def test_microml_lattice_finds_the_columns_of_an_spm_file_as_one(tmp_path):
    import pandas as pd

    from napari_microml.atoms.metrics import match_points

    s = _raster_noise_sxm(tmp_path / "noisy.sxm")
    out = tmp_path / "out"
    assert cli.main(["lattice", str(tmp_path / "noisy.sxm"), "--out", str(out), "--quiet"]) == 0
    table = pd.read_csv(next(out.glob("*_lattice.csv")))
    found = table[["row_px", "col_px"]].to_numpy(float)
    assert match_points(found, s.positions, max_distance=1.5)["f1"] > 0.97


@pytest.mark.usefixtures("one_torch_thread", "user_models_folder")
def test_lattice_dock_levels_an_spm_file_it_finds_columns_in(make_napari_viewer, qtbot, tmp_path):
    """File > Open the .sxm, Lattice analysis from the Plugins menu, defaults, Run: the columns
    it finds itself were levelled as an SPM scan, as the Atom finder dock's are."""
    from journey import click, open_file, open_tool

    from napari_microml.atoms.metrics import match_points

    s = _raster_noise_sxm(tmp_path / "noisy.sxm")
    viewer = make_napari_viewer()
    open_file(viewer, tmp_path / "noisy.sxm")
    widget = open_tool(viewer, "Lattice analysis")
    click(qtbot, widget.run_button, widget)
    assert str(widget.status.value).startswith("Done"), widget.status.value
    points = next(ly for ly in viewer.layers if ly.name.endswith("atoms"))
    assert points.metadata["napari_microml"]["parameters"]["scan"] == "spm"
    found = np.asarray(points.data)[:, -2:]
    assert match_points(found, s.positions, max_distance=1.5)["f1"] > 0.97
