"""The cross-validation split: a pure function of labels, K and a seed (no Ray, no torch)."""
from __future__ import annotations

import numpy as np

from distributed.config import ConfigError
from distributed.data import fingerprint


def make_folds(labels: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Stratified K-fold: K disjoint, sorted arrays of positions into `labels` that together cover it.

    Fold i's array is its held-out (validation) part; its training part is everything else.
    """
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    smallest = counts[counts > 0].min() if len(counts) else 0
    if k < 2:
        raise ConfigError(f"--folds {k}: cross-validation needs at least 2 folds")
    if k > smallest:
        raise ConfigError(f"--folds {k}: larger than the smallest class count ({smallest}); "
                          f"use fewer folds or a larger --limit-train")
    from sklearn.model_selection import StratifiedKFold
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [np.sort(val) for _, val in skf.split(np.zeros(len(labels)), labels)]


def split_fingerprint(folds: list[np.ndarray], positions: np.ndarray) -> str:
    """Hash of which global training indices each fold holds out: stored in summary.json, checked on resume."""
    return fingerprint(*(positions[f] for f in folds))
