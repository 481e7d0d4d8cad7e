"""scan_mask: every scan kind, coverage, shapes, reproducibility and errors."""

import numpy as np
import pytest

import napari_microml as mm
from napari_microml.completion.masks import MASK_KINDS, scan_mask


@pytest.mark.parametrize("kind", MASK_KINDS)
@pytest.mark.parametrize("shape", [(128, 128), (96, 150)])
@pytest.mark.parametrize("coverage", [1 / 10, 1 / 17.9, 1 / 50])
def test_every_kind_gives_a_bool_mask_at_the_requested_coverage(kind, shape, coverage):
    m = scan_mask(kind, shape, coverage, seed=3)
    assert m.shape == shape and m.dtype == bool
    rel = m.mean() / coverage
    exact = ("spiral", "lissajous", "random", "random_walk", "thick_trace", "partial_lines", "roi")
    if kind in exact:
        assert abs(rel - 1) <= 0.02, (kind, rel)
    else:  # grids and lines are quantised to whole rows / columns
        assert abs(rel - 1) <= 0.2, (kind, rel)


@pytest.mark.parametrize("kind", ["thick_trace", "partial_lines", "jittered_grid", "roi"])
@pytest.mark.parametrize("coverage", [1 / 5, 1 / 100])
def test_instrument_kinds_span_coverages_one_fifth_to_one_hundredth(kind, coverage):
    for seed in range(4):
        m = scan_mask(kind, (160, 160), coverage, seed=seed)
        assert m.shape == (160, 160) and m.dtype == bool
        assert abs(m.mean() / coverage - 1) <= (0.2 if kind == "jittered_grid" else 0.02)


def _share_in_full_2x2(m):
    full = m[:-1, :-1] & m[1:, :-1] & m[:-1, 1:] & m[1:, 1:]
    touched = np.zeros_like(m)
    for dy in (0, 1):
        for dx in (0, 1):
            touched[dy : dy + full.shape[0], dx : dx + full.shape[1]] |= full
    return touched[m].mean()


def test_thick_traces_are_wider_than_a_pixel_and_vary_in_width():
    shares = [
        _share_in_full_2x2(scan_mask("thick_trace", (128, 128), 1 / 10, seed=s)) for s in range(12)
    ]
    thin = [_share_in_full_2x2(scan_mask("spiral", (128, 128), 1 / 10, seed=s)) for s in range(3)]
    assert max(thin) < 0.3  # a 1 px trace has few fully measured 2x2 blocks
    assert sum(v > 0.6 for v in shares) >= 6  # most beams are 2-4 px wide
    assert min(shares) < 0.3  # some are 1 px


def test_partial_lines_measure_one_stretch_per_row_and_some_rows_only_in_part():
    m = scan_mask("partial_lines", (100, 120), 1 / 8, seed=2)
    rows = np.flatnonzero(m.any(1))
    starts = np.diff(np.pad(m[rows].astype(int), ((0, 0), (1, 0))), axis=1) == 1
    assert (starts.sum(1) == 1).all()  # one contiguous stretch per scanned row
    assert (m[rows].sum(1) < 120).sum() >= len(rows) // 2
    assert np.ptp(np.diff(rows)) <= 1  # rows evenly spaced


@pytest.mark.parametrize("kind", ["jittered_grid", "drifting_grid"])
def test_jittered_and_drifting_grids_are_grids_off_their_lattice(kind):
    m = scan_mask(kind, (120, 120), 1 / 25, seed=1)
    g = scan_mask("grid", (120, 120), 1 / 25, seed=1)
    assert abs(int(m.sum()) - int(g.sum())) <= 0.05 * g.sum()  # as many points as the grid
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    assert m.sum() < 0.5 * len(rows) * len(cols)  # no longer a full point lattice
    # still a grid: every point has another within ~1.5 grid steps
    from scipy import ndimage as ndi

    near = ndi.uniform_filter(m.astype(float), 17, mode="constant") * 17**2
    assert (near[m] >= 2).mean() > 0.95


