"""report/metrics.json, the report's contract with its readers (DESIGN section 4): the scores of the best
trial's evaluation and the dict they are written as.

`score` derives every number from confusion matrices; the sections draw their figures and tables from the
same `scores`, so metrics.json and the page cannot disagree.
"""
from __future__ import annotations

import pandas as pd

from analysis import metrics, pareto
from analysis.evaluate import Evaluation
from analysis.run_tables import Run


def score(ev: Evaluation) -> dict:
    """Confusion matrices and every derived number, for the OOF set, the test ensemble and each fold."""
    return {
        "oof": metrics.summarize(ev.oof_true, ev.oof_pred),
        "test": metrics.summarize(ev.test_true, ev.test_pred),
        "test_acc_per_fold": [metrics.accuracy(metrics.confusion_matrix(ev.test_true, p.argmax(1)))
                              for p in ev.test_probs_folds],
    }


def metrics_json(run: Run, ev: Evaluation, scores: dict, clip: dict | None, size: dict | None = None) -> dict:
    """report/metrics.json (DESIGN section 4), plus the confusion matrices the figures draw, and `size`
    (size_metrics: the Pareto front of accuracy against parameters)."""
    oof, test = scores["oof"], scores["test"]
    return {
        "run": run.summary["name"], "best_trial_id": run.best_trial_id,
        "checkpoint": run.summary["best_checkpoint"], "cv": run.summary["best_cv"],
        "test_acc": test["acc"], "test_macro_f1": test["macro_f1"],
        "test_acc_per_fold": scores["test_acc_per_fold"],
        "oof_val_acc": oof["acc"], "oof_val_macro_f1": oof["macro_f1"],
        "per_class": metrics.per_class_dict(test["per_class"]),
        "oof_per_class": metrics.per_class_dict(oof["per_class"]),
        "n_test": test["n"], "n_oof": oof["n"], "oof_source": ev.oof_source,
        "confusion_test": test["confusion"].tolist(), "confusion_oof": oof["confusion"].tolist(),
        "inference_devices": ev.devices, "tta_flip": ev.tta_flip,
        "clip": clip, "size": size,
    }


def size_metrics(size: pd.DataFrame) -> dict:
    """metrics.json's "size": the Pareto front's trial ids (smallest first) and the smallest trial within
    half a point of the best, from pareto.size_table."""
    pick = pareto.smallest_within(size)
    return {"front": size.trial_id[size.on_front].tolist(),
            "smallest_within_half_point": {"trial_id": pick.trial_id, "params": int(pick.params)}}
