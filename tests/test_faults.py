"""Real faults injected into real local Ray instances: a killed fold worker, a killed driver, bad resumes,
damaged run directories. Each search runs as a subprocess with its own Ray instance, as a user would."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.faults, pytest.mark.ray]

# 3 folds x 600 images: seconds per epoch; FIFO so every trial runs every epoch (deterministic counts)
SMALL = ["--preset", "smoke", "--scheduler", "fifo", "--epochs", "3"]


def tune_cmd(storage, name, *extra):
    return [sys.executable, str(ROOT / "experiments" / "tune.py"), *SMALL, "--storage-path", str(storage),
            "--name", name, *extra]


def run(cmd, env=None, timeout=600):
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})})
    return out


def result_lines(run_dir, trial_id):
    return [json.loads(l) for l in (run_dir / "tune" / trial_id / "result.json").read_text().splitlines() if l]


def test_killed_fold_worker_resumes_from_its_last_epoch(tmp_path):
    marker = tmp_path / "killed"
    out = run(tune_cmd(tmp_path, "kill", "--num-samples", "1"),
              env={"FMNIST_TEST_KILL_FOLD_AT": f"1:2:{marker}"})  # fold 1 SIGKILLs itself at the start of epoch 2
    assert out.returncode == 0, out.stderr[-3000:]
    assert marker.read_text() == "killed fold 1 at epoch 2\n"
    run_dir = tmp_path / "kill"
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert len(trials) == 1 and trials.status.tolist() == ["completed"] and trials.epochs_run.tolist() == [3]
    lines = result_lines(run_dir, trials.trial_id[0])
    # every epoch reported exactly once: epoch 1 was restored from its checkpoint, not trained again
    assert [l["epoch"] for l in lines] == [1, 2, 3]
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    assert len(epochs) == 3 * 3 and epochs.groupby("epoch").fold.nunique().tolist() == [3, 3, 3]
    ckpt = run_dir / trials.checkpoint_path[0]
    assert sorted(p.name for p in ckpt.glob("oof_fold_*.npz")) == [f"oof_fold_{k}.npz" for k in range(3)]


def wait_for(predicate, timeout, proc):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(1)
    return False


def finished_trials(run_dir):
    try:
        return json.loads((run_dir / "summary.json").read_text())["n_trials_completed"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def fold_weights(run_dir, trial_ids):
    """{checkpoint file: modification time} of the trials' fold checkpoints."""
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns
            for t in trial_ids for p in sorted((run_dir / "folds" / t).rglob("fold_*.pt"))}


