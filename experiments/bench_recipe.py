"""bench.py's recipe group: what a change of the training recipe gives, measured as the engine trains.

For each variant (tune.py flags added to the base) and each seed, one fixed configuration is trained as a real
K-fold run of the engine (one trial, every epoch, nothing sampled), and its K fold models are evaluated on the
test set as the report does (analysis.evaluate). The seed is --fold-seed: the split, and each fold's
initialisation, augmentation and dropout (checkpoints.fold_seed). Every variant sees the same seeds, so the
figures are paired differences, variant minus base, averaged over the seeds: of the fold-mean validation
accuracy after the last epoch, after the first ASHA rung (epoch --grace-period: what the scheduler ranks trials
by first), and of the K-fold ensemble's test accuracy. Nothing is chosen by these test accuracies: they only
measure a change after it was made.

    python experiments/bench.py --only recipe   # the quick preset, with and without EMA, 3 seeds (~12 min on 2 cores)
    python experiments/bench.py --only recipe --recipe-args "--preset full --num-gpus 1 --epochs 30"   # on a GPU
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from bench_search import SMOKE_SEARCH, tune_in_process

KEYS = ("recipe_ema_val_gain", "recipe_ema_rung_gain", "recipe_ema_test_gain")
SEEDS = (0, 1, 2)
# One fixed configuration, trained whole: no sampling, FIFO
FIXED = ["--num-samples", "1", "--space", "", "--scheduler", "fifo"]
EMA_HALFLIFE = "0.25"  # epochs: the weights of the last quarter epoch count half
VARIANTS = {  # name -> flags after the base; "base" is what the others are compared with
    "base": ["--ema-halflife", "0"],
    "ema": ["--ema-halflife", EMA_HALFLIFE],
}


def run_figures(run_dir: Path) -> dict:
    """A finished one-trial run: fold-mean validation accuracy per epoch, and its K fold models' test accuracy
    (each, and their ensemble) as the report computes it."""
    import torch

    from analysis import evaluate
    from analysis.metrics_json import score
    from analysis.run_tables import load_run

    run = load_run(run_dir)
    curve = run.epochs.groupby("epoch")["val_acc"].mean()
    devices = evaluate.inference_devices(run.folds, None, torch.cuda.device_count())
    scores = score(evaluate.evaluate_best(run, evaluate.load_data(run), devices))  # the report's own numbers
    return {"val_acc_curve": [float(v) for v in curve.values],
            "val_acc_mean": float(curve.iloc[-1]), "test_acc": scores["test"]["acc"],
            "test_acc_per_fold": scores["test_acc_per_fold"], "oof_val_acc": scores["oof"]["acc"],
            "epochs": int(run.summary["max_epochs"]), "grace_period": run.config.search.grace_period,
            "wall_s": float(run.summary["wall_s"])}


def paired_gain(runs: dict, variant: str, key, seeds) -> float:
    """The mean over seeds of variant's figure minus the base's."""
    return float(np.mean([key(runs[variant][s]) - key(runs["base"][s]) for s in seeds]))


def bench_recipe(quick: bool, recipe_args: list[str], say=print) -> tuple[dict, dict, dict]:
    """The recipe figures: each variant against the base, paired by seed."""
    base = (SMOKE_SEARCH if quick else ["--preset", "quick"]) + FIXED + recipe_args
    seeds = SEEDS[:2] if quick else SEEDS
    runs: dict = {v: {} for v in VARIANTS}
    with tempfile.TemporaryDirectory() as storage:
        for seed in seeds:
            for variant, flags in VARIANTS.items():
                args = base + ["--fold-seed", str(seed)] + flags
                name = f"{variant}-seed{seed}"
                say(f"  {name}: python experiments/tune.py {' '.join(args)}", flush=True)
                runs[variant][seed] = run_figures(tune_in_process(args, name, Path(storage)))
                r = runs[variant][seed]
                say(f"  {name}: fold-mean val {r['val_acc_mean']:.4f}, ensemble test {r['test_acc']:.4f}", flush=True)
    rung = runs["base"][seeds[0]]["grace_period"] - 1  # the first rung's epoch, as an index into the curve
    figures = {
        "recipe_ema_val_gain": paired_gain(runs, "ema", lambda r: r["val_acc_mean"], seeds),
        "recipe_ema_rung_gain": paired_gain(runs, "ema", lambda r: r["val_acc_curve"][rung], seeds),
        "recipe_ema_test_gain": paired_gain(runs, "ema", lambda r: r["test_acc"], seeds),
    }
    details = {"command_base": "python experiments/tune.py " + " ".join(base), "variants": VARIANTS,
               "seeds": list(seeds), "rung_epoch": rung + 1,
               "runs": {v: {str(s): r for s, r in by_seed.items()} for v, by_seed in runs.items()}}
    return figures, details, {}
