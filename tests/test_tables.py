"""distributed/tables.py: the run tables built from Tune's trial logs, on hand-made trial directories."""
import json

from distributed.config import FOLD_METRICS, PRESETS, override
from distributed.tables import build_tables, trial_dirs

CFG = override(PRESETS["smoke"], epochs=3, name="unit")


def write_trial(tune_dir, trial_id, accs, params=None):
    d = tune_dir / trial_id
    d.mkdir(parents=True)
    (d / "params.json").write_text(json.dumps(params or {"lr": 0.001}))
    lines = []
    for epoch, acc in enumerate(accs, 1):
        r = {"epoch": epoch, "num_folds": 3}
        for m in FOLD_METRICS:
            r[f"{m}_mean"], r[f"{m}_std"], r[f"{m}_folds"] = acc, 0.01, [acc - 0.01, acc, acc + 0.01]
        lines.append(json.dumps(r))
    (d / "result.json").write_text("\n".join(lines) + "\n" if lines else "")
    return d


def test_the_live_copy_of_a_trial_overrides_the_lagging_one(tmp_path):
    run_dir, live = tmp_path / "run", tmp_path / "live"
    write_trial(run_dir / "tune", "a", [0.5])             # Tune's copy: one epoch so far
    write_trial(live, "a", [0.5, 0.6, 0.7])               # the driver's live log: finished
    write_trial(run_dir / "tune", "b", [0.4, 0.45, 0.8])  # only in RUN_DIR/tune (restored from a past session)
    (live / "not-a-trial").mkdir()
    assert [d.parent.name + "/" + d.name for d in trial_dirs(run_dir / "tune", live)] == ["live/a", "tune/b"]
    trials, epochs = build_tables(run_dir, CFG, {"a": "completed"}, live)
    assert trials.trial_id.tolist() == ["a", "b"] and trials.epochs_run.tolist() == [3, 3]
    assert trials.val_acc_mean.tolist() == [0.7, 0.8]
    assert trials.status.tolist() == ["completed", "completed"]  # b: inferred from its 3 of 3 epochs
    assert len(epochs) == 2 * 3 * 3 and epochs[epochs.trial_id == "a"].epoch.max() == 3
    stale, _ = build_tables(run_dir, CFG, {})  # without the live copy: a still looks unfinished
    assert stale.epochs_run.tolist() == [1, 3] and stale.status.tolist() == ["running", "completed"]


def test_a_replayed_epoch_counts_once_with_its_last_report(tmp_path):
    d = write_trial(tmp_path / "run" / "tune", "a", [0.5, 0.6])
    replay = [json.loads(l) for l in (d / "result.json").read_text().splitlines()]
    replay[1]["val_acc_mean"] = 0.65
    with open(d / "result.json", "a") as f:
        f.write("\n".join(json.dumps(r) for r in replay) + "\n" + '{"epoch": 3, "cut sh')  # killed mid-line
    trials, epochs = build_tables(tmp_path / "run", CFG, {})
    assert trials.epochs_run.tolist() == [2] and trials.val_acc_mean.tolist() == [0.65]
    assert len(epochs) == 2 * 3


def test_one_ranking_for_the_best_trial_retention_and_the_report():
    import numpy as np
    import pandas as pd

    from distributed.retention import ranking
    from distributed.tables import best_trial, rank_trials
    trials = pd.DataFrame([("c1", "completed", 3, 0.80), ("c2", "completed", 3, 0.85), ("r1", "running", 2, 0.99),
                           ("c3", "completed", 3, 0.85), ("e1", "errored", 2, 0.70), ("p1", "pruned", 2, 0.60),
                           ("p2", "pruned", 1, 0.90), ("p3", "pruned", 1, np.nan), ("c4", "completed", 3, np.nan),
                           ("e2", "errored", 2, 0.70)],
                          columns=["trial_id", "status", "epochs_run", "val_acc_mean"])
    ranked = rank_trials(trials)
    # completed by the metric (a tie keeps the table's order, no value last), then by epochs, metric, status
    assert list(ranked.trial_id) == ["c2", "c3", "c1", "c4", "r1", "e1", "e2", "p1", "p2", "p3"]
    assert list(ranked["rank"]) == list(range(1, 11)) and list(ranked.index) == list(range(10))
    assert ranking(trials) == ["c2", "c3", "c1", "c4", "p1", "p2", "p3"]  # what retention may remove
    assert best_trial(trials).trial_id == "c2" and "rank" not in best_trial(trials).index
    assert best_trial(trials[trials.status != "completed"]) is None and best_trial(trials.iloc[:0]) is None
    assert rank_trials(trials.iloc[:0]).empty and ranking(trials.iloc[:0]) == []
