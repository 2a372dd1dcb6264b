"""bench.py's search groups, and the searches the racing group runs too.

  search  figure 3: a real quick-preset search (ASHA): the share of its wall time the folds spend computing,
          the slots' one-time start and the trial start latency; with --before, the same search on another
          checkout's engine (its own tune.py, in a subprocess).
  hpo     figure 4: one search twice, ASHA and FIFO (same Optuna seed and trial count), at a budget where
          successive halving has rungs to work with (HPO_ARGS): epochs consumed and best accuracy.

Each search runs in this process through distributed.launch.run_tune, the entry point tune.py calls, on a
private Ray instance; its flags are tune.py's, parsed as tune.py parses them (search_config).

    python experiments/bench.py --only search,hpo
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import load_avg, summarise
from distributed.cli import ArgumentParser, add_config_flags, config_from_args, fail, preset_from_args
from distributed.config import ConfigError, ExperimentConfig, SearchStopped

SEARCH_KEYS = ("overhead_fraction", "trial_start_latency_s", "search_start_s", "quick_search_wall_s")
HPO_KEYS = ("asha_epoch_ratio", "asha_acc_gap")

# Figure 4's searches: the quick preset's model on 5,000 images, 12 trials of 16 epochs, ASHA with grace 1 and
# reduction factor 4, so successive halving has rungs at epochs 1 and 4 below max_t (the quick preset's own
# 6 trials x 5 epochs leave it a single rung and a ceiling of ~2.6x; BENCHMARKS.md section 4). The same
# Optuna seed gives both searches the same 10 random start-up configurations.
HPO_ARGS = ("--preset", "quick", "--limit-train", "5000", "--num-samples", "12", "--epochs", "16",
            "--reduction-factor", "4")
# --quick: the search groups only check the plumbing, on a tiny smoke search
SMOKE_SEARCH = ["--preset", "smoke", "--num-samples", "2", "--folds", "2", "--epochs", "2", "--limit-train", "200"]


def overhead_from_run(run_dir: Path) -> dict:
    """Where a finished search's wall time went, from its summary.json, epochs.parquet and Tune results.

    The K folds of a trial compute side by side, so an epoch's compute time is its slowest fold's
    `seconds` (train + eval). Everything else is overhead: worker-group start (the first iteration's
    time beyond its compute), per-epoch reporting and checkpoints, and the gaps between trials.
    """
    import pandas as pd
    summary = json.loads((run_dir / "summary.json").read_text())
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    per_epoch = epochs.groupby(["trial_id", "epoch"])["seconds"].max()
    compute = float(per_epoch.sum())
    start = report = in_trials = 0.0
    for trial_dir in sorted(p for p in (run_dir / "tune").iterdir() if (p / "result.json").exists()):
        results = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line]
        for r in results:
            beyond = r["time_this_iter_s"] - float(per_epoch.get((trial_dir.name, r["epoch"]), 0.0))
            if r["training_iteration"] == 1:
                start += beyond
            else:
                report += beyond
        if results:
            in_trials += results[-1]["time_total_s"]
    wall = float(summary["wall_s"])
    engine = summary.get("engine") or {}  # runs of the per-trial Train engine (before the slots) have none
    latency = sorted((engine.get("trial_start_latency_s") or {}).values())
    return {"wall_s": wall, "search_start_s": engine.get("search_start_s"),
            "trial_start_latency_s": summarise(latency) if latency else None,
            "trial_start_latency_after_first_s": summarise(latency[1:]) if len(latency) > 1 else None,
            "compute_s": compute, "overhead_fraction": max(0.0, 1 - compute / wall),
            "worker_start_s": start, "per_epoch_report_s": report, "between_trials_s": max(0.0, wall - in_trials),
            "trials": int(summary["n_trials"]), "epochs_run_total": int(summary["epochs_run_total"]),
            "best_val_acc_mean": (summary["best_cv"] or {}).get("val_acc_mean")}


def search_config(args: list[str]) -> tuple[ExperimentConfig, str | None]:
    """The config (and why its preset) of tune.py `args`, parsed by tune.py's flags as tune.py parses them.
    The benchmark's searches all name their --preset, so nothing is probed (no GPU count, no cluster)."""
    parser = ArgumentParser(prog="tune.py")
    add_config_flags(parser)
    parsed = parser.parse_args(args)

    def no_cluster():
        raise ConfigError("bench.py runs its searches on a private local Ray instance: pass --preset, not --address")
    preset, why = preset_from_args(parsed, no_cluster)
    return config_from_args(parsed, preset), why


