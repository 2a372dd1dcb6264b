"""Evaluate the best trial's K fold models: out-of-fold predictions, the test-set ensemble, embeddings.

    check_inputs(run)        the best checkpoint's K fold files exist (ConfigError otherwise)
    load_data(run)           the run's data and fold split, checked against the run's fingerprints
    evaluate_best(...)       OOF predictions over every training image (each from the fold model that
                             held it out), each fold model's test probabilities, their mean (the
                             ensemble), and penultimate embeddings of the test set from fold 0's model

The OOF predictions are the ones the fold workers recorded after their last epoch (oof_fold_<k>.npz),
so the report's OOF accuracy is exactly the number the search ranked by; when those files are absent
they are recomputed from the checkpoints. Each fold model is evaluated as its fold worker validated
it: with the trial's `tta_flip` (stored in the fold's checkpoint) its probabilities are the mean over
each image and its horizontal mirror, for the test set as for recomputed OOF predictions. Inference is
batched on the GPU when there is one; with several GPUs the fold models are spread over them and run in
parallel threads (CUDA kernels release the GIL).
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from distributed import data as fm
from distributed.config import ConfigError, ModelConfig, TrainConfig
from distributed.checkpoints import fold_file, load_checkpoint, oof_file
from distributed.folds import make_folds, split_fingerprint
from distributed.model import make_model
from distributed.train import predict

from analysis.run_tables import Run

Log = Callable[[str], None]


@dataclass(frozen=True)
class RunData:
    dataset: fm.FashionMNIST
    positions: np.ndarray      # global indices of the run's training images (all 60k, or a subset)
    folds: list[np.ndarray]    # fold k's held-out part, as positions into `positions`

    def held_out(self, k: int) -> np.ndarray:
        """Global training-set indices that fold k held out (sorted, as the fold workers used them)."""
        return np.sort(self.positions[self.folds[k]])


@dataclass(frozen=True)
class Evaluation:
    oof_index: np.ndarray      # (n_train,) global training-set indices, sorted
    oof_fold: np.ndarray       # which fold held each one out
    oof_true: np.ndarray
    oof_probs: np.ndarray      # (n_train, 10)
    oof_source: str            # "recorded" (the npz files of the run) or "recomputed"
    test_true: np.ndarray      # (10000,)
    test_probs_folds: np.ndarray  # (K, 10000, 10): each fold model's softmax
    embeddings: np.ndarray     # (10000, fc_width), fold 0's penultimate layer
    devices: list[str]         # the device each fold model ran on
    tta_flip: bool = False     # probabilities are the mean over each image and its mirror (the trial's setting)

    @property
    def oof_pred(self) -> np.ndarray:
        return self.oof_probs.argmax(1)

    @property
    def test_probs(self) -> np.ndarray:
        """The K-fold ensemble: the mean of the fold models' probabilities."""
        return self.test_probs_folds.mean(0)

    @property
    def test_pred(self) -> np.ndarray:
        return self.test_probs.argmax(1)


def checkpoint_dir(run: Run) -> Path | None:
    return run.run_dir / run.summary["best_checkpoint"] if run.summary["best_checkpoint"] else None


def check_inputs(run: Run) -> list[Path]:
    """The best trial's K fold checkpoint files; ConfigError naming the first one missing."""
    ckpt = checkpoint_dir(run)
    if ckpt is None or not ckpt.is_dir():
        raise ConfigError(f"best trial {run.best_trial_id}: checkpoint directory {ckpt} is missing; "
                          f"the report needs the best trial's fold models")
    files = [ckpt / fold_file(k) for k in range(run.folds)]
    for f in files:
        if not f.is_file():
            raise ConfigError(f"best trial {run.best_trial_id}: checkpoint file {f} is missing; "
                              f"the report needs all {run.folds} fold models")
    return files


def load_data(run: Run) -> RunData:
    """The run's images and split, rebuilt from config.json and checked against summary.json."""
    dataset = fm.load(run.config.data)
    data_fp = fm.fingerprint(dataset.train_x, dataset.train_y, dataset.test_x, dataset.test_y)
    if data_fp != run.summary["data_fingerprint"]:
        raise ConfigError(f"Fashion-MNIST in {dataset.source} has fingerprint {data_fp}, the run used "
                          f"{run.summary['data_fingerprint']}: point --data-dir at the run's data")
    positions = fm.stratified_subset(dataset.train_y, run.config.data.limit_train, run.config.data.subset_seed)
    folds = make_folds(dataset.train_y[positions], run.config.cv.folds, run.config.cv.fold_seed)
    split_fp = split_fingerprint(folds, positions)
    if split_fp != run.summary["split_fingerprint"]:
        raise ConfigError(f"the fold split rebuilt from {run.run_dir}/config.json has fingerprint {split_fp}, "
                          f"summary.json says {run.summary['split_fingerprint']}: the run directory is inconsistent")
    return RunData(dataset, positions, folds)


