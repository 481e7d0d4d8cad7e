"""The Defect segmenter driven in a real napari viewer, as a user would."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from napari_microml.defects.classes import CLASS_COLORS, CLASS_NAMES
from napari_microml.defects.widget import DefectSegmenterWidget
from napari_microml.runtime.widget import viewer_camera
from napari_microml.synth.defects import simulate_defects

HELD_OUT = 5_700_000  # training uses seeds 1,000,000+, validation 9,000,000+
SCALE, TRANSLATE = (0.02, 0.02), (1.0, 2.0)


@pytest.fixture(scope="module")
def sample():
    return simulate_defects(
        (192, 192),
        seed=HELD_OUT,
        dose=500,
        scene="crystal",
        lattice="square",
        spacing=11,
        contrast="bright",
    )


@pytest.fixture
def widget_and_viewer(make_napari_viewer, sample):
    viewer = make_napari_viewer()
    layer = viewer.add_image(
        sample.image, name="haadf", scale=SCALE, translate=TRANSLATE, units=("nm", "nm")
    )
    widget = DefectSegmenterWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image_layer.value = layer
    widget.device_choice.value = "cpu"
    return widget, viewer


def _run(widget, qtbot, timeout=90_000):
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=timeout)
    assert not widget.status.value.startswith(("Failed", "Cannot")), widget.status.value


def test_run_creates_labels_environments_and_table(widget_and_viewer, qtbot, sample):
    widget, viewer = widget_and_viewer
    _run(widget, qtbot)
    labels = viewer.layers["haadf defects"]
    table = widget.table_dock.table
    assert len(table) > 0 and set(table["class"]) <= set(CLASS_NAMES)
    # the planted vacancies are found as vacancies
    vac = sample.objects[sample.objects["class"] == "vacancy"][["row", "col"]].to_numpy()
    found = table[table["class"] == "vacancy"][["row", "col"]].to_numpy()
    assert len(vac) >= 2 and len(found)
    assert (cKDTree(found).query(vac)[0] < 5).mean() >= 0.5
    # every instance is drawn in the fixed colour of its class; features say its class
    for lab, cls in zip(table["label"], table["class"], strict=True):
        np.testing.assert_allclose(
            labels.colormap.map(np.array([lab]))[0], CLASS_COLORS[cls], atol=1e-3
        )
        assert labels.features.set_index("index").loc[lab, "class"] == cls
    assert set(np.unique(labels.data)) - {0} == set(table["label"])
    np.testing.assert_allclose(labels.scale, SCALE)
    np.testing.assert_allclose(labels.translate, TRANSLATE)
    prov = labels.metadata["napari_microml"]
    assert (
        prov["tool"] == "defect_segmenter"
        and prov["model"]["sha256"]
        and prov["input_layer"] == "haadf"
    )
    # environment classes on the segmenter's own atom columns
    env = viewer.layers["haadf environments"]
    assert len(env.data) > 100
    for col in ("environment", "probability", "unusualness", "unusual"):
        assert col in env.features.columns
    assert env.features["environment"].nunique() >= 1
    # table dock: counts per class on top (every class), then one row per defect
    dock = widget.table_dock
    summary = [dock.summary.item(i, 0).text() for i in range(dock.summary.rowCount())]
    assert summary[: len(CLASS_NAMES)] == list(CLASS_NAMES)
    n_vac = int((table["class"] == "vacancy").sum())
    assert dock.summary.item(CLASS_NAMES.index("vacancy"), 1).text() == str(n_vac)
    assert dock.defects.rowCount() == len(table)
    assert widget.ran_on.value.startswith("cpu")
    # a rerun updates the same layers and the same dock
    n_layers, first_dock = len(viewer.layers), widget.table_dock
    widget.threshold.value = 0.7
    _run(widget, qtbot)
    assert len(viewer.layers) == n_layers and widget.table_dock is first_dock


def test_table_row_click_centres_the_view(widget_and_viewer, qtbot):
    from qtpy.QtCore import Qt

    widget, viewer = widget_and_viewer
    _run(widget, qtbot)
    table, grid = widget.table_dock.table, widget.table_dock.defects
    assert len(table) >= 2
    for i in (len(table) - 1, 0):
        grid.scrollToItem(grid.item(i, 0))
        rect = grid.visualItemRect(grid.item(i, 0))
        qtbot.mouseClick(grid.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
        want = np.array([table["row"][i], table["col"][i]]) * SCALE + TRANSLATE
        np.testing.assert_allclose(viewer_camera(viewer).center[-2:], want, atol=1e-6)


def test_export_csv_has_provenance_header(widget_and_viewer, qtbot, tmp_path):
    widget, _ = widget_and_viewer
    _run(widget, qtbot)
    path = widget.table_dock.export_csv(tmp_path / "defects.csv")
    lines = open(path, encoding="utf-8").read().splitlines()
    header = [line for line in lines if line.startswith("# ")]
    prov = json.loads(next(line for line in header if line.startswith("# provenance: "))[14:])
    assert prov["napari_microml"]["tool"] == "defect_segmenter"
    assert prov["napari_microml"]["model"]["sha256"]
    assert any(line.startswith("# count vacancy: ") for line in header)
    assert "# pixel_size_nm: 0.02" in header
    back = pd.read_csv(path, comment="#")
    assert len(back) == len(widget.table_dock.table)
    assert list(back["class"]) == list(widget.table_dock.table["class"])


def test_cancel_leaves_no_new_layer(widget_and_viewer, qtbot, sample):
    widget, viewer = widget_and_viewer
    viewer.layers["haadf"].data = np.tile(sample.image, (8, 1, 1))  # a stack: one yield per frame
    before = [layer.name for layer in viewer.layers]
    widget.run_button.native.click()
    assert widget.run_button.text == "Cancel"
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=90_000)
    assert [layer.name for layer in viewer.layers] == before
    assert "Cancel" in widget.status.value and widget.table_dock is None


def test_user_edited_atoms_layer_is_used(widget_and_viewer, qtbot, sample):
    widget, viewer = widget_and_viewer
    pts = sample.positions[::2]  # the user kept every second column
    viewer.add_points(pts, name="my atoms", scale=SCALE, translate=TRANSLATE)
    widget.atoms_layer.reset_choices()
    widget.atoms_layer.value = viewer.layers["my atoms"]
    widget.env_classes.value = "3"
    _run(widget, qtbot)
    env = viewer.layers["haadf environments"]
    np.testing.assert_allclose(env.data, pts, atol=1e-9)
    assert env.features["environment"].nunique() == 3
    assert env.metadata["napari_microml"]["atoms_layer"] == "my atoms"
    assert (
        viewer.layers["haadf defects"].metadata["napari_microml"]["parameters"]["atoms"] == "given"
    )
    # nearest-atom distances were measured to the user's columns
    t = widget.table_dock.table
    d = cKDTree(pts).query(t[["row", "col"]].to_numpy())[0]
    np.testing.assert_allclose(t["nearest_atom_px"], d, rtol=1e-6)


def test_environments_off_and_rgb_message(make_napari_viewer, qtbot, sample):
    viewer = make_napari_viewer()
    layer = viewer.add_image(sample.image[:96, :96], name="crop")
    widget = DefectSegmenterWidget(viewer)
    widget.image_layer.value = layer
    widget.env_classes.value = "off"
    _run(widget, qtbot)
    assert "crop defects" in viewer.layers and "crop environments" not in viewer.layers
    assert "off" in widget.status.value
    photo = viewer.add_image(np.zeros((64, 64, 3), np.uint8), rgb=True, name="photo")
    widget.reset_choices()
    widget.image_layer.value = photo
    widget.run_button.native.click()
    assert not widget.busy and "RGB" in widget.status.value


def test_screenshot_renders_class_colours(make_napari_viewer, qtbot, sample):
    viewer = make_napari_viewer(show=True)
    layer = viewer.add_image(sample.image, name="haadf")
    widget = DefectSegmenterWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image_layer.value = layer
    widget.env_classes.value = "off"
    _run(widget, qtbot)
    table = widget.table_dock.table
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot.ndim == 3 and shot[..., :3].std() > 5
    cls = table["class"].value_counts().index[0]  # the commonest class must be visible
    target = np.array(CLASS_COLORS[cls][:3])
    rgb = shot[..., :3] / 255.0
    # labels are blended at 60 % over the grey image: look for pixels tinted towards the colour
    tint = rgb - rgb.mean(-1, keepdims=True)
    want = target - target.mean()
    close = (tint @ want) / (np.linalg.norm(want) ** 2) > 0.3
    assert close.sum() > 20


def test_stack_gives_one_layer_each_and_row_click_shows_the_frame(
    make_napari_viewer, qtbot, sample
):
    viewer = make_napari_viewer()
    movie = np.stack([sample.image[:96, :96], sample.image[96:, 96:]])
    layer = viewer.add_image(movie, name="movie")
    widget = DefectSegmenterWidget(viewer)
    widget.image_layer.value = layer
    _run(widget, qtbot)
    assert viewer.layers["movie defects"].data.shape == movie.shape
    env = viewer.layers["movie environments"]
    assert env.data.shape[1] == 3 and set(np.unique(env.data[:, 0])) == {0, 1}
    table = widget.table_dock.table
    assert "frame" in table.columns and set(table["frame"]) == {0, 1}
    i = int(np.flatnonzero(table["frame"].to_numpy() == 1)[0])
    widget.table_dock.defects.setCurrentCell(i, 0)
    assert viewer.dims.point[0] == 1
    np.testing.assert_allclose(
        viewer_camera(viewer).center[-2:], table.loc[i, ["row", "col"]].to_numpy(float)
    )


def test_dark_uint16_image_and_impossible_class_count(make_napari_viewer, qtbot, sample):
    """ABF-like dark columns stored as uint16; asking for more classes than the columns allow
    still writes the defects and says why the environments were skipped."""
    viewer = make_napari_viewer()
    dark = (60000 - 20000 * sample.image / sample.image.max()).astype(np.uint16)
    layer = viewer.add_image(dark, name="abf")
    widget = DefectSegmenterWidget(viewer)
    widget.image_layer.value = layer
    widget.contrast.value = "dark"
    _run(widget, qtbot)
    env = viewer.layers["abf environments"]
    assert len(env.data) > 100 and env.features["environment"].nunique() >= 1
    viewer.layers.remove("abf environments")
    crop = viewer.add_image(dark[:40, :40], name="tiny")
    widget.reset_choices()
    widget.image_layer.value = crop
    widget.env_classes.value = "8"
    _run(widget, qtbot)
    assert "tiny defects" in viewer.layers and "tiny environments" not in viewer.layers
    assert "environments skipped" in widget.status.value or "too few" in widget.status.value


def test_wide_lattice_is_rescaled_and_labels_come_back_on_the_image_grid(make_napari_viewer, qtbot):
    s = simulate_defects(
        (480, 480),
        seed=HELD_OUT + 5,
        dose=500,
        scene="crystal",
        lattice="square",
        spacing=40,
        contrast="bright",
    )
    viewer = make_napari_viewer()
    layer = viewer.add_image(s.image, name="wide")
    widget = DefectSegmenterWidget(viewer)
    widget.image_layer.value = layer
    widget.device_choice.value = "cpu"
    widget.env_classes.value = "off"
    assert widget.rescale.value == "auto"
    _run(widget, qtbot)
    labels = viewer.layers["wide defects"]
    params = labels.metadata["napari_microml"]["parameters"]
    assert (
        labels.data.shape == s.image.shape and params["rescale"] == "auto" and params["zoom"] < 0.5
    )
    assert "resampled" in widget.status.value and "your pixels" in widget.status.value
    point = s.objects[s.objects["class"] != "extended"][["row", "col"]].to_numpy()
    found = widget.table_dock.table[["row", "col"]].to_numpy()
    assert len(point) >= 3 and len(found)
    assert (cKDTree(found).query(point)[0] < 10).mean() >= 0.5  # planted defects found, in image px


def test_every_shipped_model_is_offered_and_the_chosen_one_is_used(make_napari_viewer, qtbot):
    """The model list is 'auto' plus the shipped defect models. On a WS2-like honeycomb, auto runs
    the 'dichalcogenide' network (its sha256 in the layer's provenance) and says so; picking
    'default' overrides it."""
    from napari_microml.nets.registry import list_models

    s = simulate_defects(
        (160, 160),
        seed=HELD_OUT + 4,
        dose=500,
        scene="crystal",
        lattice="dichalcogenide",
        spacing=11,
        contrast="bright",
    )
    viewer = make_napari_viewer()
    layer = viewer.add_image(s.image, name="ws2")
    widget = DefectSegmenterWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image_layer.value = layer
    widget.device_choice.value = "cpu"
    shipped = list_models("defects")
    assert widget.model.value == "auto"
    assert set(widget.model.choices) == {"auto"} | {n.removeprefix("defects-") for n in shipped}
    assert {"default", "dichalcogenide"} <= set(widget.model.choices)
    _run(widget, qtbot)  # auto: this lattice is a honeycomb of unequal sublattices
    prov = viewer.layers["ws2 defects"].metadata["napari_microml"]
    assert prov["model"]["name"] == "defects-dichalcogenide"
    assert prov["model"]["sha256"] == shipped["defects-dichalcogenide"]["sha256"]
    assert prov["parameters"]["model_choice"]["chosen"] == "dichalcogenide"
    assert "Model auto → dichalcogenide" in widget.status.value
    widget.model.value = "default"  # the user overrides the choice
    _run(widget, qtbot)
    prov = viewer.layers["ws2 defects"].metadata["napari_microml"]
    assert prov["model"]["name"] == "defects-default" and prov["parameters"]["model_choice"] is None
    assert "Model auto" not in widget.status.value
