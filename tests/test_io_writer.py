"""Writer round trips: points CSV, labels TIFF, zarr bundle (with provenance)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from napari_microml.io.writer import (
    read_bundle,
    read_labels_tiff,
    read_points_csv,
    write_bundle,
    write_labels_tiff,
    write_points_csv,
)
from napari_microml.runtime.provenance import make_provenance


@pytest.fixture
def prov():
    return make_provenance("atoms", parameters={"threshold": 0.5}, seed=1, input_name="img")


def test_points_csv_round_trip_2d(tmp_path, rng, prov):
    pts = rng.uniform(0, 100, (25, 2))
    feats = pd.DataFrame(
        {"score": rng.uniform(size=25), "kind": ["a", "b"] * 12 + ["a"], "fit_ok": [True] * 25}
    )
    attrs = {
        "scale": [0.05, 0.05],
        "translate": [1.0, 2.0],
        "units": ("nm", "nm"),
        "features": feats,
        "metadata": {"napari_microml": prov},
        "name": "atoms",
    }
    out = write_points_csv(str(tmp_path / "p.csv"), pts, attrs)
    assert out[0] == str(tmp_path / "p.csv")
    table = pd.read_csv(out[0])
    assert list(table.columns[:4]) == ["row_px", "col_px", "y_nm", "x_nm"]
    np.testing.assert_allclose(table["y_nm"], pts[:, 0] * 0.05 + 1.0)
    np.testing.assert_allclose(table["x_nm"], pts[:, 1] * 0.05 + 2.0)
    data, kw, kind = read_points_csv(out[0])
    assert kind == "points"
    np.testing.assert_allclose(data, pts)
    pd.testing.assert_frame_equal(kw["features"], feats, check_dtype=False)
    assert kw["units"] == ["nm", "nm"] and kw["scale"] == [0.05, 0.05]
    assert kw["metadata"]["napari_microml"]["parameters"] == {"threshold": 0.5}


def test_points_csv_3d_with_pint_units_and_no_sidecar(tmp_path, rng):
    import pint

    u = pint.get_application_registry().Unit("angstrom")
    pts = np.column_stack([np.repeat([0, 1, 2], 4), rng.uniform(0, 50, (12, 2))])
    attrs = {
        "scale": [1.0, 0.5, 0.25],
        "translate": [0, 0, 10.0],
        "units": ("s", u, u),
        "features": pd.DataFrame({"score": np.arange(12.0)}),
    }
    path = write_points_csv(str(tmp_path / "p3.csv"), pts, attrs)[0]
    table = pd.read_csv(path)
    assert list(table.columns) == ["frame", "row_px", "col_px", "y_Å", "x_Å", "score"]
    assert table["frame"].dtype.kind == "i"
    (tmp_path / "p3.csv.json").unlink()  # still readable, scale fitted from the columns
    data, kw, _ = read_points_csv(path)
    np.testing.assert_allclose(data, pts)
    np.testing.assert_allclose(kw["scale"][1:], [0.5, 0.25])
    np.testing.assert_allclose(kw["translate"][2], 10.0)
    assert kw["units"][1:] == ["Å", "Å"]


def test_points_csv_empty(tmp_path):
    path = write_points_csv(str(tmp_path / "e.csv"), np.zeros((0, 2)), {})[0]
    data, kw, _ = read_points_csv(path)
    assert data.shape == (0, 2)


def test_labels_tiff(tmp_path, prov):
    import tifffile

    labels = np.zeros((32, 40), np.uint16)
    labels[4:10, 5:9] = 3
    labels[20:30, 20:30] = 70000 % 65536
    path = write_labels_tiff(
        str(tmp_path / "l.tif"),
        labels,
        {"scale": (0.1, 0.1), "units": ("nm", "nm"), "metadata": {"napari_microml": prov}},
    )[0]
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].dtype == np.int32
        desc = json.loads(tif.pages[0].description)
    assert desc["napari_microml"]["tool"] == "atoms" and desc["units"] == ["nm", "nm"]
    data, kw, kind = read_labels_tiff(path)
    assert kind == "labels" and data.dtype == np.int32
    np.testing.assert_array_equal(data, labels)
    with pytest.raises(ValueError, match="integers"):
        write_labels_tiff(str(tmp_path / "f.tif"), labels.astype(float), {})


def test_bundle_round_trip(tmp_path, rng, prov):
    img = rng.normal(size=(2, 16, 16)).astype(np.float32)
    pts = rng.uniform(0, 16, (7, 3))
    labels = np.zeros((16, 16), np.int32)
    labels[2:5, 2:5] = 1
    feats = pd.DataFrame({"score": rng.uniform(size=7), "fit_ok": [True] * 6 + [False]})
    layers = [
        (
            img,
            {
                "name": "image",
                "scale": [1, 0.2, 0.2],
                "units": ("s", "nm", "nm"),
                "axis_labels": ("t", "y", "x"),
                "metadata": {},
            },
            "image",
        ),
        (
            pts,
            {
                "name": "atoms",
                "scale": [1, 0.2, 0.2],
                "units": ("s", "nm", "nm"),
                "features": feats,
                "metadata": {"napari_microml": prov},
            },
            "points",
        ),
        (labels, {"name": "defects", "scale": [0.2, 0.2], "metadata": {}}, "labels"),
    ]
    out = write_bundle(str(tmp_path / "b.zarr"), layers)
    assert out == [str(tmp_path / "b.zarr")]
    back = read_bundle(out[0])
    assert [b[2] for b in back] == ["image", "points", "labels"]
    np.testing.assert_array_equal(back[0][0], img)
    assert back[0][1]["axis_labels"] == ["t", "y", "x"]
    assert back[0][1]["units"] == ["s", "nm", "nm"]
    np.testing.assert_allclose(back[1][0], pts)
    pd.testing.assert_frame_equal(back[1][1]["features"], feats)
    assert back[1][1]["metadata"]["napari_microml"]["parameters"]["threshold"] == 0.5
    assert back[1][1]["metadata"]["bundle"]["tool"] == "write_bundle"
    np.testing.assert_array_equal(back[2][0], labels)
    assert back[2][1]["units"] == ["pixel", "pixel"]


def test_read_bundle_rejects_other_zarr(tmp_path):
    import zarr

    zarr.open_group(str(tmp_path / "x.zarr"), mode="w")
    with pytest.raises(ValueError, match="not a napari-microml results bundle"):
        read_bundle(str(tmp_path / "x.zarr"))


def test_napari_save_layers_uses_our_writers(make_napari_viewer, tmp_path, rng, prov):
    viewer = make_napari_viewer()
    pts = viewer.add_points(
        rng.uniform(0, 30, (5, 2)),
        scale=(0.5, 0.5),
        units=("nm", "nm"),
        features={"score": np.arange(5.0)},
        name="atoms",
        metadata={"napari_microml": prov},
    )
    viewer.add_labels(np.eye(32, dtype=np.int32), name="lab")
    viewer.layers.selection = {pts}
    written = viewer.layers.save(str(tmp_path / "pts.csv"), selected=True, plugin="napari-microml")
    assert str(tmp_path / "pts.csv") in written
    table = pd.read_csv(tmp_path / "pts.csv")
    assert {"y_nm", "x_nm", "score"} <= set(table.columns)
    viewer.layers.select_all()
    viewer.layers.save(str(tmp_path / "all.zarr"), plugin="napari-microml")
    back = read_bundle(str(tmp_path / "all.zarr"))
    assert sorted(b[1]["name"] for b in back) == ["atoms", "lab"]
    for data, kw, kind in back:
        viewer._add_layer_from_data(data, kw, kind)
    assert len(viewer.layers) == 4


def test_write_image_tiff_keeps_dtype_and_is_recognised_as_an_output(tmp_path, prov):
    import tifffile

    from napari_microml.io.writer import is_microml_output, write_image_tiff

    data = np.linspace(0, 1e-9, 64).reshape(8, 8)  # float64 in SI units: must not become float32
    path = write_image_tiff(
        str(tmp_path / "m.tif"),
        data,
        {"scale": [0.1, 0.1], "units": ["nm", "nm"], "metadata": {"napari_microml": prov}},
    )[0]
    back = tifffile.imread(path)
    assert back.dtype == np.float64
    np.testing.assert_array_equal(back, data)
    desc = json.loads(tifffile.TiffFile(path).pages[0].description)
    assert desc["format"] == "napari-microml-image/1" and desc["units"] == ["nm", "nm"]
    assert desc["napari_microml"]["tool"] == "atoms"
    assert is_microml_output(path)
    write_labels_tiff(str(tmp_path / "l.tif"), np.ones((8, 8), np.int32), {})
    assert is_microml_output(tmp_path / "l.tif")
    tifffile.imwrite(tmp_path / "plain.tif", data.astype(np.float32))
    tifffile.imwrite(
        tmp_path / "described.tif", data.astype(np.float32), description="HAADF 200 kV"
    )
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    for name in ("plain.tif", "described.tif", "broken.tif", "missing.tif"):
        assert not is_microml_output(tmp_path / name), name
    with pytest.raises(ValueError, match="numbers"):
        write_image_tiff(str(tmp_path / "s.tif"), np.array([["a"]]), {})


def test_write_defects_csv_header_and_round_trip(tmp_path, prov):
    from napari_microml.io.writer import write_defects_csv

    table = pd.DataFrame({"label": [1, 2], "class": ["vacancy", "dopant"], "row": [3.5, 9.0]})
    counts = pd.DataFrame(
        {
            "class": ["vacancy", "dopant", "interstitial"],
            "count": [1, 1, 0],
            "density_per_nm2": [0.5, 0.5, 0.0],
        }
    )
    path = write_defects_csv(
        tmp_path / "d.csv",
        table,
        counts,
        provenance={"napari_microml": prov},
        image="img.dm4",
        pixel_size=0.02,
    )
    lines = open(path, encoding="utf-8").read().splitlines()
    assert lines[:3] == [
        "# napari-microml defect table",
        "# image: img.dm4",
        "# pixel_size_nm: 0.02",
    ]
    assert (
        "# count vacancy: 1, 0.5 per nm²" in lines and "# count interstitial: 0, 0 per nm²" in lines
    )
    head = next(x for x in lines if x.startswith("# provenance: "))
    assert json.loads(head[14:])["napari_microml"]["parameters"] == {"threshold": 0.5}
    pd.testing.assert_frame_equal(pd.read_csv(path, comment="#"), table)
    # no counts, no pixel size
    path = write_defects_csv(tmp_path / "e.csv", table.iloc[:0])
    assert "# pixel_size_nm: unknown (positions in px)" in open(path, encoding="utf-8").read()


def test_a_failed_bundle_write_leaves_the_earlier_bundle_whole(tmp_path):
    from napari_microml.io.writer import read_bundle, write_bundle

    path = tmp_path / "b.zarr"
    write_bundle(str(path), [(np.zeros((4, 4)), {"name": "img"}, "image")])
    ragged = np.array([np.zeros((3, 2)), np.zeros((4, 2))], dtype=object)
    with pytest.raises(ValueError, match="ragged"):
        write_bundle(
            str(path),
            [(np.ones((4, 4)), {"name": "other"}, "image"), (ragged, {"name": "r"}, "shapes")],
        )
    assert [kw["name"] for _, kw, _ in read_bundle(str(path))] == ["img"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.zarr"]  # no partial left behind
    write_bundle(str(path), [(np.ones((4, 4)), {"name": "other"}, "image")])  # asked: replaced
    assert [kw["name"] for _, kw, _ in read_bundle(str(path))] == ["other"]


def test_an_interrupted_csv_write_keeps_the_earlier_file_and_its_sidecar(tmp_path, monkeypatch):
    from napari_microml.io.writer import write_points_csv

    path = tmp_path / "atoms.csv"
    write_points_csv(str(path), np.array([[1.0, 2.0]]), {"name": "a"})
    before = path.read_text(), (tmp_path / "atoms.csv.json").read_text()

    def half_then_fail(self, target, *args, **kwargs):
        open(target, "w").write("row_px,col_px\n3.0,")
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        write_points_csv(str(path), np.array([[3.0, 4.0]]), {"name": "b"})
    assert (path.read_text(), (tmp_path / "atoms.csv.json").read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atoms.csv", "atoms.csv.json"]
