"""Stratified folds: disjoint, complete, balanced, deterministic; bad K is a ConfigError."""
import numpy as np
import pytest

from distributed.config import ConfigError
from distributed.folds import make_folds, split_fingerprint


@pytest.fixture
def labels():
    rng = np.random.default_rng(0)
    return rng.permutation(np.repeat(np.arange(10), 53))  # 530 labels, 53 per class


@pytest.mark.parametrize("k", [2, 3, 5, 10])
def test_folds_disjoint_complete_balanced(labels, k):
    folds = make_folds(labels, k, seed=0)
    assert len(folds) == k
    everything = np.concatenate(folds)
    assert len(everything) == len(labels) and len(np.unique(everything)) == len(labels)  # disjoint + complete
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 10  # at most one extra per class
    for f in folds:
        per_class = np.bincount(labels[f], minlength=10)
        assert per_class.max() - per_class.min() <= 1  # stratified: 53/k each, +-1
        assert np.all(np.diff(f) > 0)  # sorted


def test_folds_deterministic_and_seeded(labels):
    a, b, c = make_folds(labels, 5, 0), make_folds(labels, 5, 0), make_folds(labels, 5, 1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    positions = np.arange(len(labels)) * 2
    assert split_fingerprint(a, positions) == split_fingerprint(b, positions)
    assert split_fingerprint(a, positions) != split_fingerprint(c, positions)


def test_too_many_folds_for_smallest_class():
    labels = np.array([0] * 10 + [1] * 3)
    with pytest.raises(ConfigError, match=r"--folds 4: larger than the smallest class count \(3\)"):
        make_folds(labels, 4, 0)


def test_one_fold_rejected(labels):
    with pytest.raises(ConfigError, match="--folds 1: cross-validation needs at least 2 folds"):
        make_folds(labels, 1, 0)
