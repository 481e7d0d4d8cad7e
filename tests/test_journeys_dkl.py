"""User journeys: Active learning (DKL) from the Plugins menu on real data.

CuZn: the HAADF image and the EELS spectrum image opened through the reader, the default
value (the strongest edge, Cu L3 at 931 eV, above its power-law background), Initialize and
three Steps. BEPS: real PFM hysteresis loops (the reader does not
read this USID file, so it is added as a user would from the console) with the loop area.
"""

import numpy as np
import pytest
from journey import assert_no_stall, assert_visible, click, open_file, open_tool

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _api_init(structure, source, n_init=5):
    """The Initialize of the widget through the Python API (timed for the benchmark)."""
    from napari_microml.dkl.learner import ActiveLearner

    learner = ActiveLearner(np.asarray(structure), patch_size="auto", acquisition="ts", seed=0)
    coords = learner.suggest(n_init)
    learner.observe(coords, source(coords))
    nxt = learner.suggest(1)
    learner.predict()
    return learner, nxt


def _api_step(learner, source, nxt):
    learner.observe(nxt, source(nxt))
    nxt = learner.suggest(1)
    learner.predict()
    return nxt


def _check_campaign(viewer, w, truth_at, tmp_path, name):
    measured = viewer.layers["measured"]
    coords = w.learner.coords
    assert len(measured.data) == len(coords) == 8
    # what the widget measured is the scalarised spectrum at exactly those pixels
    np.testing.assert_allclose(measured.features["value"], truth_at(coords), rtol=1e-6)
    mean = viewer.layers["DKL mean"].data
    assert mean.shape == w.learner.shape
    # the GP posterior mean passes near its own measurements
    r = np.corrcoef(mean[tuple(coords.T)], measured.features["value"])[0, 1]
    assert r > 0.8, r
    assert_visible(viewer, viewer.layers["DKL mean"], screenshot=tmp_path / f"{name}.png")
    for layer in ("DKL uncertainty", "acquisition"):  # one eye-click away, on the same plane
        assert not viewer.layers[layer].visible
        viewer.layers[layer].visible = True
        assert_visible(viewer, viewer.layers[layer])
        viewer.layers[layer].visible = False


def test_dkl_cuzn_eels_initialize_and_three_steps(make_napari_viewer, qtbot, shared_data, tmp_path):
    from napari_microml.dkl.scalarizers import EdgeIntensity
    from napari_microml.dkl.sources import SpectrumImageSource
    from napari_microml.io.reader import read_file

    viewer = make_napari_viewer()
    viewer.window.resize(1500, 950)  # room for the dock beside the image in the screenshot
    haadf = open_file(viewer, shared_data / "dkl" / "CuZn_HAADF.hspy")[0]
    eels = open_file(viewer, shared_data / "dkl" / "CuZn_EELS_mapping_tutorial.hspy")[0]
    w = open_tool(viewer, "Active learning (DKL)")
    w.structure_layer.value = haadf
    w.source_layer.value = eels
    assert w.source_kind.value == "spectrum image"
    assert w.win_lo.label == "Window from (eV)" and "eV" in w.win_lo.tooltip
    controls = [
        w.structure_layer,
        w.source_kind,
        w.source_layer,
        w.scalarizer,
        w.win_lo,
        w.win_hi,
        w.win2_lo,
        w.win2_hi,
        w.patch_size,
        w.acquisition,
        w.maximize,
        w.batch_size,
        w.budget,
        w.n_initial,
        w.seed,
        w.init_button,
        w.step_button,
        w.stop_button,
        w.run_button,
        w.device_choice,
        w.log_path,
    ]
    assert all(c.tooltip for c in controls), [c.label for c in controls if not c.tooltip]
    # the default value: the Cu L3 edge (931 eV, the file's README) above its background
    assert w.scalarizer.value == "edge intensity"
    assert abs(w.win_lo.value - 931) <= 8 and 980 <= w.win_hi.value < 1020, w.win_hi.value
    window, pre_edge = (w.win_lo.value, w.win_hi.value), (w.win2_lo.value, w.win2_hi.value)

    cube, kw, _ = read_file(shared_data / "dkl" / "CuZn_EELS_mapping_tutorial.hspy")[0]
    sa = kw["metadata"]["napari_microml"]["spectral_axis"]
    axis = sa["offset"] + sa["scale"] * np.arange(cube.shape[-1])
    scal = EdgeIntensity(window, pre_edge, axis=axis)
    structure = read_file(shared_data / "dkl" / "CuZn_HAADF.hspy")[0][0]
    api_state = {}

    def api_init():
        api_state["run"] = _api_init(structure, SpectrumImageSource(cube, axis, scal))

    stall = click(qtbot, w.init_button, w, journey="dkl-CuZn-initialize", api=api_init)
    assert w.status.value.startswith("Step 1"), w.status.value
    assert_no_stall(stall, "Initialize")
    for k in range(3):

        def api_step():
            learner, nxt = api_state["run"]  # the API campaign, one step behind the widget
            api_state["run"] = (
                learner,
                _api_step(learner, SpectrumImageSource(cube, axis, scal), nxt),
            )

        stall = click(qtbot, w.step_button, w, journey=f"dkl-CuZn-step{k + 1}", api=api_step)
        assert_no_stall(stall, "Step")
        assert w.status.value.startswith(f"Step {k + 2}"), w.status.value
    _check_campaign(viewer, w, lambda c: scal(np.asarray(cube)[c[:, 0], c[:, 1]]), tmp_path, "cuzn")
    assert viewer.canvas.overlays.scale_bar.visible  # the maps are in nm


