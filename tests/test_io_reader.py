"""Reader tests: vendor files from ../shared/data, checked against rsciio and the file headers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_microml.io import reader
from napari_microml.io.reader import get_reader, read_file

FOLDERS = ("formats", "dkl")

# file -> (shape, dtype, scale, units, axis_labels, spectral (scale, offset, units) or None)
EXPECTED = {
    "Acquisition_18.emd": (
        (1024, 1024),
        "uint16",
        (0.012246524915099144,) * 2,
        ("nm", "nm"),
        ("X", "Y"),
        None,
    ),
    "DMReader_EELS_STO.dm4": (
        (1, 2048),
        "float32",
        (1.0, 0.25),
        ("pixel", "eV"),
        ("spectrum", "Energy loss"),
        (0.25, 350.0, "eV"),
    ),
    "DMReader_Image_SI-Survey.dm3": (
        (512, 512),
        "uint32",
        (1.0, 1.0),
        ("pixel", "pixel"),
        ("y", "x"),
        None,
    ),
    # DM stores the energy axis first; the reader moves it last
    "EELS_SI.dm4": (
        (2, 2, 2048),
        "float32",
        (1.9920736085623503,) * 2 + (1.0,),  # µm in the file: every length opens in nm
        ("nm", "nm", "eV"),
        ("y", "x", "Energy loss"),
        (1.0, 300.0, "eV"),
    ),
    # the DE metadata gives pixel size -1 (unknown): shown in pixels
    "ROI_Random_Scan_movie.mrc": (
        (348, 16, 16),
        "uint16",
        (1.0, 1.0, 1.0),
        ("pixel",) * 3,
        ("z", "y", "x"),
        None,
    ),
    # no units in the file
    "stem_abf_data.hspy": (
        (512, 512),
        "uint16",
        (1.0, 1.0),  # the file's 0.00933 has no unit: kept aside, not applied
        ("pixel", "pixel"),
        ("y", "x"),
        None,
    ),
    # pycroscopy (pyNSID): a bias waveform, non-uniform (kept as values; the layer counts steps)
    "BEPS_PTO_50x50.h5": (
        (50, 50, 64),
        "float64",
        (2e3 / 49,) * 2 + (1.0,),  # the file's metres in nm: napari never converts units
        ("nm", "nm", "pixel"),
        ("X", "Y", "Voltage"),
        (1.0, 0.0, "V"),
    ),
    "CuZn_EELS_mapping_tutorial.hspy": (
        (50, 40, 162),
        "int16",
        (0.9213861227035522,) * 2 + (8.0,),
        ("nm", "nm", "eV"),
        ("y", "x", "Energy loss"),
        (8.0, 700.0, "eV"),
    ),
    "CuZn_HAADF.hspy": (
        (50, 40),
        "uint16",
        (0.9213861227035522,) * 2,
        ("nm", "nm"),
        ("y", "x"),
        None,
    ),
}
NOT_OURS = {"ROI_Random_Scan_info.txt", "ROI_Random_Scan_scan_coordinates.csv"}
OPENS_ITS_MOVIE = {"ROI_Random_Scan_scan_coordinates.csv"}  # positions only: opens the movie's scan


def _files(shared_data: Path) -> list[Path]:
    return sorted(p for f in FOLDERS for p in (shared_data / f).glob("*") if p.is_file())


def test_every_shared_file_is_known(shared_data):
    names = {p.name for p in _files(shared_data)}
    assert names <= set(EXPECTED) | NOT_OURS, names - set(EXPECTED) - NOT_OURS


def test_get_reader_accepts_exactly_the_readable_files(shared_data):
    for p in _files(shared_data):
        r = get_reader(str(p))
        if p.name in NOT_OURS - OPENS_ITS_MOVIE:
            assert r is None, p.name  # the random scan's side files: declined, not crashed
        else:
            assert callable(r), p.name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_read_vendor_file(shared_data, name):
    path = next(
        (shared_data / f / name for f in FOLDERS if (shared_data / f / name).exists()), None
    )
    if path is None:
        pytest.skip(f"{name} not in shared data")
    shape, dtype, scale, units, labels, spectral = EXPECTED[name]
    assert callable(get_reader(str(path)))
    layers = read_file(path)  # napari's copy lays spectrum images out energy-first (spectral.py)
    assert len(layers) == 1
    data, kw, kind = layers[0]
    assert kind == "image"  # integer images stay images
    assert data.shape == shape and str(data.dtype) == dtype
    np.testing.assert_allclose(kw["scale"], scale, rtol=1e-9)
    assert tuple(kw["units"]) == units
    assert tuple(kw["axis_labels"]) == labels
    assert len(kw["translate"]) == data.ndim
    md = kw["metadata"]
    assert "original" in md and "original_metadata" in md["original"]
    sa = md["napari_microml"].get("spectral_axis")
    if spectral is None:
        assert sa is None
    else:
        assert (sa["scale"], sa["offset"], sa["units"]) == spectral
        assert kw["scale"][-1] == sa["scale"] and kw["translate"][-1] == sa["offset"]


@pytest.mark.parametrize(
    "name,module",
    [
        ("EELS_SI.dm4", "digitalmicrograph"),
        ("CuZn_EELS_mapping_tutorial.hspy", "hspy"),
        ("Acquisition_18.emd", "emd"),
    ],
)
def test_matches_rsciio_directly(shared_data, name, module):
    import importlib

    path = next(
        (shared_data / f / name for f in FOLDERS if (shared_data / f / name).exists()), None
    )
    if path is None:
        pytest.skip(f"{name} not in shared data")
    raw = importlib.import_module(f"rsciio.{module}").file_reader(str(path))[0]
    data, kw, _ = read_file(path)[0]
    axes = (
        sorted(raw["axes"], key=lambda a: a.get("index_in_array", 0))
        if all("index_in_array" in a for a in raw["axes"])
        else raw["axes"]
    )
    spec = [i for i, a in enumerate(axes) if a.get("units") == "eV"]
    expected = np.moveaxis(raw["data"], spec[0], -1) if spec else raw["data"]
    np.testing.assert_array_equal(data, expected)
    if spec:
        axes = axes[: spec[0]] + axes[spec[0] + 1 :] + [axes[spec[0]]]
    import pint

    ureg = pint.get_application_registry()  # lengths open in nm, energies in eV

    def to_open_units(a, key):
        value, units = float(a[key]), str(a.get("units") or "")
        target = "eV" if units in ("eV", "keV") else "nm"
        try:
            return ureg.Quantity(value, units).to(target).magnitude
        except pint.PintError:  # not a length or energy: as the file gives it
            return value

    np.testing.assert_allclose(kw["scale"], [to_open_units(a, "scale") for a in axes])
    np.testing.assert_allclose(kw["translate"], [to_open_units(a, "offset") for a in axes])


def test_truncated_file_raises_clear_error(shared_data, tmp_path):
    for name, folder in [
        ("EELS_SI.dm4", "formats"),
        ("CuZn_HAADF.hspy", "dkl"),
        ("Acquisition_18.emd", "formats"),
    ]:
        src = shared_data / folder / name
        if not src.exists():
            continue
        bad = tmp_path / name
        bad.write_bytes(src.read_bytes()[: src.stat().st_size // 3])
        assert get_reader(str(bad)) is not None  # extension accepted ...
        with pytest.raises(ValueError, match=r"Could not read .*damaged or not a supported"):
            read_file(bad)  # ... but the content is refused with a sentence


def test_garbage_files(tmp_path):
    (tmp_path / "x.dm4").write_bytes(b"not a dm4 file at all" * 10)
    with pytest.raises(ValueError, match="damaged"):
        read_file(tmp_path / "x.dm4")
    (tmp_path / "x.h5").write_bytes(b"garbage")
    assert get_reader(str(tmp_path / "x.h5")) is None
    with pytest.raises(ValueError, match="not supported"):
        read_file(tmp_path / "x.png")


@pytest.mark.parametrize("arg", ["nope.dm4", "a.xyz", ["a.tif", "b.tif"], None, 3, "."])
def test_get_reader_never_raises(arg):
    assert get_reader(arg) is None


def test_tiff_and_npy(tmp_path):
    import tifffile

    stack = np.arange(3 * 16 * 16, dtype=np.uint16).reshape(3, 16, 16)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    np.save(tmp_path / "s.npy", stack.astype(np.float32))
    d, kw, kind = get_reader(str(tmp_path / "s.tif"))(str(tmp_path / "s.tif"))[0]
    assert kind == "image" and d.shape == (3, 16, 16) and d.dtype == np.uint16
    assert kw["axis_labels"] == ("z", "height", "width")
    np.testing.assert_array_equal(d, stack)
    d, kw, _ = read_file(tmp_path / "s.npy")[0]
    assert d.shape == (3, 16, 16) and kw["units"] == ("pixel",) * 3


def test_large_files_are_lazy(tmp_path, monkeypatch):
    import dask.array as da

    np.save(tmp_path / "big.npy", np.ones((4, 16, 16), np.float32))
    monkeypatch.setattr(reader, "LAZY_BYTES", 10)
    d, kw, _ = read_file(tmp_path / "big.npy")[0]
    assert isinstance(d, da.Array) and kw["metadata"]["napari_microml"]["lazy"]
    assert float(d.sum().compute()) == 4 * 16 * 16


def test_lazy_spectrum_image_keeps_spectral_axis_last(shared_data, tmp_path, monkeypatch):
    import dask.array as da

    src = shared_data / "formats" / "EELS_SI.dm4"
    if not src.exists():
        pytest.skip("EELS_SI.dm4 not in shared data")
    monkeypatch.setattr(reader, "LAZY_BYTES", 10)
    d, kw, _ = read_file(src)[0]
    assert isinstance(d, da.Array) and d.shape == (2, 2, 2048)
    eager = reader.LAZY_BYTES
    monkeypatch.setattr(reader, "LAZY_BYTES", 1 << 40)
    np.testing.assert_array_equal(d.compute(), read_file(src)[0][0])
    assert eager == 10


def test_viewer_open_with_plugin(make_napari_viewer, shared_data):
    viewer = make_napari_viewer()
    n = 0
    for p in _files(shared_data):
        if p.name in NOT_OURS:
            continue
        layers = viewer.open(str(p), plugin="napari-microml")
        assert len(layers) >= 1
        lay = layers[0]
        from napari_microml.runtime.spectral import image_plane_layout

        data, kw = image_plane_layout(*read_file(p)[0][:2])  # spectrum images energy-first
        assert lay.data.shape == data.shape
        np.testing.assert_allclose(lay.scale, kw["scale"])
        assert tuple(lay.axis_labels) == tuple(kw["axis_labels"])
        assert lay.metadata["napari_microml"]["source_file"] == str(p)
        n += 1
        viewer.layers.clear()
    assert n >= 1
    shot = viewer.screenshot(canvas_only=True)
    assert shot.ndim == 3


def test_bad_file_open_in_viewer_raises(make_napari_viewer, tmp_path):
    (tmp_path / "broken.dm3").write_bytes(b"\x00" * 100)
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match="damaged"):
        viewer.open(str(tmp_path / "broken.dm3"), plugin="napari-microml")
    assert len(viewer.layers) == 0


def test_public_read_file():
    import napari_microml as mm

    assert mm.read_file is read_file


def test_multi_dataset_file_gives_one_layer_each(tmp_path, monkeypatch):
    """Velox .emd files hold several datasets (HAADF, DF, EDS maps, a sum spectrum)."""
    path = tmp_path / "velox.emd"
    path.write_bytes(b"x")
    ax = [
        {"index_in_array": 0, "name": "y", "scale": 0.1, "offset": 0, "units": "nm"},
        {"index_in_array": 1, "name": "x", "scale": 0.1, "offset": 0, "units": "nm"},
    ]
    fake = [
        {
            "data": np.zeros((8, 8), np.uint16),
            "axes": ax,
            "metadata": {"General": {"title": "HAADF"}},
        },
        {
            "data": np.ones((8, 8), np.uint16),
            "axes": ax,
            "metadata": {"General": {"title": "HAADF"}},
        },
        {
            "data": np.ones(100, np.float32),
            "axes": [{"name": "Energy", "scale": 0.01, "offset": 0, "units": "keV"}],
            "metadata": {"General": {"title": "EDS"}},
        },
    ]
    monkeypatch.setattr(reader, "_read_rsciio", lambda p, m, lazy: fake)
    layers = read_file(path)
    assert [kw["name"] for _, kw, _ in layers] == ["velox [HAADF]", "velox [HAADF] (1)"]
    assert all(kw["units"] == ("nm", "nm") for _, kw, _ in layers)


def test_pycroscopy_nsid_beps_file_opens_with_its_bias_waveform(shared_data):
    """BEPS_PTO_50x50.h5 (pyNSID): napari's File → Open used to refuse it."""
    import npe2

    path = shared_data / "dkl" / "BEPS_PTO_50x50.h5"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    npe2.PluginManager.instance().discover()
    layers = npe2.read([str(path)], stack=False, plugin_name="napari-microml")
    assert len(layers) == 1
    data, kw, kind = layers[0]
    assert kind == "image" and data.shape == (64, 50, 50)  # bias first: the canvas shows a map
    spec = kw["metadata"]["napari_microml"]["spectral_axis"]
    bias = np.asarray(spec["values"])
    assert spec["units"] == "V" and bias.size == 64
    assert bias.max() == pytest.approx(8.5) and bias.min() == pytest.approx(-8.5)
    assert tuple(kw["units"][-2:]) == ("nm", "nm") and kw["scale"][-1] == pytest.approx(
        40.8, rel=1e-3
    )


@pytest.mark.parametrize(
    "unit, nm_per_px", [("nm", 0.05), ("micron", 50.0), ("\\u00B5m", 50.0), ("\\u00C5", 0.005)]
)
def test_a_fiji_tiff_keeps_its_calibration(tmp_path, unit, nm_per_px):
    # Fiji writes its unit in the ImageJ description; rsciio keeps only "micron" from it
    import tifffile

    path = tmp_path / "fiji.tif"
    image = np.arange(64 * 80, dtype=np.uint16).reshape(64, 80)
    tifffile.imwrite(path, image, imagej=True, resolution=(20, 20), metadata={"unit": unit})
    ((data, meta, kind),) = read_file(path)
    assert kind == "image"
    np.testing.assert_array_equal(np.asarray(data), image)
    assert tuple(meta["units"]) == ("nm", "nm")
    np.testing.assert_allclose(meta["scale"], (nm_per_px, nm_per_px))
