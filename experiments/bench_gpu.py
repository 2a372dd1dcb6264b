"""bench.py's gpu group: how busy the fold loop keeps one GPU, lever by lever, in at most 8 minutes.

    python experiments/bench.py --only gpu          # on a machine with one CUDA GPU

1. The fold harness: K processes, one per fold, each running the engine's own fold loop (make_model,
   make_optimizer, train_one_epoch, evaluate with flip TTA) on its fold of the real split, all on one GPU at
   once, as a slot's K Ray Train workers do (without Ray: no start-up to pay per variant). Per-fold epoch
   seconds are the median over folds of the last epoch (the first adds cuDNN's autotuning and allocation).
   Config C runs once per lever (augmentation per batch or in chunks, cudnn.benchmark, CUDA MPS, two trials'
   folds at once), then A and B with every lever: gpu_epoch_s_small (C), gpu_epoch_s_wide (A) and
   gpu_mfu_deep (B).
2. MFU: model FLOPs (torch.utils.flop_counter: a training step's forward and backward per training image, a
   forward per validation image and view) of the K folds, over the epoch's seconds, over the peak of a bf16
   matmul measured on the same GPU in the same run.
3. gpu_fixed_trial_acc: config A's hyperparameters (the issue's trial) for 30 epochs in the harness: the
   fold-mean validation accuracy, the same split and seeds as the engine.
4. gpu_full_search_s: `tune.py --num-gpus 1` (the full preset, all its trials), timed as a user runs it, in
   what is left of the 8 minutes; a search that does not finish in time is stopped and reported as null.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench_common import flops_per_image, matmul_peak
from distributed.config import PRESETS, ModelConfig, TrainConfig
from distributed.folds import make_folds

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 8 * 60
KEYS = ("gpu_epoch_s_small", "gpu_epoch_s_wide", "gpu_mfu_deep", "gpu_full_search_s", "gpu_fixed_trial_acc")

# The configurations (DESIGN.md section 6), on the full preset's recipe
FULL = PRESETS["full"]
CONFIGS = {
    "A": (replace(FULL.model, width=64, depth=2), replace(FULL.train, batch_size=256)),
    "B": (replace(FULL.model, width=64, depth=3), replace(FULL.train, batch_size=256)),
    "C": (replace(FULL.model, width=32, depth=3), replace(FULL.train, batch_size=64)),
    "D": (replace(FULL.model, width=16, depth=3), replace(FULL.train, batch_size=64)),
}
# config A's trial on one H200: 0.9501 +- 0.0016 after 30 epochs
FIXED_TRIAL = (replace(FULL.model, width=64, depth=2, convs_per_block=2, fc_width=256, dropout=0.362),
               replace(FULL.train, epochs=30, batch_size=256, lr=0.00206, weight_decay=0.00442,
                       label_smoothing=0.158, erase_p=0.264, tta_flip=True))
# The lever runs (config C): what each adds, in order; the last is everything the engine does now
LEVERS = (
    ("before: per-batch augmentation, no cudnn.benchmark, time-sliced", dict(chunk="batch", cudnn=False)),
    ("+ augmentation in chunks", dict(chunk="auto", cudnn=False)),
    ("+ cudnn.benchmark", dict(chunk="auto", cudnn=True)),
    ("+ CUDA MPS", dict(chunk="auto", cudnn=True, mps=True)),
    ("+ two trials' folds on the GPU at once (MPS)", dict(chunk="auto", cudnn=True, mps=True, trials=2)),
)


def fold_worker(rank: int, k: int, shared: dict, model_cfg: ModelConfig, train_cfg: TrainConfig,
                epochs: int, device_name: str, chunk: str, cudnn: bool, barrier, results) -> None:
    """One fold of the harness: the engine's fold loop for `epochs` epochs; puts (rank, per-epoch dicts)."""
    from distributed.checkpoints import fold_seed
    from distributed.config import ExperimentConfig
    from distributed.cv import Fold
    from distributed.ema import kept, make_ema
    from distributed.model import make_model
    from distributed.train import evaluate, make_optimizer, steps_per_epoch, train_one_epoch
    device = torch.device(device_name)
    fold = rank % k
    torch.backends.cudnn.benchmark = cudnn
    if device.type == "cpu":
        torch.set_num_threads(1)
    torch.manual_seed(fold_seed(ExperimentConfig(), fold))  # the engine's seed (fold_seed 0, as in split())
    data = Fold(shared, fold, device)  # the fold's part of the data on the device, as a slot's worker holds it
    model = make_model(model_cfg, device)
    cfg = replace(train_cfg, epochs=max(train_cfg.epochs, epochs))
    steps = steps_per_epoch(len(data.x_tr), cfg.batch_size)
    opt, sched = make_optimizer(model, cfg, steps)
    ema = make_ema(model, cfg.ema_halflife, steps)  # the recipe's weight average, as the fold loop keeps it
    barrier.wait()  # every fold starts its first step together
    out = []
    for _ in range(epochs):
        tr = train_one_epoch(model, opt, sched, data.x_tr, data.y_tr, cfg, ema=ema,
                             chunk=cfg.batch_size if chunk == "batch" else None)
        ev = evaluate(kept(model, ema), data.x_val, data.y_val, cfg.eval_batch_size,
                      tta_flip=cfg.tta_flip)
        out.append({"seconds": tr["seconds"] + ev["seconds"], "train_n": tr["n"], "val_n": ev["n"],
                    "val_acc": ev["acc"]})
    results.put((rank, out))


