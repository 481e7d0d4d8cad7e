"""The CLI reads a file's calibration as the docks do: nm per pixel from (scale, unit)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from vendor_files import write_hspy

from napari_microml import cli
from napari_microml.runtime.units import nm_per_pixel

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "formats"


@pytest.mark.parametrize(
    ("scale", "units", "expected"),
    [
        ((0.5, 0.02), ("nm", "nm"), 0.02),
        ((1.0, 1.5), ("Å", "angstrom"), 0.15),
        ((1.0, 3.0), ("pm", "pm"), 0.003),
        ((1.0, 0.002), ("µm", "um"), 2.0),
        ((1.0, 1.0), ("pixel", "pixel"), None),
        ((1.0, 2.0), ("px", "px"), None),  # pint's px is a printer's 1/96 inch
        ((1.0, 0.1), ("nm", "eV"), None),  # the last axis is an energy axis
        ((1.0, 0.0), ("nm", "nm"), None),
        ((1.0, 1.0), None, None),
    ],
)
def test_nm_per_pixel_reads_length_units_only(scale, units, expected):
    got = nm_per_pixel(scale=scale, units=units)
    assert got == pytest.approx(expected) if expected is not None else got is None


def _header(path: Path) -> dict[str, str]:
    lines = [ln[2:] for ln in path.read_text(encoding="utf-8").splitlines() if ln.startswith("# ")]
    return dict(ln.split(": ", 1) for ln in lines if ": " in ln)


def _densities(path: Path) -> dict[str, float]:
    out = {}
    for key, value in _header(path).items():
        m = re.match(r"count (\w+)", key)
        if m:
            d = re.search(r", ([0-9.e+-]+) per nm²", value)
            out[m.group(1)] = float(d.group(1)) if d else float("nan")
    return out


def _lattice(shape: tuple[int, int], *, seed: int) -> np.ndarray:
    from napari_microml.synth.lattice import simulate_lattice

    return simulate_lattice(
        shape, scene="crystal", lattice="perovskite", spacing=12.0, dose=300.0, seed=seed
    ).image.astype(np.float32)


def _write_hspy(path: Path, image: np.ndarray, scale: float, unit: str) -> None:
    """A calibrated HyperSpy file, as a microscope export would carry it."""
    write_hspy(path, image, [(n, scale, 0.0, unit, False) for n in "yx"])


def _same_as_core(csv: Path, image: np.ndarray, size: float) -> None:
    """The CLI's CSV carries what ``segment_defects(pixel_size=size)`` gives on the array."""
    from napari_microml.defects.segment import segment_defects

    core = segment_defects(image, pixel_size=size)
    assert float(_header(csv)["pixel_size_nm"]) == pytest.approx(size)
    table = pd.read_csv(csv, comment="#")
    assert len(table) == len(core.table)
    np.testing.assert_allclose(table["area_nm2"], core.table["area_nm2"], rtol=1e-6)
    np.testing.assert_allclose(table["nearest_atom_nm"], core.table["nearest_atom_nm"], rtol=1e-6)
    counts = core.counts()
    area = core.image_area_nm2
    assert area is not None
    dens = _densities(csv)
    assert set(dens) == set(counts["class"])
    for _, c in counts.iterrows():
        assert dens[c["class"]] == pytest.approx(c["count"] / area, rel=1e-3)


def test_defects_cli_uses_the_files_nm_calibration(tmp_path):
    image = _lattice((160, 160), seed=3)
    src = tmp_path / "cal.hspy"
    _write_hspy(src, image, 0.5, "Å")
    out = tmp_path / "out"
    assert cli.main(["defects", str(src), "--out", str(out), "--quiet"]) == 0
    csv = out / "cal_defects.csv"
    table = pd.read_csv(csv, comment="#")
    assert len(table) and table["area_nm2"].notna().all()
    _same_as_core(csv, image, 0.05)


def test_defects_cli_without_a_length_unit_stays_in_pixels(tmp_path, capsys):
    from napari_microml.io.writer import write_image_tiff

    image = _lattice((128, 128), seed=3)
    src = tmp_path / "raw.tif"
    write_image_tiff(str(src), image, {})
    out = tmp_path / "out"
    assert cli.main(["defects", str(src), "--out", str(out), "--quiet"]) == 0
    csv = out / "raw_defects.csv"
    assert _header(csv)["pixel_size_nm"] == "unknown (positions in px)"
    assert "per nm²" not in csv.read_text(encoding="utf-8")
    assert pd.read_csv(csv, comment="#")["area_nm2"].isna().all()
    err = capsys.readouterr().err
    assert "raw.tif has no length calibration; positions, distances and areas are in px" in err


def test_atoms_cli_records_the_files_calibration(tmp_path):
    image = _lattice((96, 96), seed=1)
    src = tmp_path / "cal.hspy"
    _write_hspy(src, image, 0.02, "nm")
    out = tmp_path / "out"
    assert cli.main(["atoms", str(src), "--out", str(out), "--quiet"]) == 0
    prov = json.loads((out / "cal_atoms.provenance.json").read_text())
    assert prov["parameters"]["tool_provenance"]["parameters"]["pixel_size"] == pytest.approx(0.02)
    table = pd.read_csv(out / "cal_atoms.csv")
    np.testing.assert_allclose(table["x_nm"], table["col_px"] * 0.02)


