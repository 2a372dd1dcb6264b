"""The GPU paths end to end in at most 4 minutes, as a user runs them: the project's own CLIs as subprocesses,
one line per check with its figure. The checks that need no other's result run at once, each with its own
Ray instance (a start costs ~30 s on a GPU box; one after the other, six checks took more than 280 s before
export even started): first search, worker, driver and clip, then report and export on the search's run. search: a smoke search with --num-gpus 1, 5 fold workers sharing the GPU;
worker: fold 1 SIGKILLs itself at epoch 2 and resumes from its checkpoint; driver: the driver killed after one
finished trial, then --resume; report: the fold models evaluated on cuda:0; clip: the tiny CLIP architecture on
the GPU; export: experiments/export.py --refit (the refit on the GPU), then predict.py on both backends.

    make gpu-check                                           # = python experiments/gpu_check.py
    python experiments/gpu_check.py --work-dir /tmp/gpu-check     # keep the run directories and logs
    python experiments/gpu_check.py --cpu                    # the same checks on the CPU: tries the script itself

Exit codes: 0 every check passed; 1 a check failed (its log stays in the work directory); 2 no usable CUDA
GPU here, or bad flags (one line on stderr).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distributed.cli import ArgumentParser, fail  # noqa: E402
from distributed.config import EXIT_FAILURE, EXIT_OK  # noqa: E402

PROG = "gpu_check.py"
FOLDS = 5
SMOKE = ["--preset", "smoke", "--folds", str(FOLDS), "--scheduler", "fifo", "--epochs", "3"]  # seconds per trial
MIN_TEST_ACC = 0.2  # chance is 0.1; the smoke model (600 images, 3 epochs) gets well above it unless broken


class CheckFailed(Exception):
    pass


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise CheckFailed(what)


@dataclass
class Ctx:
    work: Path
    deadline: float  # time.monotonic() by which every check must have finished
    gpus: int        # 1, or 0 with --cpu

    @property
    def runs(self) -> Path:
        return self.work / "runs"

    def left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise CheckFailed("out of time: the checks together must finish within the budget")
        return left


def cli(ctx: Ctx, log: str, script: str, *args, env=None, wait=True):
    """experiments/<script>.py, output in work/logs/<log>.log; returns that output (wait=False: the Popen). Its
    own process group, so a timeout or a kill takes the Ray instance it started along."""
    path = ctx.work / "logs" / f"{log}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    child_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | (env or {})  # a local instance each
    with open(path, "w") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "experiments" / f"{script}.py"), *map(str, args)],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=child_env, start_new_session=True)
    if not wait:
        return proc
    try:
        rc = proc.wait(timeout=ctx.left())
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise CheckFailed(f"{script}.py still running at the time limit (log: {path})") from None
    text = path.read_text()
    if rc != 0:
        last = (text.strip().splitlines() or ["no output"])[-1]
        raise CheckFailed(f"{script}.py exited {rc}: {last[:200]} (log: {path})")
    return text


def tune(ctx: Ctx, log: str, name: str, *extra, env=None, wait=True):
    return cli(ctx, log, "tune", *SMOKE, "--num-gpus", ctx.gpus, "--storage-path", ctx.runs, "--name", name,
               *extra, env=env, wait=wait)


def summary(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def nvidia_smi(query: str) -> list[list[str]]:
    """The rows of `nvidia-smi QUERY --format=csv,noheader,nounits`; [] where there is no nvidia-smi."""
    try:
        out = subprocess.run(["nvidia-smi", query, "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]


class GpuMemory:
    """Samples nvidia-smi once a second while a search runs: the peak MiB of each compute process that was not
    there before, and of the GPUs' total (the first sample is the baseline)."""

    def __init__(self):
        self.per_pid, self.totals, self.before = {}, [], None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while True:
            rows = [r for r in nvidia_smi("--query-compute-apps=pid,used_memory") if len(r) == 2 and r[1].isdigit()]
            self.before = {r[0] for r in rows} if self.before is None else self.before
            for pid, mib in rows:
                if pid not in self.before:
                    self.per_pid[pid] = max(self.per_pid.get(pid, 0), int(mib))
            self.totals.append(sum(int(r[0]) for r in nvidia_smi("--query-gpu=memory.used") if r[0].isdigit()))
            if self._stop.wait(1.0):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def figure(self) -> str:
        if self.per_pid:
            peak = max(self.per_pid.values())
            return f"GPU memory per fold worker {peak} MiB (peak of {len(self.per_pid)} processes)"
        if not any(self.totals):
            return "GPU memory n/a (nvidia-smi gave nothing)"
        return (f"GPU memory per fold worker ~{(max(self.totals) - self.totals[0]) / FOLDS:.0f} MiB (the GPU's peak "
                f"above idle / {FOLDS}: nvidia-smi lists no processes here)")


