"""Sparse acquisitions → (values, mask) grids: rasterisation, position files, the real DE scan."""

import numpy as np
import pytest

from napari_microml.completion.scan_io import (
    check_sparse,
    rasterise,
    read_scan_csv,
    read_scan_info,
    sparse_from_files,
    values_from_movie,
)


def test_rasterise_puts_each_value_on_its_nearest_pixel():
    coords = np.array([[0, 0], [2.4, 3.6], [4, 1]])
    values, mask = rasterise(coords, [1.0, 2.0, 3.0], shape=(5, 6))
    assert (
        values.shape == mask.shape == (5, 6) and values.dtype == np.float64 and mask.dtype == bool
    )
    assert set(zip(*np.nonzero(mask), strict=True)) == {(0, 0), (2, 4), (4, 1)}
    assert values[0, 0] == 1 and values[2, 4] == 2 and values[4, 1] == 3
    assert values[~mask].max() == 0 and mask.sum() == 3


def test_rasterise_averages_duplicates_and_infers_the_shape():
    coords = np.array([[1, 2], [1.2, 1.9], [3, 0], [1, 2]])
    values, mask = rasterise(coords, [1.0, 2.0, 7.0, 6.0])
    assert values.shape == (4, 3)
    assert values[1, 2] == pytest.approx(3.0) and values[3, 0] == 7.0 and mask.sum() == 2


def test_rasterise_origin_shifts_relative_positions():
    values, mask = rasterise([[0, 0], [1, 2]], [5.0, 6.0], shape=(6, 8), origin=(3, 4))
    assert values[3, 4] == 5 and values[4, 6] == 6 and mask.sum() == 2


