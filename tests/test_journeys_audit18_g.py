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
from journey import click, open_file, open_tool

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


@pytest.mark.slow  # three microml processes (torch import and a fit each)
def test_cli_line_scan_opens_in_napari_and_a_batch_changes_no_result(make_napari_viewer, tmp_path):
    """Two findings on a synthetic line scan (no calibration), the CLI in a subprocess:

    - ``microml spectra`` writes a line scan's shift map as a TIFF of one row; File > Open with
      our reader refused it ("units=(µm,) must have length ndim=2": the description holds one
      axis, TIFF gives two). It opens now as a one-row image with square pixels, the values the
      CSV holds (pixel indices only: no calibration, no nm column).
    - ``microml spectra a b`` fits both files at once (2 workers); both fits seeded torch's
      global generator and drew from it in turns, so a file's shifts depended on the batch
      (EELS_SI pixel (0, 0): 0.954 eV alone; -0.513, -0.246, 0.799 eV in three runs beside
      LSMO). Each fit now draws from its own generators: the batch equals the file alone.
    """
    import pandas as pd

    first, second = tmp_path / "first.npy", tmp_path / "second.npy"
    np.save(first, _line_scan())
    np.save(second, _line_scan(n=24)[::-1].copy())
    args = ("--channels-last", "--quiet", "--workers", "2")
    run = microml("spectra", first, "--out", tmp_path / "alone", *args)
    assert run.returncode == 0, run.stderr
    viewer = make_napari_viewer()
    (layer,) = open_file(viewer, tmp_path / "alone" / "first_spectra_shift.tif")
    alone = pd.read_csv(tmp_path / "alone" / "first_spectra.csv")
    assert list(alone.columns[:2]) == ["index", "shift_channels"]
    assert layer.data.shape == (1, 16)
    np.testing.assert_allclose(np.asarray(layer.data)[0], alone["shift_channels"])
    assert len(layer.scale) == 2 and layer.scale[0] == layer.scale[1]

    batch = microml("spectra", first, second, "--out", tmp_path / "batch", *args)
    assert batch.returncode == 0, batch.stderr
    together = pd.read_csv(tmp_path / "batch" / "first_spectra.csv")
    pd.testing.assert_frame_equal(alone, together)


@pytest.mark.slow
@pytest.mark.realdata
def test_cli_spectra_on_real_files_gives_nm_and_reopens(shared_data, make_napari_viewer, tmp_path):
    """EELS_SI (2×2, 1.99 nm per px) and the LSMO low-loss line scan (40 spectra 3.22 nm apart)
    in one ``microml spectra`` call: the CSVs listed only pixel indices while the TIFFs were in
    µm; they now add y_nm/x_nm and position_nm. The LSMO shift TIFF, refused by File > Open
    before, reopens 40 px long at 3.22 nm per px."""
    import pandas as pd

    si = shared_data / "formats" / "EELS_SI.dm4"
    hspy = shared_data / "spectra" / "LSMO_linescan_low_loss.hspy"
    out = tmp_path / "out"
    run = microml("spectra", si, hspy, "--out", out, "--quiet")
    assert run.returncode == 0, run.stderr
    table = pd.read_csv(out / "EELS_SI_spectra.csv")
    assert list(table.columns[:4]) == ["row", "col", "y_nm", "x_nm"]
    np.testing.assert_allclose(table["x_nm"], table["col"] * 1.99207, rtol=1e-5)
    np.testing.assert_allclose(table["y_nm"], table["row"] * 1.99207, rtol=1e-5)
    line = pd.read_csv(out / "LSMO_linescan_low_loss_spectra.csv")
    np.testing.assert_allclose(np.diff(line["position_nm"]), 3.219, atol=0.001)
    viewer = make_napari_viewer()
    (layer,) = open_file(viewer, out / "LSMO_linescan_low_loss_spectra_shift.tif")
    assert layer.data.shape == (1, 40)
    to_nm = {"micrometer": 1000.0, "nanometer": 1.0}[str(layer.units[-1])]
    assert float(layer.scale[-1]) * to_nm == pytest.approx(3.219, abs=0.01)


def test_completer_follows_the_file_opened_after_a_run(make_napari_viewer, qtbot, tmp_path):
    """Simulate on one image, then File > Open a second one and press Run: the dock re-ran the
    first image (its 'Full image' stayed put) and repeated its sentence while the new file lay
    on top. Now the second file becomes the 'Full image', the status says so, and Run fills
    its scan."""
    import tifffile

    y, x = np.mgrid[:48, :48]
    for i, name in enumerate(("first", "second")):
        tifffile.imwrite(tmp_path / f"{name}.tif", np.sin(x / (3 + i) + y / 5).astype(np.float32))
    viewer = make_napari_viewer()
    open_file(viewer, tmp_path / "first.tif")
    dock = open_tool(viewer, "Partial-scan completer")
    click(qtbot, dock.run_button, dock)
    assert "first completed" in viewer.layers
    open_file(viewer, tmp_path / "second.tif")
    assert dock.image_layer.value.name == "second"
    assert dock.status.value == "Ready: Run simulates a spiral scan of second."
    assert "second scan mask" not in viewer.layers  # no preview drawn over the new file
    click(qtbot, dock.run_button, dock)
    assert "second completed" in viewer.layers
    assert dock.status.value.startswith("RMS error at unmeasured pixels")


