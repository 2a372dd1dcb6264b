"""Is the winner really better? The top configurations compared fold by fold with the corrected resampled
t-test of Nadeau and Bengio (2003), which lives with the engine (distributed/stats.py: fold-ASHA stops
trials with its one-sided form) and is explained there.

A plain paired t-test on the K fold differences treats them as independent, but the K training sets
overlap, so it is far too confident; the corrected test inflates the variance by (1/K + n_test/n_train)
and uses K-1 degrees of freedom.
"""
from __future__ import annotations

import pandas as pd

from distributed.stats import corrected_resampled_ttest


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
