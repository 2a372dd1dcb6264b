"""A real smoke search on a real local Ray instance (the shared `smoke_run`): 4 trials x 3 folds, ASHA, Optuna.
Checks the run-directory contract of DESIGN section 4 against what actually ran."""
import json

import numpy as np
import optuna
import pandas as pd
import pytest
import torch

from distributed.config import FOLD_METRICS, PRESETS, load
from distributed.data import stratified_subset
from distributed.search import tune_snapshot

pytestmark = pytest.mark.ray
SMOKE = PRESETS["smoke"]
K = SMOKE.cv.folds


@pytest.fixture(scope="module")
def run(smoke_run):
    run_dir, code = smoke_run
    assert code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    return run_dir, summary, pd.read_parquet(run_dir / "trials.parquet"), pd.read_parquet(run_dir / "epochs.parquet")


def test_summary_contract(run):
    run_dir, s, trials, epochs = run
    for key in ("name", "preset", "folds", "num_samples", "n_trials_completed", "n_trials_pruned",
                "n_trials_errored", "epochs_run_total", "max_epochs", "best_trial_id", "best_config", "best_cv",
                "split_fingerprint", "data_fingerprint", "wall_s", "versions", "devices"):
        assert key in s, key
    assert (s["name"], s["preset"], s["folds"], s["num_samples"], s["max_epochs"]) == ("smoke", "smoke", K, 4, 3)
    assert s["n_trials_completed"] + s["n_trials_pruned"] + s["n_trials_errored"] == len(trials) == 4
    assert s["n_trials_errored"] == 0 and s["n_trials_pruned"] >= 1 and s["n_trials_completed"] >= 1
    assert s["epochs_run_total"] == trials.epochs_run.sum() < 4 * 3  # ASHA saved epochs
    assert set(s["best_cv"]) == {"val_acc_mean", "val_acc_std", "val_f1_mean", "val_loss_mean"}
    assert set(s["versions"]) == {"ray", "torch", "optuna"} and s["versions"]["ray"] == "2.60.0"
    assert s["devices"]["cpus_per_worker"] * K <= 2.0 and s["devices"]["num_gpus"] == 0
    assert load(run_dir / "config.json").cv.folds == K


def test_trials_table_matches_epochs_table(run):
    run_dir, s, trials, epochs = run
    assert set(trials.status) <= {"completed", "pruned"}
    assert (trials.loc[trials.status == "completed", "epochs_run"] == 3).all()
    assert (trials.loc[trials.status == "pruned", "epochs_run"] < 3).all()
    assert len(epochs) == trials.epochs_run.sum() * K  # one row per (trial, epoch, fold)
    assert list(epochs.columns) == ["trial_id", "epoch", "fold", *FOLD_METRICS]
    for _, t in trials.iterrows():
        last = epochs[(epochs.trial_id == t.trial_id) & (epochs.epoch == t.epochs_run)].sort_values("fold")
        assert last.fold.tolist() == list(range(K))
        # the fold-mean Tune saw (and ASHA pruned on) is the mean of the K folds' own numbers
        assert t.val_acc_mean == pytest.approx(last.val_acc.mean())
        assert t.val_acc_std == pytest.approx(last.val_acc.std(ddof=1))
        assert [t[f"val_acc_fold{k}"] for k in range(K)] == pytest.approx(last.val_acc.tolist())
        assert 0 <= t.val_acc_mean <= 1 and np.isfinite(t.val_loss_mean)
    best = trials.sort_values("val_acc_mean", ascending=False)
    best = best[best.status == "completed"].iloc[0]
    assert s["best_trial_id"] == best.trial_id
    assert s["best_cv"]["val_acc_mean"] == pytest.approx(best.val_acc_mean)
    assert s["best_config"]["lr"] == pytest.approx(best.config_lr)


def test_optuna_study_states_match(run):
    run_dir, s, trials, _ = run
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    assert len(study.trials) == 4
    expected = {"completed": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED}
    by_lr = {round(t.params["lr"], 12): t for t in study.trials}
    for _, row in trials.iterrows():
        ot = by_lr[round(row.config_lr, 12)]
        assert ot.state == expected[row.status]
        assert sorted(ot.intermediate_values) == list(range(1, row.epochs_run + 1))
        assert ot.intermediate_values[row.epochs_run] == pytest.approx(row.val_acc_mean)
        assert ot.user_attrs["tune_trial_id"] == row.trial_id  # how a resumed searcher finds each trial's owner


def test_tune_snapshot_reads_the_experiment_state_tune_wrote(run):
    """--resume settles Optuna's RUNNING trials by Tune's snapshot: the parser reads Tune's real file."""
    run_dir, _, trials, _ = run
    snapshot = tune_snapshot(str(run_dir / "tune"))
    assert set(snapshot) == set(trials.trial_id)
    for _, row in trials.iterrows():
        status, last = snapshot[row.trial_id]
        assert status == "TERMINATED" and last["epoch"] == row.epochs_run
        assert last["val_acc_mean"] == pytest.approx(row.val_acc_mean)
    assert tune_snapshot(str(run_dir)) is None  # no experiment state there


def test_best_checkpoint_holds_all_folds_and_out_of_fold_predictions(run, fmnist):
    run_dir, s, trials, _ = run
    ckpt = run_dir / s["best_checkpoint"]
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(
        [f"fold_{k}.pt" for k in range(K)] + [f"oof_fold_{k}.npz" for k in range(K)])
    oof = [np.load(ckpt / f"oof_fold_{k}.npz") for k in range(K)]
    index = np.concatenate([o["index"] for o in oof])
    positions = stratified_subset(fmnist.train_y, SMOKE.data.limit_train, SMOKE.data.subset_seed)
    assert len(index) == 600 and np.array_equal(np.sort(index), positions)  # disjoint, complete
    for k, o in enumerate(oof):
        assert (o["fold"] == k).all() and np.array_equal(o["true"], fmnist.train_y[o["index"]])
        assert o["probs"].shape == (len(o["index"]), 10) and np.allclose(o["probs"].sum(1), 1, atol=1e-4)
        assert np.array_equal(o["pred"], o["probs"].argmax(1))
        state = torch.load(ckpt / f"fold_{k}.pt", weights_only=True)
        assert state["epoch"] == 3 and state["fold"] == k
        # the checkpointed fold accuracy is the accuracy of the saved out-of-fold predictions
        assert state["metrics"]["val_acc"] == pytest.approx((o["pred"] == o["true"]).mean(), abs=1e-6)