def shared_epochs(shared: dict, model_cfg: ModelConfig, train_cfg: TrainConfig, epochs: int, device: str,
                  k: int = 5, trials: int = 1, chunk: str = "auto", cudnn: bool = True, mps: bool = False,
                  say=print) -> dict:
    """Run `trials` x k fold processes on one device at once; per-fold epoch seconds (median over folds, last
    epoch), and the fold-mean validation accuracy of the last epoch (of the first trial's folds)."""
    import torch.multiprocessing as mp
    daemon = None
    if mps:
        from distributed.mps import Mps
        daemon, why = Mps.start()
        if daemon is None:
            say(f"  CUDA MPS not started ({why}): this variant runs time-sliced")
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(k * trials), ctx.Queue()
    procs = [ctx.Process(target=fold_worker, args=(r, k, shared, model_cfg, train_cfg, epochs, device, chunk,
                                                   cudnn, barrier, results)) for r in range(k * trials)]
    try:
        for p in procs:
            p.start()
        got = dict(results.get(timeout=600) for _ in procs)
        for p in procs:
            p.join()
        bad = [p.exitcode for p in procs if p.exitcode != 0]
        if bad:
            raise RuntimeError(f"a fold process exited with {bad[0]}")
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        if daemon is not None:
            daemon.stop()
    last = [got[r][-1] for r in sorted(got)]
    return {"epoch_s": float(np.median([e["seconds"] for e in last])),
            "epoch_s_folds": [round(e["seconds"], 4) for e in last],
            "first_epoch_s": float(np.median([got[r][0]["seconds"] for r in got])),
            "train_n": last[0]["train_n"], "val_n": last[0]["val_n"],
            "val_acc_mean": float(np.mean([e["val_acc"] for e in last[:k]])),
            "val_acc_std": float(np.std([e["val_acc"] for e in last[:k]])),
            "mps": daemon is not None, "processes": k * trials}


@functools.lru_cache(maxsize=None)
def _flops_per_image(model_cfg: ModelConfig, device, train: bool) -> float:
    return flops_per_image(model_cfg, device, train=train)  # counted once per configuration, not once per run


def mfu(model_cfg: ModelConfig, train_cfg: TrainConfig, run: dict, peak: float, device) -> dict:
    """Model FLOP/s of all the folds of a harness run over `peak`: training steps plus validation, both flip
    views with TTA."""
    views = 2 if train_cfg.tta_flip else 1
    per_fold = (_flops_per_image(model_cfg, device, True) * run["train_n"]
                + _flops_per_image(model_cfg, device, False) * views * run["val_n"])
    flop_s = per_fold * run["processes"] / run["epoch_s"]
    return {"mfu": flop_s / peak, "model_flop_s": flop_s, "flops_per_fold_epoch": per_fold}


def full_search(timeout_s: float, say=print) -> tuple[float | None, dict]:
    """Wall seconds of `tune.py --num-gpus 1` run as a user runs it, or None when it needs more than timeout_s."""
    with tempfile.TemporaryDirectory() as storage:
        cmd = [sys.executable, str(ROOT / "experiments" / "tune.py"), "--num-gpus", "1", "--name", "gpu-full",
               "--storage-path", storage]
        say(f"  {' '.join(cmd[1:])}  (at most {timeout_s:.0f} s)")
        t0 = time.monotonic()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
        except subprocess.TimeoutExpired as e:
            tail = (e.stdout or b"")[-2000:]
            return None, {"timeout_s": round(timeout_s), "stdout_tail": tail.decode() if isinstance(tail, bytes)
                          else tail}
        wall = time.monotonic() - t0
        summary_path = Path(storage) / "gpu-full" / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        detail = {"returncode": r.returncode, "wall_s": round(wall, 1), "stdout_tail": r.stdout[-2000:],
                  "n_trials_completed": summary.get("n_trials_completed"),
                  "n_trials_pruned": summary.get("n_trials_pruned"),
                  "epochs_run_total": summary.get("epochs_run_total"), "best_cv": summary.get("best_cv")}
        return (wall if r.returncode == 0 else None), detail


