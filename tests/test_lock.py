"""One writer per run directory (distributed.lock): a live holder is refused with its PID and host, a stale
lock (its process gone) is taken over with a warning, another host's lock is never taken over; tune.py
--resume beside a live holder exits 2 before any work; report.py says when a run is being written."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distributed.config import ConfigError
from distributed.lock import LOCK_NAME, RunLock, holder

ROOT = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
sys.path.insert(0, {root!r})
from distributed.lock import RunLock
lock = RunLock({run!r}); lock.acquire()
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def live_holder(tmp_path):
    """A real other process that holds tmp_path/run's lock until the test ends."""
    run = tmp_path / "run"
    run.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT), run=str(run))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield run, proc.pid
    proc.kill()
    proc.wait()


def test_acquire_writes_the_holder_and_release_removes_it(tmp_path):
    lock = RunLock(tmp_path)
    lock.acquire()
    rec = json.loads((tmp_path / LOCK_NAME).read_text())
    assert rec["pid"] == os.getpid() and rec["host"] == socket.gethostname() and rec["started"] > 0
    assert holder(tmp_path)["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists() and holder(tmp_path) is None


def test_a_live_holder_is_named_and_keeps_its_lock(live_holder):
    run, pid = live_holder
    before = (run / LOCK_NAME).read_text()
    for attempt in (RunLock(run).acquire, RunLock(run).refuse_if_held):
        with pytest.raises(ConfigError) as e:
            attempt()
        assert f"is being written by PID {pid} on host {socket.gethostname()}" in str(e.value)
    assert (run / LOCK_NAME).read_text() == before


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, capsys):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a PID that no longer runs
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(),
                                                  "started": time.time() - 60, "since": "then", "command": "x"}))
    lock = RunLock(tmp_path)
    lock.acquire()
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"warning: took over the stale lock of {tmp_path} (PID {gone.pid} on host "
                   f"{socket.gethostname()} since then (x) is gone)"]
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_reused_pid_is_not_the_holder(tmp_path, capsys):
    """Our own PID with another start time: the lock's process is gone and the PID was reused."""
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                  "started": 1.0, "since": "then", "command": "x"}))
    assert holder(tmp_path) is None
    RunLock(tmp_path).acquire()
    assert "took over the stale lock" in capsys.readouterr().out


def test_a_half_written_lock_is_stale(tmp_path, capsys):
    (tmp_path / LOCK_NAME).write_text('{"pid": 12')
    RunLock(tmp_path).acquire()
    assert "an unreadable lock file" in capsys.readouterr().out


def test_another_hosts_lock_is_never_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "then",
                                                  "command": "tune.py"}))
    with pytest.raises(ConfigError, match=r"PID 1 on host elsewhere .* remove .*\.lock by hand"):
        RunLock(tmp_path).acquire()


@pytest.mark.ray
def test_resume_beside_a_live_writer_exits_2_before_any_work(smoke_run, tmp_path):
    import shutil
    src, code = smoke_run
    assert code == 0
    storage = tmp_path / "runs"
    run = storage / "smoke"
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("model", "report"))
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(root=str(ROOT), run=str(run))],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        out = subprocess.run([sys.executable, "experiments/tune.py", "--preset", "smoke", "--name", "smoke",
                              "--storage-path", str(storage), "--resume"], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
        report = subprocess.run([sys.executable, "experiments/report.py", str(run), "--no-umap",
                                 "--out", str(tmp_path / "report")], cwd=ROOT, capture_output=True, text=True,
                                timeout=300)
    finally:
        proc.kill()
        proc.wait()
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"tune.py: error: run directory {run} is being written by PID {proc.pid} on host {socket.gethostname()} "
        f"since "), lines
    assert "Ray" not in out.stdout  # refused before Ray started
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.name != LOCK_NAME} == \
        {k: v for k, v in before.items() if k != LOCK_NAME}
    assert report.returncode == 0, report.stderr
    assert f"note: the run is still being written by PID {proc.pid} on host" in report.stdout