def test_shift_vae_follows_the_spectrum_file_opened_after_a_run(
    shared_data, make_napari_viewer, qtbot
):
    """Fit the EELS SI, then open the LSMO line scan: Run fitted the EELS SI again (the
    picker kept it) with its old sentence on screen. Now the new file is picked and said."""
    viewer = make_napari_viewer()
    open_file(viewer, shared_data / "formats" / "EELS_SI.dm4")
    dock = open_tool(viewer, "Spectral shift-VAE")
    click(qtbot, dock.run_button, dock)
    assert "EELS_SI shift" in viewer.layers
    open_file(viewer, shared_data / "spectra" / "LSMO_linescan_low_loss.hspy")
    assert dock.layer_choice.value.name == "LSMO_linescan_low_loss"
    assert dock.status.value == "Ready: Run fits LSMO_linescan_low_loss."
    assert (dock.win_lo.value, dock.win_hi.value) == (-5.0, 11.0)  # its own auto window


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


def test_dkl_follows_the_spectrum_file_opened_next(shared_data, make_napari_viewer):
    """CuZn HAADF + EELS open (Source EELS, Structure HAADF), then the BEPS loops are opened:
    the dock kept the CuZn pair, so Run went on with the old campaign. Now Source is the new
    file and, no image of its 50×50 plane being open, Structure is its own despiked mean; a
    plain image of the right plane opened next becomes Structure."""
    viewer = make_napari_viewer()
    dkl = shared_data / "dkl"
    open_file(viewer, dkl / "CuZn_HAADF.hspy")
    open_file(viewer, dkl / "CuZn_EELS_mapping_tutorial.hspy")
    dock = open_tool(viewer, "Active learning (DKL)")
    assert dock.source_layer.value.name == "CuZn_EELS_mapping_tutorial"
    assert dock.structure_layer.value.name == "CuZn_HAADF"
    open_file(viewer, dkl / "BEPS_PTO_50x50.h5")
    assert dock.source_layer.value.name == "BEPS_PTO_50x50"
    assert dock.structure_layer.value.name == "BEPS_PTO_50x50"
    assert dock.scalarizer.value == "loop area"
    open_file(viewer, dkl / "CuZn_EELS_mapping_tutorial.hspy")  # back to CuZn: its HAADF
    assert dock.source_layer.value.name.startswith("CuZn_EELS_mapping_tutorial")
    assert dock.structure_layer.value.name == "CuZn_HAADF"


def test_dkl_status_names_the_value_its_units_and_where_the_best_is(
    shared_data, make_napari_viewer, qtbot
):
    """CuZn pair, defaults, Initialize: the status said 'best 7.444e+04' with no unit, no
    quantity and no place, the plot's axis 'best value'. The status now names the
    edge-intensity window in eV, the value's units and the best point in nm (the 'measured'
    point of highest value); the plot says what and in which unit."""
    import re

    viewer = make_napari_viewer()
    open_file(viewer, shared_data / "dkl" / "CuZn_HAADF.hspy")
    open_file(viewer, shared_data / "dkl" / "CuZn_EELS_mapping_tutorial.hspy")
    dock = open_tool(viewer, "Active learning (DKL)")
    # it said 'the counts of the strongest edge': the value is integrated over eV
    assert "edge (onset 931 eV): counts·eV over 931–991 eV above a power law" in dock.status.value
    click(qtbot, dock.init_button, dock)
    qtbot.waitUntil(lambda: "measured" in viewer.layers, timeout=10_000)
    qtbot.wait(300)
    text = dock.status.value
    pattern = r"highest edge intensity \(931–991 eV\) ([-\d.e+]+) counts·eV, at x = ([\d.]+) nm"
    match = re.search(pattern + r", y = ([\d.]+) nm\.$", text)
    assert match, text
    points = viewer.layers["measured"]
    best = int(np.argmax(points.features["value"]))
    y, x = np.asarray(points.data[best]) * points.scale + points.translate
    assert float(match.group(1)) == pytest.approx(points.features["value"][best], rel=1e-3)
    assert (float(match.group(2)), float(match.group(3))) == pytest.approx((x, y), abs=0.01)
    assert dock.ax_best.get_ylabel() == "best (counts·eV)"  # was 'best value'
    assert dock.ax_best.get_title() == "best edge intensity"