def split(x: np.ndarray, y: np.ndarray, k: int = 5, seed: int = 0) -> dict:
    """The engine's shared split of these training images, all of them (distributed.run.prepare_run's shape)."""
    return {"x": x, "y": y, "positions": np.arange(len(y)), "folds": make_folds(y, k, seed)}


def bench_gpu(data, device, quick: bool, say=print) -> tuple[dict, dict, dict]:
    """The gpu group: (figures, details, reasons for null figures). quick: one epoch of each, on 6,000 images,
    and no full search (checks the plumbing, on any device)."""
    t0 = time.monotonic()
    dev = str(device)
    n = 6000 if quick else len(data.train_y)
    shared = split(data.train_x[:n], data.train_y[:n])
    epochs = 1 if quick else 2
    details = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "cuda": torch.version.cuda, "torch": torch.__version__, "levers": [], "configs": {}}
    peak = matmul_peak(device, 8192 if device.type == "cuda" else 1024, 10 if device.type == "cuda" else 3)
    details["peak_flop_s"] = peak
    model_c, train_c = CONFIGS["C"]
    for label, lever in (LEVERS[:1] + LEVERS[-1:] if quick else LEVERS):
        run = shared_epochs(shared, model_c, train_c, epochs, dev, say=say, **lever)
        run.update(label=label, **mfu(model_c, train_c, run, peak, device))
        say(f"  C {label}: {run['epoch_s']:.3f} s/epoch per fold ({run['processes']} processes, "
            f"MFU {run['mfu']:.4f})")
        details["levers"].append(run)
    best = dict(LEVERS[3][1])  # every lever of one trial's folds (the figures are per trial)
    for name in ("C", "A", "B"):
        m, t = CONFIGS[name]
        run = shared_epochs(shared, m, t, epochs, dev, say=say, **best)
        run.update(**mfu(m, t, run, peak, device))
        details["configs"][name] = run
        say(f"  {name} (w{m.width} d{m.depth} b{t.batch_size}): {run['epoch_s']:.3f} s/epoch per fold, "
            f"MFU {run['mfu']:.4f}")
    m, t = FIXED_TRIAL
    fixed = shared_epochs(shared, m, replace(t, epochs=1) if quick else t, 1 if quick else t.epochs, dev,
                          say=say, **best)
    details["fixed_trial"] = fixed
    say(f"  config A's trial, {1 if quick else t.epochs} epochs: fold-mean val acc "
        f"{fixed['val_acc_mean']:.4f} +- {fixed['val_acc_std']:.4f}")
    figures = {"gpu_epoch_s_small": details["configs"]["C"]["epoch_s"],
               "gpu_epoch_s_wide": details["configs"]["A"]["epoch_s"],
               "gpu_mfu_deep": details["configs"]["B"]["mfu"],
               "gpu_fixed_trial_acc": fixed["val_acc_mean"], "gpu_full_search_s": None}
    reasons = {}
    left = BUDGET_S - (time.monotonic() - t0)
    if quick:
        reasons["gpu_full_search_s"] = "not measured with --quick"
    elif left < 60:
        reasons["gpu_full_search_s"] = f"not measured: {left:.0f} s left of the group's {BUDGET_S} s"
    else:
        wall, details["full_search"] = full_search(left, say)
        figures["gpu_full_search_s"] = wall
        if wall is None:
            reasons["gpu_full_search_s"] = (f"> {left:.0f} s: the search did not finish in what was left of the "
                                            f"group's {BUDGET_S} s" if "timeout_s" in details["full_search"]
                                            else "the search failed: see notes.details.gpu.full_search")
    details["wall_s"] = round(time.monotonic() - t0, 1)
    return figures, details, reasons


if __name__ == "__main__":  # the harness alone, e.g. to try a lever: python experiments/bench_gpu.py C
    sys.path.insert(0, str(ROOT))
    from distributed.data import load
    from distributed.config import DataConfig
    name = sys.argv[1] if len(sys.argv) > 1 else "C"
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    data = load(DataConfig())
    print(shared_epochs(split(data.train_x, data.train_y), *CONFIGS[name], 2, dev,
                        mps=os.environ.get("FMNIST_MPS") == "1"))
