"""Metric helpers (analysis.metrics), the corrected resampled t-test (distributed.stats) and the report's
comparison built on it (analysis.stats) on inputs with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, precision_recall_fscore_support

from analysis import metrics
from analysis.stats import compare_to_best
from distributed.config import CLASS_NAMES
from distributed.stats import corrected_resampled_ttest
from distributed.train import macro_f1 as torch_macro_f1


def test_confusion_matrix_of_known_predictions():
    true = np.array([0, 0, 1, 2, 2, 2])
    pred = np.array([0, 1, 1, 2, 0, 2])
    cm = metrics.confusion_matrix(true, pred, num_classes=3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert cm.sum() == len(true)
    assert metrics.accuracy(cm) == pytest.approx(4 / 6)
    np.testing.assert_allclose(metrics.row_normalize(cm), [[0.5, 0.5, 0], [0, 1, 0], [1 / 3, 0, 2 / 3]])


def test_confusion_rows_and_columns_are_true_and_predicted_class_counts():
    rng = np.random.default_rng(0)
    true, pred = rng.integers(0, 10, 500), rng.integers(0, 10, 500)
    cm = metrics.confusion_matrix(true, pred)
    assert cm.shape == (10, 10) and cm.sum() == 500
    assert cm.sum(axis=1).tolist() == np.bincount(true, minlength=10).tolist()
    assert cm.sum(axis=0).tolist() == np.bincount(pred, minlength=10).tolist()
    assert metrics.accuracy(cm) == pytest.approx(np.mean(true == pred))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_class_and_macro_f1_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 10, 300)
    # mostly right, some classes never predicted (zero_division cases)
    pred = np.where(rng.random(300) < 0.6, true, rng.integers(0, 7, 300))
    summary = metrics.summarize(true, pred)
    p, r, f, s = precision_recall_fscore_support(true, pred, labels=range(10), zero_division=0)
    table = summary["per_class"]
    assert list(table["class"]) == list(CLASS_NAMES)
    np.testing.assert_allclose(table.precision, p)
    np.testing.assert_allclose(table.recall, r)
    np.testing.assert_allclose(table.f1, f)
    assert table.support.tolist() == s.tolist()
    assert summary["macro_f1"] == pytest.approx(f1_score(true, pred, average="macro", zero_division=0))
    # the engine's torch macro-F1 (what the search reported) agrees too
    assert summary["macro_f1"] == pytest.approx(torch_macro_f1(torch.from_numpy(pred), torch.from_numpy(true)))


def test_macro_f1_ignores_classes_absent_from_true_and_pred():
    true, pred = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    cm = metrics.confusion_matrix(true, pred)
    assert metrics.macro_f1(cm) == pytest.approx(f1_score(true, pred, average="macro"))


def test_most_confused_lists_off_diagonal_cells_largest_first():
    cm = np.zeros((10, 10), dtype=int)
    np.fill_diagonal(cm, 50)
    cm[6, 0], cm[0, 6], cm[4, 2] = 30, 10, 20
    pairs = metrics.most_confused(cm, top=5)
    assert list(zip(pairs.true, pairs.predicted, pairs["count"])) == [
        ("Shirt", "T-shirt/top", 30), ("Coat", "Pullover", 20), ("T-shirt/top", "Shirt", 10)]
    assert pairs.share_of_true.iloc[0] == pytest.approx(30 / 80)


def test_per_class_dict_matches_contract():
    d = metrics.per_class_dict(metrics.summarize(np.arange(10), np.arange(10))["per_class"])
    assert list(d) == list(CLASS_NAMES)
    assert d["Bag"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}


def _t4_cdf(t: float) -> float:
    """Student t CDF with 4 degrees of freedom, closed form (no scipy)."""
    u = t / math.sqrt(1 + t * t / 4)
    return 0.5 + 0.375 * u * (1 - t * t / (12 * (1 + t * t / 4)))


def test_corrected_ttest_against_hand_computed_example():
    # Five folds: d = 0.01, 0.02, 0.03, 0.00, 0.04 -> mean 0.02, var (ddof=1) 0.00025.
    # Corrected: var of the mean = (1/5 + 1/4) * 0.00025 = 1.125e-4, t = 0.02 / 0.0106066 = 1.885618.
    # Naive: se = sqrt(0.00025 / 5) = 0.0070711, t = 2*sqrt(2) = 2.828427.
    res = corrected_resampled_ttest([0.01, 0.02, 0.03, 0.00, 0.04], test_train_ratio=1 / 4)
    assert res["mean"] == pytest.approx(0.02)
    assert res["sd"] ** 2 == pytest.approx(0.00025)
    assert res["se"] == pytest.approx(math.sqrt(1.125e-4))
    assert res["t"] == pytest.approx(1.885618, rel=1e-6)
    assert res["df"] == 4
    assert res["p"] == pytest.approx(2 * (1 - _t4_cdf(1.885618)), rel=1e-5)
    assert res["p"] == pytest.approx(0.13242, abs=1e-4)
    assert res["t_naive"] == pytest.approx(2 * math.sqrt(2))
    assert res["p_naive"] == pytest.approx(0.04742, abs=1e-4)  # naive "significant", corrected not
    # 95% CI: mean ± t_{0.975, 4} * se, t_{0.975, 4} = 2.776445
    assert res["ci_low"] == pytest.approx(0.02 - 2.776445 * math.sqrt(1.125e-4), rel=1e-5)
    assert res["ci_high"] == pytest.approx(0.02 + 2.776445 * math.sqrt(1.125e-4), rel=1e-5)


def test_corrected_ttest_degenerate_differences():
    assert corrected_resampled_ttest([0, 0, 0], 0.5)["p"] == 1.0
    same = corrected_resampled_ttest([0.01, 0.01, 0.01], 0.5)
    assert same["t"] == math.inf and same["p"] == 0.0
    with pytest.raises(ValueError):
        corrected_resampled_ttest([0.01], 0.5)


def test_compare_to_best_pairs_every_challenger_with_the_winner():
    import pandas as pd
    folds = pd.DataFrame({"fold0": [0.90, 0.89, 0.80], "fold1": [0.91, 0.90, 0.82], "fold2": [0.92, 0.90, 0.81]},
                         index=["a", "b", "c"])
    res = compare_to_best(folds, test_train_ratio=1 / 2)
    assert list(res.trial_id) == ["b", "c"] and list(res["rank"]) == [2, 3]
    assert res.diffs.iloc[0] == pytest.approx([0.01, 0.01, 0.02])
    assert res["mean"].iloc[1] == pytest.approx(0.10)
    # c is 9-11 points behind on every fold: a real difference (t = 10.95, p = 0.008); b's lead of
    # 1-2 points is not (t = 2.53, p = 0.13)
    assert list(res.significant) == [False, True]
    assert compare_to_best(folds.head(1), 0.5).empty
