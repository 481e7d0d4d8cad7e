"""The README's first command: ``make demo`` without a display runs the headless demo, which
opens the sample through File → Open Sample and the Atom finder through the Plugins menu."""

import json
import subprocess
import sys

import pandas as pd


def test_headless_demo_writes_atoms_provenance_and_a_screenshot(tmp_path):
    out = tmp_path / "demo"
    run = subprocess.run(
        [sys.executable, "-m", "napari_microml.demo", "--headless", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    atoms = pd.read_csv(out / "atoms.csv")
    assert len(atoms) > 500 and {"row_px", "col_px", "score", "position_std"} <= set(atoms.columns)
    # written as the package writes points: the sample's calibration as nm columns, a sidecar
    scale = json.loads((out / "atoms.csv.json").read_text())["scale"][-1]
    assert (atoms["x_nm"] - atoms["col_px"] * scale).abs().max() < 1e-9
    record = json.loads((out / "provenance.json").read_text())
    assert record["tool"] and record["version"]
    assert (out / "screenshot.png").stat().st_size > 10_000
    assert "columns found" in run.stdout
