"""Is the winner really better? The corrected resampled t-test of Nadeau and Bengio (2003).

Two configurations evaluated on the same K folds give K paired differences d_k. A plain paired t-test
treats them as independent, but the K training sets overlap (each pair shares (K-2)/(K-1) of its
images), so the differences are positively correlated and the plain test is far too confident.
Nadeau and Bengio's correction inflates the variance of the mean difference:

    t = mean(d) / sqrt((1/K + n_test/n_train) * var(d)),   var with ddof=1,  K-1 degrees of freedom

where n_test/n_train is the ratio of held-out to training images per fold (1/(K-1) for K-fold CV).
(Bouckaert and Frank, 2004, recommend it for exactly this setting: the same folds for both models.)
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps


def corrected_resampled_ttest(diffs, test_train_ratio: float, alpha: float = 0.05) -> dict:
    """Two-sided corrected resampled t-test of mean(diffs) == 0, plus the uncorrected test for contrast.

    Returns mean, sd (ddof=1), se (corrected), t, df, p, a (1 - alpha) confidence interval of the mean
    difference from the corrected se, and t_naive / p_naive of the ordinary paired t-test.
    """
    d = np.asarray(diffs, dtype=float)
    k = len(d)
    if k < 2:
        raise ValueError(f"need at least 2 paired differences, got {k}")
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    se = math.sqrt((1.0 / k + test_train_ratio) * sd ** 2)
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


def compare_to_best(fold_values: pd.DataFrame, test_train_ratio: float, alpha: float = 0.05) -> pd.DataFrame:
    """Paired comparison of the first row (the winner) against every other row, fold by fold.

    fold_values: index trial_id, one column per fold (same folds for every row), winner first.
    Returns one row per challenger: its rank, the mean and per-fold differences (winner - challenger),
    the corrected test and a verdict at level alpha.
    """
    if len(fold_values) < 2:
        return pd.DataFrame()
    best_id, best = fold_values.index[0], fold_values.iloc[0].to_numpy(dtype=float)
    rows = []
    for rank, (trial_id, values) in enumerate(fold_values.iloc[1:].iterrows(), start=2):
        d = best - values.to_numpy(dtype=float)
        res = corrected_resampled_ttest(d, test_train_ratio, alpha)
        rows.append({"rank": rank, "trial_id": trial_id, "best_trial_id": best_id,
                     "best_mean": float(best.mean()), "challenger_mean": float(values.mean()),
                     **res, "diffs": d.tolist(),
                     "significant": bool(res["p"] < alpha and res["mean"] > 0)})
    return pd.DataFrame(rows)