def check_search(ctx: Ctx) -> str:
    sampler = GpuMemory() if ctx.gpus else None
    with sampler or nullcontext():
        tune(ctx, "search", "search", "--num-samples", 2)
    s = summary(ctx.runs / "search")
    expect(s.get("n_trials_completed") == 2, f"{s.get('n_trials_completed')} of 2 trials completed")
    dev = s["devices"]
    expect(dev.get("num_gpus") == ctx.gpus and abs(dev.get("gpus_per_worker", -1) - ctx.gpus / FOLDS) < 1e-9,
           f"fold workers got {dev.get('gpus_per_worker')} GPU each of {dev.get('num_gpus')}, not {ctx.gpus / FOLDS:g}")
    import pandas as pd
    epochs = pd.read_parquet(ctx.runs / "search" / "epochs.parquet")
    expect(len(epochs) == 2 * 3 * FOLDS, f"epochs.parquet has {len(epochs)} rows, not {2 * 3 * FOLDS}")
    later = epochs[epochs.epoch > 1].seconds.median()  # epoch 1 also pays for CUDA start-up and cuDNN autotuning
    memory = sampler.figure() if sampler else "GPU memory n/a (--cpu)"
    return (f"2 trials x 3 epochs x {FOLDS} folds, {dev['gpus_per_worker']:g} GPU per fold worker; epoch "
            f"{later:.2f} s per fold (epoch 1: {epochs[epochs.epoch == 1].seconds.median():.2f} s); {memory}; "
            f"best fold-mean val acc {s['best_cv']['val_acc_mean']:.3f}")


def check_worker_kill(ctx: Ctx) -> str:
    from distributed.cv import FAULT_ENV
    marker, t0 = ctx.work / "killed", time.monotonic()
    tune(ctx, "worker", "worker", "--num-samples", 1, env={FAULT_ENV: f"1:2:{marker}"})
    expect(marker.is_file() and marker.read_text() == "killed fold 1 at epoch 2\n", "fold 1 was never killed")
    import pandas as pd
    trials = pd.read_parquet(ctx.runs / "worker" / "trials.parquet")
    expect(trials.status.tolist() == ["completed"] and trials.epochs_run.tolist() == [3],
           f"after the kill: status {trials.status.tolist()}, epochs {trials.epochs_run.tolist()}")
    lines = (ctx.runs / "worker" / "tune" / trials.trial_id[0] / "result.json").read_text().splitlines()
    reported = [json.loads(line)["epoch"] for line in lines if line]
    expect(reported == [1, 2, 3], f"epochs reported {reported}: epoch 1 was not restored from its checkpoint")
    return (f"fold 1 killed at epoch 2, restarted from epoch 1's checkpoint; 3 epochs in "
            f"{time.monotonic() - t0:.0f} s, val acc {trials.val_acc_mean[0]:.3f}")


