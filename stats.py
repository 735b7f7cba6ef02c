"""Statistics that say whether a number, or a difference between two settings, is real.

A fine-tuning run on one IEMOCAP session varies by 1-2 UA points from seed to seed, so a
score is reported as mean +/- std over seeds with a Student-t interval, and two settings are
compared on paired jobs (same fold, same seed: same split, initialisation and draws) with a
bootstrap interval of the mean difference and a sign-flip permutation test.
"""
import itertools

import numpy as np


def std(values):
    """Sample standard deviation (n - 1 in the denominator); None for fewer than two values."""
    values = np.asarray(values, dtype=float)
    return float(values.std(ddof=1)) if len(values) >= 2 else None


def t_interval(values, confidence=0.95):
    """[lo, hi]: mean +/- t(1 - alpha/2, n - 1) * std / sqrt(n); None for fewer than two values."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n < 2:
        return None
    from scipy import stats as scipy_stats  # here: scipy.stats takes seconds to import
    half = scipy_stats.t.ppf(0.5 + confidence / 2, n - 1) * values.std(ddof=1) / np.sqrt(n)
    return [float(values.mean() - half), float(values.mean() + half)]


def bootstrap_interval(differences, resamples=10_000, seed=0, confidence=0.95):
    """Percentile interval of the mean paired difference, resampling the pairs with replacement."""
    d = np.asarray(differences, dtype=float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(len(d), size=(resamples, len(d)))].mean(1)
    alpha = (1 - confidence) / 2
    return [float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))]


def sign_flip_p(differences, resamples=10_000, seed=0, exact_up_to=16):
    """Two-sided p-value of the paired sign-flip permutation test of "mean difference = 0".

    Under the null each pair's difference is as likely to have either sign, so the observed
    |mean| is compared with the |mean| of every sign pattern: all 2^n of them when
    n <= exact_up_to, else `resamples` random ones (the observed pattern counted once, so p > 0).
    """
    d = np.asarray(differences, dtype=float)
    observed = abs(d.mean())
    tolerance = 1e-12 * max(1.0, np.abs(d).max(initial=0.0))  # ties in floating point count as ties
    if len(d) <= exact_up_to:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
        return float(np.mean(np.abs(signs @ d) / len(d) >= observed - tolerance))
    signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(resamples, len(d)))
    hits = np.sum(np.abs(signs @ d) / len(d) >= observed - tolerance)
    return float((hits + 1) / (resamples + 1))
