"""Journeys from the session-19 audit (helper G): files as other instruments and vendors write
them, opened with our reader, the Partial-scan completer, DKL and Shift-VAE docks opened as the
Plugins menu opens them, and the ``microml`` CLI in a subprocess. Each test fails on the code
before its fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from journey import click, open_file, open_tool
from vendor_files import write_hspy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_micrometre_image_overlays_a_nanometre_one_beside_an_uncalibrated_one(
    make_napari_viewer, tmp_path
):
    """The same 40×30 field saved in µm (as an SEM or a DM survey writes it) and in nm, opened
    with an uncalibrated image (pixels) in the viewer: napari converts units between layers only
    while every layer has a unit of the same kind; one pixel layer and it warns "Inconsistent
    units across layers", the scale bar loses its unit and the µm field sat 1000× smaller in a
    corner of the nm one. Every length now opens in nm, so calibrated files overlay whatever
    else is open; the file's unit, scale and offset stay in the metadata."""
    import tifffile

    image = np.random.default_rng(0).random((40, 30)).astype(np.float32)
    tifffile.imwrite(tmp_path / "uncalibrated.tif", image)
    write_hspy(tmp_path / "survey_um.hspy", image, [(a, 0.002, 0.1, "µm", False) for a in "yx"])
    write_hspy(tmp_path / "stem_nm.hspy", image, [(a, 2.0, 100.0, "nm", False) for a in "yx"])
    viewer = make_napari_viewer()
    (px,) = open_file(viewer, tmp_path / "uncalibrated.tif")
    (um,) = open_file(viewer, tmp_path / "survey_um.hspy")
    (nm,) = open_file(viewer, tmp_path / "stem_nm.hspy")
    assert viewer.layers.extent.units is None  # napari's "Inconsistent units": raw numbers
    assert [str(u) for u in um.units] == ["nanometer", "nanometer"]
    np.testing.assert_allclose(um.extent.world, nm.extent.world)
    said = um.metadata["napari_microml"]["file_units"]
    assert said == {"y": ["µm", 0.002, 0.1], "x": ["µm", 0.002, 0.1]}
    assert "file_units" not in nm.metadata["napari_microml"]  # nm as the file said


def _eds_map(path: Path, *, strobe: bool) -> None:
    """A 6×6 EDS map as an X-ray detector writes it: a keV axis with a non-round offset,
    uint32 Poisson counts, a bremsstrahlung hump, Fe Kα and Cu Kα lines 150 eV wide whose
    energy drifts 10 eV per column, and (``strobe``) the detector's zero peak, the strongest."""
    rng = np.random.default_rng(1)
    e = -0.0973 + 0.01 * np.arange(1024)  # keV
    kev = np.clip(e, 0.02, None)
    counts = []
    for row in range(6):
        for col in range(6):
            mean = 60 * np.clip(20 - kev, 0, None) / kev * np.exp(-((0.9 / kev) ** 3))
            for line, amp in ((6.404, 1500 + 200 * row), (8.048, 3000 - 200 * row)):
                mean = mean + amp * np.exp(-0.5 * ((e - line - 0.01 * col) / 0.064) ** 2)
            if strobe:
                mean = mean + 8000 * np.exp(-0.5 * (e / 0.03) ** 2)
            counts.append(rng.poisson(mean))
    data = np.asarray(counts, np.uint32).reshape(6, 6, -1)
    axes = [
        ("y", 2.0, 0, "nm", True),
        ("x", 2.0, 0, "nm", True),
        ("Energy", 0.01, -0.0973, "keV", False),
    ]
    write_hspy(path, data, axes, "EDS_TEM")


