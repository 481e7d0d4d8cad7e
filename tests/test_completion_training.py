"""training.completion: the instrument scan mix feeds the network valid samples; the shared
wall-time LR schedule warms up, anneals and stops on time."""

import numpy as np
import pytest

from napari_microml.completion.masks import MASK_KINDS
from napari_microml.training.common import budget_lr_factor
from napari_microml.training.completion import MIXES, make_sample, mask_bank


def test_instrument_mix_uses_every_scan_kind():
    assert set(MIXES["instrument"]) == set(MASK_KINDS)
    assert set(MIXES["legacy"]) < set(MASK_KINDS)


@pytest.mark.parametrize("kind", ["thick_trace", "partial_lines", "drifting_grid", "roi"])
def test_samples_of_new_kinds_have_the_features_target_and_mask_the_network_expects(kind):
    rng = np.random.default_rng(0)
    clean = np.random.default_rng(1).uniform(0.1, 1.0, (120, 120)).astype(np.float32)
    noisy = clean + np.random.default_rng(2).normal(0, 0.05, clean.shape).astype(np.float32)
    feats, target, mask = make_sample(noisy, clean, rng, 64, kind=kind, coverage=1 / 5)
    assert feats.shape == (4, 64, 64) and target.shape == (64, 64) and mask.dtype == bool
    assert np.isfinite(feats).all() and np.isfinite(target).all()
    assert 0.1 < mask.mean() < 0.3  # coverage 1/5 on the crop (the mask is drawn at crop size)
    np.testing.assert_array_equal(feats[1] > 0.5, mask)  # plane 2 is the mask


def test_mask_bank_draws_coverages_in_the_requested_range():
    bank = mask_bank(12, 3, sizes=(64, 128), mix="instrument", cov_range=(1 / 100, 1 / 5))
    cov = np.array([m.mean() for m in bank])
    assert ((cov > 1 / 130) & (cov < 1 / 3.8)).all()


def test_budget_schedule_warms_up_anneals_and_ends_on_time():
    assert budget_lr_factor(1, 1000, 0.0, float("inf")) == pytest.approx(0.01)
    assert budget_lr_factor(51, 1000, 0.0, float("inf")) == pytest.approx(1.0)
    mid = budget_lr_factor(500, 1000, 0.0, float("inf"))
    assert 0.4 < mid < 0.6
    assert budget_lr_factor(10, 1000, 60.0, 60.0) is None  # the wall budget is spent
    assert budget_lr_factor(1001, 1000, 0.0, float("inf")) is None
    # wall time past half the budget anneals the LR even early in the steps
    assert budget_lr_factor(10, 1000, 45.0, 60.0) < 0.3