def _beps(path):
    import h5py

    with h5py.File(path, "r") as f:
        loops = np.asarray(f["Channel_000/generic/generic"], np.float64)  # (50, 50, 64)
        bias = np.asarray(f["Channel_000/generic/Voltage"], np.float64)
    return loops, bias


def test_dkl_beps_loop_area_initialize_and_three_steps(
    make_napari_viewer, qtbot, shared_data, tmp_path
):
    from scipy.ndimage import median_filter

    from napari_microml.dkl.scalarizers import LoopArea
    from napari_microml.runtime.spectral import image_plane_layout

    loops, bias = _beps(shared_data / "dkl" / "BEPS_PTO_50x50.h5")
    # the structure channel the data README suggests: the (despiked) response at +8.5 V
    structure = median_filter(loops, size=(1, 1, 5))[..., int(np.argmax(bias))]
    viewer = make_napari_viewer()
    viewer.window.resize(1500, 950)
    viewer.add_image(structure, name="response at +8.5 V")
    data, kw = image_plane_layout(
        loops,
        {
            "name": "BEPS loops",
            "metadata": {
                "napari_microml": {"spectral_axis": {"values": bias, "units": "V", "name": "bias"}}
            },
        },
    )
    viewer.add_image(data, **kw)
    w = open_tool(viewer, "Active learning (DKL)")
    w.structure_layer.value = viewer.layers["response at +8.5 V"]
    w.source_layer.value = viewer.layers["BEPS loops"]
    assert w.scalarizer.value == "loop area"  # chosen from the axis's units (V)
    assert not w.win_lo.visible
    click(qtbot, w.init_button, w)
    assert w.status.value.startswith("Step 1"), w.status.value
    for _ in range(3):
        assert_no_stall(click(qtbot, w.step_button, w), "Step")
    scal = LoopArea(axis=bias)
    _check_campaign(viewer, w, lambda c: scal(loops[c[:, 0], c[:, 1]]), tmp_path, "beps")


def test_dkl_bad_window_is_said_in_the_status_line(make_napari_viewer, qtbot, shared_data):
    viewer = make_napari_viewer()
    haadf = open_file(viewer, shared_data / "dkl" / "CuZn_HAADF.hspy")[0]
    eels = open_file(viewer, shared_data / "dkl" / "CuZn_EELS_mapping_tutorial.hspy")[0]
    w = open_tool(viewer, "Active learning (DKL)")
    w.structure_layer.value, w.source_layer.value = haadf, eels
    w.win_lo.value, w.win_hi.value = 701.0, 703.0  # between two 8 eV channels
    w.init_button.native.click()
    assert w.worker is None
    assert "window 701–703 contains no channel" in w.status.value, w.status.value
