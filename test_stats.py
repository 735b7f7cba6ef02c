"""stats.py against hand-worked numbers."""
import math

import numpy as np
import pytest

import stats


def test_three_seed_loso_scores_give_mean_std_and_t_interval_by_hand():
    scores = [0.70, 0.72, 0.74]
    # the mean of 0.70, 0.72 and 0.74 is 0.72: the interval below centres on it
    # sample std: sqrt(((-0.02)^2 + 0 + 0.02^2) / (3 - 1)) = 0.02
    assert stats.std(scores) == pytest.approx(0.02)
    # t(0.975, 2) = 4.303: 0.72 +/- 4.303 * 0.02 / sqrt(3) = 0.72 +/- 0.04969
    lo, hi = stats.t_interval(scores)
    half = 4.302653 * 0.02 / math.sqrt(3)
    assert lo == pytest.approx(0.72 - half, abs=1e-6) and hi == pytest.approx(0.72 + half, abs=1e-6)
    assert (lo + hi) / 2 == pytest.approx(0.72)


def test_one_value_has_no_std_and_no_interval():
    assert stats.std([0.7]) is None and stats.t_interval([0.7]) is None


def test_exact_sign_flip_p_of_four_positive_differences_is_two_in_sixteen():
    # only the all-plus and all-minus patterns reach |mean| = 0.025
    assert stats.sign_flip_p([0.01, 0.02, 0.03, 0.04]) == pytest.approx(2 / 16)


def test_sign_flip_p_is_one_when_the_differences_cancel():
    assert stats.sign_flip_p([0.02, -0.02]) == 1.0


def test_sign_flip_p_with_random_flips_is_near_the_exact_one():
    rng = np.random.default_rng(0)
    d = rng.normal(0.005, 0.01, size=20)
    exact = stats.sign_flip_p(d, exact_up_to=20)  # 2^20 patterns: still exact here
    sampled = stats.sign_flip_p(d, resamples=10_000, seed=1, exact_up_to=16)
    assert abs(sampled - exact) < 0.02 and 0 < sampled <= 1


def test_bootstrap_interval_is_reproducible_for_its_seed_and_contains_the_mean():
    d = [0.01, 0.02, 0.03, 0.04]
    a = stats.bootstrap_interval(d, seed=3)
    assert a == stats.bootstrap_interval(d, seed=3)
    assert a[0] <= 0.025 <= a[1]
    assert 0.01 <= a[0] and a[1] <= 0.04  # a mean of resampled pairs never leaves their range
    many = np.random.default_rng(0).normal(size=12)
    assert stats.bootstrap_interval(many, seed=3) != stats.bootstrap_interval(many, seed=4)  # the seed is used


def test_bootstrap_interval_of_many_normal_pairs_has_the_width_of_the_normal_quantiles():
    d = np.random.default_rng(1).normal(0.5, 2.0, size=400)
    se = d.std(ddof=0) / np.sqrt(len(d))  # the bootstrap's mean of n resampled pairs spreads by this
    for confidence, z in ((0.95, 1.959964), (0.5, 0.674490)):
        lo, hi = stats.bootstrap_interval(d, resamples=20_000, confidence=confidence)
        assert (hi - lo) / 2 == pytest.approx(z * se, rel=0.05)
        assert (lo + hi) / 2 == pytest.approx(d.mean(), abs=0.05 * se + 0.02 * z * se)