def test_shift_vae_on_an_eds_map_follows_an_x_ray_line_not_the_zero_peak(
    make_napari_viewer, qtbot, tmp_path
):
    """An EDS map (keV axis, X-ray lines, the detector's zero peak strongest): the auto window
    sat around the zero peak ("around the peak at 2.7 eV"), whose shift says nothing about the
    sample; without the zero peak it spanned 4 FWHM each side of Cu Kα, taking in Fe Kβ and
    Cu Kβ, and the check called a 60 eV gain drift "more than core-loss edges move" (EDS has
    no edges). Now the window is ±2 FWHM around the strongest X-ray line, the zero peak is
    named as not a line, and no core-loss rule is applied; the map's colours tell a shift's sign.
    DKL optimises that line's area."""
    _eds_map(tmp_path / "eds.hspy", strobe=True)
    viewer = make_napari_viewer()
    open_file(viewer, tmp_path / "eds.hspy")
    dock = open_tool(viewer, "Spectral shift-VAE")
    # eV: Cu Kα (8048) inside, Fe Kβ (7058) and Cu Kβ (8905) outside
    assert 7100 < dock.win_lo.value < 8048 < dock.win_hi.value < 8900
    assert "X-ray line at 80" in dock.win_lo.tooltip and "zero peak" in dock.win_lo.tooltip
    dock.epochs.value, dock.device_choice.value = 3, "cpu"
    click(qtbot, dock.run_button, dock)
    status = dock.status.value
    assert status.startswith("Done") and "X-ray line at 80" in status, status
    assert "core-loss" not in status and "edge" not in status
    # the drift runs −25 → +25 eV across the map: the colour map drew both ends the same dark
    # purple (twilight_shifted is cyclic); a diverging map tells their signs apart
    low, high = viewer.layers["eds shift"].colormap.map(np.array([0.0, 1.0]))
    assert np.abs(low - high)[:3].max() > 0.3
    # DKL on the same map: it optimised the area of the zero peak ("the peak at 2.7 eV")
    dkl = open_tool(viewer, "Active learning (DKL)")
    assert "the area of the X-ray line at 80" in dkl.status.value, dkl.status.value


def test_shift_vae_says_a_saturated_zero_loss_peak_gives_smaller_shifts(
    make_napari_viewer, qtbot, tmp_path
):
    """A low-loss line scan whose zero-loss peak saturated the detector (flat top at the ADC's
    ceiling, as recorded with too long an exposure): the fit measured the drift from the flanks
    only (LSMO low-loss at 4096 channels, clipped at 35 % of the peak: shifts span 0.21 eV
    against 0.27 eV from a Gaussian fit of the unclipped peaks) and said nothing. The status
    line now says the peak is flat-topped and what that does to the shifts."""
    e = -20.137 + 0.1 * np.arange(600)
    centres = 0.1 + np.linspace(0, 0.3, 24)[:, None]
    rng = np.random.default_rng(2)
    peak = 60000 * np.exp(-0.5 * ((e - centres) / 0.4) ** 2) + 300 * np.exp(-e.clip(0) / 15)
    data = np.minimum(rng.poisson(peak), 21000).astype(np.uint32)  # saturates after the noise
    axes = [("x", 0.0032, 0, "µm", True), ("Energy loss", 0.1, -20.137, "eV", False)]
    write_hspy(tmp_path / "clipped.hspy", data, axes, "EELS")
    viewer = make_napari_viewer()
    open_file(viewer, tmp_path / "clipped.hspy")
    dock = open_tool(viewer, "Spectral shift-VAE")
    dock.epochs.value, dock.device_choice.value = 3, "cpu"
    click(qtbot, dock.run_button, dock)
    status = dock.status.value
    assert status.startswith("Done") and "flat-topped at 21000 in 24 of 24 spectra" in status


