"""Shift-VAE dock before and after a run, on the real LSMO line scans (run under Xvfb): the
greyed window fields show the window Auto window will choose, and the line-scan plot's
position axis is in a unit that reads well."""

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PLUGIN = "napari-microml"


def _open(make_napari_viewer, path):
    viewer = make_napari_viewer()
    layer = viewer.open(str(path), plugin=PLUGIN)[0]
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Spectral shift-VAE")
    w.layer_choice.value = layer
    return viewer, w, layer


def test_auto_window_fields_show_the_window_the_run_will_use(
    make_napari_viewer, qtbot, shared_data
):
    path = shared_data / "spectra" / "LSMO_linescan.hspy"  # core loss, 428.5-721 eV
    _, w, _ = _open(make_napari_viewer, path)
    assert w.auto_window.value and not w.win_lo.enabled
    # the Mn L2,3 edge window (20 eV below the onset to 60 eV above), not the whole axis
    assert (w.win_lo.value, w.win_hi.value) == (611.5, 691.0), (w.win_lo.value, w.win_hi.value)
    assert "611.5–691 eV" in w.win_lo.tooltip and "edge at 63" in w.win_lo.tooltip
    # typing a window with Auto off, then ticking Auto again, shows the automatic one again
    w.auto_window.value = False
    assert w.win_lo.enabled
    w.win_lo.value, w.win_hi.value = 500.0, 560.0
    w.auto_window.value = True
    assert (w.win_lo.value, w.win_hi.value) == (611.5, 691.0)
    # the preview is the run's choice (the run reads every spectrum)
    w.epochs.value, w.device_choice.value = 2, "cpu"
    w.run_button.native.click()
    qtbot.waitUntil(lambda: w.worker is None, timeout=120000)
    assert (w.result.axis[0], w.result.axis[-1]) == (611.5, 691.0), w.status.value


def test_no_feature_shows_the_whole_axis_and_says_so(make_napari_viewer, qtbot):
    from napari_microml.spectra.widget import ShiftVAEWidget

    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    energy = 700.0 + 8.0 * np.arange(64)  # a smooth power law: no peak, no edge
    cube = 1e6 * (energy / 700.0) ** -3.0 * (1 + 0.02 * rng.standard_normal((6, 6, 64)))
    meta = {"napari_microml": {"spectral_axis": {"scale": 8.0, "offset": 700.0, "units": "eV"}}}
    layer = viewer.add_image(cube, name="power law", metadata=meta)
    w = ShiftVAEWidget(viewer)
    w.layer_choice.value = layer
    assert (w.win_lo.value, w.win_hi.value) == (700.0, 1204.0)
    assert "no peak or edge stands out" in w.win_lo.tooltip
    assert "no peak or edge stands out" in w.status.value and "untick" in w.status.value


def test_line_scan_positions_are_in_nm_for_a_125_nm_scan(make_napari_viewer, qtbot, shared_data):
    path = shared_data / "spectra" / "LSMO_linescan_low_loss.hspy"  # 40 × 3.22 nm, stored in µm
    _, w, layer = _open(make_napari_viewer, path)
    assert layer.metadata["napari_microml"]["line_axis"]["units"] == "nm"  # the reader's unit
    w.epochs.value, w.device_choice.value = 2, "cpu"
    w.run_button.native.click()
    qtbot.waitUntil(lambda: w.worker is None, timeout=120000)
    qtbot.waitUntil(lambda: not w.line_canvas.isHidden(), timeout=10000)
    assert w.line_ax.get_xlabel() == "position (nm)"
    x = w.line_ax.lines[0].get_xdata()
    np.testing.assert_allclose(x[[0, 1, -1]], [0.0, 3.219, 125.54], atol=0.01)


def test_readable_length_picks_the_unit_of_the_span():
    from napari_microml.spectra.widget import readable_length

    x, u = readable_length(np.arange(40) * 0.0032190168276429176, "µm")
    assert u == "nm" and x[-1] == pytest.approx(125.5417)
    x, u = readable_length(np.array([0.0, 1500.0]), "nm")
    assert u == "µm" and x[-1] == pytest.approx(1.5)
    x, u = readable_length(np.array([0.0, 0.5]), "µm")
    assert u == "nm" and x[-1] == pytest.approx(500.0)
    x, u = readable_length(np.array([0.0, 12.0]), "nm")
    assert u == "nm" and x[-1] == pytest.approx(12.0)
    x, u = readable_length(np.arange(4.0), "spectrum")  # no record: spectrum numbers
    assert u == "spectrum" and x[-1] == 3.0
