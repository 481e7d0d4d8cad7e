"""Scanning-probe files (Nanonis .sxm, Gwyddion .gwy, Asylum/Igor .ibw, Digital Surf .sur):
known numbers in known places, heights in nm, the image upright, channels as layers, a stopped
scan cropped; and a user opening an STM file and finding its atoms."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from napari_microml.io.reader import get_reader, read_file

KNOWN = np.arange(1, 13, dtype=np.float64).reshape(3, 4)  # 3 lines of 4 pixels, as seen upright


def _sxm_bytes(recorded: list[np.ndarray], *, scan_dir: str, names=("Current", "Z")) -> bytes:
    """A Nanonis .sxm from its documented layout: text header to :SCANIT_END:, \\x1a\\x04,
    then each channel's forward and backward planes as big-endian float32, line after line
    in the order recorded."""
    units = {"Z": "m", "Current": "A"}
    rows = "".join(
        f"\t{i}\t{n}\t{units[n]}\tboth\t1.000E+0\t0.000E+0\n" for i, n in enumerate(names)
    )
    head = (
        ":NANONIS_VERSION:\n2\n:SCANIT_TYPE:\n              FLOAT            MSBFIRST\n"
        ":REC_DATE:\n 06.12.2026\n:SCAN_PIXELS:\n       4       3\n"
        ":SCAN_RANGE:\n           8.000000E-9           3.000000E-9\n"
        ":SCAN_OFFSET:\n           1.000000E-8          -2.000000E-8\n"
        f":SCAN_ANGLE:\n            0.000E+0\n:SCAN_DIR:\n{scan_dir}\n"
        ":SCAN_TIME:\n             5.000E-1             5.000E-1\n"
        ":Z-CONTROLLER:\n\tName\ton\tSetpoint\n\tlog Current\t1\t1.000E-10 A\n"
        ":COMMENT:\nNote: tip changed\n:NanonisMain>Session Path:\nC:\\data\n"
        ":DATA_INFO:\n\tChannel\tName\tUnit\tDirection\tCalibration\tOffset\n"
        f"{rows}\n:SCANIT_END:\n\n\n"
    )
    body = b"".join(struct.pack(">12f", *np.asarray(r, float).ravel()) for r in recorded)
    return head.encode("latin-1") + b"\x1a\x04" + body


@pytest.mark.parametrize("scan_dir", ["up", "down"])
def test_a_nanonis_file_reads_upright_in_nm_topography_first(tmp_path, scan_dir):
    # recording order: an upward scan's first line is the image's bottom line; a backward
    # line runs right to left
    rec = KNOWN[::-1] if scan_dir == "up" else KNOWN
    current = KNOWN * 1e-12
    crec = current[::-1] if scan_dir == "up" else current
    planes = [crec, crec[:, ::-1], rec * 1e-10, (rec * 1e-10 + 1e-10)[:, ::-1]]
    path = tmp_path / "scan.sxm"
    path.write_bytes(_sxm_bytes(planes, scan_dir=scan_dir))
    assert get_reader(str(path)) is not None
    layers = read_file(path)  # topography first
    assert [kw["name"] for _, kw, _ in layers] == [
        "scan [Z (forward)]",
        "scan [Z (backward)]",
        "scan [Current (forward)]",
        "scan [Current (backward)]",
    ]
    assert [kw["visible"] for _, kw, _ in layers] == [True, False, False, False]
    z, kw, _ = layers[0]
    np.testing.assert_allclose(z, KNOWN * 0.1, rtol=1e-6)  # 1e-10 m = 0.1 nm
    np.testing.assert_allclose(layers[1][0], KNOWN * 0.1 + 0.1, rtol=1e-6)
    np.testing.assert_allclose(layers[2][0], current, rtol=1e-6)  # amperes stay amperes
    np.testing.assert_allclose(kw["scale"], (1.0, 2.0))  # 3 nm / 3 lines, 8 nm / 4 px
    assert kw["units"] == ("nm", "nm")
    # the frame centred on SCAN_OFFSET (10, -20) nm, y pointing down the screen
    np.testing.assert_allclose(kw["translate"], (20.0 - 1.5, 10.0 - 4.0))
    header = kw["metadata"]["original"]["original_metadata"]["header"]
    assert header["COMMENT"] == "Note: tip changed"
    assert header["NanonisMain>Session Path"] == "C:\\data"
    scan = kw["metadata"]["napari_microml"]["scan"]
    assert scan == {
        "kind": "spm",
        "format": "Nanonis",
        "channel": "Z",
        "direction": "forward",
        "scan_direction": scan_dir,
        "file_units": "m",
        "units": "nm",
    }
    assert layers[2][1]["metadata"]["napari_microml"]["scan"]["units"] == "A"


def test_a_stopped_nanonis_scan_keeps_its_recorded_lines_and_says_so(tmp_path):
    from napari_microml.synth.scanprobe import write_sxm

    img = np.arange(40, dtype=float).reshape(10, 4) * 1e-11
    stopped = img.copy()
    stopped[:4] = np.nan  # an upward scan stopped: the top 4 lines never recorded
    stopped[4, 2:] = np.nan  # the line it was recording when it stopped
    write_sxm(tmp_path / "s.sxm", {"Z": (stopped, stopped)}, size_nm=(10.0, 4.0), scan_dir="up")
    z, kw, _ = read_file(tmp_path / "s.sxm")[0]
    np.testing.assert_allclose(z, img[5:] * 1e9, rtol=1e-6)  # m -> nm
    scan = kw["metadata"]["napari_microml"]["scan"]
    assert (scan["lines_recorded"], scan["lines"]) == (5, 10)
    assert "stopped at line 5 of 10" in scan["note"]
    # the kept lines stay where they were scanned: 5 rows of 1 nm below the frame's top
    assert kw["translate"][0] == pytest.approx(-5.0 + 5.0)


def test_a_damaged_nanonis_file_is_one_clear_sentence(tmp_path):
    good = _sxm_bytes([KNOWN] * 4, scan_dir="up")
    (tmp_path / "cut.sxm").write_bytes(good[:-20])
    with pytest.raises(ValueError, match="Could not read cut.sxm.*announces 4 channels of 4 x 3"):
        read_file(tmp_path / "cut.sxm")
    (tmp_path / "text.sxm").write_bytes(b"not a scan at all")
    with pytest.raises(ValueError, match="Could not read text.sxm.*SCANIT_END"):
        read_file(tmp_path / "text.sxm")


def test_a_gwyddion_file_from_gwyfile_reads_each_channel_in_nm(tmp_path):
    from gwyfile.objects import GwyContainer, GwyDataField

    obj = GwyContainer()
    obj["/0/data/title"] = "Phase"
    obj["/0/data"] = GwyDataField(
        KNOWN * 2, xreal=4e-9, yreal=6e-9, si_unit_xy="m", si_unit_z="deg"
    )
    obj["/1/data/title"] = "Height"
    obj["/1/data"] = GwyDataField(
        KNOWN * 1e-9, xreal=4e-9, yreal=6e-9, si_unit_xy="m", si_unit_z="m"
    )
    obj.tofile(str(tmp_path / "two.gwy"))
    (h, hk, _), (ph, pk, _) = read_file(tmp_path / "two.gwy")
    assert (hk["name"], pk["name"]) == ("two [Height]", "two [Phase]")
    assert (hk["visible"], pk["visible"]) == (True, False)
    np.testing.assert_allclose(h, KNOWN, rtol=1e-6)  # Gwyddion's row 0 is the top: as stored
    np.testing.assert_allclose(ph, KNOWN * 2, rtol=1e-6)
    np.testing.assert_allclose(hk["scale"], (2.0, 1.0))
    assert hk["metadata"]["napari_microml"]["scan"]["file_units"] == "m"
    assert pk["metadata"]["napari_microml"]["scan"]["units"] == "deg"


def _ibw_bytes(
    wave: np.ndarray, *, labels: list[str], step_m: float, note: str, units: bytes = b""
) -> bytes:
    """An Igor binary wave, version 5, little-endian, from Igor's Technical Note 003: a 64-byte
    BinHeader5, a 320-byte WaveHeader5, the data in column-major order (dimension 0 fastest),
    the note, then each dimension's labels (32 bytes each, the dimension's own label first)."""
    data = np.asarray(wave, "<f4").tobytes(order="F")
    note_b = note.encode("latin-1")
    label_b = b"".join(s.encode().ljust(32, b"\0") for s in ["", *labels]) if labels else b""
    bin_header = struct.pack(
        "<hhiiii4i4iiii", 5, 0, 320 + len(data), 0, len(note_b), 0, 0, 0, 0, 0,
        0, 0, len(label_b), 0, 0, 0, 0,
    )  # fmt: skip
    dims = [*wave.shape, 0, 0, 0][:4]
    wave_header = struct.pack(
        "<IIIihh6sh32siI4i4d4d4s16shhddI4I4II16ihhhbbIihhII",
        0, 0, 0, wave.size, 2, 0, b"", 1, b"Image0001", 0, 0, *dims,
        step_m, step_m, 1, 1, 0.0, 0.0, 0.0, 0.0, units, b"m\0\0\0m", 0, 0, 0.0, 0.0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, *([0] * 16), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    )  # fmt: skip
    assert len(bin_header) == 64 and len(wave_header) == 320
    head = bin_header + wave_header
    checksum = -sum(struct.unpack("<192h", head)) % 65536  # the 384 header bytes sum to 0
    head = head[:2] + struct.pack("<H", checksum) + head[4:]
    return head + data + note_b + label_b


def test_an_asylum_igor_wave_reads_upright_with_its_channel_labels(tmp_path):
    # Igor's dimension 0 is x (along a line), dimension 1 is y drawn upwards: the upright
    # image's bottom line is y = 0
    upright = np.stack([KNOWN * 0.5, KNOWN * 1e-11], axis=-1)  # (y, x, channel), y down
    wave = np.transpose(upright[::-1], (1, 0, 2))  # (x, y up, channel)
    path = tmp_path / "afm.ibw"
    path.write_bytes(
        _ibw_bytes(
            wave,
            labels=["AmplitudeRetrace", "HeightRetrace"],
            step_m=5e-10,
            note="ScanSize: 2e-09\rScanDown: 1\rScanRate: 1",
        )
    )
    layers = read_file(path)
    names = [kw["name"] for _, kw, _ in layers]
    assert names == ["afm [HeightRetrace (backward)]", "afm [AmplitudeRetrace (backward)]"]
    height, kw, _ = layers[0]
    np.testing.assert_allclose(height, KNOWN * 0.01, rtol=1e-6)  # channel 1: 1e-11 m -> nm
    np.testing.assert_allclose(layers[1][0], KNOWN * 0.5, rtol=1e-6)  # amplitude: no unit
    np.testing.assert_allclose(kw["scale"], (0.5, 0.5))
    scan = kw["metadata"]["napari_microml"]["scan"]
    assert (scan["file_units"], scan["units"], scan["scan_direction"]) == ("m", "nm", "down")
    assert [kw["visible"] for _, kw, _ in layers] == [True, False]


def test_a_digital_surf_file_from_rsciio_reads_in_nm(tmp_path):
    from rsciio.digitalsurf import file_writer

    axes = [
        {"name": n, "size": s, "scale": 0.5, "offset": 0.0, "units": "µm", "navigate": False}
        for n, s in (("y", 3), ("x", 4))
    ]
    file_writer(
        str(tmp_path / "s.sur"),
        {
            "data": KNOWN * 1e-3,
            "axes": axes,
            "metadata": {"General": {"title": "Height"}, "Signal": {"quantity": "Height (µm)"}},
            "original_metadata": {},
        },
    )
    ((z, kw, _),) = read_file(tmp_path / "s.sur")
    np.testing.assert_allclose(z, KNOWN, rtol=1e-5)  # 1e-3 µm = 1 nm
    np.testing.assert_allclose(kw["scale"], (500.0, 500.0))
    assert kw["metadata"]["napari_microml"]["scan"]["file_units"] == "µm"


def test_a_layer_from_an_spm_file_asks_for_spm_levelling(tmp_path):
    from napari_microml.runtime.level import scan_kind
    from napari_microml.synth.scanprobe import write_sxm

    write_sxm(tmp_path / "a.sxm", {"Z": (KNOWN * 1e-10, KNOWN * 1e-10)}, size_nm=(3.0, 4.0))
    _, kw, _ = read_file(tmp_path / "a.sxm")[0]
    assert scan_kind(kw["metadata"]) == "spm"
    assert scan_kind({}) == scan_kind(None) == "auto"
    assert scan_kind({"napari_microml": {"source_file": "x.dm4"}}) == "auto"


def test_a_stopped_scan_read_from_file_goes_through_the_finder(tmp_path):
    """The finder and the levelling take what the reader gives for a scan stopped mid-way:
    the recorded lines, a few NaN pixels left inside (a dropped sample)."""
    import napari_microml as mm
    from napari_microml.synth.lattice import simulate_lattice
    from napari_microml.synth.scanprobe import scanning_probe, write_sxm

    s = simulate_lattice((128, 128), scene="crystal", lattice="square", spacing=12.0, dose=500)
    stm = scanning_probe(s.image, plane=5, lines=1, shear=0.0) * 1e-9
    stm[:40] = np.nan
    stm[60, 10:13] = np.nan
    write_sxm(tmp_path / "stop.sxm", {"Z": (stm, stm)}, size_nm=(12.8, 12.8), scan_dir="up")
    z, kw, _ = read_file(tmp_path / "stop.sxm")[0]
    assert z.shape == (88, 128) and np.isnan(z).sum() == 3
    r = mm.find_atoms(z, scan="spm", pixel_size=0.1)
    assert len(r.positions) > 40
    assert r.parameters["levelling"].startswith("levelled: plane + line offsets")


@pytest.mark.usefixtures("one_torch_thread", "user_models_folder")
def test_a_user_opens_an_stm_file_and_finds_its_atoms(make_napari_viewer, qtbot, tmp_path):
    """File > Open an .sxm of a simulated STM topograph, Atom finder from the Plugins menu,
    defaults, Run: columns found where they are, the status says it levelled, lengths in nm."""
    from journey import click, open_file, open_tool

    from napari_microml.atoms.metrics import match_points
    from napari_microml.synth.lattice import simulate_lattice
    from napari_microml.synth.scanprobe import scanning_probe, write_sxm

    s = simulate_lattice((192, 192), scene="crystal", lattice="square", spacing=12.0, dose=500)
    stm = scanning_probe(s.image, plane=5, lines=1, shear=0.0, noise=0.1, seed=3)
    current = np.abs(stm) * 1e-9
    write_sxm(
        tmp_path / "stm.sxm",
        {"Z": (stm * 1e-9, stm * 1e-9), "Current": (current, current)},
        size_nm=(19.2, 19.2),
        units={"Current": "A"},
    )
    viewer = make_napari_viewer()
    open_file(viewer, tmp_path / "stm.sxm")
    names = ["stm [Z (forward)]", "stm [Z (backward)]", "stm [Current (forward)]"]
    assert [ly.name for ly in viewer.layers[::-1]] == [*names, "stm [Current (backward)]"]
    assert [ly.name for ly in viewer.layers if ly.visible] == ["stm [Z (forward)]"]
    topo = viewer.layers[-1]  # the top of the layer list, and the selected layer
    widget = open_tool(viewer, "Atom finder")
    assert widget.image_layer.value is topo
    click(qtbot, widget.run_button, widget)
    status = str(widget.status.value)
    assert "Found" in status and "Levelled as a scanning-probe scan first" in status, status
    assert "scan-line noise" in status, status
    points = viewer.layers[f"{topo.name} atoms"]
    assert points.metadata["napari_microml"]["parameters"]["scan"] == "spm"
    f1 = match_points(np.asarray(points.data)[:, -2:], s.positions, max_distance=2.0)["f1"]
    assert f1 > 0.9, f1
    assert viewer.canvas.overlays.scale_bar.visible and str(points.units[-1]) == "nanometer"
    np.testing.assert_allclose(topo.data, stm, rtol=1e-5, atol=1e-7)  # the layer is untouched


def test_a_nanonis_channel_recorded_one_way_is_one_layer(tmp_path):
    rec = KNOWN[::-1]  # an upward scan
    data = _sxm_bytes([rec * 1e-12, rec[:, ::-1] * 1e-12, rec[:, ::-1] * 1e-10], scan_dir="up")
    data = data.replace(b"\tZ\tm\tboth", b"\tZ\tm\tbackward")
    (tmp_path / "one.sxm").write_bytes(data)
    layers = read_file(tmp_path / "one.sxm")
    assert [kw["name"] for _, kw, _ in layers] == [
        "one [Z (backward)]",
        "one [Current (forward)]",
        "one [Current (backward)]",
    ]
    np.testing.assert_allclose(layers[0][0], KNOWN * 0.1, rtol=1e-6)  # read right to left
    np.testing.assert_allclose(layers[2][0], KNOWN * 1e-12, rtol=1e-6)


def test_an_igor_image_without_labels_and_a_force_curve(tmp_path):
    """A single 2D wave in metres (no channel labels): one layer named after the wave, in nm;
    a 1D wave (a force curve) is no image: one sentence."""
    wave = KNOWN[::-1].T * 1e-9  # (x, y up)
    (tmp_path / "h.ibw").write_bytes(_ibw_bytes(wave, labels=[], step_m=1e-9, note="", units=b"m"))
    ((z, kw, _),) = read_file(tmp_path / "h.ibw")
    assert kw["name"] == "h"
    np.testing.assert_allclose(z, KNOWN, rtol=1e-6)
    assert kw["metadata"]["napari_microml"]["scan"]["channel"] == "Image0001"
    (tmp_path / "f.ibw").write_bytes(_ibw_bytes(KNOWN.ravel(), labels=[], step_m=1e-9, note=""))
    with pytest.raises(
        ValueError, match="Could not read f.ibw.*1-dimensional float32, not an image"
    ):
        read_file(tmp_path / "f.ibw")
