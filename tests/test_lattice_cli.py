"""``microml lattice`` (lattice/cli.py), through the ``microml`` entry point."""

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_microml.lattice.cli import OUTPUTS
from napari_microml.synth.strained import strained_lattice


def _main(argv):
    from napari_microml.cli import main

    return main(argv)


@pytest.fixture
def perovskite(tmp_path):
    s = strained_lattice("flat", structure="perovskite", dose=3000, seed=21)
    path = tmp_path / "pero.tif"
    tifffile.imwrite(path, s.image)
    pts = tmp_path / "pero_atoms.csv"
    pd.DataFrame(
        {"row_px": s.positions[:, 0], "col_px": s.positions[:, 1], "position_std": 0.05}
    ).to_csv(pts, index=False)
    return s, path, pts


def test_lattice_cli_writes_table_and_summary(perovskite, tmp_path, capsys):
    s, path, pts = perovskite
    out = tmp_path / "out"
    code = _main(
        [
            "lattice",
            str(path),
            "--positions",
            str(pts),
            "--pixel-size",
            "0.0244",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted("pero" + o for o in OUTPUTS)
    table = pd.read_csv(out / "pero_lattice.csv")
    assert len(table) == len(s.positions)
    assert (table["sublattice"].to_numpy() == s.sublattice).mean() >= 0.99
    summary = json.loads((out / "pero_lattice.json").read_text())
    assert summary["lattice_parameters"]["a_pm"] == pytest.approx(16 * 24.4, abs=1)
    assert summary["n_sublattices"] == 2 and summary["napari_microml"]["tool"] == "cli.lattice"
    assert summary["contrast"] == "bright" and set(summary["counting"]) == {
        "0",
        "1",
    }  # per sublattice
    # 3,000 counts per column: the default "auto" keeps the 3×3-cell fit and says why
    assert summary["strain_fit"]["cells"] == "3×3" and summary["strain_fit"]["requested"] == "auto"
    assert "≤ 0.3 %" in summary["strain_fit"]["reason"]
    # a second run never replaces the results silently; --overwrite does
    before = (out / "pero_lattice.csv").read_bytes()
    args = ["lattice", str(path), "--positions", str(pts), "--out", str(out), "--quiet"]
    assert _main(args) == 2 and "overwritten" in capsys.readouterr().err
    assert (out / "pero_lattice.csv").read_bytes() == before
    assert _main(args + ["--overwrite"]) == 0
    assert not [p for p in out.iterdir() if p.name.startswith(".microml-partial-")]


def test_lattice_cli_dark_columns_are_found_as_such(perovskite, tmp_path):
    s, path, pts = perovskite
    abf = tmp_path / "abf.tif"
    tifffile.imwrite(abf, (s.image.max() - s.image).astype(np.float32))  # columns dark
    out = tmp_path / "abf_out"
    assert _main(["lattice", str(abf), "--positions", str(pts), "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "abf_lattice.json").read_text())
    assert summary["contrast"] == "dark" and summary["counting"] is None
    table = pd.read_csv(out / "abf_lattice.csv")
    assert (
        table["sublattice"].to_numpy() == s.sublattice
    ).mean() >= 0.99  # 0 = strongest (darkest)


def test_lattice_cli_bad_input_writes_nothing(perovskite, tmp_path, capsys):
    _, path, pts = perovskite
    out = tmp_path / "none"
    assert _main(["lattice", str(path), str(path), "--positions", str(pts), "--out", str(out)]) == 2
    assert "exactly one input" in capsys.readouterr().err
    assert not out.exists()
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, np.zeros((64, 64), np.float32))
    few = tmp_path / "few.csv"
    pd.DataFrame({"row_px": [1.0, 2.0], "col_px": [3.0, 4.0]}).to_csv(few, index=False)
    assert _main(["lattice", str(flat), "--positions", str(few), "--out", str(out)]) == 2
    assert "at least 6" in capsys.readouterr().err and not out.exists()
