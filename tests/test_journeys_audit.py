"""Bugs found by the session-15 audit (a microscopist's use of every tool on the real files),
each kept as a strict xfail: the test states what the user should get and starts passing (so the
xfail marker must go) when the bug is fixed. Details and screenshots: notes/s15/H.md."""

from __future__ import annotations

import numpy as np
import pytest
from journey import open_file, open_tool

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_calibrated_file_without_a_unit_never_gets_a_scaled_pixel_axis(shared_data):
    import npe2

    from napari_microml.io.reader import read_file

    npe2.PluginManager.instance().discover()
    _, kw, _ = read_file(shared_data / "formats" / "stem_abf_data.hspy")[0]
    for scale, unit in zip(kw["scale"], kw["units"], strict=True):
        # a CSV column called y_pixel must hold pixels: scale 1, or a real length unit
        assert unit != "pixel" or scale == 1.0, (scale, unit)


def test_kriging_completion_has_no_block_seams(shared_data):
    import tifffile

    from napari_microml.completion.complete import complete_scan
    from napari_microml.completion.masks import scan_mask

    image = tifffile.imread(shared_data / "completion" / "truth-2.tif").astype(float)[:128, :128]
    mask = scan_mask("spiral", image.shape, 0.056, seed=0)
    filled = np.asarray(complete_scan(np.where(mask, image, np.nan), mask).image)
    step = np.abs(np.diff(filled, axis=1))
    unmeasured = ~mask[:, 1:] & ~mask[:, :-1]
    # mean step between unmeasured neighbours, by column phase within a 16 px period
    by_phase = np.array([step[:, j::16][unmeasured[:, j::16]].mean() for j in range(16)])
    assert by_phase.max() <= 1.5 * np.median(by_phase), np.round(by_phase / by_phase.mean(), 2)


def test_dkl_source_is_not_the_structure_when_a_spectrum_image_is_open(
    make_napari_viewer, shared_data
):
    viewer = make_napari_viewer()
    haadf = open_file(viewer, shared_data / "dkl" / "CuZn_HAADF.hspy")[0]
    eels = open_file(viewer, shared_data / "dkl" / "CuZn_EELS_mapping_tutorial.hspy")[0]
    w = open_tool(viewer, "Active learning (DKL)")
    assert w.structure_layer.value is haadf
    assert w.source_layer.value is eels, w.source_layer.value.name
    assert w.source_kind.value == "spectrum image"


def test_atom_finder_refuses_a_spectrum_image_before_running(
    make_napari_viewer, qtbot, shared_data
):
    viewer = make_napari_viewer()
    layer = open_file(viewer, shared_data / "formats" / "EELS_SI.dm4")[0]
    w = open_tool(viewer, "Atom finder")
    w.image_layer.value = layer
    w.run_button.native.click()
    assert w.worker is None, "the job was started on a spectrum image"
    assert "spectr" in w.status.value.lower(), w.status.value


def test_shift_vae_does_not_claim_a_peak_when_none_stands_out(make_napari_viewer, qtbot):
    from napari_microml.runtime.spectral import image_plane_layout

    # a core-loss-like power-law background with noise: no peak anywhere
    rng = np.random.default_rng(0)
    energy = 700.0 + 8.0 * np.arange(64)
    cube = 1e6 * (energy / 700.0) ** -3.0 * (1 + 0.02 * rng.standard_normal((6, 6, 64)))
    viewer = make_napari_viewer()
    data, kw = image_plane_layout(
        cube.astype(np.float32),
        {
            "name": "power law",
            "metadata": {
                "napari_microml": {
                    "spectral_axis": {"scale": 8.0, "offset": 700.0, "units": "eV", "name": "E"}
                }
            },
        },
    )
    layer = viewer.add_image(data, **kw)
    w = open_tool(viewer, "Spectral shift-VAE")
    w.layer_choice.value = layer
    w.epochs.value = 2
    w.run_button.native.click()
    qtbot.waitUntil(lambda: w.worker is None, timeout=120_000)
    assert "around the peak" not in w.status.value, w.status.value


def test_atom_finder_keeps_no_near_duplicate_columns_on_srtio3(shared_data):
    import npe2
    from scipy.spatial import cKDTree

    import napari_microml as mm
    from napari_microml.io.reader import read_file

    npe2.PluginManager.instance().discover()
    image = np.asarray(read_file(shared_data / "formats" / "Acquisition_18.emd")[0][0])
    positions = np.asarray(mm.find_atoms(image, pixel_size=0.01225).positions)
    spacing, _ = cKDTree(positions).query(positions, k=2)
    nearest = spacing[:, 1]
    # SrTiO3 [001] HAADF: no two visible columns closer than the Sr–TiO distance (a/√2)
    close = int((nearest < 0.5 * np.median(nearest)).sum())
    assert close == 0, f"{close} of {len(positions)} columns have a neighbour < ½ the spacing"
