"""Kriging blocks blended without seams (kriging.local_gp_iter ``overlap``, metrics.seam_ratio)."""

import numpy as np
import pytest

from napari_microml.completion.complete import complete_scan
from napari_microml.completion.kriging import blend_weights, lattice_kriging_iter, local_gp_iter
from napari_microml.completion.masks import scan_mask
from napari_microml.completion.metrics import completion_errors, seam_ratio
from napari_microml.runtime.workers import drain

SETTINGS = dict(k=64, block="auto", n_fit=48, fit_k=48, kernel="matern52")


@pytest.mark.parametrize(("block", "overlap"), [(8, 4), (16, 8), (16, 4), (8, 1)])
def test_blend_weights_of_neighbouring_blocks_sum_to_one(block, overlap):
    w = blend_weights(block, overlap)
    assert w.shape == (block + 2 * overlap,)
    total = np.zeros(6 * block + 2 * overlap)
    for b in range(6):  # six blocks side by side, each window starting at b·block − overlap
        total[b * block : b * block + len(w)] += w
    inner = total[2 * overlap : 6 * block]  # away from the two outer ends
    np.testing.assert_allclose(inner, 1.0, atol=1e-12)
    assert np.all(np.diff(w[: 2 * overlap]) > 0) and w.min() > 0


@pytest.fixture(scope="module")
def pt_crop(shared_data):
    """The audit's repro image (Pt nanocrystal HAADF), a 160² crop, scanned by a 5.6 % spiral."""
    import tifffile

    path = shared_data / "atoms_pt_haadf" / "images" / "021_HAADF_15nm_Sample_PtNC_21Oct20.tif"
    image = tifffile.imread(path).astype(float)[200:360, 200:360]
    return image, scan_mask("spiral", image.shape, 0.056, seed=0)


def test_default_kriging_has_no_block_seams_on_a_pt_image(pt_crop):
    image, mask = pt_crop
    result = complete_scan(np.where(mask, image, np.nan), mask)
    filled = np.asarray(result.image, float)
    np.testing.assert_array_equal(filled[mask], image[mask])  # measurements stay exact
    assert seam_ratio(filled, mask) <= 1.5, seam_ratio(filled, mask)
    # the same kriging with each block alone steps at every block edge: the metric sees seams
    alone, _, _ = drain(local_gp_iter(image, mask, **SETTINGS, overlap=0))
    assert seam_ratio(alone, mask) > 2.0, seam_ratio(alone, mask)


def test_blending_keeps_accuracy_and_an_honest_sigma(pt_crop):
    image, mask = pt_crop
    runs = {o: drain(lattice_kriging_iter(image, mask, **SETTINGS, overlap=o)) for o in (0, "auto")}
    err = {o: completion_errors(r[0], image, mask, r[1]) for o, r in runs.items()}
    assert err["auto"]["rms"] <= 1.01 * err[0]["rms"], err
    # the blend's σ: 2σ still covers about 95 % of the (noisy) truth at unmeasured pixels
    assert 0.90 <= err["auto"]["within_2sigma"] <= 0.99, err
    std = runs["auto"][1]
    assert np.all(std[mask] == 0) and np.all(std[~mask] > 0)


def test_overlap_beyond_half_a_block_is_refused():
    rng = np.random.default_rng(0)
    mask = rng.random((64, 64)) < 0.2
    with pytest.raises(ValueError, match="half the block"):
        drain(local_gp_iter(rng.normal(size=(64, 64)), mask, block=8, overlap=5))


def test_seam_ratio_sees_a_block_mosaic_and_not_a_smooth_image():
    yy, xx = np.mgrid[:128, :128].astype(float)
    smooth = np.sin(xx / 9.0) + np.cos(yy / 7.0)
    mask = np.zeros((128, 128), bool)
    assert seam_ratio(smooth, mask) < 1.2
    mosaic = smooth + 0.5 * ((xx // 16 + yy // 16) % 2)  # a step at every 16-px block edge
    assert seam_ratio(mosaic, mask) > 3.0
