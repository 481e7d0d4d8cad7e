"""User journey: an image whose file carries no length calibration gets its pixel size in a dock.

napari has no control for a layer's scale, so before this the Atom finder, Lattice analysis and
Defect segmenter gave an uncalibrated image's lattice parameters, strain profiles and defect
areas in px for good. Each dock now shows a "Pixel size" row for such an image (one shared
implementation); Set calibrates the image layer as the reader calibrates a file, Clear undoes it.
"""

import numpy as np
import pytest
from journey import assert_no_stall, assert_visible, click, open_file, open_tool

from napari_microml.runtime.widget import SET_KEY, pixel_size_from_text

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPACING_PX = 12.0  # the synthetic square lattice's period
PIXEL_PM = 25.0  # the pixel size the user types: a = 300 pm


@pytest.fixture
def uncalibrated_tiff(tmp_path):
    """A 168² square lattice of bright columns saved as a TIFF with no resolution tags."""
    import tifffile

    from napari_microml.synth.render import render_gaussians

    grid = np.arange(6.0, 168.0, SPACING_PX)
    rows, cols = np.meshgrid(grid, grid, indexing="ij")
    positions = np.column_stack([rows.ravel(), cols.ravel()])
    image = render_gaussians((168, 168), positions, 2.0, 1.0)
    noisy = image + np.random.default_rng(0).normal(0, 0.03, image.shape)
    path = tmp_path / "uncalibrated.tif"
    tifffile.imwrite(path, noisy.astype(np.float32))
    return path


def _shown(widget) -> bool:
    """Not hidden in its dock (``visible`` is False for all in a window never shown)."""
    return not widget.native.isHidden()


def _bar_visible(viewer) -> bool:
    return bool(viewer.canvas.overlays.scale_bar.visible)


def test_set_pixel_size_then_lattice_in_pm(make_napari_viewer, qtbot, uncalibrated_tiff, tmp_path):
    """Type 25 pm in the Lattice dock, Run: a = 12 px × 25 pm = 300 pm; every dock sees it; Clear
    returns the image, and the columns found on it, to pixels."""
    viewer = make_napari_viewer()
    [image] = open_file(viewer, uncalibrated_tiff)
    assert str(image.units[-1]) == "pixel"
    tool = open_tool(viewer, "Lattice analysis")
    finder = open_tool(viewer, "Atom finder")
    row = tool.pixel_size
    assert _shown(row) and _shown(row.note) and row.button.text == "Set"
    assert row.note.value.startswith("Not calibrated: results in px.")
    assert "file says" not in row.note.value  # the TIFF gave no number: none is offered

    # a typo is refused with a sentence, the layer untouched
    row.value.value = "abc"
    row.button.native.click()
    assert tool.status.value.startswith("Cannot set the pixel size:"), tool.status.value
    assert str(image.units[-1]) == "pixel" and tuple(image.scale) == (1.0, 1.0)

    # a line drawn on it before (in its pixels) moves with it; another image keeps its pixels
    line = viewer.add_shapes([[[10, 10], [150, 150]]], shape_type="line", name="profile")
    other = viewer.add_image(np.zeros((32, 32), np.float32), name="other")
    tool.image_layer.value = other
    assert row.value.value == "" and "file says" not in row.note.value
    tool.image_layer.value = image
    viewer.layers.remove(other)  # (with two px images a drawn line's image would be a guess)

    row.value.value = str(PIXEL_PM)
    row.unit.value = "pm"
    assert "Set makes it 25 pm/px, 4.2 nm wide" in row.note.value, row.note.value
    row.button.native.click()
    assert np.allclose(image.scale, PIXEL_PM / 1000) and str(image.units[-1]) == "nanometer"
    assert image.metadata["napari_microml"][SET_KEY]["nm_per_pixel"] == pytest.approx(0.025)
    assert tool.status.value.startswith("Pixel size set: 25 pm per pixel"), tool.status.value
    assert _bar_visible(viewer)
    assert np.allclose(line.scale, 0.025) and str(line.units[-1]) == "nanometer"
    # the other dock on the same image reads it as calibrated and offers Clear
    assert finder.pixel_size.button.text == "Clear" and _shown(finder.pixel_size)

    stall = click(qtbot, tool.run_button, tool)
    assert_no_stall(stall)
    assert tool.status.value.startswith("Done: "), tool.status.value
    L = tool.run_result.lattice.lattice
    assert L["a_pm"] == pytest.approx(SPACING_PX * PIXEL_PM, rel=0.01), L
    assert L["b_pm"] == pytest.approx(SPACING_PX * PIXEL_PM, rel=0.01), L
    assert " pm," in tool.summary.value, tool.summary.value
    points = viewer.layers[f"{image.name} atoms"]
    assert str(points.units[-1]) == "nanometer" and np.allclose(points.scale, 0.025)
    assert_visible(viewer, points, screenshot=tmp_path / "calibrated_lattice.png")

    # Clear (in any dock): the image and the columns made from it are in pixels again
    finder.pixel_size.button.native.click()
    assert tuple(image.scale) == (1.0, 1.0) and str(image.units[-1]) == "pixel"
    assert np.allclose(points.scale, 1.0) and str(points.units[-1]) == "pixel"
    assert SET_KEY not in image.metadata["napari_microml"]
    assert row.button.text == "Set" and finder.status.value.startswith("Pixel size cleared")
    assert not _bar_visible(viewer)


