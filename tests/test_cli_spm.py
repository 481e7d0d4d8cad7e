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
