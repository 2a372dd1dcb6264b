"""The fold loop: what one Ray Train worker runs. World rank == fold index; there is no DDP.

Each of the K workers of a trial trains its own model on K-1 folds and evaluates on the held-out fold,
every epoch. All K report each epoch (ray.train.report is a barrier); `FoldMeanReport` (distributed.tuner)
turns the K dicts into fold-mean / fold-std / per-fold metrics for Tune, so ASHA prunes on
cross-validated numbers. The K per-fold checkpoint files are merged by Ray Train into one checkpoint
directory per epoch: fold_<k>.pt (weights, optimizer, schedule) and, after the last epoch,
oof_fold_<k>.npz (the out-of-fold predictions).
"""
from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

import numpy as np
import torch

from distributed.config import apply_hparams, from_dict
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


def fold_worker(loop_config: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    fold = ctx.get_world_rank()
    # recorded per fold: shows how trials spread over a cluster (ids tell apart nodes that share an IP)
    node = {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address()}
    cfg = from_dict(loop_config["experiment"])
    model_cfg, train_cfg = apply_hparams(cfg, loop_config["hparams"])
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(train_cfg.torch_threads)  # the K folds already share the cores
    torch.manual_seed(cfg.cv.fold_seed * 1000 + fold)

    # ---- data: zero-copy from the object store, this fold's part copied once onto the device
    shared = ray.get(loop_config["data_ref"])
    train_idx, val_idx = fold_split(shared, fold)
    x, y = shared["x"], shared["y"]
    x_tr = torch.from_numpy(x[train_idx]).to(device)
    y_tr = torch.from_numpy(y[train_idx]).to(device)
    x_val = torch.from_numpy(x[val_idx]).to(device)
    y_val = torch.from_numpy(y[val_idx]).to(device)

    # ---- model, optimizer, schedule; resume from this fold's file in the latest checkpoint
    model = make_model(model_cfg, device)
    optimizer, scheduler = make_optimizer(model, train_cfg, steps_per_epoch(len(x_tr), train_cfg.batch_size))
    start_epoch, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / f"fold_{fold}.pt", map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = state["epoch"], state["history"]
        torch.set_rng_state(state["rng"])
    if loop_config.get("replay_history"):
        # Tune restarted this trial (a resumed search) and kept none of its results: report the epochs
        # already trained again, from the checkpoint, so Tune, ASHA and the tables see the whole curve.
        # The last one names the restored checkpoint, which holds this fold's model and OOF predictions.
        for past in history[:-1]:
            ray.train.report(past)
        if history:
            ray.train.report({**history[-1], "restored_checkpoint": checkpoint.path})

    # ---- the epoch loop
    for epoch in range(start_epoch + 1, train_cfg.epochs + 1):
        _maybe_inject_fault(fold, epoch)
        tr = train_one_epoch(model, optimizer, scheduler, x_tr, y_tr, train_cfg)
        ev = evaluate(model, x_val, y_val, train_cfg.eval_batch_size, tta_flip=train_cfg.tta_flip)
        metrics = {"fold": fold, "epoch": epoch, **node, "lr": tr["lr"],
                   "seconds": tr["seconds"] + ev["seconds"],
                   "train_loss": tr["loss"], "train_acc": tr["acc"], "train_f1": tr["f1"],
                   "val_loss": ev["loss"], "val_acc": ev["acc"], "val_f1": ev["f1"]}
        history.append(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "epoch": epoch, "fold": fold,
                        "rng": torch.get_rng_state(), "model_config": model_cfg.__dict__,
                        "train_config": train_cfg.__dict__, "metrics": metrics, "history": history},
                       Path(tmp) / f"fold_{fold}.pt")
            if epoch == train_cfg.epochs:
                probs = ev["probs"].float().cpu().numpy()
                np.savez(Path(tmp) / f"oof_fold_{fold}.npz", index=val_idx, fold=np.full(len(val_idx), fold),
                         true=y[val_idx], pred=probs.argmax(1), probs=probs)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"epoch_{epoch:03d}")