def test_completer_says_which_pixels_of_a_random_roi_scan_are_extrapolated(
    shared_data, make_napari_viewer, qtbot
):
    """The Direct Electron random scan measured every pixel of its 29×12 ROI inside a 32×16
    grid; the completer 'filled the 32.0 % unmeasured pixels' all of which lie outside that
    ROI: a flat frame of invented values (g_comp_roi.png) presented as a completion. The status
    now says how many pixels are extrapolated and which rows and columns the scan covered."""
    viewer = make_napari_viewer()
    open_file(viewer, shared_data / "formats" / "ROI_Random_Scan_movie.mrc")
    dock = open_tool(viewer, "Partial-scan completer")
    assert dock.mode.value == "Complete measured data"
    click(qtbot, dock.run_button, dock)
    qtbot.waitUntil(lambda: dock.status.value.startswith("Done"), timeout=10_000)
    text = dock.status.value
    # s20: every pixel of the ROI was measured, so nothing was filled between measurements
    assert "filled the 32.0 % unmeasured pixels" not in text
    assert "Every pixel inside the scanned region (rows 3–31, columns 3–14: 348 px)" in text
    assert "the other 164 pixels of the 32 × 16 scan grid lie outside it" in text
    assert "extrapolated" in text


def test_shift_vae_saves_a_line_scans_shifts_in_nm_and_ev(
    shared_data, make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    """A line scan's fit showed its shifts only as a plot and a Shapes track: nothing in the
    dock or File > Save wrote the numbers. 'Save shifts…' (greyed until a fit) writes one row
    per spectrum through Qt's save dialog: position in nm (3.219 nm apart on LSMO), the shift
    and its s.d. in eV as plotted, the latents, and a .csv.json with the provenance."""
    import json

    import pandas as pd
    from qtpy.QtWidgets import QFileDialog

    viewer = make_napari_viewer()
    open_file(viewer, shared_data / "spectra" / "LSMO_linescan_low_loss.hspy")
    dock = open_tool(viewer, "Spectral shift-VAE")
    assert not dock.save_button.enabled
    click(qtbot, dock.run_button, dock)
    qtbot.waitUntil(lambda: dock.status.value.startswith("Done"), timeout=10_000)
    assert dock.save_button.enabled
    out = tmp_path / "lsmo shifts.csv"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(out), ""))
    dock.save_button.native.click()
    table = pd.read_csv(out)
    assert list(table.columns) == [
        "index",
        "position_nm",
        "shift_eV",
        "shift_sd_eV",
        "latent_0",
        "latent_1",
    ]
    assert len(table) == 40
    np.testing.assert_allclose(np.diff(table["position_nm"]), 3.219, atol=0.001)
    np.testing.assert_allclose(table["shift_eV"], dock.result.shift.ravel(), rtol=1e-6)
    record = json.loads((tmp_path / "lsmo shifts.csv.json").read_text())["napari_microml"]
    assert record["tool"] == "shift_vae" and record["parameters"]["spectral_units"] == "eV"
    assert dock.status.value.startswith("Saved 40 spectra's shifts (eV) and their positions in nm")


def test_completer_fills_a_sparse_scan_saved_with_nan_gaps(make_napari_viewer, qtbot, tmp_path):
    """A sparse scan saved with NaN where nothing was measured (what ``microml complete``
    reads by default) opened in napari: the dock stayed in Simulate, took it as a full image
    and refused with 'Some measured pixels are NaN or infinite; mark them as unmeasured in the
    mask', and no mask choice could say 'NaN = not measured'. The dock now picks Complete with
    the Mask 'NaN pixels = not measured' (file opened before or after the dock), says how many
    NaN pixels it read, and fills them as the API does."""
    import tifffile

    from napari_microml import complete_scan

    rng = np.random.default_rng(0)
    y, x = np.mgrid[:48, :48]
    truth = np.sin(x / 4 + y / 6).astype(np.float32)
    measured = rng.random(truth.shape) < 0.25
    for name in ("before", "after"):
        tifffile.imwrite(tmp_path / f"{name}.tif", np.where(measured, truth, np.nan))
    gaps = int((~measured).sum())
    viewer = make_napari_viewer()
    open_file(viewer, tmp_path / "before.tif")
    dock = open_tool(viewer, "Partial-scan completer")
    nan_mask = "NaN pixels = not measured"
    assert (dock.mode.value, dock.mask_layer.value) == ("Complete measured data", nan_mask)
    assert dock.status.value.startswith(f"Ready: before has {gaps} NaN pixels")
    click(qtbot, dock.run_button, dock)
    expected = complete_scan(np.where(measured, truth, 0), measured)
    np.testing.assert_allclose(viewer.layers["before completed"].data, expected.image, rtol=1e-5)
    dock.mode.value = "Simulate"  # a user's choice; a NaN file opened next is completed anyway
    open_file(viewer, tmp_path / "after.tif")
    assert dock.sparse_layer.value.name == "after"
    assert dock.mask_layer.value == nan_mask
    dock.mode.value = "Simulate"
    dock.image_layer.value = viewer.layers["after"]
    click(qtbot, dock.run_button, dock)
    assert "has NaN pixels: it is a sparse scan, not a full image" in dock.status.value


