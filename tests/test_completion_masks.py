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
    if kind in ("spiral", "lissajous", "random", "random_walk"):
        assert abs(rel - 1) <= 0.02, (kind, rel)
    else:  # grid and lines are quantised to whole rows / columns
        assert abs(rel - 1) <= 0.2, (kind, rel)


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
