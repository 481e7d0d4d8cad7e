"""The automatic spectral window (zero-loss peak in low-loss EELS, the strongest edge in
core-loss EELS, a refusal when nothing stands out), the shift-map plausibility check, the
contrast of a freshly opened spectrum image and the DKL defaults on the CuZn EELS SI."""

from __future__ import annotations

import numpy as np
import pytest

from napari_microml.spectra.preprocess import (
    auto_window,
    edge_quantification_windows,
    find_edges,
    implausible_shift,
)


def _read(path):
    import npe2

    from napari_microml.io.reader import read_file
    from napari_microml.runtime.spectral import spectra_last

    npe2.PluginManager.instance().discover()
    data, kw, _ = read_file(path)[0]
    spectra, ax = spectra_last(np.asarray(data, float), kw["metadata"])
    return np.asarray(spectra, float), ax


def _power_law(seed=0, shape=(6, 6), edge_at=None, jump=0.05):
    rng = np.random.default_rng(seed)
    energy = 700.0 + 8.0 * np.arange(64)
    mean = 1e6 * (energy / 700.0) ** -3.0
    if edge_at is not None:  # a sawtooth edge: a step that decays like the background
        mean = mean + jump * np.where(energy >= edge_at, 1e6 * (energy / 700.0) ** -3.0, 0.0)
    cube = mean * (1 + 0.02 * rng.standard_normal((*shape, energy.size)))
    return cube, energy


def test_a_power_law_alone_has_no_window():
    cube, energy = _power_law()
    choice = auto_window(cube, energy, units="eV")
    assert choice.kind == "none" and not choice.found and choice.edges == ()
    assert choice.describe("eV") == "auto: no peak or edge stands out"


@pytest.mark.parametrize("edge_at", [852.0, 1000.0, 1100.0])
def test_a_synthetic_edge_is_found_within_a_channel(edge_at):
    cube, energy = _power_law(edge_at=edge_at)
    edges = find_edges(cube, energy)
    assert len(edges) == 1, edges
    assert abs(edges[0].onset - edge_at) <= 8.0, edges[0]  # 8 eV channels
    assert 0.03 < edges[0].jump < 0.08
    choice = auto_window(cube, energy, units="eV")
    lo, hi = energy[choice.start], energy[choice.stop - 1]
    assert choice.kind == "edge" and edge_at - 28 <= lo <= edge_at - 12
    assert edge_at + 40 <= hi <= edge_at + 60


def test_cuzn_core_loss_finds_the_cu_and_zn_l_edges(shared_data):
    spectra, ax = _read(shared_data / "dkl" / "CuZn_EELS_mapping_tutorial.hspy")
    choice = auto_window(spectra, ax.values, units=ax.units)
    onsets = [e.onset for e in choice.edges]
    assert choice.kind == "edge"
    assert abs(choice.position - 931) <= 8, onsets  # Cu L3: one 8 eV channel
    assert any(abs(o - 1020) <= 12 for o in onsets), onsets  # Zn L3 (a delayed edge)
    lo, hi = ax.values[choice.start], ax.values[choice.stop - 1]
    assert 905 <= lo <= 920 and 980 <= hi < 1020, (lo, hi)  # stops short of the Zn edge
    assert "around the edge at 931 eV" in choice.describe("eV")
    (s0, s1), (p0, p1) = edge_quantification_windows(choice.edges, ax.values)
    assert p0 < p1 < s0 < s1 and p1 - p0 >= 60 and s1 <= 1020


def test_lsmo_low_loss_window_stays_around_the_zero_loss_peak(shared_data):
    spectra, ax = _read(shared_data / "spectra" / "LSMO_linescan_low_loss.hspy")
    choice = auto_window(spectra, ax.values, units=ax.units)
    lo, hi = ax.values[choice.start], ax.values[choice.stop - 1]
    assert choice.kind == "peak" and 2.5 <= choice.position <= 4.0
    assert -10 <= lo < 2 < 4.5 < hi <= 15, (lo, hi)
    assert choice.edges == ()  # a low-loss axis is never searched for edges


def test_lsmo_core_loss_picks_the_mn_l_edge_over_o_k(shared_data):
    spectra, ax = _read(shared_data / "spectra" / "LSMO_linescan.hspy")
    choice = auto_window(spectra, ax.values, units=ax.units)
    onsets = [e.onset for e in choice.edges]
    assert choice.kind == "edge" and 625 <= choice.position <= 642, onsets  # Mn L3 white line
    assert any(520 <= o <= 535 for o in onsets), onsets  # O K
    assert ax.values[choice.start] >= 600 and ax.values[choice.stop - 1] <= 705


def test_implausible_shift_maps_are_flagged():
    yy, xx = np.mgrid[:12, :12]
    smooth = 0.02 * (xx - 6.0)  # a drift: small and spatially coherent
    assert implausible_shift(smooth, window=(-10.0, 10.0), units="eV") is None
    noise = np.random.default_rng(0).standard_normal((12, 12))
    said = implausible_shift(noise, window=(-10.0, 10.0), units="eV")
    assert said is not None and "noise-like" in said and "% of the window" not in said
    wide = 8.0 * (xx - 6.0) / 6.0  # spans 15 eV of a 20 eV window, smoothly
    said = implausible_shift(wide, window=(-10.0, 10.0), units="eV")
    assert said is not None and "% of the window" in said and "noise" not in said
    line = np.cumsum(np.full(40, 0.01))[:, None]  # a line scan (N, 1)
    assert implausible_shift(line, window=(-10.0, 10.0)) is None
    assert implausible_shift(noise[:2, :2], window=(-10.0, 10.0)) is None  # too few to judge
    # core-loss: a 43 eV smooth "shift" over the whole 700-1988 eV axis (3 % of it) is flagged
    said = implausible_shift(43.0 * (xx - 6.0) / 12.0, window=(700.0, 1988.0), units="eV")
    assert said is not None and "more than core-loss edges move" in said
    assert implausible_shift(0.2 * (xx - 6.0), window=(611.5, 691.0), units="eV") is None


