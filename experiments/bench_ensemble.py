"""bench.py's ensemble group (figure 6): the full preset's 5-fold ensemble, read from finished full-preset runs
and their reports (--ensemble-run RUN_DIR, once per run: a second search seed shows the spread); without one,
only an estimate of its training time. A run trained on GPUs gives gpu_full_ensemble_test_acc and
gpu_full_search_s (its search's wall time); one trained on CPUs gives full_ensemble_test_acc.

    python experiments/tune.py --num-gpus 1 --name gpu-full && python experiments/report.py results/gpu-full
    python experiments/bench.py --only ensemble --ensemble-run results/gpu-full [--ensemble-run results/gpu-full-s1]
"""
from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path

import torch

from bench_common import fold_loop
from distributed.config import PRESETS, ConfigError, ExperimentConfig, leaf_fields, load as load_config
from distributed.model import make_model, num_params
from distributed.train import make_optimizer, steps_per_epoch

KEYS = ("full_ensemble_test_acc", "gpu_full_ensemble_test_acc")


def tune_command(cfg: ExperimentConfig) -> str:
    """The tune.py command line that reproduces `cfg`: its preset and name, and a flag for every leaf field
    that differs from the preset."""
    preset, empty = PRESETS[cfg.preset], '""'  # an empty --space: nothing sampled
    parts = ["python experiments/tune.py", f"--preset {cfg.preset}", f"--name {cfg.name}"]
    for name, (section, _) in leaf_fields().items():
        value, default = getattr(getattr(cfg, section), name), getattr(getattr(preset, section), name)
        if value != default:
            shown = ",".join(value) if isinstance(value, tuple) else str(value)
            parts.append(f"--{name.replace('_', '-')} {shown or empty}")
    return " ".join(parts)


def check_ensemble_run(run_dir: Path) -> ExperimentConfig:
    """The run's config; ConfigError (before any work) for a run that cannot give figure 6: not this tool's,
    not the full preset, or without its report's metrics.json."""
    if not (run_dir / "config.json").exists() or not (run_dir / "summary.json").exists():
        raise ConfigError(f"--ensemble-run {run_dir}: not a finished run directory (no config.json/summary.json)")
    cfg = load_config(run_dir / "config.json")
    if cfg.preset != "full":
        raise ConfigError(f"--ensemble-run {run_dir}: a run of the {cfg.preset} preset; figure 6 is the full "
                          f"preset's ensemble")
    if not (run_dir / "report" / "metrics.json").exists():
        raise ConfigError(f"--ensemble-run {run_dir}: no report/metrics.json; run "
                          f"python experiments/report.py {run_dir} first")
    return cfg


def trained_on_gpu(summary: dict) -> bool:
    """Whether a run's fold workers trained on GPUs (summary.json's `devices`, as tuner.py recorded them)."""
    return bool(((summary.get("devices") or {}).get("gpus_per_worker") or 0) > 0)