def tune_in_process(args: list[str], name: str, storage: Path) -> Path:
    """The search of tune.py `args`, as run `name` under `storage`, in this process (distributed.launch.run_tune)
    on a private Ray instance (started on first use: see distributed.ray_init.init_ray); its run directory. Input
    the search refuses ends bench.py as it ends tune.py (one line, exit 2); a search that fails raises."""
    import ray

    from distributed.launch import resume_command, run_tune
    if not ray.is_initialized():
        from distributed.ray_init import init_ray
        init_ray(None, log_to_driver=False, configure_logging=False)
    full = args + ["--name", name, "--storage-path", str(storage)]
    try:
        cfg, why = search_config(full)
        code = run_tune(cfg, resume_command(full, name), why)
    except ConfigError as e:
        fail(f"tune.py: error: {e}")
    except SearchStopped as e:
        fail(f"tune.py: error: {e}", e.code)
    if code != 0:
        raise RuntimeError(f"tune.py {' '.join(full)} exited with {code}")
    return Path(storage) / name


def run_searches(base: list[str], schedulers: tuple[str, ...]) -> dict:
    """Run tune.py's search once per scheduler on a private Ray instance, in a temporary storage path; per run,
    the overhead_from_run breakdown, the command and the load average after."""
    runs = {}
    with tempfile.TemporaryDirectory() as storage:
        for scheduler in schedulers:
            args = base + ["--scheduler", scheduler]
            t0 = time.perf_counter()
            runs[scheduler] = overhead_from_run(tune_in_process(args, scheduler, Path(storage)))
            runs[scheduler].update(command="python experiments/tune.py " + " ".join(args + ["--name", scheduler]),
                                   main_call_s=time.perf_counter() - t0, load_avg_after=load_avg())
    return runs


def run_before(checkout: Path, args: list[str]) -> dict:
    """The same search with another checkout's tune.py (e.g. the engine before the slots), as a subprocess with
    its own Ray instance; its overhead_from_run breakdown."""
    with tempfile.TemporaryDirectory() as storage:
        cmd = [sys.executable, str(checkout / "experiments" / "tune.py"), *args, "--name", "before",
               "--storage-path", storage]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
        out = subprocess.run(cmd, cwd=checkout, capture_output=True, text=True, env={**env, "PYTHONPATH": str(checkout)})
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited with {out.returncode}: {out.stderr[-2000:]}")
        run = overhead_from_run(Path(storage) / "before")
        commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        run.update(command=f"(checkout {checkout} at {commit}) python experiments/tune.py {' '.join(args)}")
        return run


def bench_search(quick: bool, search_args: list[str], before: Path | None = None) -> tuple[dict, dict, dict]:
    """Figure 3: where the quick preset's search (ASHA) spends its wall time; with `before`, the same search on
    that checkout's engine too, one after the other on this machine."""
    base = (SMOKE_SEARCH if quick else ["--preset", "quick"]) + ["--search-seed", "0"] + search_args
    runs = run_searches(base, ("asha",))
    asha = runs["asha"]
    figures = {"overhead_fraction": asha["overhead_fraction"], "search_start_s": asha["search_start_s"],
               "trial_start_latency_s": (asha["trial_start_latency_after_first_s"] or {}).get("median"),
               "quick_search_wall_s": asha["wall_s"]}
    reasons = {}
    if figures["trial_start_latency_s"] is None:
        reasons["trial_start_latency_s"] = "fewer than 2 trials started their folds: no latency after the first"
    if before is not None:
        runs["before"] = run_before(before, base)
        runs["asha"]["wall_vs_before"] = asha["wall_s"] / runs["before"]["wall_s"]
    return figures, runs, reasons


def bench_hpo(quick: bool, hpo_args: list[str]) -> tuple[dict, dict, dict]:
    """Figure 4: the same search with ASHA and with FIFO (every trial to max_t): epochs and best accuracy."""
    base = (SMOKE_SEARCH if quick else list(HPO_ARGS)) + ["--search-seed", "0"] + hpo_args
    runs = run_searches(base, ("asha", "fifo"))
    asha, fifo = runs["asha"], runs["fifo"]
    gap = (None if asha["best_val_acc_mean"] is None or fifo["best_val_acc_mean"] is None
           else fifo["best_val_acc_mean"] - asha["best_val_acc_mean"])
    figures = {"asha_epoch_ratio": fifo["epochs_run_total"] / asha["epochs_run_total"], "asha_acc_gap": gap}
    reasons = {} if gap is not None else {"asha_acc_gap": "a search finished no trial at max_t: no best accuracy"}
    return figures, runs, reasons