@pytest.mark.parametrize(
    "coords, values, shape, words",
    [
        ([[0, 0], [np.nan, 1]], [1, 2], None, "NaN"),
        ([[0, 0], [1, 1]], [1, np.nan], None, "NaN"),
        ([[0, 0], [-1, 1]], [1, 2], None, "negative"),
        ([[0, 0], [1, 1]], [1, 2, 3], None, "2 scan positions but 3 values"),
        ([[0, 0], [9, 1]], [1, 2], (5, 5), "outside"),
        (np.zeros((0, 2)), [], None, "no scan positions"),
        ([[0, 0, 0]], [1], None, "(N, 2)"),
    ],
)
def test_rasterise_bad_input_gives_clear_errors(coords, values, shape, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        rasterise(coords, values, shape)


def test_read_scan_csv_swaps_xy_to_row_col(tmp_path):
    path = tmp_path / "pos.csv"
    path.write_text("x,y\n3,1\n0,7\n")
    np.testing.assert_array_equal(read_scan_csv(path), [[1, 3], [7, 0]])
    np.testing.assert_array_equal(read_scan_csv(path, order="yx"), [[3, 1], [0, 7]])
    (tmp_path / "bad.csv").write_text("1,2,3\n")
    with pytest.raises(ValueError, match="exactly two"):
        read_scan_csv(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="does not exist"):
        read_scan_csv(tmp_path / "missing.csv")


def test_values_from_movie_sums_each_frame():
    movie = np.arange(2 * 3 * 4).reshape(2, 3, 4).astype(np.uint16)
    np.testing.assert_array_equal(values_from_movie(movie), [66, 210])
    with pytest.raises(ValueError, match="positions, h, w"):
        values_from_movie(np.zeros((4, 4)))


def test_check_sparse_rejects_what_cannot_be_completed():
    values = np.ones((16, 16), np.float32)
    mask = np.zeros((16, 16), bool)
    mask[::4, ::4] = True
    v, m = check_sparse(values, mask.astype(np.uint8))
    assert m.dtype == bool and m.sum() == 16
    v, m = check_sparse(np.stack([values, values]), mask)  # one 2D mask for a stack
    assert m.shape == (2, 16, 16) and m.sum() == 32
    with pytest.raises(ValueError, match="same size"):
        check_sparse(values, mask[:8])
    with pytest.raises(ValueError, match="no measured pixel"):
        check_sparse(values, np.zeros_like(mask))
    with pytest.raises(ValueError, match="nothing to complete"):
        check_sparse(values, np.ones_like(mask))
    with pytest.raises(ValueError, match="RGB"):
        check_sparse(np.zeros((16, 16, 3)), mask)
    bad = values.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        check_sparse(bad, mask)
    bad[0, 0], bad[1, 1] = 0, np.nan  # NaN at an unmeasured pixel is fine
    check_sparse(bad, mask)


def test_real_direct_electron_random_scan(shared_data):
    folder = shared_data / "formats"
    info = read_scan_info(folder / "ROI_Random_Scan_info.txt")
    assert info["scan_shape"] == (32, 16) and info["roi_offset"] == (3, 3)
    assert info["roi_shape"] == (29, 12)
    coords = read_scan_csv(folder / "ROI_Random_Scan_scan_coordinates.csv")
    assert coords.shape == (348, 2)
    # (x, y) in the file: after the swap rows span the ROI's 29 rows, columns its 12 columns
    assert coords.min(axis=0).tolist() == [0, 0] and coords.max(axis=0).tolist() == [28, 11]
    values, mask, meta = sparse_from_files(
        folder / "ROI_Random_Scan_scan_coordinates.csv",
        folder / "ROI_Random_Scan_movie.mrc",
        folder / "ROI_Random_Scan_info.txt",
    )
    assert values.shape == mask.shape == meta["scan_shape"]
    assert 300 < mask.sum() <= 348
    assert np.isfinite(values).all() and (values[mask] > 0).all() and values[~mask].max() == 0
    # every measured pixel lies inside the ROI given in the info file
    rows, cols = np.nonzero(mask)
    assert rows.min() >= 3 and rows.max() < 3 + 29 and cols.min() >= 3 and cols.max() < 3 + 12


def test_random_scan_layers_put_both_input_modes_on_the_same_grid(shared_data, tmp_path):
    from napari_microml.completion.scan_io import companion_files, random_scan_layers

    folder = shared_data / "formats"
    movie = folder / "ROI_Random_Scan_movie.mrc"
    assert companion_files(movie) == (
        folder / "ROI_Random_Scan_scan_coordinates.csv",
        folder / "ROI_Random_Scan_info.txt",
    )
    frames = np.arange(348 * 4 * 4, dtype=np.uint16).reshape(348, 4, 4)  # any movie with 348 frames
    (values, vkw, vkind), (mask, mkw, mkind), (points, pkw, pkind) = random_scan_layers(
        movie, frames
    )
    assert (vkind, mkind, pkind) == ("image", "labels", "points")
    assert values.shape == mask.shape == (32, 16) and mask.sum() == 348
    assert pkw["metadata"]["napari_microml"]["scan_shape"] == (32, 16)
    # the points (full-scan pixels) rasterised on the grid in their metadata give the sparse image
    grid, measured = rasterise(
        points, pkw["features"]["intensity"], pkw["metadata"]["napari_microml"]["scan_shape"]
    )
    np.testing.assert_array_equal(measured, mask.astype(bool))
    np.testing.assert_array_equal(grid, values)
    assert values[mask.astype(bool)].min() == values_from_movie(frames).min()
    lone = tmp_path / "other_movie.mrc"  # a movie without a position file is just a movie
    lone.write_bytes(b"")
    assert companion_files(lone) is None and random_scan_layers(lone, frames) == []
    with pytest.raises(ValueError, match="347 frames but"):
        random_scan_layers(movie, frames[:347])


def test_check_mask_is_cheap_and_says_what_is_wrong():
    from napari_microml.completion.scan_io import check_mask

    m = np.zeros((16, 16), np.float32)
    m[::4, ::4] = 1
    m[1, 1] = np.nan  # NaN = unmeasured
    out = check_mask((2, 16, 16), m)  # a 2D mask for a stack
    assert out.shape == (2, 16, 16) and out.dtype == bool and out.sum() == 32
    with pytest.raises(ValueError, match="same size"):
        check_mask((16, 15), m)
    with pytest.raises(ValueError, match="frame 1"):
        check_mask((2, 16, 16), np.stack([m, np.ones_like(m)]))


def test_microml_complete_says_when_a_csv_scans_grid_was_inferred(tmp_path, capsys):
    """As the completer dock says it: without a declared size the grid ends at the furthest
    measured position; a sidecar declaring the size gives the whole grid and no note."""
    import json

    import tifffile

    from napari_microml import cli

    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 40, 300), rng.integers(0, 50, 300)
    values = np.sin(rows / 4) + np.cos(cols / 5)
    body = "\n".join(f"{c},{r},{v:.4f}" for r, c, v in zip(rows, cols, values, strict=True))
    (tmp_path / "scan.csv").write_text("x,y,value\n" + body + "\n")
    out = tmp_path / "out"
    assert cli.main(["complete", str(tmp_path / "scan.csv"), "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "is as large as the furthest measured position: scan.csv" in err, err
    (tmp_path / "scan.csv.json").write_text(json.dumps({"scan_shape": [64, 64]}))
    out2 = tmp_path / "out2"
    assert cli.main(["complete", str(tmp_path / "scan.csv"), "--out", str(out2), "--quiet"]) == 0
    assert "furthest measured position" not in capsys.readouterr().err
    assert tifffile.imread(out2 / "scan_complete_image.tif").shape == (64, 64)