def check_driver_kill(ctx: Ctx) -> str:
    run_dir = ctx.runs / "driver"
    proc = tune(ctx, "driver", "driver", "--num-samples", 2, wait=False)
    try:
        while summary(run_dir).get("n_trials_completed", 0) < 1 and proc.poll() is None:
            ctx.left()
            time.sleep(0.5)
        expect(proc.poll() is None, f"the search ended (exit {proc.returncode}) before it could be killed")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray instance it started, mid-trial
        proc.wait()
    before = summary(run_dir)["n_trials_completed"]
    t0 = time.monotonic()
    tune(ctx, "driver-resume", "driver", "--num-samples", 2, "--resume")
    s = summary(run_dir)
    expect(s["n_trials_completed"] == 2 and s["epochs_run_total"] == 2 * 3,
           f"after --resume: {s['n_trials_completed']} trials, {s['epochs_run_total']} epochs (want 2, 6)")
    return f"driver killed with {before} of 2 trials done; --resume finished the rest in {time.monotonic() - t0:.0f} s"


def needs_search(ctx: Ctx) -> Path:
    run_dir = ctx.runs / "search"
    expect(summary(run_dir).get("n_trials_completed") == 2, "needs the search check's finished run")
    return run_dir


def check_report(ctx: Ctx) -> str:
    run_dir = needs_search(ctx)
    out = cli(ctx, "report", "report", run_dir, "--no-umap", "--num-gpus", ctx.gpus)
    device = "cuda:0" if ctx.gpus else "cpu"
    expect(f"fold models on {device}" in out, f"report.py did not evaluate on {device}")
    m = json.loads((run_dir / "report" / "metrics.json").read_text())
    acc, f1 = m["test_acc"], m["test_macro_f1"]
    expect(acc > MIN_TEST_ACC, f"test accuracy {acc:.4f}: not above {MIN_TEST_ACC}")
    return f"{FOLDS} fold models on {device}: ensemble test accuracy {acc:.4f}, macro-F1 {f1:.4f}"


def check_clip(ctx: Ctx) -> str:
    cli(ctx, "clip", "clip_zeroshot", "--model", "tiny-test-vit", "--limit", 500, "--num-gpus", ctx.gpus,
        "--no-probe", "--top-k", 4, "--queries", "a bag", "--out", ctx.work / "clip")
    m = json.loads((ctx.work / "clip" / "metrics.json").read_text())
    on_cpu = m["device"].startswith("cpu")
    expect(m["n_images"] == 500 and on_cpu == (ctx.gpus == 0), f"{m['n_images']} images on {m['device']}")
    return f"tiny-test-vit on {m['device']}: {m['throughput_img_s']:.0f} images/s (random weights, acc {m['acc']:.3f})"


def check_export(ctx: Ctx) -> str:
    """export.py --refit (the refit on the GPU), then predict.py with TorchScript on the GPU against onnxruntime."""
    import numpy as np
    run_dir = needs_search(ctx)
    cli(ctx, "export", "export", run_dir, "--refit", "--refit-device", "gpu" if ctx.gpus else "cpu")
    meta = json.loads((run_dir / "model" / "model.json").read_text())
    ens, single = meta["models"]["ensemble"], meta["models"]["single"]
    want = "cuda" if ctx.gpus else "cpu"
    expect(single["refit"]["device"].startswith(want), f"the refit trained on {single['refit']['device']}")
    from distributed.config import DataConfig
    from distributed.data import load
    images = ctx.work / "test100.npy"
    np.save(images, np.array(load(DataConfig()).test_x[:100]))
    preds = {}
    for backend in ("onnxruntime", "torchscript"):
        csv = ctx.work / f"predict-{backend}.csv"
        log = cli(ctx, f"predict-{backend}", "predict", run_dir / "model", images, "--backend", backend,
                  "--format", "csv", "--out", csv)
        preds[backend] = [line.split(",")[2] for line in csv.read_text().splitlines()[1:]]
        if backend == "torchscript":
            expect(want in log.lower(), f"predict.py --backend torchscript did not run on {want}")
    expect(len(preds["torchscript"]) == 100 and preds["torchscript"] == preds["onnxruntime"],
           "predict.py: TorchScript and onnxruntime disagree on 100 test images")
    worst = max(r["max_abs_diff"] for r in ens["parity"].values())
    return (f"ensemble test accuracy {ens['test_acc']:.4f} (parity max |dp| {worst:.1e}), refit on "
            f"{single['refit']['device']} {single['test_acc']:.4f}; predict.py agrees on both backends")


