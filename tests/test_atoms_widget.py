"""The Atom finder driven in a real napari viewer, as a user would."""

import numpy as np
import pytest

from napari_microml.atoms.widget import AtomFinderWidget
from napari_microml.synth.lattice import simulate_lattice


def _image(shape=(160, 160), seed=2):
    return simulate_lattice(
        shape, scene="crystal", lattice="square", spacing=10, dose=1000, seed=seed
    ).image


@pytest.fixture
def widget_and_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = viewer.add_image(_image(), name="haadf", scale=(0.02, 0.02), units=("nm", "nm"))
    widget = AtomFinderWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image_layer.value = layer
    return widget, viewer


def _run(widget, qtbot, timeout=60_000):
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)


def test_run_creates_points_with_features_scale_and_provenance(widget_and_viewer, qtbot):
    widget, viewer = widget_and_viewer
    widget.show_probability.value = True
    _run(widget, qtbot)
    pts = viewer.layers["haadf atoms"]
    assert len(pts.data) > 150
    for col in ("score", "intensity", "sigma", "position_std", "fit_ok"):
        assert col in pts.features.columns
    np.testing.assert_allclose(pts.scale, (0.02, 0.02))
    assert [str(u) for u in pts.units] == ["nanometer", "nanometer"]
    prov = pts.metadata["napari_microml"]
    assert (
        prov["tool"] == "atom_finder" and prov["model"]["sha256"] and prov["input_layer"] == "haadf"
    )
    assert "haadf atom probability" in viewer.layers
    assert widget.ran_on.value.startswith("cpu")
    # a rerun updates the same layer instead of stacking copies
    n_layers = len(viewer.layers)
    _run(widget, qtbot)
    assert len(viewer.layers) == n_layers


def test_cancel_leaves_no_new_layer(widget_and_viewer, qtbot):
    widget, viewer = widget_and_viewer
    viewer.layers["haadf"].data = np.tile(_image((256, 256)), (8, 1, 1))  # a stack: many yields
    before = [layer.name for layer in viewer.layers]
    widget.run_button.native.click()
    assert widget.run_button.text == "Cancel"
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    assert [layer.name for layer in viewer.layers] == before
    assert "Cancel" in widget.status.value


def test_refine_points_refits_the_edited_set(widget_and_viewer, qtbot):
    widget, viewer = widget_and_viewer
    _run(widget, qtbot)
    pts = viewer.layers["haadf atoms"]
    original = pts.data.copy()
    moved = original.copy()
    moved[0] += 0.6  # the user drags a point off its column
    pts.data = moved[:-5]  # ...and deletes five points
    widget.refine_button.native.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=30_000)
    assert len(pts.data) == len(original) - 5
    assert np.abs(pts.data[0] - original[0]).max() < 0.2
    assert len(pts.features) == len(pts.data)


def test_stack_gives_one_points_layer_with_frame_axis(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.stack([_image((96, 96), s) for s in range(3)]), name="movie")
    widget = AtomFinderWidget(viewer)
    widget.image_layer.value = layer
    _run(widget, qtbot)
    pts = viewer.layers["movie atoms"]
    assert pts.data.shape[1] == 3 and set(np.unique(pts.data[:, 0])) == {0, 1, 2}
    assert "frame" in pts.features


def test_rgb_layer_gives_a_clear_message(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((64, 64, 3), np.uint8), rgb=True, name="photo")
    widget = AtomFinderWidget(viewer)
    widget.image_layer.value = layer
    widget.run_button.native.click()
    assert not widget.busy and "RGB" in widget.status.value
    assert "photo atoms" not in viewer.layers


def test_screenshot_renders(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    layer = viewer.add_image(_image(), name="haadf")
    widget = AtomFinderWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image_layer.value = layer
    _run(widget, qtbot)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot.ndim == 3 and shot[..., :3].std() > 5
    red = (shot[..., 0] > 200) & (shot[..., 1] < 120)  # the red point borders are drawn
    assert red.sum() > 100


def test_choosing_a_model_uses_its_recorded_threshold(widget_and_viewer):
    from napari_microml.nets.registry import list_models

    widget, _ = widget_and_viewer
    for name, entry in list_models("atoms").items():
        widget.model.value = name.removeprefix("atoms-")
        assert widget.threshold.value == pytest.approx(
            entry["meta"].get("recommended_threshold", 0.5)
        )


def test_wide_lattice_is_rescaled_unless_the_user_turns_it_off(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    img = simulate_lattice(
        (480, 480), scene="crystal", lattice="square", spacing=48, dose=1000, seed=3
    ).image
    layer = viewer.add_image(img, name="wide")
    widget = AtomFinderWidget(viewer)
    widget.image_layer.value = layer
    counts = {}
    for mode in ("auto", "always", "off"):
        widget.rescale.value = mode
        _run(widget, qtbot)
        pts = viewer.layers["wide atoms"]
        counts[mode] = len(pts.data)
        assert pts.metadata["napari_microml"]["parameters"]["rescale"] == mode
        # the status line says when the network ran on a resampled copy, and only then
        assert ("resampled" in widget.status.value) == (mode != "off"), widget.status.value
    assert 60 <= counts["auto"] <= 130 and counts["off"] != counts["auto"], counts  # ~100 columns
    assert counts["always"] == counts["auto"]  # outside the range both bring the period to 14 px


def test_resample_note_names_the_factor_and_the_period_only_when_resampled():
    from napari_microml.runtime.widget import resample_note

    assert resample_note({"zoom": 1.0, "estimated_period_px": 12.0}) == ""
    note = resample_note({"zoom": 0.2917, "estimated_period_px": 48.0})
    assert "×0.2917" in note and "48 px → 14 px" in note
    assert "period" not in resample_note(
        {"zoom": 0.5, "estimated_period_px": None}
    )  # a factor the user gave
