"""Journeys from the session-20 audit (helper U): every dock on real and user-made files, opened
as File > Open and the Plugins menu open them, defaults, Run. Each test fails on the code before
its fix."""

from __future__ import annotations

import numpy as np
import pytest
from journey import click, open_file, open_tool

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _smooth_image(shape=(64, 64), seed=0) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]] / 8.0
    rng = np.random.default_rng(seed)
    return (0.5 + 0.25 * np.sin(xx) * np.cos(yy) + 0.01 * rng.standard_normal(shape)).astype(
        np.float32
    )


def test_a_zero_filled_sparse_scan_is_completed_not_scanned_again(
    make_napari_viewer, qtbot, tmp_path
):
    """A partial scan saved as full image × scan mask (zeros where the probe did not go, as the
    partial-STEM paper's data are built): the completer opened it in Simulate, scanned its own
    5.6 % spiral over the zeros and reported "RMS error at unmeasured pixels: 29.10 %"
    (truth-1 × mask-1). It now opens in Complete with Mask '0 pixels = not measured', says so,
    and fills the zeros from the measured pixels."""
    import tifffile

    truth = _smooth_image()
    mask = np.zeros(truth.shape, bool)
    mask[::4, :] = True  # every 4th line measured: 25 %
    tifffile.imwrite(tmp_path / "scan_x_mask.tif", np.where(mask, truth, 0).astype(np.float32))
    viewer = make_napari_viewer()
    open_file(viewer, tmp_path / "scan_x_mask.tif")
    dock = open_tool(viewer, "Partial-scan completer")
    assert dock.mode.value == "Complete measured data", dock.status.value
    assert dock.mask_layer.value == "0 pixels = not measured"
    assert "exactly 0 at 75.0 % of its pixels" in dock.status.value
    assert "choose Mode 'Simulate'" in dock.status.value
    click(qtbot, dock.run_button, dock)
    assert dock.status.value.startswith("Done: filled the 75.0 % unmeasured"), dock.status.value
    completed = viewer.layers["scan_x_mask completed"].data
    between = ~mask
    between[:, :4] = between[:, -4:] = False
    assert np.sqrt(np.mean((completed - truth)[between] ** 2)) < 0.03

    # the same dock already open: a zero-filled file opened next is followed the same way
    viewer2 = make_napari_viewer()
    dock2 = open_tool(viewer2, "Partial-scan completer")
    assert dock2.mode.value == "Simulate"
    open_file(viewer2, tmp_path / "scan_x_mask.tif")
    assert dock2.mode.value == "Complete measured data"
    assert dock2.mask_layer.value == "0 pixels = not measured"


def test_a_full_image_or_a_counting_frame_is_not_taken_for_a_zero_filled_scan(
    make_napari_viewer, tmp_path
):
    """The rule stays off ordinary images: a full image with a few zeros stays in Simulate, and
    an electron-counting frame (mostly 0, single counts) is not a scan either."""
    import tifffile

    image = _smooth_image()
    image[:10] = 0  # a dark band: 16 % zeros
    tifffile.imwrite(tmp_path / "full.tif", image)
    counts = np.random.default_rng(1).poisson(0.3, (64, 64)).astype(np.uint16)  # 74 % zeros
    tifffile.imwrite(tmp_path / "counting.tif", counts)
    for name in ("full.tif", "counting.tif"):
        viewer = make_napari_viewer()
        open_file(viewer, tmp_path / name)
        dock = open_tool(viewer, "Partial-scan completer")
        assert dock.mode.value == "Simulate", (name, dock.status.value)


