"""bench.py's accuracy group (figure 5): one model trained on all 60,000 images with distributed.train: seconds
to 93% test accuracy (flip TTA, as the recipe says), and the best test accuracy within 15 minutes.

    python experiments/bench.py --only accuracy
"""
from __future__ import annotations

from dataclasses import replace

import torch

from bench_common import QUICK_MODEL, SEED_MODEL, fold_loop, load_avg
from distributed.config import ModelConfig, TrainConfig
from distributed.model import make_model
from distributed.train import evaluate, make_optimizer, steps_per_epoch, train_one_epoch

KEYS = ("time_to_93_s", "best_test_acc_15min")
TARGET_ACC = 0.93
BUDGET_S = 15 * 60  # "best test accuracy within 15 minutes"

# The time-to-93% recipe: one model on all 60k images, fp32 on the CPU, the project's train_one_epoch.
# Settled by the runs in BENCHMARKS.md section 5: a 2-conv CNN (825k params) on a 9-epoch one-cycle
# schedule, evaluated with flip TTA, passes 93% in epoch 8 (a 15-epoch schedule only did in epoch 12:
# its learning rate was still high at the 300 s mark). The 15-minute run trains the seed-sized CNN for
# as many epochs as its measured speed fits into the budget, with the same schedule shape and TTA.
RECIPE_MODEL = ModelConfig(width=32, depth=2, convs_per_block=1, fc_width=256, dropout=0.3)
RECIPE_TRAIN = TrainConfig(epochs=9, lr=3e-3, batch_size=128, label_smoothing=0.1, tta_flip=True)
LONG_MODEL = replace(SEED_MODEL, dropout=0.3)


def train_to_accuracy(data, model_cfg: ModelConfig, train_cfg: TrainConfig, device, n_train: int | None = None,
                      n_test: int | None = None) -> dict:
    """One model on the training images with the project's loop; the test accuracy after every epoch.

    The clock counts training only (train_one_epoch's seconds); the per-epoch test evaluations are the
    measurement, not part of the recipe, and are timed separately. With train_cfg.tta_flip the test
    accuracy is that of flip test-time augmentation (as the fold workers validate); the accuracy without
    it is recorded beside it (`test_acc_no_tta`).
    """
    torch.manual_seed(0)
    x = torch.from_numpy(data.train_x[:n_train].copy()).to(device)
    y = torch.from_numpy(data.train_y[:n_train].copy()).to(device)
    xt = torch.from_numpy(data.test_x[:n_test].copy()).to(device)
    yt = torch.from_numpy(data.test_y[:n_test].copy()).to(device)
    model = make_model(model_cfg, device)
    opt, sched = make_optimizer(model, train_cfg, steps_per_epoch(len(x), train_cfg.batch_size))
    train_s = eval_s = 0.0
    curve = []
    for epoch in range(1, train_cfg.epochs + 1):
        train_s += train_one_epoch(model, opt, sched, x, y, train_cfg)["seconds"]
        ev = evaluate(model, xt, yt, tta_flip=train_cfg.tta_flip)
        eval_s += ev["seconds"]
        point = {"epoch": epoch, "train_s": round(train_s, 2), "test_acc": ev["acc"]}
        if train_cfg.tta_flip:
            point["test_acc_no_tta"] = evaluate(model, xt, yt)["acc"]
        curve.append(point)
        shown = "" if not train_cfg.tta_flip else f" (no TTA: {point['test_acc_no_tta']:.4f})"
        print(f"  epoch {epoch}/{train_cfg.epochs}: test acc {ev['acc']:.4f}{shown} after {train_s:.0f} s of "
              f"training", flush=True)
    reached = next((c["train_s"] for c in curve if c["test_acc"] >= TARGET_ACC), None)
    within = [c["test_acc"] for c in curve if c["train_s"] <= BUDGET_S]
    return {"model": model_cfg.__dict__, "train": train_cfg.__dict__, "n_train": len(x), "n_test": len(xt),
            "curve": curve, "train_s": train_s, "eval_s": eval_s, "time_to_target_s": reached,
            "best_within_budget": max(within) if within else None, "load_avg_after": load_avg()}


def bench_accuracy(data, device, quick: bool) -> tuple[dict, dict, dict]:
    if quick:  # the plumbing only: 93% is out of reach of one epoch on 2,000 images
        run = train_to_accuracy(data, QUICK_MODEL, replace(RECIPE_TRAIN, epochs=1), device, 2000, 1000)
        figures = {"time_to_93_s": run["time_to_target_s"], "best_test_acc_15min": run["best_within_budget"]}
        return figures, {"reduced": run}, {"time_to_93_s": "--quick: one epoch on 2,000 images, not the recipe"}
    print(f"time to {TARGET_ACC:.0%}: {RECIPE_TRAIN.epochs} epochs of the recipe", flush=True)
    short = train_to_accuracy(data, RECIPE_MODEL, RECIPE_TRAIN, device)
    # The one-cycle schedule's length is fixed up front: as many epochs as the measured speed of the
    # long run's model fits into the budget, with a 10% margin for a noisy neighbour.
    n = 5120
    x_u8 = torch.from_numpy(data.train_x[:n].copy()).to(device)
    y = torch.from_numpy(data.train_y[:n].copy()).to(device)
    probe_cfg = replace(RECIPE_TRAIN, epochs=10_000)
    model = make_model(LONG_MODEL, device)
    opt, sched = make_optimizer(model, probe_cfg, steps_per_epoch(n, probe_cfg.batch_size))
    fold_loop(model, opt, sched, x_u8[:512], y[:512], probe_cfg)  # warm-up
    epoch_s = len(data.train_x) / fold_loop(model, opt, sched, x_u8, y, probe_cfg)
    epochs = max(1, int(0.9 * BUDGET_S / epoch_s))
    print(f"best within {BUDGET_S // 60} minutes: {epochs} epochs of the seed-sized CNN (~{epoch_s:.0f} s each)",
          flush=True)
    long = train_to_accuracy(data, LONG_MODEL, replace(RECIPE_TRAIN, epochs=epochs), device)
    best = max(v for v in (short["best_within_budget"], long["best_within_budget"]) if v is not None)
    reasons = {} if short["time_to_target_s"] is not None else {
        "time_to_93_s": f"the recipe ({RECIPE_TRAIN.epochs} epochs) ended at "
                        f"{short['curve'][-1]['test_acc']:.4f} test accuracy, below {TARGET_ACC}"}
    return {"time_to_93_s": short["time_to_target_s"], "best_test_acc_15min": best}, \
        {"short": short, "long": long, "long_epoch_s_estimate": epoch_s}, reasons