@pytest.mark.realdata
def test_dkl_resamples_a_finer_structure_image_of_the_same_field_and_refuses_another_field(
    shared_data, make_napari_viewer, qtbot, tmp_path
):
    """The CuZn EELS map (50×40 at 0.921 nm) with its HAADF recorded at twice the sampling
    (100×80 at 0.461 nm, the same field, as many microscopes record the simultaneous image):
    Initialize refused "The spectrum image covers (50, 40) pixels but the structure image is
    (100, 80); they must match." with nothing to do about it. The structure is now averaged
    onto the spectrum image's pixels and the status says so; the maps and points lie on the
    spectrum image's grid. A HAADF of another field (a corner crop) is refused naming both
    fields in nm."""
    from rsciio.hspy import file_reader

    haadf = np.asarray(file_reader(str(shared_data / "dkl" / "CuZn_HAADF.hspy"))[0]["data"])
    step = 0.9213861227035522
    fine = np.kron(haadf, np.ones((2, 2))).astype(np.float32)
    write_hspy(tmp_path / "fine.hspy", fine, [(a, step / 2, -step / 4, "nm", False) for a in "yx"])
    corner = fine[:60, :50].copy()
    write_hspy(
        tmp_path / "corner.hspy", corner, [(a, step / 2, -step / 4, "nm", False) for a in "yx"]
    )
    viewer = make_napari_viewer()
    open_file(viewer, shared_data / "dkl" / "CuZn_EELS_mapping_tutorial.hspy")
    open_file(viewer, tmp_path / "fine.hspy")
    dock = open_tool(viewer, "Active learning (DKL)")
    dock.structure_layer.value = viewer.layers["fine"]
    click(qtbot, dock.init_button, dock)
    qtbot.waitUntil(lambda: "measured" in viewer.layers, timeout=20_000)
    qtbot.wait(300)
    status = dock.status.value
    assert "Structure fine (100×80 px, 0.4607 nm/px) resampled onto the source's 50×40 px" in status
    first = status.split(". Structure")[0]
    mean = viewer.layers["DKL mean"]
    assert mean.data.shape == (50, 40)
    np.testing.assert_allclose(mean.scale, (step, step))
    np.testing.assert_allclose(viewer.layers["measured"].scale, (step, step))
    click(qtbot, dock.step_button, dock)  # the campaign goes on on the same grid
    qtbot.waitUntil(lambda: dock.status.value.startswith("Step 2"), timeout=20_000)
    np.testing.assert_allclose(viewer.layers["measured"].scale, (step, step))
    assert "resampled onto the source's 50×40 px grid" in dock.status.value

    open_file(viewer, tmp_path / "corner.hspy")
    dock.structure_layer.value = viewer.layers["corner"]
    click(qtbot, dock.init_button, dock)
    status = dock.status.value
    assert status.startswith("Cannot run: The source CuZn_EELS_mapping_tutorial (50×40 px, "), (
        status
    )
    assert "46.07 × 36.86 nm) and the structure image corner (60×50 px, 27.64 × 23.03 nm)" in status
    assert "cover different fields" in status

    # block means of the 2× image are the 1× pixels: the same campaign as with the 1× HAADF
    open_file(viewer, shared_data / "dkl" / "CuZn_HAADF.hspy")
    dock.structure_layer.value = viewer.layers["CuZn_HAADF"]
    click(qtbot, dock.init_button, dock)
    qtbot.waitUntil(lambda: dock.status.value.startswith("Step 1"), timeout=20_000)
    assert dock.status.value == first + ".", (dock.status.value, first)


