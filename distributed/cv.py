"""The fold loop: what one Ray Train worker of a slot runs. World rank == fold index; there is no DDP.

A slot (distributed.slots) is one long-lived Ray Train run of K workers. Each worker starts once per search:
it imports torch, copies its fold's part of the data onto its device, and then serves trial after trial,
asking the coordinator (distributed.coordinator) for the next one. For each trial it trains its own model
on K-1 folds and evaluates on the held-out fold, every epoch, and writes (distributed.checkpoints)

    RUN_DIR/folds/<trial>/epoch_NNN/fold_<k>.pt        weights, optimizer, schedule, RNG, metrics, history
                                                       (with an EMA: `model` is the average, `train_model`
                                                       the trained weights)
    RUN_DIR/folds/<trial>/epoch_NNN/oof_fold_<k>.npz   after the last epoch: the out-of-fold predictions

then reports the epoch's metrics to the coordinator, which hands the fold-mean to the trial's Tune client.
A fold writes epoch e only after Tune decided to continue after epoch e-1 (`may_write`), and it abandons a
trial that Tune stopped at once (checked about every second inside an epoch), so a stopped trial gets
nothing more. Resuming (a restarted worker group, or a resumed search) starts from this fold's own latest
checkpoint of the trial, so no fold trains an epoch twice.
"""
from __future__ import annotations

import os
import signal
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from distributed import storage
from distributed.checkpoints import (epoch_dir, fold_file, fold_seed, latest_fold_epoch, load_fold_state,
                                     model_state, prune_old_epoch, restore_model, restore_rng, rng_state,
                                     write_fold_state, write_oof)
from distributed.config import EXIT_BAD_INPUT, EXIT_DISK_FULL, apply_hparams, from_dict
from distributed.ema import kept, make_ema
from distributed.files import is_disk_full, low_disk_message
from distributed.model import make_model
from distributed.train import evaluate, make_optimizer, steps_per_epoch, train_one_epoch

FAULT_ENV = "FMNIST_TEST_KILL_FOLD_AT"  # test-only hook: "FOLD:EPOCH:MARKER_FILE" kills that worker once