def test_cli_refuses_spectra_without_a_feature(tmp_path, capsys):
    from napari_microml import cli

    cube, _ = _power_law()
    np.save(tmp_path / "flat.npy", cube.reshape(-1, cube.shape[-1]).astype(np.float32))
    code = cli.main(
        ["spectra", str(tmp_path / "flat.npy"), "--channels-last", "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "no peak or edge stands out" in err and "--window" in err, err
    assert not list((tmp_path / "o").glob("*")) if (tmp_path / "o").exists() else True


@pytest.mark.usefixtures("one_torch_thread")
def test_cli_says_the_edge_window_it_fitted(shared_data, tmp_path, capsys):
    from napari_microml import cli

    path = shared_data / "spectra" / "LSMO_linescan.hspy"
    code = cli.main(["spectra", str(path), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "LSMO_linescan.hspy: window 611.5–691 eV (auto, around the edge at 631.1 eV" in err, err
    assert "Check this shift map" not in err  # LSMO's Mn L edge shifts by < 1 eV, smoothly


def test_opened_eels_si_shows_its_map(shared_data):
    import npe2

    from napari_microml.io.reader import _napari_reader

    npe2.PluginManager.instance().discover()
    data, kw, _ = _napari_reader(str(shared_data / "formats" / "EELS_SI.dm4"))[0]
    shown = np.asarray(data[data.shape[0] // 2], float)  # the slice napari shows first
    lo, hi = kw["contrast_limits"]
    # before: limits over the whole cube (-28…8634, set by the first channels): ~2 % grey
    assert lo < shown.mean() < hi and shown.max() - shown.min() >= 0.5 * (hi - lo), (lo, hi)


def test_dkl_defaults_to_the_spectrum_image_and_its_strongest_edge(
    make_napari_viewer, qtbot, shared_data
):
    from journey import open_file, open_tool

    viewer = make_napari_viewer()
    w = open_tool(viewer, "Active learning (DKL)")  # the tool first, then the files
    haadf = open_file(viewer, shared_data / "dkl" / "CuZn_HAADF.hspy")[0]
    eels = open_file(viewer, shared_data / "dkl" / "CuZn_EELS_mapping_tutorial.hspy")[0]
    assert w.structure_layer.value is haadf and w.source_layer.value is eels
    assert w.source_kind.value == "spectrum image"
    assert w.scalarizer.value == "edge intensity"
    assert abs(w.win_lo.value - 931) <= 8 and w.win_hi.value < 1020
    assert w.win2_hi.value < w.win_lo.value  # the pre-edge background window lies below
    assert "edge" in w.status.value and "931" in w.status.value, w.status.value


def _add_cube(viewer, cube, energy, name):
    from napari_microml.runtime.spectral import image_plane_layout

    record = {"scale": float(energy[1] - energy[0]), "offset": float(energy[0]), "units": "eV"}
    data, kw = image_plane_layout(
        cube.astype(np.float32),
        {"name": name, "metadata": {"napari_microml": {"spectral_axis": record}}},
    )
    return viewer.add_image(data, **kw)


@pytest.mark.usefixtures("one_torch_thread")
def test_shift_vae_refuses_to_fit_when_nothing_stands_out(make_napari_viewer, qtbot):
    from journey import open_tool

    viewer = make_napari_viewer()
    cube, energy = _power_law()
    layer = _add_cube(viewer, cube, energy, "power law")
    w = open_tool(viewer, "Spectral shift-VAE")
    w.layer_choice.value = layer
    w.run_button.native.click()
    qtbot.waitUntil(lambda: w.worker is None, timeout=60_000)
    assert w.status.value.startswith("Cannot run: No peak or edge stands out"), w.status.value
    assert "700–1204 eV" in w.status.value and "Auto window" in w.status.value
    assert [lyr.name for lyr in viewer.layers] == ["power law"]  # nothing was fitted or written


@pytest.mark.usefixtures("one_torch_thread")
def test_shift_vae_on_an_edge_says_the_edge_and_shows_a_colour_bar(make_napari_viewer, qtbot):
    from journey import open_tool

    viewer = make_napari_viewer()
    cube, energy = _power_law(shape=(8, 8), edge_at=1004.0, jump=0.3)
    layer = _add_cube(viewer, cube, energy, "edge")
    w = open_tool(viewer, "Spectral shift-VAE")
    w.layer_choice.value = layer
    w.epochs.value = 3
    w.run_button.native.click()
    qtbot.waitUntil(lambda: w.worker is None, timeout=120_000)
    assert "(auto, around the edge at 99" in w.status.value, w.status.value
    assert "colour bar ±" in w.status.value and "eV" in w.status.value
    assert 980 <= w.win_lo.value <= 990 and 1040 <= w.win_hi.value <= 1060
    shift = viewer.layers["edge shift"]
    if hasattr(shift, "colorbar"):
        assert shift.colorbar.visible
