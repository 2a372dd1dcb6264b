"""CUDA MPS for fold workers that share a GPU: one daemon per search, private to it, stopped at exit.

Without MPS, the K fold processes on one GPU are time-sliced: one process's kernels run at a time, and a
small model's step is mostly launch latency (DESIGN.md section 6). With the MPS control daemon running,
their kernels share the GPU at once. The daemon is started before the local Ray instance, with its pipe and
log directories in a temporary directory of this search, and CUDA_MPS_PIPE_DIRECTORY /
CUDA_MPS_LOG_DIRECTORY in this process's environment: Ray's processes, and so the fold workers, inherit
them and become its clients; another search or user's daemon is not touched.

A daemon that starts but serves no client would make every fold worker fail at its first CUDA call, so
start() proves it first with one tiny CUDA client (a subprocess). Anything that goes wrong (no control
program, a GPU in exclusive mode, a client that cannot connect) gives one line, and the search runs
time-sliced as before.

    mps = Mps.start_if_useful(cfg)     # None: not useful here (CPU, a whole GPU per worker, a cluster)
    ...                                # ray.init, the search
    mps.stop()                         # "quit" to the daemon; its directory removed
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONTROL = "nvidia-cuda-mps-control"
PIPE_ENV, LOG_ENV = "CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY"
OFF_ENV = "FMNIST_MPS"  # "0": never start it (say, to measure the search without it)
PROBE = "import torch; torch.ones(1, device='cuda').add_(1); torch.cuda.synchronize()"


def useful(address: str | None, num_gpus: float | None, gpus_per_worker: float | None, folds: int,
           visible_gpus: int) -> bool:
    """Whether the fold workers of a search would share a GPU on this machine: a local run that trains on
    GPUs with less than one GPU per fold worker (the default is 1/folds)."""
    if address is not None or os.environ.get(OFF_ENV, "1") == "0":
        return False
    gpus = visible_gpus if num_gpus is None else num_gpus
    return gpus > 0 and (gpus_per_worker or 1.0 / folds) < 1.0


class Mps:
    """A running MPS control daemon whose pipe and log directories are under `root`."""

    def __init__(self, control: str, root: Path):
        self.control, self.root = control, root
        self.env = {PIPE_ENV: str(root / "pipe"), LOG_ENV: str(root / "log")}
        self._saved = {k: os.environ.get(k) for k in self.env}

    @classmethod
    def start(cls, probe: str = PROBE, timeout_s: float = 60.0) -> tuple[Mps | None, str]:
        """Start a daemon and prove it with one CUDA client. Returns (Mps, "") on success, else (None, why)."""
        control = shutil.which(CONTROL)
        if control is None:
            return None, f"{CONTROL} is not on PATH"
        root = Path(tempfile.mkdtemp(prefix="fmnist-mps-"))
        mps = cls(control, root)
        for d in mps.env.values():
            Path(d).mkdir()
        env = {**os.environ, **mps.env}
        try:
            r = subprocess.run([control, "-d"], env=env, capture_output=True, text=True, timeout=timeout_s)
            if r.returncode != 0:
                raise RuntimeError(f"{CONTROL} -d exited with {r.returncode}: {_first_line(r.stderr or r.stdout)}")
            probe_run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                                       timeout=timeout_s)
            if probe_run.returncode != 0:
                raise RuntimeError(f"a CUDA client could not use it: {_last_line(probe_run.stderr)}")
        except (OSError, subprocess.TimeoutExpired, RuntimeError) as e:
            mps.stop()
            return None, str(e)
        os.environ.update(mps.env)  # the Ray instance started after this, and its workers, inherit them
        return mps, ""

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask the daemon to quit (it stops its server once the clients are gone), restore the environment
        and remove the directory. Safe to call twice."""
        if self.root is None:
            return
        try:
            subprocess.run([self.control], input="quit\n", env={**os.environ, **self.env}, capture_output=True,
                           text=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired):
            pass
        deadline = time.monotonic() + 5.0  # the daemon removes its pipes as it exits
        while (Path(self.env[PIPE_ENV]) / "control").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None


def start_for_search(address: str | None, num_gpus: float | None, gpus_per_worker: float | None, folds: int,
                     visible_gpus: int, say=print, probe: str = PROBE) -> Mps | None:
    """The daemon for a search whose fold workers share a GPU, or None (not useful, or it could not start:
    then one line says why, and the search runs time-sliced)."""
    if not useful(address, num_gpus, gpus_per_worker, folds, visible_gpus):
        return None
    mps, why = Mps.start(probe)
    if mps is None:
        say(f"CUDA MPS not started ({why}): the fold workers share each GPU time-sliced")
    else:
        say(f"CUDA MPS started for this search (pipe {mps.env[PIPE_ENV]}): the fold workers share each GPU at once")
    return mps


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or ["no output"])[0]


def _last_line(text: str) -> str:
    return (text.strip().splitlines() or ["no output"])[-1]
