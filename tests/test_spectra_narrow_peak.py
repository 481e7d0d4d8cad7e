"""A peak only a channel or so wide: the shift-VAE reports about half of each shift there
(LSMO's zero-loss peak binned to 1 eV/channel), so the dock and the CLI say so."""

import numpy as np
import pytest

from napari_microml.spectra.preprocess import narrow_peak

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _line(fwhm_channels: float, n=40, channels=64, seed=0):
    rng = np.random.default_rng(seed)
    x = np.arange(channels, dtype=float)
    centre = 30 + rng.normal(0, 0.3, n)
    sigma = fwhm_channels / 2.355
    y = 1000 * np.exp(-0.5 * ((x[None] - centre[:, None]) / sigma) ** 2) + 20
    return rng.poisson(y).astype(np.float32)


def test_a_peak_a_channel_wide_is_flagged_and_wider_peaks_and_edges_are_not():
    assert "channels wide at half maximum" in narrow_peak(_line(1.0))
    assert narrow_peak(_line(3.0)) is None
    edge = np.where(np.arange(64) > 30, 500.0, 100.0) + np.zeros((10, 64))
    assert narrow_peak(edge) is None


def test_lsmo_zero_loss_peak_binned_to_1_ev_per_channel_is_flagged(shared_data):
    import npe2

    import napari_microml as mm
    from napari_microml.runtime.spectral import spectra_last
    from napari_microml.spectra.preprocess import auto_window

    npe2.PluginManager.instance().discover()
    data, kwargs, _ = mm.read_file(str(shared_data / "spectra" / "LSMO_linescan_low_loss.hspy"))[0]
    s, axis = spectra_last(data, kwargs["metadata"])
    s = np.asarray(s, float)
    for binning, flagged in ((1, False), (2, True)):
        n = s.shape[-1] // binning * binning
        x = s[..., :n].reshape(*s.shape[:-1], -1, binning).sum(-1)
        e = axis.values[:n].reshape(-1, binning).mean(-1)
        w = auto_window(x, e, units="eV")
        assert (narrow_peak(x[..., w.start : w.stop]) is not None) == flagged


def test_the_dock_says_the_peak_is_too_narrow(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-microml", "Spectral shift-VAE")
    for name, fwhm in (("narrow", 1.0), ("wide", 4.0)):
        layer = viewer.add_image(
            _line(fwhm),
            name=name,
            scale=(0.5, 0.5),
            units=("nm", "eV"),
            metadata={
                "napari_microml": {"spectral_axis": {"scale": 0.5, "offset": 0.0, "units": "eV"}}
            },
        )
        widget.layer_choice.value = layer
        widget.epochs.value = 3
        widget.run_button.native.click()
        qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
        status = widget.status.value
        assert status.startswith("Done"), status
        assert ("channels wide" in status) == (name == "narrow"), status