def test_drifting_grid_is_sheared_by_the_drift():
    # raster order: the last rows are acquired last, so they are displaced the most
    shifts = []
    for seed in range(6):
        m = scan_mask("drifting_grid", (200, 200), 1 / 25, seed=seed)
        top = np.flatnonzero(m[:40].any(0))
        bottom = np.flatnonzero(m[-40:].any(0))
        shifts.append(np.abs(np.subtract.outer(bottom, top)).min(1).mean())
    assert max(shifts) > 0.5  # columns move between the first and the last rows


def test_roi_has_a_dense_region_in_a_sparse_field_and_the_exact_count():
    from scipy import ndimage as ndi

    for seed in range(6):
        m = scan_mask("roi", (160, 160), 1 / 50, seed=seed)
        assert int(m.sum()) == round(160 * 160 / 50)
        density = ndi.uniform_filter(m.astype(float), 6, mode="constant")
        assert density.max() >= 0.3  # a densely scanned rectangle
        assert np.median(density) < 0.05  # sparse elsewhere


@pytest.mark.parametrize("coverage", [1 / 17.9, 1 / 87])
def test_spiral_is_within_two_percent_on_a_large_field(coverage):
    m = scan_mask("spiral", (512, 512), coverage)
    assert abs(m.mean() / coverage - 1) <= 0.02


def test_spiral_arms_are_evenly_spaced_and_reach_every_part_of_the_field():
    m = scan_mask("spiral", (256, 256), 1 / 20)
    row = m[128, 128:]  # a ray from the centre crosses the arms at even spacing
    crossings = np.flatnonzero(np.diff(row.astype(int)) == 1)
    gaps = np.diff(crossings)
    assert len(gaps) >= 4 and gaps.std() / gaps.mean() < 0.2
    for quad in (m[:128, :128], m[:128, 128:], m[128:, :128], m[128:, 128:]):
        assert abs(quad.mean() / m.mean() - 1) < 0.25


def test_grid_and_lines_have_the_documented_structure():
    g = scan_mask("grid", (100, 100), 1 / 25)
    rows, cols = np.flatnonzero(g.any(1)), np.flatnonzero(g.any(0))
    assert g.sum() == len(rows) * len(cols)  # a full point lattice
    assert np.ptp(np.diff(rows)) <= 1 and np.ptp(np.diff(cols)) <= 1
    li = scan_mask("lines", (100, 80), 1 / 5)
    full = li.all(1)
    assert (li.any(1) == full).all() and full.sum() == 20


def test_random_walk_is_a_connected_path():
    from scipy import ndimage as ndi

    m = scan_mask("random_walk", (128, 128), 1 / 20, seed=1)
    labels, n = ndi.label(m, structure=np.ones((3, 3)))
    assert np.bincount(labels.ravel())[1:].max() > 0.9 * m.sum()


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_same_seed_same_mask_other_seed_other_mask(kind):
    a = scan_mask(kind, (64, 64), 0.1, seed=5)
    np.testing.assert_array_equal(a, scan_mask(kind, (64, 64), 0.1, seed=5))
    assert not np.array_equal(a, scan_mask(kind, (64, 64), 0.1, seed=6))


def test_full_coverage_measures_everything_and_public_api_matches():
    assert scan_mask("spiral", (16, 16), 1.0).all()
    np.testing.assert_array_equal(
        mm.scan_mask("grid", (32, 32), 0.25), scan_mask("grid", (32, 32), 0.25)
    )


@pytest.mark.parametrize(
    "args",
    [
        ("zigzag", (64, 64), 0.1),
        ("spiral", (64, 64), 0.0),
        ("spiral", (64, 64), 1.5),
        ("grid", (4, 64), 0.1),
        ("random", (64, 64), -0.2),
        ("random", (8, 8), 1e-4),
        ("lines", (64,), 0.1),
    ],
)
def test_bad_arguments_raise_value_error(args):
    with pytest.raises(ValueError):
        scan_mask(*args)
