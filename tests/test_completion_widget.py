"""The Partial-scan completer driven in a real napari viewer, as a user would."""

import numpy as np
import pandas as pd
import pytest

from napari_microml.completion.masks import scan_mask
from napari_microml.completion.widget import COMPLETE, POINTS, ScanCompleterWidget
from napari_microml.synth.lattice import simulate_lattice


def _image(shape=(128, 128), seed=3, spacing=9.0):
    return simulate_lattice(
        shape, scene="crystal", lattice="square", spacing=spacing, dose=2000, seed=seed
    ).image


def _run(widget, qtbot, timeout=60_000):
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def _coverage(viewer, name):
    return float(np.asarray(viewer.layers[name].data).astype(bool).mean())


@pytest.fixture
def widget_and_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = viewer.add_image(_image(), name="haadf", scale=(0.02, 0.02), units=("nm", "nm"))
    widget = ScanCompleterWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image_layer.value = layer
    return widget, viewer


def test_simulate_preview_follows_the_controls_and_run_writes_four_layers(widget_and_viewer, qtbot):
    widget, viewer = widget_and_viewer
    assert "haadf scan mask" not in viewer.layers  # opening the widget adds no layer
    widget.coverage.value = 10.0  # the slider moves: the preview appears
    qtbot.waitUntil(lambda: "haadf scan mask" in viewer.layers, timeout=5000)
    assert _coverage(viewer, "haadf scan mask") == pytest.approx(0.10, rel=0.05)
    widget.coverage.value = 20.0  # the slider moves: the preview redraws (debounced)
    qtbot.waitUntil(lambda: abs(_coverage(viewer, "haadf scan mask") - 0.20) < 0.01, timeout=5000)
    before = viewer.layers["haadf scan mask"].data.copy()
    widget.kind.value = "random_walk"
    qtbot.waitUntil(
        lambda: not np.array_equal(viewer.layers["haadf scan mask"].data, before), timeout=5000
    )
    assert _coverage(viewer, "haadf scan mask") == pytest.approx(0.20, rel=0.05)

    _run(widget, qtbot)
    for suffix in ("sparse", "completed", "uncertainty", "|error|"):
        assert f"haadf {suffix}" in viewer.layers
    image = viewer.layers["haadf"].data
    mask = viewer.layers["haadf scan mask"].data.astype(bool)  # the preview is the scanned mask
    completed = viewer.layers["haadf completed"]
    np.testing.assert_array_equal(completed.data[mask], image[mask])
    np.testing.assert_array_equal(viewer.layers["haadf sparse"].data[~mask], 0)
    sigma = viewer.layers["haadf uncertainty"].data
    assert (sigma[mask] == 0).all() and (sigma[~mask] > 0).mean() > 0.9
    np.testing.assert_allclose(viewer.layers["haadf |error|"].data, np.abs(completed.data - image))
    # the RMS error at unmeasured pixels, in % of the image range, is shown and stored
    rms = np.sqrt(np.mean((completed.data - image)[~mask] ** 2)) / np.ptp(image) * 100
    prov = completed.metadata["napari_microml"]
    assert prov["rms_error_unmeasured_percent"] == pytest.approx(rms, rel=1e-4)
    assert 0 < rms < 20 and "RMS" in widget.status.value and f"{rms:.2f}" in widget.status.value
    assert prov["parameters"]["scan_kind"] == "random_walk"
    assert prov["parameters"]["coverage"] == pytest.approx(0.2)
    assert prov["input_layer"] == "haadf" and prov["model"]["name"] == "kriging"  # the default
    assert prov["parameters"]["sigma"] == "measurement" and "re-scan" in widget.status.value
    np.testing.assert_allclose(completed.scale, (0.02, 0.02))
    assert [str(u) for u in completed.units] == ["nanometer", "nanometer"]
    assert widget.ran_on.value.startswith("cpu")
    n_layers = len(viewer.layers)  # a rerun (with every shipped model) updates the layers in place
    from napari_microml.nets.registry import list_models

    shipped = list_models("completion")
    assert set(widget.model.choices) == {n.removeprefix("completion-") for n in shipped} | {
        "kriging",
        "local-gp",
    }
    assert widget.model.choices[0] == "kriging"
    widget.model.value = [c for c in widget.model.choices if c not in ("kriging", "local-gp")][-1]
    _run(widget, qtbot)
    assert len(viewer.layers) == n_layers
    used = viewer.layers["haadf completed"].metadata["napari_microml"]["model"]
    assert used["name"] == f"completion-{widget.model.value}"
    assert used["sha256"] == shipped[used["name"]]["sha256"]