def ensemble_from_run(run_dir: Path) -> dict:
    """One finished full-preset run and its report: the best trial's K-fold ensemble on the 10,000 test images
    (the mean of the fold models' probabilities), each fold model's test accuracy, the out-of-fold accuracy
    and the search's wall time. The best trial and its fold models were chosen by the fold-mean validation
    accuracy alone; the test set only measures them here."""
    cfg = check_ensemble_run(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    return {"run_dir": str(run_dir.resolve()), "command": tune_command(cfg), "gpu": trained_on_gpu(summary),
            "devices": summary.get("devices"), "search_seed": cfg.search.search_seed,
            "folds": cfg.cv.folds, "n_train": summary["n_train"], "epochs": cfg.train.epochs,
            "model": cfg.model.__dict__, "train": cfg.train.__dict__, "best_trial_id": summary["best_trial_id"],
            "best_config": summary["best_config"], "search_wall_s": summary["wall_s"],
            "trials": summary.get("n_trials"), "epochs_run_total": summary.get("epochs_run_total"),
            "cv_val_acc_mean": (summary["best_cv"] or {}).get("val_acc_mean"),
            "test_acc": metrics["test_acc"], "test_macro_f1": metrics["test_macro_f1"],
            "test_acc_per_fold": metrics["test_acc_per_fold"], "oof_val_acc": metrics["oof_val_acc"]}


def ensemble_figures(runs: list[dict]) -> dict:
    """Figure 6 from one or more runs (say two search seeds): the mean of their ensembles' test accuracies, as
    full_ensemble_test_acc (trained on CPUs) or gpu_full_ensemble_test_acc with gpu_full_search_s (the slowest
    of their search wall times) for runs trained on GPUs. Runs of both kinds together are refused."""
    kinds = {r["gpu"] for r in runs}
    if len(kinds) > 1:
        raise ConfigError("--ensemble-run: some runs trained on GPUs and some on CPUs; pass one kind at a time")
    acc = statistics.mean(r["test_acc"] for r in runs)
    if kinds == {True}:  # the CPU figure keeps its value in bench.json, and the other way round
        return {"gpu_full_ensemble_test_acc": acc, "gpu_full_search_s": max(r["search_wall_s"] for r in runs)}
    return {"full_ensemble_test_acc": acc}


def describe(run: dict) -> str:
    """One line per run for bench.py's output: the spread behind the figure."""
    folds = ", ".join(f"{a:.4f}" for a in run["test_acc_per_fold"])
    return (f"  {run['run_dir']} ({'GPU' if run['gpu'] else 'CPU'}, search seed {run['search_seed']}): ensemble "
            f"test {run['test_acc']:.4f}, fold models {folds}; out-of-fold {run['oof_val_acc']:.4f}; "
            f"search {run['search_wall_s']:.0f} s")


def bench_ensemble(data, device, quick: bool, run_dirs: list[Path] | None, say=print) -> tuple[dict, dict, dict]:
    """Figure 6 from `run_dirs` (finished full-preset runs, each with its report) when given; either way, the
    estimated training time of one trial of the full preset as it stands on this machine."""
    full = PRESETS["full"]
    n = 256 if quick else 2048
    x_u8 = torch.from_numpy(data.train_x[:n].copy()).to(device)
    y = torch.from_numpy(data.train_y[:n].copy()).to(device)
    cfg = replace(full.train, epochs=10_000)
    model = make_model(full.model, device)
    opt, sched = make_optimizer(model, cfg, steps_per_epoch(n, cfg.batch_size))
    fold_loop(model, opt, sched, x_u8[:cfg.batch_size * 2], y[:cfg.batch_size * 2], cfg)
    img_s = statistics.median(fold_loop(model, opt, sched, x_u8, y, cfg) for _ in range(2))
    per_fold = len(data.train_x) * (full.cv.folds - 1) // full.cv.folds
    hours = full.cv.folds * full.train.epochs * per_fold / img_s / 3600
    estimate = {"model": full.model.__dict__, "params": num_params(model), "img_s": img_s,
                "estimated_hours_one_trial": hours, "device": str(device)}
    not_given = "not measured: python experiments/bench.py --only ensemble --ensemble-run RUN"
    if run_dirs:
        runs = [ensemble_from_run(d) for d in run_dirs]
        for run in runs:
            say(describe(run))
        return ensemble_figures(runs), {"runs": runs, "full_preset_estimate": estimate}, {}
    reason = (f"no full-preset run given (--ensemble-run): one 5-fold trial of the full preset "
              f"({full.model.__dict__}, {full.train.epochs} epochs, {per_fold} images per fold) trains at "
              f"{img_s:.0f} img/s on this machine, an estimated {hours:.1f} h for one configuration")
    return ({"full_ensemble_test_acc": None, "gpu_full_ensemble_test_acc": None}, estimate,
            {"full_ensemble_test_acc": reason, "gpu_full_ensemble_test_acc": not_given})
