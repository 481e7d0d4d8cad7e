"""User journeys: Spectral shift-VAE from the Plugins menu on real EELS, default settings.

LSMO low-loss: the shift must follow the zero-loss-peak centre fitted here (Gaussian over the
9 channels around each spectrum's maximum). LSMO core-loss (window on the Mn L2,3 edge) and the
2×2 EELS_SI.dm4 spectrum image must run and show their result.
"""

import numpy as np
import pytest
from journey import assert_no_stall, assert_visible, click, open_file, open_tool

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _zlp_centres(spectra, axis):
    from scipy.optimize import curve_fit

    def gauss(x, a, c, w, b):
        return a * np.exp(-((x - c) ** 2) / (2 * w * w)) + b

    out = []
    for s in spectra:
        k = int(np.argmax(s))
        sl = slice(k - 4, k + 5)
        p, _ = curve_fit(gauss, axis[sl], s[sl], p0=[s[k], axis[k], 0.5, 0.0])
        out.append(p[1])
    return np.array(out)


def _api(path, window):
    """The same fit through the Python API (timed for the benchmark)."""
    from napari_microml.io.reader import read_file
    from napari_microml.spectra.shift_vae import fit_shift_vae

    data, kw, _ = read_file(path)[0]
    sa = kw["metadata"]["napari_microml"]["spectral_axis"]
    axis = sa["offset"] + sa["scale"] * np.arange(data.shape[-1])
    return lambda: fit_shift_vae(
        np.asarray(data, np.float32), axis=axis, channel_range=window, seed=0
    )


def _run(make_napari_viewer, qtbot, path, journey):
    viewer = make_napari_viewer()
    viewer.window.resize(1500, 1000)
    qtbot.wait(100)  # let the canvas take its size before the file is fitted into it
    layer = open_file(viewer, path)[0]
    w = open_tool(viewer, "Spectral shift-VAE")
    w.layer_choice.value = layer
    assert w.auto_window.value and w.win_lo.label == "Window from (eV)"
    assert all(
        c.tooltip
        for c in (
            w.auto_window,
            w.win_lo,
            w.latent_dim,
            w.epochs,
            w.shift_prior,
            w.normalize,
            w.despike,
            w.seed,
            w.run_button,
        )
    )
    stall = click(
        qtbot,
        w.run_button,
        w,
        journey=journey,  # the API on the widget's window
        api=lambda: _api(path, tuple(w.result.params["channel_range"]))(),
    )
    assert w.status.value.startswith("Done"), w.status.value
    assert_no_stall(stall, "the shift-VAE fit")
    return viewer, w, layer, stall


def test_shift_vae_lsmo_low_loss_tracks_the_zero_loss_peak(
    make_napari_viewer, qtbot, shared_data, tmp_path
):
    from napari_microml.io.reader import read_file

    path = shared_data / "spectra" / "LSMO_linescan_low_loss.hspy"
    viewer, w, layer, _ = _run(make_napari_viewer, qtbot, path, "spectra-LSMO-low-loss")
    # the window was chosen around the zero-loss peak and is said, in eV
    assert "auto, around the peak at 3" in w.status.value and "eV" in w.status.value
    assert -10 <= w.win_lo.value < 2 < 4.5 < w.win_hi.value <= 15, (w.win_lo.value, w.win_hi.value)
    data, kw, _ = read_file(path)[0]
    sa = kw["metadata"]["napari_microml"]["spectral_axis"]
    axis = sa["offset"] + sa["scale"] * np.arange(data.shape[-1])
    zlp = _zlp_centres(np.asarray(data, float), axis)
    shift = w.result.shift.ravel()
    r = np.corrcoef(shift, zlp)[0, 1]
    measured = np.ptp(zlp)  # about 0.27 eV
    assert r >= 0.95, r
    assert abs(np.ptp(shift) - measured) <= 0.3 * measured, (np.ptp(shift), measured)
    # a line scan: a plot of the shift along the line, and the tracked peak over the image
    line = w.line_ax.lines[0]
    np.testing.assert_allclose(line.get_ydata(), shift)
    assert "(nm)" in w.line_ax.get_xlabel() and "eV" in w.line_ax.get_ylabel()  # 125 nm scan
    assert not w.line_canvas.isHidden()
    track = viewer.layers[f"{layer.name} shift track"]  # a thin path over the zero-loss peak
    assert_visible(viewer, track, min_fraction=0.0005, screenshot=tmp_path / "lsmo_low_loss.png")


def test_shift_vae_lsmo_core_loss_runs_and_shows(make_napari_viewer, qtbot, shared_data, tmp_path):
    path = shared_data / "spectra" / "LSMO_linescan.hspy"
    viewer, w, layer, _ = _run(make_napari_viewer, qtbot, path, "spectra-LSMO-core-loss")
    shift = w.result.shift.ravel()
    assert shift.shape == (40,) and np.isfinite(shift).all()
    assert np.ptp(shift) < 5.0  # eV: a chemical shift, not a jump across the window
    # the strongest edge: Mn L2,3 (white lines at 636 and 644 eV), 20 eV below to 60 eV above
    assert 600 <= w.win_lo.value < 625 and 660 < w.win_hi.value <= 705
    assert "around the edge at 6" in w.status.value, w.status.value
    assert_visible(
        viewer,
        viewer.layers[f"{layer.name} shift track"],
        min_fraction=0.0005,
        screenshot=tmp_path / "lsmo_core_loss.png",
    )


def test_shift_vae_eels_si_dm4_maps_on_the_image_plane(
    make_napari_viewer, qtbot, shared_data, tmp_path
):
    path = shared_data / "formats" / "EELS_SI.dm4"
    viewer, w, layer, _ = _run(make_napari_viewer, qtbot, path, "spectra-EELS_SI")
    assert layer.data.shape == (2048, 2, 2)  # energy first: the canvas shows the 2×2 map
    shift_map = viewer.layers[f"{layer.name} shift"]
    assert shift_map.data.shape == (2, 2) and np.isfinite(shift_map.data).all()
    np.testing.assert_allclose(shift_map.scale, layer.scale[1:])
    assert viewer.canvas.overlays.scale_bar.visible  # µm
    assert_visible(viewer, shift_map, screenshot=tmp_path / "eels_si.png")
    latent = viewer.layers[f"{layer.name} latent 1"]
    latent.visible = True
    assert_visible(viewer, latent)
