"""Acquisition functions pick the expected point on known 1D/2D functions."""

import numpy as np
import pytest
from scipy.stats import norm

from napari_microml.dkl.acquisition import (
    LogExpectedImprovement,
    PosteriorStdDev,
    ProbabilityOfImprovement,
    ThompsonSampling,
    UpperConfidenceBound,
    distance_penalty,
    get_acquisition,
    log_h,
    select_batch,
)


def test_log_h_matches_closed_form_and_stays_finite_far_below():
    z = np.linspace(-5, 5, 41)
    direct = np.log(norm.pdf(z) + z * norm.cdf(z))
    np.testing.assert_allclose(log_h(z), direct, rtol=1e-6, atol=1e-9)
    far = log_h(np.array([-40.0, -1e3, -1e7]))
    assert np.isfinite(far).all() and far[0] > far[1] > far[2]


# 1D: a known mean/std profile on 0..100
x = np.linspace(0, 1, 101)
MEAN_1D = np.sin(3 * np.pi * x) * x  # max near x=0.83 (idx ~ 83); min near idx ~ 50
STD_1D = np.full_like(x, 0.05)


@pytest.mark.parametrize("acq", ["ei", "ucb", "pi"])
def test_1d_exploit_picks_maximum_and_minimum(acq):
    best_max = MEAN_1D.max() - 0.01
    up = get_acquisition(acq, maximize=True)(MEAN_1D, STD_1D, best_max)
    assert np.argmax(up) == np.argmax(MEAN_1D)
    down = get_acquisition(acq, maximize=False)(MEAN_1D, STD_1D, MEAN_1D.min() + 0.01)
    assert np.argmax(down) == np.argmin(MEAN_1D)


def test_1d_ucb_trades_off_exploration():
    std = STD_1D.copy()
    std[10] = 2.0  # very uncertain point far from the mean's maximum
    assert np.argmax(UpperConfidenceBound(beta=4.0)(MEAN_1D, std)) == 10
    assert np.argmax(UpperConfidenceBound(beta=1e-6)(MEAN_1D, std)) == np.argmax(MEAN_1D)


def test_1d_ei_prefers_uncertain_when_means_equal():
    mean = np.zeros(5)
    std = np.array([0.1, 0.2, 1.5, 0.3, 0.2])
    assert np.argmax(LogExpectedImprovement()(mean, std, best=0.5)) == 2
    assert np.argmax(PosteriorStdDev()(mean, std)) == 2
    # PI with a far incumbent also prefers the uncertain point
    assert np.argmax(ProbabilityOfImprovement()(mean, std, best=2.0)) == 2


def test_1d_thompson_follows_the_sample():
    samples = np.stack([MEAN_1D, -MEAN_1D])
    scores = ThompsonSampling()(MEAN_1D, STD_1D, samples=samples)
    assert np.argmax(scores[0]) == np.argmax(MEAN_1D)
    assert np.argmax(scores[1]) == np.argmin(MEAN_1D)
    with pytest.raises(ValueError):
        ThompsonSampling()(MEAN_1D, STD_1D)


def _bump_2d(shape=(20, 24), centre=(12, 7)):
    rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]]
    mean = np.exp(-((rr - centre[0]) ** 2 + (cc - centre[1]) ** 2) / 20.0)
    coords = np.column_stack([rr.ravel(), cc.ravel()])
    return mean.ravel(), coords


@pytest.mark.parametrize("acq", ["ei", "ucb", "pi", "ts"])
def test_2d_bump_each_acquisition_picks_the_peak(acq):
    mean, coords = _bump_2d()
    std = np.full_like(mean, 0.1)
    f = get_acquisition(acq)
    samples = mean[None] + 1e-4 * np.random.default_rng(0).standard_normal((1, mean.size))
    scores = f(mean, std, best=0.9, samples=samples if f.needs_samples else None)
    pick = select_batch(scores, coords, 1)
    assert tuple(coords[pick[0]]) == (12, 7)


def test_2d_uncertainty_picks_the_hole():
    mean, coords = _bump_2d()
    std, _ = _bump_2d(centre=(3, 20))
    pick = select_batch(PosteriorStdDev()(mean, std), coords, 1)
    assert tuple(coords[pick[0]]) == (3, 20)


def test_batch_local_penalisation_spreads_points_and_skips_measured():
    mean, coords = _bump_2d()
    scores = UpperConfidenceBound()(mean, np.full_like(mean, 0.1))
    avail = np.ones(len(mean), bool)
    avail[12 * 24 + 7] = False  # the peak was measured already
    pick = select_batch(scores, coords, 4, available=avail, radius=3.0)
    assert len(set(pick.tolist())) == 4 and 12 * 24 + 7 not in pick
    pts = coords[pick].astype(float)
    d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    assert d[np.triu_indices(4, 1)].min() >= 2.0
    # without penalisation the batch clumps around the peak
    clumped = coords[select_batch(scores, coords, 4, available=avail, radius=0.0)].astype(float)
    assert np.abs(clumped - [12, 7]).max() <= 1


def test_thompson_batch_uses_one_sample_per_point():
    mean, coords = _bump_2d()
    s2, _ = _bump_2d(centre=(2, 2))
    pick = select_batch(np.stack([mean, s2]), coords, 2)
    assert [tuple(coords[i]) for i in pick] == [(12, 7), (2, 2)]


def test_recent_penalty_moves_away_from_recent_measurements():
    mean, coords = _bump_2d()
    scores = UpperConfidenceBound()(mean, np.full_like(mean, 0.1))
    pick = select_batch(scores, coords, 1, recent=np.array([[12, 7]]), recent_radius=4.0)
    assert np.hypot(*(coords[pick[0]] - [12, 7])) >= 3
    assert distance_penalty(coords[:1], coords[:1], 2.0)[0] == 0.0


def test_unknown_acquisition_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown acquisition"):
        get_acquisition("magic")
    assert get_acquisition("random") is None