def test_calibrated_image_shows_no_pixel_size_row(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64), np.float32), scale=(0.02, 0.02), units=("nm", "nm"))
    for name in ("Atom finder", "Lattice analysis", "Defect segmenter"):
        row = open_tool(viewer, name).pixel_size
        assert not _shown(row) and not _shown(row.note), name


def test_pixel_size_text():
    assert pixel_size_from_text("9.33", unit="pm", width_px=512) == pytest.approx(0.00933)
    assert pixel_size_from_text("0,5", unit="Å", width_px=512) == pytest.approx(0.05)
    assert pixel_size_from_text("9.33 pm", unit="nm", width_px=512) == pytest.approx(0.00933)
    assert pixel_size_from_text("51.2", unit="nm field", width_px=512) == 0.1
    for bad in ("", "-1", "9.33 eV", "0.00933 pm"):  # the last: a 5 fm-wide image
        with pytest.raises(ValueError):
            pixel_size_from_text(bad, unit="nm", width_px=512)


def test_abf_file_number_set_as_nm_gives_srtio3(make_napari_viewer, qtbot, shared_data):
    """stem_abf_data.hspy says 0.009326 per pixel with no unit (9.33 pm/px by the data README).
    The dock says the number and the field each unit would give; taken as nm, the Lattice dock
    reports SrTiO3 along [110]: b = a = 390.5 pm, a = a/√2 (within a STEM calibration's 1 %)."""
    viewer = make_napari_viewer()
    [image] = open_file(viewer, shared_data / "formats" / "stem_abf_data.hspy")
    tool = open_tool(viewer, "Defect segmenter")
    lattice = open_tool(viewer, "Lattice analysis")
    row = lattice.pixel_size
    note = row.note.value
    assert "The file says 0.009326/px with no unit: a field 4.78 nm in nm" in note, note
    assert "0.478 nm in Å" in note and "4.78 pm in pm" in note, note
    assert row.value.value == "0.00932627"  # offered, not applied
    assert str(image.units[-1]) == "pixel"
    row.unit.value = "nm"
    row.button.native.click()
    assert tool.pixel_size.button.text == "Clear"
    assert click(qtbot, lattice.run_button, lattice) < 1.0
    L = lattice.run_result.lattice.lattice
    assert L["b_pm"] == pytest.approx(390.5, rel=0.01), L
    assert L["a_pm"] * np.sqrt(2) == pytest.approx(390.5, rel=0.01), L
    assert _bar_visible(viewer)


def test_a_line_drawn_beside_two_pixel_images_is_left_and_said(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    first = viewer.add_image(np.zeros((64, 64), np.float32), name="first")
    viewer.add_image(np.zeros((64, 64), np.float32), name="second")
    line = viewer.add_shapes([[[5, 5], [50, 50]]], shape_type="line", name="profile")
    tool = open_tool(viewer, "Atom finder")
    tool.image_layer.value = first
    tool.pixel_size.value.value = "0.02"
    tool.pixel_size.button.native.click()
    assert np.allclose(first.scale, 0.02) and tuple(line.scale) == (1.0, 1.0)
    assert "Left in pixels: 'profile'" in tool.status.value, tool.status.value
