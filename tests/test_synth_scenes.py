import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_microml.synth.scenes import SCENE_KINDS, simulate_scene


def _flat_fraction_and_level(clean):
    """Share of pixels whose 9×9 neighbourhood is flat, and where they sit in the range (0..1)."""
    mean = ndi.uniform_filter(clean, 9)
    std = np.sqrt(np.clip(ndi.uniform_filter(clean**2, 9) - mean**2, 0, None))
    flat = std < 0.004
    span = clean.max() - clean.min()
    level = (np.median(clean[flat]) - clean.min()) / span if flat.any() else np.nan
    return flat.mean(), level


@pytest.mark.parametrize("kind", SCENE_KINDS)
def test_vacuum_zero_leaves_the_scene_unchanged(kind):
    a = simulate_scene((64, 64), kind=kind, dose=300, seed=21)
    b = simulate_scene((64, 64), kind=kind, dose=300, seed=21, vacuum=0.0)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_vacuum_region_is_flat_and_at_the_floor_or_ceiling():
    with_vac, without = [], []
    for seed in range(6):
        with_vac.append(
            _flat_fraction_and_level(
                simulate_scene((128, 128), kind="lattice", dose=np.inf, seed=seed, vacuum=1.0)[1]
            )
        )
        without.append(
            _flat_fraction_and_level(
                simulate_scene((128, 128), kind="lattice", dose=np.inf, seed=seed)[1]
            )[0]
        )
    frac = np.array([f for f, _ in with_vac])
    levels = np.array([lv for _, lv in with_vac])
    assert (frac > np.array(without) + 0.05).all()  # every scene got a vacuum region of real size
    assert ((levels < 0.15) | (levels > 0.85)).all()  # dark (ADF) or bright (BF) vacuum


def test_vacuum_scene_is_reproducible_and_noisy():
    a = simulate_scene((64, 64), kind="particles", dose=100, seed=4, vacuum=1.0)
    b = simulate_scene((64, 64), kind="particles", dose=100, seed=4, vacuum=1.0)
    np.testing.assert_array_equal(a[0], b[0])
    assert np.abs(a[0] - a[1]).mean() > 0.005
