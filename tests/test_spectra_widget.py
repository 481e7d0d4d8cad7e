"""Shift-VAE dock widget driven in a real napari viewer (run under Xvfb)."""

import numpy as np
import pytest

from napari_microml.synth.spectra import simulate_spectrum_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _viewer_with_cube(make_napari_viewer, shape=(10, 12), n_channels=48):
    from napari_microml.spectra.widget import ShiftVAEWidget

    viewer = make_napari_viewer()
    cube, axis, true_shift = simulate_spectrum_image(shape, n_channels=n_channels, seed=0)
    step = float(axis[1] - axis[0])
    layer = viewer.add_image(
        cube,
        name="SI",
        scale=(2.0, 2.0, step),
        translate=(5.0, 7.0, float(axis[0])),
        units=("nm", "nm", "eV"),
        metadata={
            "napari_microml": {
                "spectral_axis": {"scale": step, "offset": float(axis[0]), "units": "eV"}
            }
        },
    )
    widget = ShiftVAEWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.layer_choice.value = layer
    widget.epochs.value = 25
    widget.latent_dim.value = 2
    widget.shift_prior.value = 1.0
    widget.device_choice.value = "cpu"
    return viewer, widget, true_shift


def test_widget_run_writes_shift_and_latent_layers(make_napari_viewer, qtbot):
    viewer, widget, true_shift = _viewer_with_cube(make_napari_viewer)
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert "SI shift" in viewer.layers, widget.status.value
    shift = viewer.layers["SI shift"]
    assert shift.data.shape == true_shift.shape
    np.testing.assert_allclose(shift.scale, (2.0, 2.0))
    np.testing.assert_allclose(shift.translate, (5.0, 7.0))
    assert [str(u) for u in shift.units] == ["nanometer", "nanometer"]
    meta = shift.metadata["napari_microml"]
    assert meta["tool"] == "shift_vae" and meta["value_units"] == "eV"
    assert meta["input_layer"] == "SI" and meta["seed"] == 0
    assert np.corrcoef(shift.data.ravel(), true_shift.ravel())[0, 1] > 0.8
    for i in (1, 2):
        lat = viewer.layers[f"SI latent {i}"]
        assert lat.data.shape == true_shift.shape
        np.testing.assert_allclose(lat.scale, (2.0, 2.0))
    assert len(widget.result.loss_history) == 25 and widget.ran_on.value.startswith("cpu")
    assert widget._loss_epochs[-1] == 25  # the loss plot is throttled but ends at the end
    assert len(widget.traverse_ax.lines) == 7

    # lasso in latent space → Labels layer over the same pixels
    pts = widget._points
    lo, hi = np.percentile(pts, 10, axis=0), np.percentile(pts, 90, axis=0)
    widget.on_lasso_select([(lo[0], lo[1]), (hi[0], lo[1]), (hi[0], hi[1]), (lo[0], hi[1])])
    sel = viewer.layers["SI latent selection"]
    assert sel._type_string == "labels" and sel.data.shape == true_shift.shape
    assert 0 < sel.data.sum() < sel.data.size
    np.testing.assert_allclose(sel.scale, (2.0, 2.0))

    # rerun updates layers instead of stacking copies
    n_layers = len(viewer.layers)
    widget.epochs.value = 2
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert len(viewer.layers) == n_layers
    # one latent: scatter is latent 1 vs shift, the stale "latent 2" map goes away
    widget.latent_dim.value = 1
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert "SI latent 2" not in viewer.layers and len(viewer.layers) == n_layers - 1
    assert widget._points.shape == (true_shift.size, 2)
    assert viewer.screenshot(canvas_only=True).ndim == 3


def test_widget_cancel_leaves_no_layer(make_napari_viewer, qtbot):
    viewer, widget, _ = _viewer_with_cube(make_napari_viewer)
    widget.epochs.value = 2000
    widget.run_button.native.click()
    widget.run_button.native.click()  # Cancel
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert [layer.name for layer in viewer.layers] == ["SI"]
    assert "Cancel" in widget.status.value


def test_widget_bad_layer_warns_without_running(make_napari_viewer, qtbot):
    from napari_microml.spectra.widget import ShiftVAEWidget, spectral_axis_of

    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((16, 16), np.float32), name="flat")
    widget = ShiftVAEWidget(viewer)
    widget.layer_choice.value = layer
    assert spectral_axis_of(layer) == (None, "channel")
    with pytest.raises(ValueError, match="spectral axis"):
        widget.make_job()
    widget.run_button.native.click()
    assert widget.worker is None and "Cannot run" in widget.status.value
    assert [x.name for x in viewer.layers] == ["flat"]


def test_widget_line_scan_layer(make_napari_viewer, qtbot):
    """A (positions, channels) line scan gives a plot along the line and a track layer."""
    from napari_microml.spectra.widget import ShiftVAEWidget
    from napari_microml.synth.spectra import gaussian_peaks

    viewer = make_napari_viewer()
    y, x, _ = gaussian_peaks(30, 40, seed=0)
    step = float(x[1] - x[0])
    layer = viewer.add_image(
        y,
        name="line",
        scale=(0.5, step),
        translate=(1.0, float(x[0])),
        units=("nm", "eV"),
        metadata={
            "napari_microml": {
                "spectral_axis": {"scale": step, "offset": float(x[0]), "units": "eV"}
            }
        },
    )
    widget = ShiftVAEWidget(viewer)
    widget.layer_choice.value = layer
    widget.epochs.value = 3
    widget.device_choice.value = "cpu"
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60000)
    assert "line shift" not in viewer.layers  # no 30×1 strip
    np.testing.assert_allclose(widget.line_ax.lines[0].get_ydata(), widget.result.shift.ravel())
    track = viewer.layers["line shift track"]
    assert track.shape_type == ["path"] and len(track.data[0]) == 30
    np.testing.assert_allclose(track.scale, layer.scale)