def test_a_random_scan_given_as_x_y_value_csv_opens_and_completes(
    make_napari_viewer, qtbot, tmp_path, capsys
):
    """A random scan as many scan generators and SPM point grids export it: one line per probe
    position, 'x,y,counts' in pixels (15 % of a 40×48 grid, one position measured twice).
    File > Open and ``microml complete scan.csv`` refused it ("'.csv' files are not
    supported"). It now opens as a NaN-gapped image (a pixel measured twice holds the mean),
    the completer picks Complete with 'NaN pixels = not measured' and fills it as the API
    does; the CLI writes the completed image. A CSV without that header gets one sentence."""
    from napari_microml import cli, complete_scan

    rng = np.random.default_rng(3)
    y, x = np.mgrid[:40, :48]
    truth = np.sin(x / 4 + y / 6).astype(np.float32)
    measured = rng.random(truth.shape) < 0.15
    measured[39, 47] = True  # the grid is as large as the furthest position
    rows, cols = np.nonzero(measured)
    lines = [f"{c},{r},{truth[r, c]:.7g}" for r, c in zip(rows, cols, strict=True)]
    lines.append(f"{cols[0]},{rows[0]},{truth[rows[0], cols[0]] + 1:.7g}")  # measured again
    (tmp_path / "scan.csv").write_text("x,y,counts\n" + "\n".join(lines) + "\n")
    expected = np.where(measured, truth, np.nan)
    expected[rows[0], cols[0]] += 0.5
    viewer = make_napari_viewer()
    (layer,) = open_file(viewer, tmp_path / "scan.csv")
    np.testing.assert_allclose(layer.data, expected, rtol=1e-6)
    dock = open_tool(viewer, "Partial-scan completer")
    assert (dock.mode.value, dock.mask_layer.value) == (
        "Complete measured data",
        "NaN pixels = not measured",
    )
    click(qtbot, dock.run_button, dock)
    data = np.asarray(layer.data)  # the kriging fit moves ~0.4 % on a 1-ulp change of a value
    api = complete_scan(np.nan_to_num(data), ~np.isnan(data))
    np.testing.assert_allclose(viewer.layers["scan completed"].data, api.image, rtol=1e-5)

    out = tmp_path / "out"
    assert cli.main(["complete", str(tmp_path / "scan.csv"), "--out", str(out), "--quiet"]) == 0
    import tifffile

    np.testing.assert_allclose(
        tifffile.imread(out / "scan_complete_image.tif"), api.image, rtol=1e-5
    )
    (tmp_path / "bare.csv").write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert cli.main(["complete", str(tmp_path / "bare.csv"), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "bare.csv: a CSV input is a sparse scan whose header names the columns x, y" in err


def test_the_partial_scan_sample_is_completed_from_its_own_scan(make_napari_viewer, qtbot):
    """File > Open Sample > Partial spiral scan gives the truth, the sparse scan (10 % spiral)
    and its mask; the completer opened in Simulate on the truth with its own 5.6 % spiral and
    never used the sample's scan. The sample's scan layers are now marked as a sparse
    acquisition (as the reader marks a random scan): the dock opens in Complete with them and
    Run fills the sample's 90 % unmeasured pixels."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-microml", "partial_scan")
    dock = open_tool(viewer, "Partial-scan completer")
    assert dock.mode.value == "Complete measured data"
    assert (dock.sparse_layer.value.name, dock.mask_layer.value.name) == (
        "sparse scan",
        "scan mask",
    )
    click(qtbot, dock.run_button, dock)
    assert dock.status.value.startswith("Done: filled the 90.0 % unmeasured pixels")
    assert "sparse scan completed" in viewer.layers


def test_a_mask_of_weights_is_said_to_be_read_as_measured_wherever_non_zero(
    make_napari_viewer, qtbot, tmp_path, capsys
):
    """A mask given as weights (the partial-STEM spiral is a blurred trace, 0–0.625 in 11
    levels): every non-zero pixel, the faint tails too, was taken as measured without a word.
    ``microml complete`` and the completer's status now say how the mask was read; a 0/1 mask
    gets no such note."""
    import tifffile

    from napari_microml import cli

    y, x = np.mgrid[:32, :32]
    image = np.sin(x / 3 + y / 5).astype(np.float32)
    weights = np.zeros((32, 32), np.float32)
    weights[::4] = 0.6
    weights[1::4] = 0.05  # the blurred trace's faint edge
    tifffile.imwrite(tmp_path / "scan.tif", image)
    tifffile.imwrite(tmp_path / "weights.tif", weights)
    tifffile.imwrite(tmp_path / "binary.tif", (weights > 0.3).astype(np.uint8))
    for mask, out in (("weights", "a"), ("binary", "b")):
        args = ["complete", str(tmp_path / "scan.tif"), "--mask", str(tmp_path / f"{mask}.tif")]
        capsys.readouterr()
        assert cli.main([*args, "--out", str(tmp_path / out), "--quiet"]) == 0
        said = capsys.readouterr().err
        if mask == "weights":
            assert "--mask weights.tif holds 3 levels from 0 to 0.6, not two: its 512" in said
            assert "(50.0 %) are taken as measured, the faint ones too" in said
        else:
            assert "levels" not in said
    viewer = make_napari_viewer()
    open_file(viewer, tmp_path / "scan.tif")
    open_file(viewer, tmp_path / "weights.tif")
    dock = open_tool(viewer, "Partial-scan completer")
    dock.mode.value = "Complete measured data"
    dock.sparse_layer.value = viewer.layers["scan"]
    dock.mask_layer.value = viewer.layers["weights"]
    click(qtbot, dock.run_button, dock)
    assert dock.status.value.startswith("Done: filled the 50.0 % unmeasured"), dock.status.value
    assert "Mask weights holds 3 levels from 0 to 0.6, not two: its 512" in dock.status.value


@pytest.mark.realdata
def test_dkl_says_what_it_optimises_on_hysteresis_loops(shared_data, make_napari_viewer):
    """BEPS loops (pyNSID, bias 0 → 8.5 → −8.5 → 0 V) opened with the DKL dock: a spectrum image
    is greeted with "the value to optimise is …", the loops only with "Ready.", though the
    loop area was chosen. The status now names it, its bias range and its units."""
    viewer = make_napari_viewer()
    open_file(viewer, shared_data / "dkl" / "BEPS_PTO_50x50.h5")
    dock = open_tool(viewer, "Active learning (DKL)")
    assert dock.scalarizer.value == "loop area"
    assert dock.status.value == (
        "Source BEPS_PTO_50x50: the value to optimise is the area of each pixel's hysteresis "
        "loop over -8.5–8.5 V (V × a.u.), after a median despike along the bias."
    )


def test_an_emsa_spectrum_opens_in_ev_and_the_shift_vae_says_what_it_needs(
    make_napari_viewer, qtbot, tmp_path
):
    """EMSA/MSA is the exchange format EDS and EELS software export single spectra in (Oxford,
    EDAX, Gatan): File > Open had no reader for it. It now opens as one spectrum in eV (the
    file's keV kept in the metadata), and the Shift-VAE says it needs many spectra."""
    from rsciio.msa import file_writer

    e = -0.1 + 0.01 * np.arange(512)
    counts = 50 + 2000 * np.exp(-0.5 * ((e - 1.486) / 0.035) ** 2)  # Al Kα
    axis = {"name": "Energy", "scale": 0.01, "offset": -0.1, "units": "keV", "size": 512}
    file_writer(
        str(tmp_path / "point.msa"),
        {
            "data": counts,
            "axes": [{**axis, "navigate": False}],
            "metadata": {"General": {"title": "point"}, "Signal": {"signal_type": "EDS_SEM"}},
            "original_metadata": {},
        },
    )
    viewer = make_napari_viewer()
    (layer,) = open_file(viewer, tmp_path / "point.msa")
    record = layer.metadata["napari_microml"]
    assert record["spectral_axis"]["units"] == "eV"
    assert record["spectral_axis"]["scale"] == pytest.approx(10.0)
    assert record["file_units"] == {"Energy": ["keV", 0.01, -0.1]}
    dock = open_tool(viewer, "Spectral shift-VAE")
    dock.run_button.native.click()
    assert dock.worker is None
    assert "holds a single spectrum" in dock.status.value, dock.status.value
