"""Fold checkpoints: where they live, what they hold, how they are read back, and the fold seeds.

Each fold worker (distributed.cv) writes, after every epoch of a trial,

    RUN_ROOT/folds/<trial>/epoch_NNN/fold_<k>.pt        weights, optimizer, schedule, RNG, metrics, history
    RUN_ROOT/folds/<trial>/epoch_NNN/oof_fold_<k>.npz   after the last epoch: the out-of-fold predictions

and keeps the newest KEEP_EPOCHS epochs of each fold (prune_old_epoch). RUN_ROOT is a local directory or a
bucket's URI (distributed.storage). The report (analysis.evaluate), the export (deploy) and a resumed fold
read them back with load_checkpoint: weights only, never a pickled object. fold_seed(cfg, k) seeds fold k;
the export's refit, one model on all the images, is seeded as fold K would be.
"""
from __future__ import annotations

import io
import pickle
import re

import numpy as np
import torch

from distributed import storage
from distributed.config import ConfigError, ExperimentConfig

KEEP_EPOCHS = 2  # fold checkpoints kept per trial and fold (the newest ones; the last epoch is always kept)


def model_state(model: torch.nn.Module, ema=None) -> dict:
    """A fold checkpoint's weights. `model` is always the fold's model, the one validated, ensembled and
    exported: with a weight average (distributed.ema) that is the average, and the trained weights and the
    average's update count ride along (`train_model`, `ema_updates`) for a resumed fold."""
    if ema is None:
        return {"model": model.state_dict()}
    return {"model": ema.state_dict()["module"], "train_model": model.state_dict(), "ema_updates": ema.updates}


def restore_model(state: dict, model: torch.nn.Module, ema=None) -> None:
    """Load model_state's weights back into the trained model (and its average)."""
    if ema is None:
        model.load_state_dict(state["model"])
        return
    model.load_state_dict(state["train_model"])
    ema.load_state_dict({"module": state["model"], "updates": state["ema_updates"]})


def fold_file(k: int) -> str:
    """The name of fold k's checkpoint inside an epoch directory."""
    return f"fold_{k}.pt"


def oof_file(k: int) -> str:
    """The name of fold k's out-of-fold predictions inside the last epoch's directory."""
    return f"oof_fold_{k}.npz"


def fold_seed(cfg: ExperimentConfig, k: int) -> int:
    """torch's seed for fold k of a trial (model init, augmentation, dropout); k = K for the refit."""
    return cfg.cv.fold_seed * 1000 + k


def epoch_dir(run_root: str, trial_id: str, epoch: int) -> str:
    return f"{run_root}/folds/{trial_id}/epoch_{epoch:03d}"


def latest_fold_epoch(run_root: str, trial_id: str, fold: int) -> int:
    """The newest epoch with this fold's checkpoint of the trial (0: none)."""
    epochs = [int(name[len("epoch_"):]) for name in storage.list_dir(f"{run_root}/folds/{trial_id}")
              if name.startswith("epoch_") and name[len("epoch_"):].isdigit()]
    for e in sorted(epochs, reverse=True):
        if fold_file(fold) in storage.list_dir(epoch_dir(run_root, trial_id, e)):
            return e
    return 0


def rng_state(device: torch.device) -> dict:
    """The generators that drive augmentation and dropout: the CPU one, and the device's own on CUDA."""
    state = {"rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict, device: torch.device) -> None:
    # .cpu(): a checkpoint loaded with map_location=<cuda device> moves the saved ByteTensor there too, and
    # torch.set_rng_state accepts only a CPU ByteTensor. Checkpoints written before the CUDA state was saved
    # have only "rng".
    torch.set_rng_state(state["rng"].cpu())
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)


def load_checkpoint(source, name, map_location="cpu") -> dict:
    """torch.load with weights_only=True: tensors, numbers, strings and containers, never arbitrary objects.

    A fold checkpoint holds nothing else, so a file that needs pickle to load was not written by this
    project, and loading it could run code: it is refused (ConfigError, one line naming it).
    """
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        what = next((line.strip() for line in str(e).splitlines() if "Unsupported" in line), "")
        what = re.sub(r"\x1b\[[0-9;]*m", "", what).split(". ")[0]  # "Unsupported global: GLOBAL mod.Cls"
        raise ConfigError(f"{name}: refused: it holds objects that only pickle can load, which could run "
                          f"code; not a checkpoint written by this project{f' ({what})' if what else ''}") from None


def load_fold_state(path: str) -> dict:
    """A fold checkpoint, every tensor on the CPU: load_state_dict copies weights onto the model's device and
    the optimizer casts its state to its parameters' device, while the RNG states must stay CPU ByteTensors
    (with map_location=<cuda device> torch.set_rng_state raised "RNG state must be a torch.ByteTensor")."""
    return load_checkpoint(io.BytesIO(storage.read_file(path)), path)


def write_fold_state(out: str, k: int, state: dict) -> None:
    """Fold k's checkpoint into the epoch directory `out` (a local path or a URI), written whole."""
    buf = io.BytesIO()
    torch.save(state, buf)
    storage.write_file(f"{out}/{fold_file(k)}", buf.getvalue())


def write_oof(out: str, k: int, index: np.ndarray, true: np.ndarray, probs: np.ndarray) -> None:
    """Fold k's out-of-fold predictions (global image index, true label, predicted label, probabilities)."""
    buf = io.BytesIO()
    np.savez(buf, index=index, fold=np.full(len(index), k), true=true, pred=probs.argmax(1), probs=probs)
    storage.write_file(f"{out}/{oof_file(k)}", buf.getvalue())


def prune_old_epoch(run_root: str, trial_id: str, k: int, epoch: int) -> None:
    """After fold k wrote `epoch`: delete its checkpoint of epoch - KEEP_EPOCHS, if there is one."""
    old = epoch - KEEP_EPOCHS
    if old >= 1 and fold_file(k) in storage.list_dir(epoch_dir(run_root, trial_id, old)):
        storage.remove_file(f"{epoch_dir(run_root, trial_id, old)}/{fold_file(k)}")