@pytest.mark.skipif(not (DATA / "Acquisition_18.emd").exists(), reason="no shared data")
def test_defects_cli_on_acquisition_18_gives_the_docks_densities(tmp_path):
    import npe2

    npe2.PluginManager.instance().discover()
    src = DATA / "Acquisition_18.emd"
    layers = npe2.read([str(src)], stack=False)
    data, kwargs = np.asarray(layers[0][0]), layers[0][1]
    size = nm_per_pixel(scale=kwargs["scale"], units=kwargs["units"])
    assert size == pytest.approx(0.012246524915099144)
    out = tmp_path / "out"
    assert cli.main(["defects", str(src), "--out", str(out), "--quiet"]) == 0
    _same_as_core(out / "Acquisition_18_defects.csv", data, size)


@pytest.mark.parametrize(
    ("geometry", "physical"),
    [
        ({}, []),  # uncalibrated: y_pixel/x_pixel would repeat row_px/col_px
        ({"scale": (0.02, 0.02), "units": ("nm", "nm")}, ["y_nm", "x_nm"]),
        ({"translate": (0.0, 100.0), "units": ("pixel", "pixel")}, ["x_pixel"]),  # a crop
    ],
)
def test_points_csv_has_one_column_per_coordinate(tmp_path, geometry, physical):
    from napari_microml.io.writer import read_points_csv, write_points_csv

    pts = np.array([[1.0, 2.0], [3.0, 5.0], [7.0, 11.0]])
    attrs = {**geometry, "features": pd.DataFrame({"x_score": [0.1, 0.2, 0.3]})}
    path = tmp_path / "p.csv"
    write_points_csv(str(path), pts, attrs)
    assert list(pd.read_csv(path).columns) == ["row_px", "col_px", *physical, "x_score"]
    Path(str(path) + ".json").unlink()  # read back from the columns alone
    data, kwargs, _ = read_points_csv(str(path))
    np.testing.assert_allclose(data, pts)
    assert list(kwargs["features"].columns) == ["x_score"]
    scale = geometry.get("scale", (1.0, 1.0))
    np.testing.assert_allclose(kwargs["scale"], scale)
    translate = geometry.get("translate", (0.0, 0.0))
    np.testing.assert_allclose(kwargs["translate"], translate, atol=1e-9)
    assert tuple(kwargs["units"]) == tuple(geometry.get("units", ("pixel", "pixel")))


def test_a_microml_result_tiff_opens_with_its_calibration(tmp_path):
    """A completed image or defect labels written by microml reopened in px (and labels as an
    image): the reader (rsciio) ignored the geometry in the TIFF's description."""
    import npe2

    from napari_microml.io.writer import write_image_tiff, write_labels_tiff

    npe2.PluginManager.instance().discover()
    geometry = {"scale": (0.5, 0.25), "translate": (1.0, 2.0), "units": ("nm", "nm")}
    image = _lattice((64, 64), seed=2)
    write_image_tiff(str(tmp_path / "done.tif"), image, {**geometry, "name": "done"})
    labels = (image > np.percentile(image, 95)).astype(np.int32)
    write_labels_tiff(str(tmp_path / "lab.tif"), labels, geometry)
    for name, kind, data in (("done.tif", "image", image), ("lab.tif", "labels", labels)):
        [(got, kwargs, got_kind)] = npe2.read(
            [str(tmp_path / name)], plugin_name="napari-microml", stack=False
        )
        assert got_kind == kind
        np.testing.assert_array_equal(np.asarray(got), data)
        assert tuple(kwargs["scale"]) == (0.5, 0.25)
        assert tuple(kwargs["translate"]) == (1.0, 2.0)
        assert [str(u) for u in kwargs["units"]] == ["nm", "nm"]


def test_pixel_size_option_calibrates_an_uncalibrated_file(tmp_path, capsys):
    from napari_microml.io.writer import write_image_tiff

    image = _lattice((160, 160), seed=3)
    src = tmp_path / "raw.tif"
    write_image_tiff(str(src), image, {})
    out = tmp_path / "out"
    argv = ["defects", str(src), "--out", str(out), "--quiet", "--pixel-size", "0.05"]
    assert cli.main(argv) == 0
    _same_as_core(out / "raw_defects.csv", image, 0.05)
    assert "no length calibration" not in capsys.readouterr().err
    assert cli.main(["atoms", str(src), "--out", str(out), "--quiet", "--pixel-size", "0.05"]) == 0
    table = pd.read_csv(out / "raw_atoms.csv")
    np.testing.assert_allclose(table["x_nm"], table["col_px"] * 0.05)
    bad = ["atoms", str(src), "--out", str(tmp_path / "bad"), "--pixel-size", "-1"]
    assert cli.main(bad) == 2
    assert "--pixel-size must be a positive number of nm per pixel." in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_a_survey_too_coarse_for_columns_is_refused_by_defects_and_explained_by_atoms(
    tmp_path, capsys
):
    """0.9 nm pixels (a low-magnification survey) cannot show columns 0.1-0.5 nm apart: the
    segmenter's calls there are noise, and no --contrast can make the finder see columns."""
    from napari_microml import segment_defects

    noise = np.random.default_rng(0).poisson(50, (96, 96)).astype(np.float32)
    with pytest.raises(ValueError, match="atomic-resolution image"):
        segment_defects(noise, pixel_size=0.9)
    src = tmp_path / "survey.hspy"
    _write_hspy(src, noise, 0.9, "nm")
    out = tmp_path / "out"
    assert cli.main(["defects", str(src), "--out", str(out), "--quiet"]) != 0
    assert "cannot show them" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    cli.main(["atoms", str(src), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert "cannot show them" in err and "--contrast" not in err, err
    assert not out.exists() or not any(out.iterdir())