def test_dkl_run_after_the_budget_is_spent_says_so(shared_data, make_napari_viewer, qtbot):
    """CuZn pair, budget 6: Run measured 6 points; pressing Run (or Step) again did nothing and
    left the last sentence on screen, as if the press was lost. It now says the budget is spent
    and what to do; raising Budget continues the same campaign."""
    viewer = make_napari_viewer()
    open_file(viewer, shared_data / "dkl" / "CuZn_HAADF.hspy")
    open_file(viewer, shared_data / "dkl" / "CuZn_EELS_mapping_tutorial.hspy")
    dock = open_tool(viewer, "Active learning (DKL)")
    dock.budget.value = 6
    click(qtbot, dock.run_button, dock)
    qtbot.waitUntil(lambda: dock.status.value.startswith("Step"), timeout=10_000)
    assert len(viewer.layers["measured"].data) == 6
    for button in (dock.run_button, dock.step_button):
        click(qtbot, button, dock)
        assert dock.status.value == (
            "Cannot run: All 6 points of the budget are measured; raise Budget to measure "
            "more, or press Initialize to start a new campaign."
        )
    dock.budget.value = 7
    click(qtbot, dock.run_button, dock)
    qtbot.waitUntil(lambda: dock.status.value.startswith("Step"), timeout=10_000)
    assert len(viewer.layers["measured"].data) == 7


def test_dkl_plot_is_in_view_after_a_step(shared_data, make_napari_viewer, qtbot):
    """1500×1000 window, CuZn pair, Initialize: the best-value and last-spectrum plot sat below
    Log file / Overwrite / Export log, its axes out of sight without scrolling. It now follows
    the status line, wholly in the dock's view (the export controls below it)."""
    from qtpy.QtCore import QPoint

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1500, 1000)
    open_file(viewer, shared_data / "dkl" / "CuZn_HAADF.hspy")
    open_file(viewer, shared_data / "dkl" / "CuZn_EELS_mapping_tutorial.hspy")
    dock = open_tool(viewer, "Active learning (DKL)")
    click(qtbot, dock.init_button, dock)
    qtbot.waitUntil(lambda: dock.status.value.startswith("Step"), timeout=10_000)
    qtbot.wait(300)
    viewport = dock.native.viewport()
    top = dock.canvas.mapTo(viewport, QPoint(0, 0)).y()
    assert dock.canvas.isVisible() and 0 <= top
    assert top + dock.canvas.height() <= viewport.height(), (top, viewport.height())
    export = dock.export_button.native.mapTo(viewport, QPoint(0, 0)).y()
    assert export > top  # below the plot now


def test_shift_vae_on_a_single_spectrum_says_what_file_would_do(shared_data, make_napari_viewer):
    """DMReader_EELS_STO.dm4 holds one EELS spectrum: Run answered 'Only 1 spectrum was given;
    the VAE needs at least 2.' It now says the file holds a single spectrum and what to open."""
    viewer = make_napari_viewer()
    open_file(viewer, shared_data / "formats" / "DMReader_EELS_STO.dm4")
    dock = open_tool(viewer, "Spectral shift-VAE")
    dock.run_button.native.click()
    assert dock.worker is None
    assert dock.status.value == (
        "Cannot run: Layer 'DMReader_EELS_STO' holds a single spectrum; the shift-VAE learns "
        "how a feature shifts across many spectra: open a spectrum image or a line scan."
    )


def test_completer_takes_a_layer_with_an_empty_microml_record(make_napari_viewer, tmp_path):
    """A layer whose metadata holds ``napari_microml: None`` (as a saved image can come back)
    raised AttributeError in the completer's layer hooks on every layer added after it; it is
    now an ordinary image the dock follows."""
    import tifffile

    tifffile.imwrite(tmp_path / "plain.tif", np.ones((32, 32), np.float32))
    viewer = make_napari_viewer()
    dock = open_tool(viewer, "Partial-scan completer")
    empty = {"napari_microml": None}
    viewer.add_image(np.zeros((32, 32), np.float32), name="empty", metadata=empty)
    open_file(viewer, tmp_path / "plain.tif")
    assert dock.image_layer.value.name == "plain"
