"""The test set chooses nothing: the search engine never sees a test image, and the trial the report ensembles
is the one the fold-mean validation accuracy ranks first."""
import re
from pathlib import Path

import numpy as np
import pandas as pd

from distributed.config import METRIC, PRESETS, override
from distributed.run import prepare_run
from distributed.tables import rank_trials

ROOT = Path(__file__).resolve().parents[1]


def test_the_engine_reads_test_images_only_to_fingerprint_the_data():
    """In distributed/ (the search: folds, trials, ranking, checkpoints) the test arrays appear only where the
    dataset is loaded (data.py) and in the fingerprint that resume checks (run.py)."""
    uses = []
    for path in sorted((ROOT / "distributed").glob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\btest_[xy]\b", line):
                uses.append((path.name, line.strip()))
    assert [name for name, _ in uses if name != "data.py"] == ["run.py"]
    assert "fm.fingerprint(dataset.train_x, dataset.train_y, dataset.test_x, dataset.test_y)" in \
        [line for name, line in uses if name == "run.py"][0]


def test_the_fold_workers_get_training_images_only(tmp_path):
    cfg = override(PRESETS["smoke"], name="sel", storage_path=str(tmp_path))
    _, shared, meta = prepare_run(cfg)
    assert set(shared) == {"x", "y", "positions", "folds"}
    assert shared["x"].shape == (60000, 28, 28) and len(shared["y"]) == 60000  # the training set, not the 10,000
    assert sum(len(f) for f in shared["folds"]) == len(shared["positions"]) == meta["n_train"] == 600
    assert np.array_equal(np.sort(np.concatenate(shared["folds"])), np.arange(600))


def test_the_best_trial_is_the_first_by_fold_mean_validation_accuracy():
    trials = pd.DataFrame({"trial_id": ["a", "b", "c"], "status": ["completed"] * 3,
                           METRIC: [0.91, 0.93, 0.92], "val_acc_std": [0.01, 0.02, 0.01], "epochs_run": [6, 6, 6]})
    ranked = rank_trials(trials)
    assert list(ranked.trial_id) == ["b", "c", "a"] and list(ranked["rank"]) == [1, 2, 3]
