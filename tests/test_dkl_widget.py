"""The active-learning dock widget in a real viewer: Initialize → Step → Run → Stop, veto."""

import numpy as np
import pytest

from napari_microml.synth.properties import property_spectrum_image, structure_property_pair

TIMEOUT = 60_000


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _setup(make_napari_viewer, *, spectra=True):
    from napari_microml.dkl.widget import ActiveLearningWidget

    viewer = make_napari_viewer()
    s, p = structure_property_pair((20, 22), kind="domains", seed=0)
    viewer.add_image(s, name="structure", scale=(0.5, 0.5))
    if spectra:
        cube, axis = property_spectrum_image(p, n_channels=30, axis=np.linspace(900, 1016, 30))
        spectral = {
            "scale": float(axis[1] - axis[0]),
            "offset": float(axis[0]),
            "units": "eV",
            "index": 0,
        }  # energy first, as the reader lays spectrum images out
        viewer.add_image(
            np.moveaxis(cube, -1, 0),
            name="EELS",
            metadata={"napari_microml": {"spectral_axis": spectral}},
        )
    else:
        viewer.add_image(p, name="truth")
    w = ActiveLearningWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.structure_layer.value = viewer.layers["structure"]
    w.source_layer.value = viewer.layers["EELS" if spectra else "truth"]
    w.source_kind.value = "spectrum image" if spectra else "scalar map"
    w.scalarizer.value = "peak height"
    w.win_lo.value, w.win_hi.value = 940.0, 980.0
    w.patch_size.value = 5
    w.n_initial.value = 4
    w.batch_size.value = 2
    w.budget.value = 14
    w.device_choice.value = "cpu"
    return viewer, w, p


def _wait(qtbot, w):
    qtbot.waitUntil(lambda: w.worker is None, timeout=TIMEOUT)


def test_initialize_step_run_stop_updates_layers(make_napari_viewer, qtbot, tmp_path):
    viewer, w, p = _setup(make_napari_viewer)
    w.init_button.native.click()
    _wait(qtbot, w)
    assert w.status.value.startswith("Step"), w.status.value
    for name in ("measured", "next", "DKL mean", "DKL uncertainty", "acquisition"):
        assert name in viewer.layers, name
    measured = viewer.layers["measured"]
    assert len(measured.data) == 4 and "value" in measured.features
    assert len(viewer.layers["next"].data) == 2
    assert viewer.layers["DKL mean"].data.shape == (20, 22)
    assert tuple(viewer.layers["DKL mean"].scale) == (0.5, 0.5)
    assert "napari_microml" in measured.metadata

    w.step_button.native.click()
    _wait(qtbot, w)
    assert len(viewer.layers["measured"].data) == 6
    np.testing.assert_allclose(
        viewer.layers["measured"].features["value"], 0.1 + p[tuple(w.learner.coords.T)], atol=0.02
    )

    w.run_button.native.click()
    _wait(qtbot, w)
    assert len(viewer.layers["measured"].data) == 14  # ran to the budget
    assert w.learner.n_observed == 14 and len(w.history) >= 5
    assert w.ax_best.lines  # best-vs-step plot drawn

    # Stop: a longer run is cancelled between steps; measured points so far are kept
    w.budget.value = 200
    w.run_button.native.click()
    qtbot.waitUntil(lambda: w.learner.n_observed > 14, timeout=TIMEOUT)
    w.stop_button.native.click()
    _wait(qtbot, w)
    n = w.learner.n_observed
    assert 14 < n < 200
    assert len(viewer.layers["measured"].data) <= n

    w.log_path.value = tmp_path / "log.csv"
    w.export_button.native.click()
    assert (tmp_path / "log.csv").read_text().count("\n") == n + 1
    viewer.screenshot(canvas_only=True)


def test_editing_next_points_changes_what_is_measured(make_napari_viewer, qtbot):
    viewer, w, _ = _setup(make_napari_viewer, spectra=False)
    w.init_button.native.click()
    _wait(qtbot, w)
    nxt = viewer.layers["next"]
    # the user drags one point and deletes the other (human veto)
    nxt.data = np.array([[3.0, 17.0]])
    w.step_button.native.click()
    _wait(qtbot, w)
    last = w.learner.coords[-1]
    assert tuple(last) == (3, 17) and w.learner.n_observed == 5
    # deleting all "next" points makes Step ask the model again
    viewer.layers["next"].data = np.zeros((0, 2))
    w.step_button.native.click()
    _wait(qtbot, w)
    assert w.learner.n_observed == 7


def test_bad_input_is_reported_not_run(make_napari_viewer, qtbot):
    viewer, w, _ = _setup(make_napari_viewer, spectra=False)
    viewer.add_image(np.zeros((9, 9)), name="small")
    w.source_layer.value = viewer.layers["small"]
    w.init_button.native.click()
    # uncalibrated 9×9 beside 20×20: nothing to resample by
    assert w.worker is None and "cannot be matched" in w.status.value
    w.source_layer.value = viewer.layers["truth"]
    w.patch_size.value = 64
    w.init_button.native.click()
    assert w.worker is None and "patch size" in w.status.value
    assert "measured" not in viewer.layers


def test_patch_size_auto_is_the_default_and_builds_the_multiscale_ensemble(
    make_napari_viewer, qtbot
):
    from napari_microml.dkl.ensemble import MultiScaleEnsemble

    viewer, w, _ = _setup(make_napari_viewer, spectra=False)
    w.patch_size.value = w.patch_size.min  # the spin box's "auto" end, the widget's default
    assert w.patch_size.native.specialValueText() == "auto"
    w.init_button.native.click()
    _wait(qtbot, w)
    assert isinstance(w.learner.model, MultiScaleEnsemble), w.status.value
    # clipped to the 20 px side
    assert [m.patch_size for m in w.learner.model.members] == [8, 16, 20]
    assert "DKL mean" in viewer.layers
