"""The search's CUDA MPS daemon (distributed.mps), with a stand-in control program on PATH: it is started with
pipe and log directories private to the search, proved with a client, stopped with "quit", and any failure is
one line after which the search runs time-sliced. No GPU needed."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from distributed import mps

# A stand-in nvidia-cuda-mps-control: "-d" records its environment and creates the control pipe (a file here);
# with no argument it reads commands from stdin, and "quit" removes the pipe. FAKE_MPS_FAIL=1 makes -d fail.
STAND_IN = """#!/usr/bin/env python3
import os, sys, pathlib
log = pathlib.Path(os.environ["FAKE_MPS_LOG"])
pipe = pathlib.Path(os.environ["CUDA_MPS_PIPE_DIRECTORY"])
if sys.argv[1:] == ["-d"]:
    if os.environ.get("FAKE_MPS_FAIL") == "1":
        print("An instance of this daemon is already running", file=sys.stderr)
        sys.exit(1)
    (pipe / "control").write_text("")
    with log.open("a") as f:
        f.write(f"start {os.environ['CUDA_MPS_PIPE_DIRECTORY']} {os.environ['CUDA_MPS_LOG_DIRECTORY']}\\n")
else:
    cmd = sys.stdin.read().strip()
    (pipe / "control").unlink(missing_ok=True)
    with log.open("a") as f:
        f.write(f"{cmd} {os.environ['CUDA_MPS_PIPE_DIRECTORY']}\\n")
"""


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / mps.CONTROL
    exe.write_text(STAND_IN)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_MPS_LOG", str(tmp_path / "calls.log"))
    for key in (mps.PIPE_ENV, mps.LOG_ENV, mps.OFF_ENV):
        monkeypatch.delenv(key, raising=False)
    return tmp_path / "calls.log"


# A client that proves the daemon: it must see the private pipe directory (the real probe makes a CUDA call)
PROBE_OK = f"import os, sys; sys.exit(0 if os.path.exists(os.path.join(os.environ['{mps.PIPE_ENV}'], 'control')) else 3)"
PROBE_FAILS = "import sys; print('RuntimeError: CUDA error: all CUDA-capable devices are busy or unavailable', " \
              "file=sys.stderr); sys.exit(1)"


def test_the_daemon_gets_private_directories_the_environment_then_quit_and_cleanup(stand_in):
    daemon, why = mps.Mps.start(probe=PROBE_OK)
    assert why == "" and daemon is not None
    pipe, log = daemon.env[mps.PIPE_ENV], daemon.env[mps.LOG_ENV]
    assert Path(pipe).parent == Path(log).parent == daemon.root and daemon.root.name.startswith("fmnist-mps-")
    assert os.environ[mps.PIPE_ENV] == pipe and os.environ[mps.LOG_ENV] == log  # Ray's processes inherit these
    assert stand_in.read_text().splitlines() == [f"start {pipe} {log}"]
    root = daemon.root
    daemon.stop()
    daemon.stop()  # twice is harmless
    assert stand_in.read_text().splitlines() == [f"start {pipe} {log}", f"quit {pipe}"]
    assert not root.exists()
    assert mps.PIPE_ENV not in os.environ and mps.LOG_ENV not in os.environ


def test_a_users_own_mps_environment_is_restored_after_the_search(stand_in, monkeypatch):
    monkeypatch.setenv(mps.PIPE_ENV, "/tmp/users-own-mps")
    daemon, _ = mps.Mps.start(probe=PROBE_OK)
    assert os.environ[mps.PIPE_ENV] == daemon.env[mps.PIPE_ENV]
    daemon.stop()
    assert os.environ[mps.PIPE_ENV] == "/tmp/users-own-mps"


def test_no_control_program_means_time_sliced_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    lines = []
    assert mps.start_for_search(None, 1, None, 5, visible_gpus=1, say=lines.append) is None
    assert lines == ["CUDA MPS not started (nvidia-cuda-mps-control is not on PATH): the fold workers share "
                     "each GPU time-sliced"]


def test_a_daemon_that_refuses_to_start_is_reported_and_cleaned_up(stand_in, monkeypatch):
    monkeypatch.setenv("FAKE_MPS_FAIL", "1")
    daemon, why = mps.Mps.start(probe=PROBE_OK)
    assert daemon is None
    assert why == "nvidia-cuda-mps-control -d exited with 1: An instance of this daemon is already running"
    assert mps.PIPE_ENV not in os.environ
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("fmnist-mps-*/pipe/control"))


def test_a_daemon_no_client_can_use_is_stopped_and_the_search_runs_time_sliced(stand_in):
    daemon, why = mps.Mps.start(probe=PROBE_FAILS)
    assert daemon is None
    assert why == "a CUDA client could not use it: RuntimeError: CUDA error: all CUDA-capable devices are busy " \
                  "or unavailable"
    calls = stand_in.read_text().splitlines()
    assert [c.split()[0] for c in calls] == ["start", "quit"]  # started, then asked to quit
    assert mps.PIPE_ENV not in os.environ


def test_start_for_search_starts_it_and_says_so(stand_in):
    lines = []
    daemon = mps.start_for_search(None, None, None, 5, visible_gpus=1, say=lines.append, probe=PROBE_OK)
    try:
        assert daemon is not None
        assert lines == [f"CUDA MPS started for this search (pipe {daemon.env[mps.PIPE_ENV]}): the fold workers "
                         f"share each GPU at once"]
    finally:
        daemon.stop()


@pytest.mark.parametrize("address, num_gpus, per_worker, visible, expected", [
    (None, None, None, 1, True),     # local, the GPUs it sees, 1/5 GPU per fold worker: they share it
    (None, 4, None, 4, True),
    (None, None, None, 0, False),    # a CPU machine
    (None, 0, None, 1, False),       # --num-gpus 0: the CPU
    (None, 4, 1.0, 4, False),        # a whole GPU per fold worker: nothing to share
    ("auto", 4, None, 0, False),     # a cluster: its nodes' GPUs are not this machine's to manage
])
def test_mps_is_wanted_only_where_a_local_searchs_fold_workers_share_a_gpu(address, num_gpus, per_worker,
                                                                          visible, expected, monkeypatch):
    monkeypatch.delenv(mps.OFF_ENV, raising=False)
    assert mps.useful(address, num_gpus, per_worker, 5, visible) is expected


def test_fmnist_mps_0_turns_it_off(monkeypatch):
    monkeypatch.setenv(mps.OFF_ENV, "0")
    assert mps.useful(None, 1, None, 5, 1) is False


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the probe where there is no CUDA")
def test_the_real_probe_refuses_a_daemon_where_no_cuda_client_can_run(stand_in):
    daemon, why = mps.Mps.start()  # the real probe: a CUDA tensor in a subprocess
    assert daemon is None and why.startswith("a CUDA client could not use it: ")
    assert [c.split()[0] for c in stand_in.read_text().splitlines()] == ["start", "quit"]


def test_at_exit_ray_shuts_down_before_the_daemon_is_asked_to_quit(monkeypatch):
    """Ray's own exit hook was registered when ray was imported, so it would run after ours: the search's hook
    shuts Ray down itself first, so that no fold worker is still a client when the daemon gets "quit"."""
    import ray

    from distributed import launch
    calls = []
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("ray.shutdown"))

    class Daemon:
        def stop(self):
            calls.append("mps.stop")
    launch._stop_after_ray(Daemon())
    assert calls == ["ray.shutdown", "mps.stop"]
