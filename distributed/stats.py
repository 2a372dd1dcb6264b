"""The corrected resampled t-test of Nadeau and Bengio (2003), for two configurations scored on the same K folds.

Two configurations evaluated on the same K folds give K paired differences d_k. A plain paired t-test
treats them as independent, but the K training sets overlap (each pair shares (K-2)/(K-1) of its
images), so the differences are positively correlated and the plain test is far too confident.
Nadeau and Bengio's correction inflates the variance of the mean difference:

    t = mean(d) / sqrt((1/K + n_test/n_train) * var(d)),   var with ddof=1,  K-1 degrees of freedom

where n_test/n_train is the ratio of held-out to training images per fold (1/(K-1) for K-fold CV).
(Bouckaert and Frank, 2004, recommend it for exactly this setting: the same folds for both models.)

Two readings of the one statistic: `corrected_one_sided` is fold-ASHA's stop rule (distributed/racing.py),
`corrected_resampled_ttest` the report's two-sided comparison with a confidence interval (analysis/stats.py).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps


def _corrected(d: np.ndarray, test_train_ratio: float) -> tuple[float, float, float]:
    """(mean, sd with ddof=1, corrected standard error of the mean) of the differences d."""
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    return mean, sd, math.sqrt((1.0 / len(d) + test_train_ratio) * sd ** 2)


def corrected_resampled_ttest(diffs, test_train_ratio: float, alpha: float = 0.05) -> dict:
    """Two-sided corrected resampled t-test of mean(diffs) == 0, plus the uncorrected test for contrast.

    Returns mean, sd (ddof=1), se (corrected), t, df, p, a (1 - alpha) confidence interval of the mean
    difference from the corrected se, and t_naive / p_naive of the ordinary paired t-test.
    """
    d = np.asarray(diffs, dtype=float)
    k = len(d)
    if k < 2:
        raise ValueError(f"need at least 2 paired differences, got {k}")
    mean, sd, se = _corrected(d, test_train_ratio)
    se_naive = sd / math.sqrt(k)
    df = k - 1

    def t_and_p(scale: float) -> tuple[float, float]:
        if scale == 0.0:  # every fold gave the same difference: no noise to test against
            return (0.0, 1.0) if mean == 0.0 else (math.copysign(math.inf, mean), 0.0)
        t = mean / scale
        return t, float(2 * sps.t.sf(abs(t), df))

    t, p = t_and_p(se)
    t_naive, p_naive = t_and_p(se_naive)
    half = float(sps.t.ppf(1 - alpha / 2, df)) * se
    return {"mean": mean, "sd": sd, "se": se, "t": t, "df": df, "p": p,
            "ci_low": mean - half, "ci_high": mean + half, "t_naive": t_naive, "p_naive": p_naive}


def corrected_one_sided(diffs, test_train_ratio: float) -> tuple[float, float]:
    """(t, p) of the one-sided corrected resampled t-test of mean(diffs) > 0 (K-1 degrees of freedom).

    The t is corrected_resampled_ttest's, and p is half its two-sided p when t > 0.
    Fewer than 2 differences: (nan, nan), there is no variance to test against.
    """
    d = np.asarray(diffs, dtype=float)
    k = len(d)
    if k < 2:
        return math.nan, math.nan
    mean, _, se = _corrected(d, test_train_ratio)
    if se == 0.0:  # every fold gave the same difference: certain, unless there is none
        return (math.copysign(math.inf, mean), 0.0 if mean > 0 else 1.0) if mean != 0.0 else (0.0, 1.0)
    t = mean / se
    return t, float(sps.t.sf(t, k - 1))
