"""Classification metrics from labels and predictions, all derived from one confusion matrix.

Every number the report shows for a set of predictions (accuracy, macro-F1, per-class precision /
recall / F1, most-confused pairs) is computed from the same confusion matrix that the figures draw, so
the figures and metrics.json cannot disagree. The formulas follow scikit-learn's definitions
(zero_division=0; macro-F1 averaged over classes present in the true or predicted labels), which the
tests check against sklearn itself.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from distributed.config import CLASS_NAMES, NUM_CLASSES


def confusion_matrix(true: np.ndarray, pred: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(C, C) int64 counts; rows are true classes, columns predicted classes."""
    true, pred = np.asarray(true, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    if true.shape != pred.shape:
        raise ValueError(f"true {true.shape} and pred {pred.shape} differ in shape")
    cm = np.bincount(true * num_classes + pred, minlength=num_classes ** 2)
    return cm.reshape(num_classes, num_classes)


def accuracy(cm: np.ndarray) -> float:
    return float(np.trace(cm) / cm.sum()) if cm.sum() else 0.0


def row_normalize(cm: np.ndarray) -> np.ndarray:
    """Each row divided by its total (recall on the diagonal); rows of zeros stay zero."""
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros(cm.shape, dtype=float), where=totals > 0)


def per_class(cm: np.ndarray, class_names=CLASS_NAMES) -> pd.DataFrame:
    """Precision, recall, F1 and support per class (rows in class order)."""
    tp = np.diag(cm).astype(float)
    predicted, actual = cm.sum(axis=0).astype(float), cm.sum(axis=1).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return pd.DataFrame({"class": list(class_names), "precision": precision, "recall": recall, "f1": f1,
                         "support": actual.astype(np.int64)})


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over classes that occur in the true or predicted labels (sklearn's label set)."""
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    f1 = per_class(cm, [str(k) for k in range(len(cm))])["f1"].to_numpy()
    return float(f1[present].mean()) if present.any() else 0.0


def most_confused(cm: np.ndarray, top: int = 8, class_names=CLASS_NAMES) -> pd.DataFrame:
    """The largest off-diagonal cells: (true, predicted, count, share of the true class), largest first."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(off, axis=None, kind="stable")[::-1][:top]
    rows = []
    for i, j in zip(*np.unravel_index(flat, off.shape)):
        if off[i, j] == 0:
            break
        rows.append({"true": class_names[i], "predicted": class_names[j], "count": int(off[i, j]),
                     "share_of_true": float(off[i, j] / cm[i].sum())})
    return pd.DataFrame(rows, columns=["true", "predicted", "count", "share_of_true"])


def summarize(true: np.ndarray, pred: np.ndarray) -> dict:
    """Confusion matrix plus the headline numbers derived from it."""
    cm = confusion_matrix(true, pred)
    return {"confusion": cm, "acc": accuracy(cm), "macro_f1": macro_f1(cm), "per_class": per_class(cm),
            "n": int(cm.sum())}


def per_class_dict(table: pd.DataFrame) -> dict:
    """metrics.json's per_class: {class name: {precision, recall, f1, support}}."""
    return {r["class"]: {"precision": float(r["precision"]), "recall": float(r["recall"]),
                         "f1": float(r["f1"]), "support": int(r["support"])} for _, r in table.iterrows()}