@pytest.mark.parametrize("shape", [(1, 24), (24, 1)])
def test_a_one_pixel_wide_spectrum_image_gives_a_line_plot_not_a_hairline_map(
    make_napari_viewer, qtbot, tmp_path, shape
):
    """A spectrum image of 1 × 24 (or 24 × 1) spectra, as a line of spot spectra is saved when
    the software keeps both scan axes: the Shift-VAE drew its shifts as a map one pixel wide (a
    hairline beside a colour bar) and no plot. It now plots the shift along the line, in the
    file's length unit, as for a line scan, and draws no map layers."""
    from vendor_files import write_hspy

    from napari_microml.spectra.widget import ShiftVAEWidget

    e = -5.0 + 0.1 * np.arange(160)
    centres = np.linspace(0.0, 0.6, 24).reshape(shape)[..., None]
    rng = np.random.default_rng(3)
    data = rng.poisson(2000 * np.exp(-0.5 * ((e - centres) / 0.5) ** 2) + 20).astype(np.float32)
    axes = [
        ("y", 0.5, 0.0, "nm", True),
        ("x", 0.5, 0.0, "nm", True),
        ("Energy loss", 0.1, -5.0, "eV", False),
    ]
    write_hspy(tmp_path / "spots.hspy", data, axes, "EELS")
    viewer = make_napari_viewer()
    open_file(viewer, tmp_path / "spots.hspy")
    dock = open_tool(viewer, "Spectral shift-VAE")
    assert isinstance(dock, ShiftVAEWidget)
    dock.epochs.value, dock.device_choice.value = 3, "cpu"
    click(qtbot, dock.run_button, dock)
    assert dock.status.value.startswith("Done"), dock.status.value
    assert "colour bar" not in dock.status.value
    assert not [layer.name for layer in viewer.layers if "shift" in layer.name]
    assert not dock.line_canvas.isHidden()
    (line,) = dock.line_ax.get_lines()
    x = line.get_xdata()
    assert len(x) == 24 and np.allclose(np.diff(x), 0.5)  # nm along the line
    assert dock.line_ax.get_xlabel() == "position (nm)"


def test_a_csv_scan_takes_its_declared_size_and_says_when_the_size_was_inferred(
    make_napari_viewer, qtbot, tmp_path
):
    """A random scan as x, y, value CSV whose last rows the probe never reached: its grid was
    only as large as the furthest position (40 × 36 px of a 48 × 40 scan), silently. A sidecar
    'scan.csv.json' with {"scan_shape": [rows, cols]} (or a Direct Electron 'scan_info.txt')
    now gives the grid; without one the completer says the grid was inferred and how to set
    it."""
    import json

    truth = _smooth_image((48, 40))
    rng = np.random.default_rng(4)
    rows, cols = rng.integers(0, 40, 300), rng.integers(0, 36, 300)  # not the last 8 rows
    table = "x,y,counts\n" + "".join(
        f"{c},{r},{truth[r, c]:.6f}\n" for r, c in zip(rows, cols, strict=True)
    )
    (tmp_path / "scan.csv").write_text(table)
    viewer = make_napari_viewer()
    (layer,) = open_file(viewer, tmp_path / "scan.csv")
    assert layer.data.shape == (40, 36)
    dock = open_tool(viewer, "Partial-scan completer")
    assert "The grid (40 × 36 px) is as large as the furthest measured position" in (
        dock.status.value
    )
    click(qtbot, dock.run_button, dock)
    assert dock.status.value.startswith("Done"), dock.status.value
    assert "scan.csv does not declare the scan's size" in dock.status.value
    assert viewer.layers["scan completed"].data.shape == (40, 36)

    (tmp_path / "scan.csv.json").write_text(json.dumps({"scan_shape": [48, 40]}))
    viewer2 = make_napari_viewer()
    (layer2,) = open_file(viewer2, tmp_path / "scan.csv")
    assert layer2.data.shape == (48, 40)
    assert np.isnan(layer2.data[40:]).all()
    dock2 = open_tool(viewer2, "Partial-scan completer")
    assert "NaN pixels" in dock2.status.value and "The grid" not in dock2.status.value