def inference_devices(folds: int, num_gpus: int | None, available: int) -> list[str]:
    """The device of each fold model: round-robin over the GPUs used, or the CPU.

    num_gpus None: one GPU if there is any, else the CPU. 0: the CPU. n: the first n GPUs.
    """
    if num_gpus is None:
        num_gpus = min(available, 1)
    if num_gpus < 0:
        raise ConfigError(f"--num-gpus {num_gpus}: must be >= 0")
    if num_gpus > available:
        raise ConfigError(f"--num-gpus {num_gpus}: this machine has {available} CUDA GPU(s)")
    if num_gpus == 0:
        return ["cpu"] * folds
    return [f"cuda:{k % num_gpus}" for k in range(folds)]


def load_fold_model(path: Path, device: str, fold: int, epochs: int) -> tuple[torch.nn.Module, TrainConfig]:
    """The fold's model in eval mode and the TrainConfig its worker trained and validated it with."""
    state = load_checkpoint(path, path, map_location=device)  # weights_only: refuses pickled objects
    if state["fold"] != fold or state["epoch"] != epochs:
        raise ConfigError(f"{path}: holds fold {state['fold']} at epoch {state['epoch']}, "
                          f"expected fold {fold} at epoch {epochs}")
    model = make_model(ModelConfig(**state["model_config"]), device)
    model.load_state_dict(state["model"])
    # A checkpoint written before a TrainConfig field existed gets that field's default (tta_flip: off,
    # which is how such a fold was validated).
    return model.eval(), TrainConfig(**state["train_config"])


def read_recorded_oof(ckpt: Path, data: RunData) -> dict | None:
    """The fold workers' OOF predictions (oof_fold_<k>.npz), checked against the split; None if absent."""
    files = [ckpt / oof_file(k) for k in range(len(data.folds))]
    if not all(f.is_file() for f in files):
        return None
    parts = []
    for k, f in enumerate(files):
        with np.load(f) as z:
            part = {key: z[key] for key in ("index", "fold", "true", "probs")}
        if not np.array_equal(np.sort(part["index"]), data.held_out(k)):
            raise ConfigError(f"{f}: its images are not fold {k}'s held-out part of the run's split")
        if not np.array_equal(part["true"], data.dataset.train_y[part["index"]]):
            raise ConfigError(f"{f}: its labels differ from the dataset's")
        parts.append(part)
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _predict_np(model, x_u8: np.ndarray, batch_size: int, embed: bool = False, tta_flip: bool = False) -> dict:
    # torch.tensor copies: the dataset's arrays are read-only views of the decoded files.
    out = predict(model, torch.tensor(x_u8), batch_size=batch_size, embed=embed, tta_flip=tta_flip)
    return {k: v.float().cpu().numpy() for k, v in out.items()}


def evaluate_best(run: Run, data: RunData, devices: list[str], batch_size: int = 1024,
                  log: Log = lambda msg: None) -> Evaluation:
    """Load the best trial's fold models and produce the OOF, test and embedding arrays."""
    files, ckpt = check_inputs(run), checkpoint_dir(run)
    epochs = int(run.summary["max_epochs"])
    models, train_cfgs = zip(*[load_fold_model(f, devices[k], k, epochs) for k, f in enumerate(files)])
    tta = [c.tta_flip for c in train_cfgs]
    if len(set(tta)) > 1:
        raise ConfigError(f"best trial {run.best_trial_id}: its fold checkpoints disagree on tta_flip ({tta}); "
                          f"the run directory is inconsistent")
    tta_flip = tta[0]
    ds = data.dataset

    def test_pass(k: int) -> dict:
        t0 = time.perf_counter()
        out = _predict_np(models[k], ds.test_x, batch_size, embed=(k == 0), tta_flip=tta_flip)
        log(f"test inference: fold {k + 1}/{len(models)} on {devices[k]}, {len(ds.test_x)} images "
            f"in {time.perf_counter() - t0:.1f} s")
        return out

    # One thread per device: fold models on different GPUs run concurrently; on one device, in turn.
    with ThreadPoolExecutor(max_workers=len(set(devices))) as pool:
        test = list(pool.map(test_pass, range(len(models))))

    oof = read_recorded_oof(ckpt, data)
    source = "recorded"
    if oof is None:
        source, parts = "recomputed", []
        for k, model in enumerate(models):
            idx = data.held_out(k)
            parts.append({"index": idx, "fold": np.full(len(idx), k), "true": ds.train_y[idx],
                          "probs": _predict_np(model, ds.train_x[idx], batch_size, tta_flip=tta_flip)["probs"]})
            log(f"out-of-fold inference: fold {k + 1}/{len(models)}, {len(idx)} images")
        oof = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    order = np.argsort(oof["index"], kind="stable")
    return Evaluation(
        oof_index=oof["index"][order], oof_fold=oof["fold"][order], oof_true=oof["true"][order],
        oof_probs=oof["probs"][order].astype(np.float32), oof_source=source,
        test_true=ds.test_y, test_probs_folds=np.stack([t["probs"] for t in test]),
        embeddings=test[0]["embeddings"], devices=devices, tta_flip=tta_flip)
