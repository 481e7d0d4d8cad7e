"""A spectrum image calibrated in keV, meV or with a descending energy axis reads as eV, ascending:
the automatic window and the fitted shifts are the same physics whatever the file's axis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

CUZN = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dkl"
CUZN = CUZN / "CuZn_EELS_mapping_tutorial.hspy"


def _write_spectra(path: Path, data: np.ndarray, offset: float, scale: float, unit: str) -> None:
    from rsciio.hspy import file_writer

    nav = [
        {"name": n, "scale": 1.0, "units": "nm", "size": s, "offset": 0.0, "navigate": True}
        for n, s in zip("yx", data.shape[:-1], strict=True)
    ]
    energy = {
        "name": "Energy loss",
        "scale": scale,
        "units": unit,
        "size": data.shape[-1],
        "offset": offset,
        "navigate": False,
    }
    meta = {"General": {"title": path.stem}, "Signal": {"signal_type": "EELS"}}
    empty = dict.fromkeys(("original_metadata", "tmp_parameters", "learning_results", "models"))
    signal = {k: {} for k in empty} | {"data": data, "axes": [*nav, energy], "metadata": meta}
    signal |= {"attributes": {"_lazy": False}, "package_info": {"name": "", "version": ""}}
    file_writer(str(path), signal)


def _read_spectra(path: Path):
    import napari_microml as mm
    from napari_microml.runtime.spectral import spectra_last

    data, kwargs, _ = mm.read_file(str(path))[0]
    return spectra_last(np.asarray(data), kwargs["metadata"])


@pytest.mark.parametrize(
    ("offset", "scale", "unit", "flip"),
    [(0.7, 0.008, "keV", False), (7e5, 8e3, "meV", False), (1988.0, -8.0, "eV", True)],
)
def test_energy_axis_reads_as_ascending_ev(tmp_path, offset, scale, unit, flip):
    rng = np.random.default_rng(0)
    cube = rng.random((2, 3, 162)).astype(np.float32)
    path = tmp_path / "si.hspy"
    _write_spectra(path, cube[..., ::-1] if flip else cube, offset, scale, unit)
    spectra, axis = _read_spectra(path)
    assert axis.units == "eV"
    np.testing.assert_allclose(axis.values, 700.0 + 8.0 * np.arange(162))
    np.testing.assert_array_equal(spectra, cube)


@pytest.mark.skipif(not CUZN.exists(), reason="no shared data (../shared/data)")
@pytest.mark.parametrize(("factor", "unit", "flip"), [(1e-3, "keV", False), (1.0, "eV", True)])
def test_cu_edge_found_in_a_kev_or_descending_file(tmp_path, factor, unit, flip):
    """Cu L3 at 931 eV: the keV file found no window at all, the descending one read channels."""
    from rsciio.hspy import file_reader

    from napari_microml.spectra.preprocess import auto_window

    d = file_reader(str(CUZN))[0]
    cube, ax = np.asarray(d["data"]), d["axes"][-1]
    offset, scale = float(ax["offset"]), float(ax["scale"])
    if flip:
        cube, offset, scale = cube[..., ::-1], offset + scale * (cube.shape[-1] - 1), -scale
    path = tmp_path / "cuzn.hspy"
    _write_spectra(path, np.ascontiguousarray(cube), offset * factor, scale * factor, unit)
    spectra, axis = _read_spectra(path)
    window = auto_window(spectra, axis.values, units=axis.units)
    assert window.kind == "edge"
    assert window.position == pytest.approx(931.0, abs=2.0)
