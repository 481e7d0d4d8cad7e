"""Journeys from the session-18 audit of the Partial-scan completer, Active learning (DKL),
Spectral shift-VAE, the reader/writers and the ``microml`` CLI (helper G): each test drives the
user's path (a dock opened as the Plugins menu opens it, a file opened with our reader, the
console script in a subprocess) and fails on the code before its fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from journey import open_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MICROML = Path(sys.executable).with_name("microml")


def microml(*args) -> subprocess.CompletedProcess:
    if not MICROML.exists():
        pytest.skip(f"the console script {MICROML} is not installed (pip install -e .)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [str(MICROML), *map(str, args)], capture_output=True, text=True, timeout=600, env=env
    )


def _line_scan(n: int = 16, channels: int = 64) -> np.ndarray:
    """``n`` spectra of one Gaussian peak drifting by 3 channels along the line."""
    x = np.arange(channels, dtype=np.float32)
    centres = 30 + np.linspace(0, 3, n, dtype=np.float32)
    return (100 * np.exp(-0.5 * ((x - centres[:, None]) / 3) ** 2) + 5).astype(np.float32)


def test_cli_line_scan_shift_map_opens_in_napari(make_napari_viewer, tmp_path):
    """``microml spectra`` on a line scan writes its shift map as a TIFF of one row; File > Open
    with our reader refused it ("units=(µm,) must have length ndim=2": the description holds
    one axis, TIFF gives two). It opens now as a one-row image, the line's calibration on both
    axes, the values the CSV holds."""
    import pandas as pd

    src = tmp_path / "line.npy"
    np.save(src, _line_scan())
    run = microml("spectra", src, "--channels-last", "--out", tmp_path / "out", "--quiet")
    assert run.returncode == 0, run.stderr
    viewer = make_napari_viewer()
    (layer,) = open_file(viewer, tmp_path / "out" / "line_spectra_shift.tif")
    table = pd.read_csv(tmp_path / "out" / "line_spectra.csv")
    assert layer.data.shape == (1, 16)
    np.testing.assert_allclose(np.asarray(layer.data)[0], table.filter(like="shift").iloc[:, 0])
    assert len(layer.scale) == 2 and layer.scale[0] == layer.scale[1]


def test_line_scan_shift_from_real_lsmo_keeps_its_nm(shared_data, make_napari_viewer, tmp_path):
    """The same on the real LSMO low-loss line scan (40 spectra, 3.22 nm apart): the reopened
    shift map is 40 px long at 3.22 nm per px (µm in the file), not refused."""
    hspy = shared_data / "spectra" / "LSMO_linescan_low_loss.hspy"
    if not hspy.exists():
        pytest.skip(f"{hspy} is not present")
    run = microml("spectra", hspy, "--out", tmp_path / "out", "--quiet")
    assert run.returncode == 0, run.stderr
    viewer = make_napari_viewer()
    (layer,) = open_file(viewer, tmp_path / "out" / "LSMO_linescan_low_loss_spectra_shift.tif")
    assert layer.data.shape == (1, 40)
    step_nm = (
        float(layer.scale[-1]) * {"micrometer": 1000.0, "nanometer": 1.0}[str(layer.units[-1])]
    )
    assert step_nm == pytest.approx(3.219, abs=0.01)


def test_beps_opens_beside_a_file_in_nm(shared_data, make_napari_viewer):
    """File > Open BEPS_PTO_50x50.h5 (pyNSID, positions in metres, 4.08e-8 m per px) after the
    CuZn pair (nm) raised OverflowError in napari's dims slider: napari does not convert units
    between layers, so it asked for ~1e9 slider steps. Metres now open in nm: 40.8 nm per px,
    the 2 µm map beside the 46 nm CuZn one."""
    viewer = make_napari_viewer()
    open_file(viewer, shared_data / "dkl" / "CuZn_HAADF.hspy")
    (beps,) = open_file(viewer, shared_data / "dkl" / "BEPS_PTO_50x50.h5")
    assert [str(u) for u in beps.units[1:]] == ["nanometer", "nanometer"]
    assert beps.scale[-1] == pytest.approx(2000 / 49)
    assert max(viewer.dims.nsteps) < 10_000
