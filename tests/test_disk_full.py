"""A disk that fills during a search: a real smoke search on a small tmpfs (mounted here, as root), a ballast
file that leaves less than --min-free-mb once the first fold checkpoint is written. The search stops as Ctrl-C
stops it, in one line, exit code 1; every file in the run directory stays valid; --resume finishes it once
the ballast is gone. And a disk already that full refuses a new search before any work (exit 2)."""
from __future__ import annotations

import json
import os
import shlex
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
MB = 2**20


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160m", "tmpfs", str(disk)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def ballast(disk: Path, leave_mb: float) -> Path:
    """A file that leaves `leave_mb` free on the disk (posix_fallocate: the blocks are really taken)."""
    path = disk / "ballast"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(path, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, int(free - leave_mb * MB))
    return path


def tune(*args) -> list[str]:
    return [sys.executable, str(ROOT / "experiments" / "tune.py"), *args]


@pytest.mark.slow  # 125 s on the fresh-clone run; CI's make test was 39 min (`make test-all` runs it)
@pytest.mark.ray
@pytest.mark.faults
def test_a_disk_that_fills_mid_search_stops_it_cleanly_and_resume_finishes_it(small_disk):
    run = small_disk / "full"
    proc = subprocess.Popen(tune("--preset", "smoke", "--storage-path", str(small_disk), "--name", "full",
                                 "--min-free-mb", "100"),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not list(run.glob("folds/*/epoch_001/fold_*.pt")):  # the first fold checkpoint is written
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    filler = ballast(small_disk, leave_mb=50)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, out[-3000:] + err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[-3000:]
    prefix = f"tune.py: error: no space left for the run in {run}: "
    assert lines[0].startswith(prefix), lines[0]
    free_said = float(lines[0][len(prefix):].split(" MB free")[0])
    assert 40 < free_said < 100  # the ballast left 50 MB; the search wrote a little more
    assert "the search stops below 100 MB (--min-free-mb); free some space, then continue with: " in lines[0]
    resume = lines[0].split("then continue with: ")[1]
    assert shlex.split(resume)[-3:] == ["--name", "full", "--resume"] or shlex.split(resume)[-1] == "--resume"

    # every file in the run directory is valid
    summary = json.loads((run / "summary.json").read_text())
    trials = pd.read_parquet(run / "trials.parquet")
    epochs = pd.read_parquet(run / "epochs.parquet")
    # stopped within about a second of the first fold checkpoint: at most that trial's first epochs are in
    assert 1 <= summary["n_trials"] == len(trials) <= 4 and set(epochs.trial_id) <= set(trials.trial_id)
    with sqlite3.connect(run / "optuna.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    for state in (run / "tune").glob("experiment_state-*.json"):
        json.loads(state.read_text())

    filler.unlink()
    again = subprocess.run([sys.executable, *shlex.split(resume)[1:]], cwd=ROOT, capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n_trials"] == 4
    assert summary["n_trials_completed"] + summary["n_trials_pruned"] == 4
    import optuna
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{run / 'optuna.db'}")
    states = [t.state.name for t in study.get_trials()]
    assert len(states) == 4 and "RUNNING" not in states, states


def test_a_disk_with_less_than_min_free_refuses_a_new_search_before_any_work(tmp_path):
    free_mb = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize / MB
    need = int(free_mb) + 1000
    out = subprocess.run(tune("--preset", "smoke", "--storage-path", str(tmp_path), "--name", "x",
                              "--min-free-mb", str(need)), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"tune.py: error: no space left for the run in {tmp_path / 'x'}: ")
    assert lines[0].endswith(f"the search stops below {need} MB (--min-free-mb); free some space, or lower "
                             f"--min-free-mb")
    assert list(tmp_path.iterdir()) == []
    bad = subprocess.run(tune("--preset", "smoke", "--storage-path", str(tmp_path), "--min-free-mb", "-1"),
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == "tune.py: error: --min-free-mb -1: must be >= 0"