def fold_split(shared: dict, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """Global training-set indices (train part, held-out part) of one fold."""
    positions, folds = shared["positions"], shared["folds"]
    val = positions[folds[fold]]
    train = positions[np.concatenate([f for i, f in enumerate(folds) if i != fold])]
    return np.sort(train), val


def _maybe_inject_fault(fold: int, epoch: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    f, e, marker = spec.split(":", 2)
    if int(f) == fold and int(e) == epoch and not os.path.exists(marker):
        Path(marker).write_text(f"killed fold {fold} at epoch {epoch}\n")
        os.kill(os.getpid(), signal.SIGKILL)


class Fold:
    """One fold's part of the data on the device, for the whole search (the split does not change)."""

    def __init__(self, shared: dict, fold: int, device: torch.device):
        self.fold, self.device = fold, device
        self.train_idx, self.val_idx = fold_split(shared, fold)
        x, y = shared["x"], shared["y"]
        self.y_val_np = y[self.val_idx]
        self.x_tr = torch.from_numpy(x[self.train_idx]).to(device)
        self.y_tr = torch.from_numpy(y[self.train_idx]).to(device)
        self.x_val = torch.from_numpy(x[self.val_idx]).to(device)
        self.y_val = torch.from_numpy(self.y_val_np).to(device)


def run_fold(job: dict, fold: Fold, cfg, run_root: str, coordinator, node: dict) -> None:
    """Train one trial's fold to the end of its budget, or until Tune stops it."""
    import ray

    trial_id, k, device = job["trial_id"], fold.fold, fold.device
    model_cfg, train_cfg = apply_hparams(cfg, job["hparams"])
    torch.manual_seed(fold_seed(cfg, k))

    # ---- model, optimizer, schedule; resume from this fold's latest checkpoint of the trial
    model = make_model(model_cfg, device)
    steps = steps_per_epoch(len(fold.x_tr), train_cfg.batch_size)
    optimizer, scheduler = make_optimizer(model, train_cfg, steps)
    ema = make_ema(model, train_cfg.ema_halflife, steps)  # None, or the weights that are validated and kept
    start_epoch, history = latest_fold_epoch(run_root, trial_id, k), []
    if start_epoch:
        state = load_fold_state(f"{epoch_dir(run_root, trial_id, start_epoch)}/{fold_file(k)}")
        restore_model(state, model, ema)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = state["history"]
        restore_rng(state, device)
        # Report the epochs already trained again: after a resumed search, Tune has none of them (the
        # coordinator ignores the ones it has). Each names the directory it was written to.
        for past in history:
            ray.get(coordinator.fold_report.remote(trial_id, k, past,
                                                   epoch_dir(run_root, trial_id, past["epoch"])))

    # ---- the epoch loop
    first_step = True
    for epoch in range(start_epoch + 1, train_cfg.epochs + 1):
        _maybe_inject_fault(k, epoch)
        if first_step:
            coordinator.started.remote(trial_id, k, time.time())
            first_step = False
        tr = train_one_epoch(model, optimizer, scheduler, fold.x_tr, fold.y_tr, train_cfg, ema=ema,
                             should_stop=lambda: ray.get(coordinator.is_over.remote(trial_id)))
        if tr.get("stopped"):
            return
        ev = evaluate(kept(model, ema), fold.x_val, fold.y_val, train_cfg.eval_batch_size,
                      tta_flip=train_cfg.tta_flip)
        metrics = {"fold": k, "epoch": epoch, **node, "lr": tr["lr"],
                   "seconds": tr["seconds"] + ev["seconds"],
                   "train_loss": tr["loss"], "train_acc": tr["acc"], "train_f1": tr["f1"],
                   "val_loss": ev["loss"], "val_acc": ev["acc"], "val_f1": ev["f1"]}
        # ---- Tune's decision after the previous epoch (it came while this one trained): stop means nothing
        # of this epoch may be written
        if not ray.get(coordinator.may_write.remote(trial_id, epoch)):
            return
        history.append(metrics)
        out = epoch_dir(run_root, trial_id, epoch)
        write_fold_state(out, k, {**model_state(model, ema), "optimizer": optimizer.state_dict(),
                                  "scheduler": scheduler.state_dict(), "epoch": epoch, "fold": k,
                                  **rng_state(device), "model_config": model_cfg.__dict__,
                                  "train_config": train_cfg.__dict__, "metrics": metrics, "history": history})
        if epoch == train_cfg.epochs:
            write_oof(out, k, fold.val_idx, fold.y_val_np, ev["probs"].float().cpu().numpy())
        prune_old_epoch(run_root, trial_id, k, epoch)
        ray.get(coordinator.fold_report.remote(trial_id, k, metrics, out))


def fold_worker(loop_config: dict) -> None:
    """A slot's worker: set up once, then run whatever trial the coordinator hands this slot, until shutdown."""
    import ray
    import ray.train
    import ray.train.torch

    fold = ray.train.get_context().get_world_rank()
    coordinator, slot = loop_config["coordinator"], loop_config["slot"]
    run_root = loop_config["run_root"]
    # recorded per fold: shows how trials spread over a cluster (ids tell apart nodes that share an IP)
    node = {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
            "pid": os.getpid()}  # the same K processes serve every trial of a slot (tests check it)
    if not storage.run_dir_visible(run_root):  # a node the autoscaler added after the driver's storage check
        ray.get(coordinator.stop_search.remote(storage.blind_node_problem(run_root, node, slot, fold),
                                               EXIT_BAD_INPUT))
        return  # training here would write checkpoints the driver never sees
    cfg = from_dict(loop_config["experiment"])
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(cfg.train.torch_threads)  # the K folds already share the cores
    else:  # cuDNN picks the fastest convolution algorithm per shape once; a fold sees only two or three shapes
        torch.backends.cudnn.benchmark = True

    # ---- data: zero-copy from the object store, this fold's part copied once onto the device
    data = Fold(ray.get(loop_config["data_ref"]), fold, device)

    left = None
    while True:
        job = ray.get(coordinator.get_job.remote(slot, fold, left))
        if job is None:  # the search is over
            return
        try:
            run_fold(job, data, cfg, run_root, coordinator, node)
        except Exception as e:  # the trial's own failure (say a bad value): the trial errors, the slot goes on
            if is_disk_full(e):  # not the trial's fault: the search stops, the trial resumes later
                ray.get(coordinator.stop_search.remote(
                    f"{low_disk_message(run_root, cfg.resources.min_free_mb)} "
                    f"(a fold checkpoint could not be written: {e})", EXIT_DISK_FULL))
            else:
                ray.get(coordinator.fold_error.remote(job["trial_id"], fold,
                                                      f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
            if device.type == "cuda" and isinstance(e, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
        left = job["trial_id"]
