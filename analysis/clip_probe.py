"""The linear probe: logistic regression on frozen CLIP image embeddings, cross-validated on the CNN run's own
folds (or a stratified subset), as a bound on what the features support beside zero-shot's text head."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from analysis.clip_zeroshot import classification_metrics
from distributed.config import NUM_CLASSES, ConfigError


def probe_split(train_y: np.ndarray, run_dir: Path | None = None, limit: int = 6000, folds: int = 5,
                seed: int = 0) -> dict:
    """The training positions and folds of the linear probe: the CNN run's own (RUN_DIR/config.json, checked
    against its summary.json fingerprint) when run_dir is given, else a stratified subset of `limit`."""
    from distributed.config import load
    from distributed.data import stratified_subset
    from distributed.folds import make_folds, split_fingerprint
    if run_dir is not None:
        cfg = load(Path(run_dir) / "config.json")
        limit, subset_seed, folds, seed = cfg.data.limit_train, cfg.data.subset_seed, cfg.cv.folds, cfg.cv.fold_seed
        source = f"{run_dir} ({folds} folds, fold seed {seed})"
    else:
        subset_seed, source = 0, f"stratified {folds}-fold, seed {seed}"
    positions = stratified_subset(train_y, limit, subset_seed)
    held_out = make_folds(train_y[positions], folds, seed)
    fp = split_fingerprint(held_out, positions)
    summary = Path(run_dir) / "summary.json" if run_dir is not None else None
    if summary is not None and summary.exists():
        stored = json.loads(summary.read_text()).get("split_fingerprint")
        if stored and stored != fp:
            raise ConfigError(f"--run-dir {run_dir}: its split fingerprint {stored} differs from {fp} recomputed "
                              f"from config.json: the data or the folds changed")
    return {"positions": positions, "folds": held_out, "source": source, "split_fingerprint": fp}


def linear_probe(features: np.ndarray, labels: np.ndarray, folds: list[np.ndarray],
                 test_features: np.ndarray | None = None, test_labels: np.ndarray | None = None,
                 C: float = 1.0) -> dict:
    """Logistic regression on frozen embeddings, cross-validated on `folds` (held-out positions into
    `features`); with test data, also refit on all of `features` and score the test set.

    C is fixed, not tuned: tuning it would need nested CV inside each fold, so the probe is a lower bound
    on what the features support.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fit(x, y):
        return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000)).fit(x, y)

    labels = np.asarray(labels)
    accs, f1s = [], []
    for held_out in folds:
        train = np.setdiff1d(np.arange(len(labels)), held_out)
        pred = fit(features[train], labels[train]).predict(features[held_out])
        accs.append(float(accuracy_score(labels[held_out], pred)))
        f1s.append(float(f1_score(labels[held_out], pred, average="macro", labels=np.arange(NUM_CLASSES),
                                  zero_division=0)))
    out = {"acc": float(np.mean(accs)), "acc_std": float(np.std(accs)), "macro_f1": float(np.mean(f1s)),
           "acc_per_fold": accs, "macro_f1_per_fold": f1s, "n_train": int(len(labels)), "folds": len(folds), "C": C}
    if test_features is not None:
        pred = fit(features, labels).predict(test_features)
        m = classification_metrics(test_labels, pred)
        out.update(test_acc=m["acc"], test_macro_f1=m["macro_f1"],
                   test_per_class_f1={n: v["f1"] for n, v in m["per_class"].items()})
    return out
