"""A search stored in an S3 bucket, end to end: tune.py, report.py and --resume on "another machine" (another
working directory, no local copy), against a real S3 endpoint on loopback (moto's server)."""
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray


def run(script: str, args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / f"{script}.py"), *args], cwd=cwd,
                         capture_output=True, text=True, timeout=900, env={**os.environ, **env})
    assert out.returncode == 0, (script, out.returncode, out.stdout[-3000:], out.stderr[-3000:])
    return out


@pytest.mark.slow  # 209 s on the fresh-clone run of 2026-12-03 (make test 32 min): `make test-all` runs it
def test_search_report_and_resume_with_s3_storage(s3_server, tmp_path):
    s3_server.make_bucket("runs-bucket")
    uri, prefix = "s3://runs-bucket/team", "runs-bucket/team/s3run"
    driver, laptop, other = (tmp_path / d for d in ("driver", "laptop", "other"))
    for d in (driver, laptop, other):
        d.mkdir()

    # ---- the search: fold checkpoints and the Tune experiment go to the bucket, the driver's files too
    run("tune", ["--preset", "smoke", "--name", "s3run", "--storage-path", uri, "--num-samples", "1"],
        driver, s3_server.env)
    objects = s3_server.objects(prefix)
    local = driver / "results" / "s3run"  # the driver's working copy
    for name in ("config.json", "summary.json", "trials.parquet", "epochs.parquet", "optuna.db"):
        assert s3_server.read(f"{prefix}/{name}") == (local / name).read_bytes(), name
    assert not (local / "folds").exists()  # the nodes wrote the checkpoints to the bucket only
    summary = json.loads((local / "summary.json").read_text())
    assert summary["n_trials"] == 1 and summary["n_trials_completed"] == 1 and summary["epochs_run_total"] == 3
    best = summary["best_checkpoint"]
    assert best == f"folds/{summary['best_trial_id']}/epoch_003"
    for k in range(3):  # smoke: 3 folds, each with its weights and out-of-fold predictions
        assert objects[f"{prefix}/{best}/fold_{k}.pt"] > 10_000
        assert objects[f"{prefix}/{best}/oof_fold_{k}.npz"] > 0
    assert any(key.startswith(f"{prefix}/tune/{summary['best_trial_id']}/result.json") for key in objects)
    trials = pd.read_parquet(local / "trials.parquet")
    assert list(trials.checkpoint_path) == [best] and list(trials.status) == ["completed"]

    # ---- the report, on a machine that has only the URI
    out = run("report", [f"{uri}/s3run", "--no-umap"], laptop, s3_server.env)
    assert "fetched 6 file(s)" in out.stdout and "fetched the best trial's fold checkpoints" in out.stdout
    copy = laptop / "results" / "s3run"
    metrics = json.loads((copy / "report" / "metrics.json").read_text())
    assert 0.1 < metrics["test_acc"] <= 1 and len(metrics["test_acc_per_fold"]) == 3
    assert metrics["oof_val_acc"] == pytest.approx(summary["best_cv"]["val_acc_mean"], abs=0.02)
    assert sorted(p.name for p in (copy / best).iterdir()) == [
        "fold_0.pt", "fold_1.pt", "fold_2.pt", "oof_fold_0.npz", "oof_fold_1.npz", "oof_fold_2.npz"]

    # ---- --resume where the driver's working copy is not: fetched from the bucket, nothing retrained
    out = run("tune", ["--preset", "smoke", "--name", "s3run", "--storage-path", uri, "--num-samples", "1",
                       "--resume"], other, s3_server.env)
    assert "--resume: fetched 6 file(s) of s3://runs-bucket/team/s3run" in out.stdout
    assert "started" not in out.stdout  # no trial ran again
    resumed = json.loads((other / "results" / "s3run" / "summary.json").read_text())
    assert (resumed["n_trials"], resumed["best_trial_id"], resumed["epochs_run_total"]) == (1, summary["best_trial_id"], 3)
    after = s3_server.objects(prefix)
    assert {k: v for k, v in after.items() if "/folds/" in k} == {k: v for k, v in objects.items() if "/folds/" in k}
    with sqlite3.connect(other / "results" / "s3run" / "optuna.db") as db:
        assert db.execute("select count(*) from trials").fetchone() == (1,)