def test_killed_driver_then_resume_finishes_the_search(tmp_path):
    run_dir = tmp_path / "drv"
    proc = subprocess.Popen(tune_cmd(tmp_path, "drv", "--num-samples", "4"), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert wait_for(lambda: finished_trials(run_dir) >= 2, 500, proc), "search ended before the kill"
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started, mid-trial
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    before = pd.read_parquet(run_dir / "trials.parquet")
    done_before = before[before.status == "completed"]
    assert 2 <= len(done_before) < 4
    # the tables written when a trial finished already hold its whole curve (not Tune's lagging copy)
    assert (done_before.epochs_run == 3).all() and done_before.val_acc_mean.notna().all()
    weights_before = fold_weights(run_dir, done_before.trial_id)
    assert len(weights_before) >= 3 * len(done_before)

    assert (run_dir / ".lock").is_file()  # the killed driver's: stale now

    out = run(tune_cmd(tmp_path, "drv", "--num-samples", "4", "--resume"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"warning: took over the stale lock of {run_dir}" in out.stdout
    assert not (run_dir / ".lock").exists()  # released at the end
    trials = pd.read_parquet(run_dir / "trials.parquet")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(trials) == 4 and trials.trial_id.is_unique
    assert trials.status.tolist() == ["completed"] * 4 and (trials.epochs_run == 3).all()
    assert summary["n_trials_completed"] == 4 and summary["epochs_run_total"] == 12
    # trials finished before the kill were not trained again: not one of their fold checkpoints was rewritten
    # (Tune may replay a finished trial whose end it had not yet saved; the replay only re-reports)
    assert fold_weights(run_dir, done_before.trial_id) == weights_before
    for ckpt in trials.checkpoint_path:  # every trial names its last checkpoint, replayed or not
        assert sorted(p.name for p in (run_dir / ckpt).glob("oof_fold_*.npz")) == [f"oof_fold_{k}.npz" for k in range(3)]
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    assert len(epochs) == 4 * 3 * 3 and not epochs.duplicated(["trial_id", "epoch", "fold"]).any()
    study = optuna.load_study(study_name="drv", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4 and len({tuple(sorted(t.params.items())) for t in complete}) == 4
    # a kill inside a suggestion leaves that Optuna trial to no Tune trial: the resume marks it FAIL (once)
    others = [t.state for t in study.trials if t.number not in {c.number for c in complete}]
    assert others in ([], [optuna.trial.TrialState.FAIL]), others


@pytest.mark.slow  # 93 s on the fresh-clone run: make test stays under 30 minutes (`make test-all` runs it)
def test_driver_killed_right_after_a_suggestion_leaves_no_running_optuna_trial(tmp_path):
    """The driver dies after Optuna recorded the third suggestion, before Tune saved its state: the resumed
    search marks that orphan FAIL, and every Tune trial is in the study once."""
    from distributed.search import KILL_ENV
    run_dir, states = tmp_path / "orph", optuna.trial.TrialState
    out = run(tune_cmd(tmp_path, "orph", "--num-samples", "4"), env={KILL_ENV: "3"})
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    study = optuna.load_study(study_name="orph", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    assert [t.state for t in study.trials] == [states.COMPLETE, states.COMPLETE, states.RUNNING]
    orphan = study.trials[2]

    out = run(tune_cmd(tmp_path, "orph", "--num-samples", "4", "--resume"))
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if "belongs to no trial" in line]
    assert len(lines) == 1 and lines[0].startswith(f"--resume: Optuna trial {orphan.number} (")
    assert lines[0].endswith("marked FAIL in optuna.db")
    study = optuna.load_study(study_name="orph", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    by_state = {s: [t for t in study.trials if t.state == s] for s in states}
    assert len(by_state[states.COMPLETE]) == 4 and not by_state[states.RUNNING]
    assert [t.number for t in by_state[states.FAIL]] == [orphan.number]
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert len(trials) == 4 and (trials.status == "completed").all()
    assert {round(v, 10) for v in trials.config_lr} == {round(t.params["lr"], 10) for t in by_state[states.COMPLETE]}


@pytest.mark.slow  # a third driver kill at an exact moment, like the one above (`make test-all` runs it)
def test_driver_killed_between_tunes_save_and_the_searchers_resumes_the_trial_only_tune_saved(tmp_path):
    """Tune saves its trials, then the searcher, and uploads both in the background: the driver dies when the
    upload has the new trials (the third just started) and the old searcher. Tune resumes that trial; the
    searcher's saved state never heard of it, optuna.db has it RUNNING. The resumed
    searcher takes it back (a FAIL and a KeyError on its first epoch before), and the study ends with 4 trials."""
    from distributed.search import KILL_AT_SAVE_ENV
    run_dir, states = tmp_path / "gap", optuna.trial.TrialState
    out = run(tune_cmd(tmp_path, "gap", "--num-samples", "4"), env={KILL_AT_SAVE_ENV: f"3:{run_dir / 'tune'}"})
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    study = optuna.load_study(study_name="gap", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    assert [t.state for t in study.trials][2] == states.RUNNING
    third = study.trials[2].user_attrs["tune_trial_id"]

    out = run(tune_cmd(tmp_path, "gap", "--num-samples", "4", "--resume"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "belongs to no trial" not in out.stdout
    study = optuna.load_study(study_name="gap", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    assert [t.state for t in study.trials] == [states.COMPLETE] * 4
    assert study.trials[2].user_attrs["tune_trial_id"] == third and sorted(study.trials[2].intermediate_values) == [1, 2, 3]
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert len(trials) == 4 and (trials.status == "completed").all() and third in set(trials.trial_id)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    storage = tmp_path_factory.mktemp("finished")
    out = run(tune_cmd(storage, "done", "--num-samples", "2", "--epochs", "1"))
    assert out.returncode == 0, out.stderr[-3000:]
    return storage


def snapshot(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("change, named", [
    (["--folds", "2"], "cv.folds"),
    (["--fold-seed", "7"], "cv.fold_seed"),
    (["--limit-train", "500"], "data.limit_train"),
    (["--space", "lr,dropout"], "search.space"),
    (["--epochs", "2"], "train.epochs"),
])
def test_resume_refuses_a_different_run(finished, change, named):
    before = snapshot(finished / "done")
    out = run(tune_cmd(finished, "done", "--num-samples", "2", "--epochs", "1", *change, "--resume"))
    assert out.returncode == 2
    line, = out.stderr.strip().splitlines()
    assert named in line and "differ from the stored run" in line
    assert snapshot(finished / "done") == before


def test_resume_refuses_different_data(finished, tmp_path):
    from tests.test_data import write_set
    write_set(tmp_path)  # valid IDX files, different pixels
    before = snapshot(finished / "done")
    out = run(tune_cmd(finished, "done", "--num-samples", "2", "--epochs", "1", "--data-dir", str(tmp_path),
                       "--resume"))
    assert out.returncode == 2
    line, = out.stderr.strip().splitlines()
    assert "data_fingerprint" in line and "the data or the folds changed" in line
    assert snapshot(finished / "done") == before


@pytest.mark.parametrize("victim", ["summary.json", "config.json", "tune/experiment_state-*.json"])
def test_truncated_files_give_a_clear_error_on_resume(finished, tmp_path, victim):
    import shutil
    copy = tmp_path / "done"
    shutil.copytree(finished / "done", copy)
    p, = copy.glob(victim)
    victim = p.name
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    before = snapshot(copy)
    out = run(tune_cmd(tmp_path, "done", "--num-samples", "2", "--epochs", "1", "--resume"))
    assert out.returncode == 2
    line, = out.stderr.strip().splitlines()
    assert victim in line and "corrupt" in line
    assert snapshot(copy) == before