def test_atom_rings_too_small_to_read_are_drawn_faint_until_zoomed_in(make_napari_viewer, qtbot):
    """At full view of a 4096² frame the Atom finder's 29,557 rings (each under 2 screen px)
    covered the image like a red carpet. While a ring would be under 4 screen px the layer is
    now drawn faint (the image stays readable) and the status says why; zoomed in, the rings
    are drawn at their own opacity, at the same positions. An opacity the user sets is kept."""
    from napari_microml.atoms.widget import CROWDED_OPACITY, ring_screen_px
    from napari_microml.runtime.widget import viewer_camera

    viewer = make_napari_viewer()
    viewer.open_sample("napari-microml", "lattice")
    camera = viewer_camera(viewer)
    dock = open_tool(viewer, "Atom finder")
    dock.device_choice.value = "cpu"
    camera.zoom = camera.zoom / 8  # the whole frame small, as a 4096² one is
    click(qtbot, dock.run_button, dock)
    points = viewer.layers[f"{dock.image_layer.value.name} atoms"]
    found = np.asarray(points.data).copy()
    assert len(found) > 100
    assert ring_screen_px(viewer, points) < 4
    assert points.opacity == pytest.approx(CROWDED_OPACITY)
    assert "drawn faint; zoom in to see them" in dock.status.value, dock.status.value

    camera.zoom = camera.zoom * 16
    assert ring_screen_px(viewer, points) >= 4
    assert points.opacity == pytest.approx(1.0)
    np.testing.assert_array_equal(points.data, found)

    camera.zoom = camera.zoom / 16
    points.opacity = 0.6  # the user's own choice while faint
    camera.zoom = camera.zoom * 16
    assert points.opacity == pytest.approx(0.6)


@pytest.mark.realdata
def test_a_random_scans_position_file_opens_its_scan_or_says_what_to_open(
    shared_data, make_napari_viewer, qtbot, tmp_path
):
    """File > Open on the Direct Electron ROI_Random_Scan_scan_coordinates.csv (no header: x, y
    per line) answered only napari's "Reader 'napari-microml' … refused the file". It now opens
    the random scan of the movie beside it (as opening the movie does), and alone it says the
    file holds positions only and which movie to open."""
    formats = shared_data / "formats"
    for name in ("movie.mrc", "scan_coordinates.csv", "info.txt"):
        (tmp_path / f"ROI_Random_Scan_{name}").symlink_to(formats / f"ROI_Random_Scan_{name}")
    viewer = make_napari_viewer()
    layers = open_file(viewer, tmp_path / "ROI_Random_Scan_scan_coordinates.csv")
    assert "ROI_Random_Scan sparse" in [layer.name for layer in layers]
    assert viewer.layers["ROI_Random_Scan sparse"].data.shape == (32, 16)  # Scan - Size Y, X
    dock = open_tool(viewer, "Partial-scan completer")
    assert dock.mode.value == "Complete measured data"

    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "ROI_Random_Scan_scan_coordinates.csv").symlink_to(
        formats / "ROI_Random_Scan_scan_coordinates.csv"
    )
    with pytest.raises(
        Exception, match=r"holds only the scan positions.*ROI_Random_Scan_movie\.mrc"
    ):
        viewer.open(str(alone / "ROI_Random_Scan_scan_coordinates.csv"), plugin="napari-microml")


def test_the_shift_vae_says_when_a_few_spectra_cannot_pin_the_shifts(
    make_napari_viewer, qtbot, tmp_path
):
    """EELS_SI.dm4 (a 2 × 2 spectrum image) gave "shifts span 1.43 eV" like any other map:
    with 4 spectra the content latents alone can reproduce each spectrum, so the shift is not
    pinned down. The status now says so (under 16 spectra)."""
    from vendor_files import write_hspy

    e = -5.0 + 0.1 * np.arange(160)
    centres = np.array([[0.0, 0.2, 0.4], [0.1, 0.3, 0.5]])[..., None]
    data = (2000 * np.exp(-0.5 * ((e - centres) / 0.5) ** 2) + 20).astype(np.float32)
    axes = [
        ("y", 1.0, 0.0, "nm", True),
        ("x", 1.0, 0.0, "nm", True),
        ("Energy loss", 0.1, -5.0, "eV", False),
    ]
    write_hspy(tmp_path / "six.hspy", data, axes, "EELS")
    viewer = make_napari_viewer()
    open_file(viewer, tmp_path / "six.hspy")
    dock = open_tool(viewer, "Spectral shift-VAE")
    dock.epochs.value, dock.device_choice.value = 3, "cpu"
    click(qtbot, dock.run_button, dock)
    assert dock.status.value.startswith("Done"), dock.status.value
    assert "Only 6 spectra: too few for the network to tell a shift" in dock.status.value


