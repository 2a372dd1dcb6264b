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
