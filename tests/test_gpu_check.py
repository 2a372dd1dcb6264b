"""experiments/gpu_check.py (`make gpu-check`) where there is no CUDA: one line, exit code 2, nothing run.
The checks themselves need a CUDA GPU; `gpu_check.py --cpu` runs the same checks on the CPU by hand."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Hides any GPU from torch, so these tests mean the same on a GPU machine.
NO_CUDA = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


def gpu_check(*args):
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "gpu_check.py"), *args], cwd=ROOT,
                          env=NO_CUDA, capture_output=True, text=True, timeout=120)


def test_without_cuda_it_says_so_in_one_line_and_exits_2(tmp_path):
    out = gpu_check("--work-dir", str(tmp_path / "work"))
    assert out.returncode == 2
    assert out.stdout == ""
    line, = out.stderr.splitlines()
    assert line.startswith("gpu_check.py: no CUDA GPU here: torch ") and "sees none" in line and "--cpu" in line
    assert not (tmp_path / "work").exists()  # nothing was started or written


@pytest.mark.parametrize("args, named", [(["--budget-s", "0"], "--budget-s 0"), (["--bogus"], "--bogus")])
def test_bad_flags_give_one_line_and_exit_2(args, named):
    out = gpu_check(*args)
    assert out.returncode == 2 and out.stdout == ""
    line, = out.stderr.splitlines()
    assert line.startswith("gpu_check.py: error: ") and named in line


def test_a_work_dir_in_use_is_refused_and_left_alone(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    out = gpu_check("--work-dir", str(tmp_path))
    assert out.returncode == 2
    line, = out.stderr.splitlines()
    assert f"--work-dir {tmp_path}: not empty" in line
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_make_gpu_check_sets_up_the_data_then_runs_the_script():
    # under `make test` the sub-make would print "Entering/Leaving directory" lines (MAKELEVEL is inherited)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    out = subprocess.run(["make", "-n", "--no-print-directory", "gpu-check", "ARGS="], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    data = next(i for i, line in enumerate(lines) if "-m distributed.data" in line)
    assert lines[-1] == ".venv/bin/python experiments/gpu_check.py " and data < len(lines) - 1


@pytest.fixture
def gc(monkeypatch):
    """experiments/gpu_check.py as a module."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "experiments" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_the_checks_in_order(gc):
    assert [name for name, _ in gc.CHECKS] == ["search", "worker", "driver", "report", "clip", "export"]
    # every check runs in exactly one phase; report and export come after the search they read
    assert sorted(n for phase in gc.PHASES for n in phase) == sorted(n for n, _ in gc.CHECKS)
    assert all("search" in gc.PHASES[i] for i, phase in enumerate(gc.PHASES) for n in phase
               if n in ("report", "export")) is False
    assert gc.PHASES[0] == ("search", "worker", "driver", "clip") and gc.PHASES[1] == ("report", "export")


def test_a_check_that_raises_is_one_failed_line_and_the_rest_still_run(gc, tmp_path):
    ctx = gc.Ctx(tmp_path, gc.time.monotonic() + 60, 0)

    def broken(ctx):
        raise KeyError("best_cv")

    def fine(ctx):
        return "42 images"
    ok, line = gc.run_check(ctx, "report", broken)
    assert not ok and line.startswith("report  FAILED  KeyError: 'best_cv'  [")
    ok, line = gc.run_check(ctx, "clip", fine)
    assert ok and line.startswith("clip    ok      42 images  [")


# A stand-in nvidia-smi: call n of --query-compute-apps lists a process that was there before (pid 7) and, from
# the second call on, two fold workers whose memory grows; with NO_PROCS=1 (a container) it lists none, and
# --query-gpu=memory.used gives 1000 MiB idle, then 1000 + 500 x 5 folds.
FAKE_NVIDIA_SMI = """#!/bin/bash
n=$(cat "$STATE" 2>/dev/null || echo 0)
case "$1" in
  --query-compute-apps=*) echo $((n + 1)) > "$STATE"
    [ -n "$NO_PROCS" ] && exit 0
    echo "7, 100"; [ "$n" -ge 1 ] && echo "4242, $((500 + n))" && echo "4243, 480" ;;
  --query-gpu=memory.used) [ "$n" -le 1 ] && echo 1000 || echo 3500 ;;
esac
"""


@pytest.mark.parametrize("no_procs, figure", [
    ("", r"^GPU memory per fold worker 50\d MiB \(peak of 2 processes\)$"),
    ("1", r"^GPU memory per fold worker ~500 MiB \(the GPU's peak above idle / 5: nvidia-smi lists no processes"),
])
def test_gpu_memory_figure_from_nvidia_smi(gc, tmp_path, monkeypatch, no_procs, figure):
    import re
    import time
    smi = tmp_path / "nvidia-smi"
    smi.write_text(FAKE_NVIDIA_SMI)
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("STATE", str(tmp_path / "calls"))
    monkeypatch.setenv("NO_PROCS", no_procs)
    with gc.GpuMemory() as memory:
        time.sleep(2.5)  # three samples, one a second
    assert re.match(figure, memory.figure()), memory.figure()
    assert "7" not in memory.per_pid  # a process already on the GPU before the search is not a fold worker


def test_gpu_memory_without_nvidia_smi(gc, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with gc.GpuMemory() as memory:
        pass
    assert memory.figure() == "GPU memory n/a (nvidia-smi gave nothing)"