def test_the_zero_filled_scan_not_its_mask_is_completed_whatever_was_opened_first(
    make_napari_viewer, qtbot, tmp_path
):
    """truth-1 × mask-1 and mask-1 itself (a blurred trace of 11 levels, 82.5 % zeros) opened
    mask first: the dock took the mask, the first image, for the zero-filled scan and
    'completed' it. A mask's few levels are not a measured signal, and the scan is looked for
    from the selected (last opened) layer down."""
    import tifffile
    from scipy.ndimage import gaussian_filter

    truth = _smooth_image()
    mask = np.zeros(truth.shape, bool)
    mask[::8, :] = True
    trace = np.round(gaussian_filter(mask.astype(float), 0.7) * 10) / 16  # 4 levels, 62 % zeros
    tifffile.imwrite(tmp_path / "trace_mask.tif", trace.astype(np.float32))
    tifffile.imwrite(tmp_path / "scan.tif", np.where(mask, truth, 0).astype(np.float32))
    viewer = make_napari_viewer()
    open_file(viewer, tmp_path / "trace_mask.tif")
    open_file(viewer, tmp_path / "scan.tif")
    dock = open_tool(viewer, "Partial-scan completer")
    assert dock.mode.value == "Complete measured data"
    assert dock.sparse_layer.value.name == "scan", dock.status.value

    # the mask alone is not a zero-filled scan: its non-zero pixels take 3 levels
    viewer2 = make_napari_viewer()
    open_file(viewer2, tmp_path / "trace_mask.tif")
    assert open_tool(viewer2, "Partial-scan completer").mode.value == "Simulate"


def test_a_strain_profile_on_a_calibrated_image_is_plotted_in_nm(make_napari_viewer, qtbot):
    """A line drawn for a profile on Acquisition_18 (0.01225 nm/px, the scale bar in nm) gave
    'distance along the line (px)' from 0 to 1150: the user reads nm everywhere else. On a
    calibrated image the profile is now plotted in nm."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-microml", "lattice")
    image = viewer.layers["synthetic lattice"]
    nm = float(image.scale[-1])
    line = np.array([[40.0, 20.0], [40.0, 220.0]])  # 200 px along a row
    viewer.add_shapes(
        [line], shape_type="line", name="profile", scale=image.scale, units=image.units
    )
    dock = open_tool(viewer, "Lattice analysis")
    dock.shapes_layer.value = viewer.layers["profile"]
    click(qtbot, dock.run_button, dock)
    assert dock.status.value.startswith("Done"), dock.status.value
    ax = dock.figure.axes[-1]
    assert ax.get_xlabel() == "distance along the line (nm)"
    x = np.concatenate([line2d.get_xdata() for line2d in ax.get_lines()])
    assert 150 * nm < x.max() <= 200 * nm + 1e-6


def test_a_runs_result_is_framed_with_each_layer_once(make_napari_viewer, qtbot, monkeypatch):
    """DKL on the spectrum-image sample alone takes the cube as structure and as source, so the
    layers framed after its first result held the cube twice. napari builds a LayerList from
    such a list when asked to fit the view to it (``fit_to_view(layers=…)``), and that raises
    "Layer 'synthetic spectrum image' is already present in layer list": the message s19 saw
    once in 8 runs, with the view left unframed. Each layer is now framed once, and napari's own
    fit accepts the list."""
    import napari_microml.runtime.widget as runtime_widget

    framed_lists = []
    fit = runtime_widget.fit_view_to

    def spy(viewer, layers, **kwargs):
        framed_lists.append(list(layers))
        viewer.fit_to_view(layers=[getattr(layer, "__wrapped__", layer) for layer in layers])
        return fit(viewer, layers, **kwargs)

    monkeypatch.setattr(runtime_widget, "fit_view_to", spy)
    viewer = make_napari_viewer()
    viewer.open_sample("napari-microml", "spectrum_image")
    dock = open_tool(viewer, "Active learning (DKL)")
    dock.device_choice.value = "cpu"
    assert dock.source_layer.value is dock.structure_layer.value  # one cube, both roles
    click(qtbot, dock.init_button, dock)
    assert dock.status.value.startswith("Step"), dock.status.value
    (shown,) = framed_lists
    names = [layer.name for layer in shown]
    assert names.count("synthetic spectrum image") == 1, names