CHECKS = [("search", check_search), ("worker", check_worker_kill), ("driver", check_driver_kill),
          ("report", check_report), ("clip", check_clip), ("export", check_export)]
# Checks in one phase run at once; report and export need the search check's run
PHASES = (("search", "worker", "driver", "clip"), ("report", "export"))


def run_check(ctx: Ctx, name: str, check) -> tuple[bool, str]:
    """(passed, its line)."""
    start = time.monotonic()
    try:
        ok, line = True, f"ok      {check(ctx)}"
    except CheckFailed as e:
        ok, line = False, f"FAILED  {e}"
    except Exception as e:  # a broken file or table: still one line, and the other checks still run
        ok, line = False, f"FAILED  {type(e).__name__}: {e}"
    return ok, f"{name:<7} {line}  [{time.monotonic() - start:.0f} s]"


def machine(cpu: bool) -> str:
    """The header line; on a GPU run, fail (exit 2) unless CUDA works here."""
    import importlib.metadata
    import torch
    versions = f"torch {torch.__version__} (CUDA {torch.version.cuda}), Ray {importlib.metadata.version('ray')}"
    if cpu:
        return f"CPU ({os.cpu_count()} cores), {versions}; --cpu: no GPU figures"
    with warnings.catch_warnings(record=True) as caught:  # e.g. "The NVIDIA driver on your system is too old"
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if not available:
        why = f"; {str(caught[0].message).splitlines()[0]}" if caught else ""
        fail(f"{PROG}: no CUDA GPU here: torch {torch.__version__} sees none{why}; run it on a machine with an "
             f"NVIDIA GPU and driver, or pass --cpu to try the checks on the CPU")
    name = torch.cuda.get_device_name(0)
    try:
        torch.ones(1, device="cuda").add_(1).item()
    except Exception as e:  # a driver too old for this build, a GPU it has no kernels for
        fail(f"{PROG}: {name} is not usable with {versions}: {str(e).splitlines()[0]}")
    driver = (nvidia_smi("--query-gpu=driver_version") or [["?"]])[0][0]
    gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    return f"{torch.cuda.device_count()} x {name} ({gib:.0f} GiB), driver {driver}, {versions}"


def main(argv=None) -> int:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", type=Path, help="run directories and logs (default: a temporary directory, "
                   "removed when every check passed)")
    p.add_argument("--cpu", action="store_true", help="run the checks on the CPU (--num-gpus 0): tries this script")
    p.add_argument("--budget-s", type=float, default=240, help="time for all checks together (default 240 s)")
    args = p.parse_args(argv)
    if args.budget_s <= 0:
        fail(f"{PROG}: error: --budget-s {args.budget_s:g}: must be > 0")
    if args.work_dir and args.work_dir.exists() and any(args.work_dir.iterdir()):
        fail(f"{PROG}: error: --work-dir {args.work_dir}: not empty; pass a new or empty directory")
    header = machine(args.cpu)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    ctx = Ctx(work.resolve(), time.monotonic() + args.budget_s, 0 if args.cpu else 1)
    print(f"gpu-check: {header}; work dir {ctx.work}", flush=True)

    from concurrent.futures import ThreadPoolExecutor, as_completed
    t0, failed, checks = time.monotonic(), 0, dict(CHECKS)
    for phase in PHASES:
        with ThreadPoolExecutor(len(phase)) as pool:
            for done in as_completed([pool.submit(run_check, ctx, name, checks[name]) for name in phase]):
                ok, line = done.result()
                failed += not ok
                print(line, flush=True)
    print(f"gpu-check: {len(CHECKS) - failed} of {len(CHECKS)} checks passed, {failed} failed "
          f"in {time.monotonic() - t0:.0f} s"
          + (f"; logs in {ctx.work}/logs" if failed or args.work_dir else ""), flush=True)
    if not failed and not args.work_dir:
        shutil.rmtree(ctx.work, ignore_errors=True)
    return EXIT_FAILURE if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
