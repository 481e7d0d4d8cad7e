"""Initial designs: the "diverse" design covers every kind of structure and spreads in space."""

import numpy as np
import pytest

from napari_microml import ActiveLearner
from napari_microml.dkl.design import diverse_points
from napari_microml.runtime.validate import robust_normalize


def _rare_texture_image(seed: int):
    """40×40 weak noise with a 10×10 striped square (6 % of the area) at a random place."""
    rng = np.random.default_rng(seed)
    img = 0.05 * rng.standard_normal((40, 40))
    r, c = rng.integers(8, 22, size=2)
    stripes = np.sin(np.arange(10) * 2.0)[None, :].repeat(10, 0)
    img[r : r + 10, c : c + 10] += stripes
    rare = np.zeros((40, 40), bool)
    rare[r : r + 10, c : c + 10] = True
    return robust_normalize(img.astype(np.float32)), rare


def test_diverse_design_always_samples_a_rare_structure_that_random_often_misses():
    hits_diverse = hits_random = 0
    for seed in range(10):
        img, rare = _rare_texture_image(seed)
        rng = np.random.default_rng(100 + seed)
        idx = diverse_points(img, 8, rng, patch_size=6)
        assert len(set(idx.tolist())) == 8
        hits_diverse += bool(rare.ravel()[idx].any())
        hits_random += bool(rare.ravel()[rng.choice(img.size, 8, replace=False)].any())
    assert hits_diverse == 10
    assert hits_random < 10  # (1 - 0.0625)^8 ≈ 0.6 chance to miss per image


def test_diverse_design_respects_availability_seed_and_border():
    img, _ = _rare_texture_image(0)
    available = np.ones(img.size, bool)
    available[:800] = False  # the top half is already measured
    a = diverse_points(img, 6, np.random.default_rng(1), available=available, patch_size=8)
    b = diverse_points(img, 6, np.random.default_rng(1), available=available, patch_size=8)
    c = diverse_points(img, 6, np.random.default_rng(2), available=available, patch_size=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.all(available[a]) and len(set(a.tolist())) == 6
    rows, cols = a // 40, a % 40
    assert rows.min() >= 4 and rows.max() < 36 and cols.min() >= 4 and cols.max() < 36
    # more points than pixels left: every available pixel, no repeats
    few = np.zeros(img.size, bool)
    few[[5, 77, 900]] = True
    assert sorted(
        diverse_points(img, 10, np.random.default_rng(0), available=few, patch_size=8).tolist()
    ) == [5, 77, 900]


def test_coordinate_design_spreads_points_over_the_field():
    img = np.zeros((30, 30), np.float32)
    idx = diverse_points(img, 9, np.random.default_rng(0), features="coords")
    pts = np.column_stack([idx // 30, idx % 30]).astype(float)
    d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)) + np.eye(9) * 1e9
    assert d.min() >= 5  # nine random pixels of 900 are closer than 5 px ~97 % of the time


def test_learner_uses_the_design_for_its_first_batch_only():
    img, rare = _rare_texture_image(3)
    L = ActiveLearner(
        img, initial="diverse", patch_size=6, seed=5, device="cpu", init_iters=10, warm_iters=3
    )
    first = L.suggest(8)
    flat = first[:, 0] * 40 + first[:, 1]
    expected = diverse_points(
        L.model.image, 8, np.random.default_rng(5), patch_size=6, features="cnn"
    )
    np.testing.assert_array_equal(flat, expected)
    assert rare[first[:, 0], first[:, 1]].any()
    L.observe(first, img[first[:, 0], first[:, 1]])
    nxt = L.suggest(2)  # now the model chooses
    assert L.last_acquisition is not None and nxt.shape == (2, 2)
    with pytest.raises(ValueError, match="initial"):
        ActiveLearner(img, initial="sobol", device="cpu")