def test_complete_mode_with_sparse_image_and_mask_layers(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    truth = _image(seed=5, spacing=20)  # columns wider than the spiral's arm gaps
    mask = scan_mask("spiral", truth.shape, 0.15, seed=1)
    sparse = viewer.add_image(np.where(mask, truth, 0), name="measured")
    labels = viewer.add_labels(mask.astype(np.uint8), name="where measured")
    widget = ScanCompleterWidget(viewer)
    widget.mode.value = COMPLETE
    widget.sparse_layer.value = sparse
    widget.mask_layer.value = labels
    assert "measured scan mask" not in viewer.layers  # no simulation preview in this mode
    _run(widget, qtbot)
    completed = viewer.layers["measured completed"].data
    np.testing.assert_array_equal(completed[mask], truth[mask])
    assert np.isfinite(completed).all()
    assert (viewer.layers["measured uncertainty"].data[mask] == 0).all()
    # clearly better than filling the holes with the mean of the measured pixels
    err = np.sqrt(np.mean((completed - truth)[~mask] ** 2))
    assert err < 0.75 * np.sqrt(np.mean((truth[mask].mean() - truth)[~mask] ** 2))
    prov = viewer.layers["measured completed"].metadata["napari_microml"]
    assert (
        prov["parameters"]["mode"] == "complete"
        and prov["parameters"]["mask_layer"] == "where measured"
    )


def test_complete_mode_stack_with_one_2d_mask(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    stack = np.stack([_image((64, 64), seed=s) for s in (1, 2)])
    mask = scan_mask("lissajous", (64, 64), 0.2, seed=0)
    sparse = viewer.add_image(stack * mask, name="movie", scale=(1, 0.1, 0.1))
    labels = viewer.add_labels(mask.astype(np.uint8), name="movie mask")
    widget = ScanCompleterWidget(viewer)
    widget.mode.value = COMPLETE
    widget.sparse_layer.value = sparse
    widget.mask_layer.value = labels
    _run(widget, qtbot)
    completed = viewer.layers["movie completed"]
    assert completed.data.shape == (2, 64, 64)
    np.testing.assert_array_equal(completed.data[:, mask], stack[:, mask])
    np.testing.assert_allclose(completed.scale, (1, 0.1, 0.1))


def test_complete_mode_with_a_points_layer_and_value_feature(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    truth = _image((96, 96), seed=6)
    coords = np.argwhere(scan_mask("random", truth.shape, 0.15, seed=2))
    feats = pd.DataFrame({"label": np.arange(len(coords)) % 3, "signal": truth[tuple(coords.T)]})
    pts = viewer.add_points(coords, features=feats, name="probe", scale=(0.5, 0.5))
    widget = ScanCompleterWidget(viewer)
    widget.mode.value = COMPLETE
    widget.source.value = POINTS
    widget.points_layer.value = pts
    widget.feature.reset_choices()
    assert set(widget.feature.choices) >= {"label", "signal"}
    widget.feature.value = "signal"
    _run(widget, qtbot)
    completed = viewer.layers["probe completed"].data
    assert completed.shape == tuple(coords.max(0) + 1)
    np.testing.assert_allclose(completed[tuple(coords.T)], truth[tuple(coords.T)], rtol=1e-6)
    assert "probe uncertainty" in viewer.layers and "probe sparse" in viewer.layers
    np.testing.assert_allclose(viewer.layers["probe completed"].scale, (0.5, 0.5))
    assert (
        viewer.layers["probe completed"].metadata["napari_microml"]["parameters"]["value_feature"]
        == "signal"
    )


def test_cancel_leaves_no_new_layer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    stack = np.stack([_image(seed=s) for s in range(6)])  # a stack: one yield per frame
    mask = scan_mask("grid", stack.shape[1:], 0.05)
    viewer.add_image(stack * mask, name="movie")
    viewer.add_labels(mask.astype(np.uint8), name="grid mask")
    widget = ScanCompleterWidget(viewer)
    widget.mode.value = COMPLETE
    widget.sparse_layer.value = viewer.layers["movie"]
    widget.mask_layer.value = viewer.layers["grid mask"]
    before = [layer.name for layer in viewer.layers]
    widget.run_button.native.click()
    assert widget.run_button.text == "Cancel"
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert [layer.name for layer in viewer.layers] == before
    assert "Cancel" in widget.status.value


@pytest.mark.parametrize("case", ["mismatched", "empty", "all", "rgb"])
def test_bad_input_gives_a_message_and_no_layers(make_napari_viewer, qtbot, case):
    viewer = make_napari_viewer()
    image = _image((64, 64))
    if case == "rgb":
        sparse = viewer.add_image(np.zeros((64, 64, 3), np.uint8), rgb=True, name="measured")
    else:
        sparse = viewer.add_image(image, name="measured")
    mask = {
        "mismatched": np.ones((32, 32)),
        "empty": np.zeros((64, 64)),
        "all": np.ones((64, 64)),
        "rgb": np.ones((64, 64)),
    }[case].astype(np.uint8)
    labels = viewer.add_labels(mask, name="mask")
    widget = ScanCompleterWidget(viewer)
    widget.mode.value = COMPLETE
    widget.sparse_layer.value = sparse
    widget.mask_layer.value = labels
    before = [layer.name for layer in viewer.layers]
    widget.run_button.native.click()  # the mask's values are checked in the worker
    qtbot.waitUntil(lambda: not widget.busy, timeout=30_000)
    words = {
        "mismatched": "same size",
        "empty": "no measured pixel",
        "all": "nothing to complete",
        "rgb": "RGB",
    }[case]
    assert "Cannot run" in widget.status.value and words in widget.status.value
    assert [layer.name for layer in viewer.layers] == before


def test_screenshot_renders(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    layer = viewer.add_image(_image(), name="haadf")
    widget = ScanCompleterWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image_layer.value = layer
    _run(widget, qtbot)
    for name in ("haadf uncertainty", "haadf |error|", "haadf sparse", "haadf scan mask"):
        viewer.layers[name].visible = False
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot.ndim == 3 and shot[..., :3].std() > 5


def test_local_gp_method_from_the_model_picker(widget_and_viewer, qtbot):
    widget, viewer = widget_and_viewer
    widget.coverage.value = 10.0
    assert "local-gp" in widget.model.choices
    widget.model.value = "local-gp"
    _run(widget, qtbot)
    completed = viewer.layers["haadf completed"]
    mask = viewer.layers["haadf scan mask"].data.astype(bool)
    truth = viewer.layers["haadf"].data
    np.testing.assert_array_equal(completed.data[mask], truth[mask])
    assert completed.metadata["napari_microml"]["model"]["name"] == "local-gp"
