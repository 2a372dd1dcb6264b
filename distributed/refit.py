"""The refit's training: one model on all of a run's training images, as one Ray Train worker.

deploy.refit (`export.py --refit`) calls train_on_all with the trial's configuration; the worker trains with
the same epoch budget, optimizer and schedule, augmentations and seed scheme as a fold worker (distributed.cv,
seeded as fold K would be: checkpoints.fold_seed), as a TorchTrainer with num_workers=1, on a GPU when asked.
Ray runs locally, started here unless it already runs in this process. The worker sends the weights back as a
Ray Train checkpoint (model.pt, a state dict), which is loaded with weights_only=True.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Callable

import numpy as np
import torch

Log = Callable[[str], None]


def train_loop(config: dict) -> None:
    """The Ray Train worker: one model on every image of the run, then a checkpoint with its weights."""
    import ray
    import ray.train
    import ray.train.torch

    from distributed.checkpoints import model_state
    from distributed.config import ModelConfig, TrainConfig
    from distributed.ema import make_ema
    from distributed.model import make_model
    from distributed.train import make_optimizer, steps_per_epoch, train_one_epoch

    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(config["threads"])
    model_cfg, train_cfg = ModelConfig(**config["model"]), TrainConfig(**config["train"])
    data = ray.get(config["data_ref"])
    x, y = torch.tensor(data["x"], device=device), torch.tensor(data["y"], device=device)  # copies: read-only
    torch.manual_seed(config["seed"])
    model = make_model(model_cfg, device)
    steps = steps_per_epoch(len(x), train_cfg.batch_size)
    optimizer, scheduler = make_optimizer(model, train_cfg, steps)
    ema = make_ema(model, train_cfg.ema_halflife, steps)  # as a fold worker: the average is the model kept
    for epoch in range(1, train_cfg.epochs + 1):
        tr = train_one_epoch(model, optimizer, scheduler, x, y, train_cfg, ema=ema)
        config["progress"].put(f"refit: epoch {epoch}/{train_cfg.epochs}: train_loss {tr['loss']:.4f}, "
                               f"train_acc {tr['acc']:.4f}, {tr['seconds']:.1f} s on {device}")
        metrics = {"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"], "seconds": tr["seconds"]}
        if epoch < train_cfg.epochs:
            ray.train.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as d:
            state = {k: v.detach().cpu() for k, v in model_state(model, ema)["model"].items()}
            torch.save(state, os.path.join(d, "model.pt"))
            ray.train.report({**metrics, "device": str(device)},
                             checkpoint=ray.train.Checkpoint.from_directory(d))


def train_on_all(model_config: dict, train_config: dict, x: np.ndarray, y: np.ndarray, seed: int,
                 use_gpu: bool, log: Log = print) -> tuple[dict, str, float]:
    """Train one model of `model_config` / `train_config` (TrainConfig's fields) on all of x, y as one Ray Train
    worker; the epochs are logged as they come. Returns (its state dict on the CPU, the device it trained on,
    the seconds from the first log line until Ray is done)."""
    from concurrent.futures import ThreadPoolExecutor

    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Empty, Queue

    from distributed.checkpoints import load_checkpoint
    from distributed.ray_init import init_ray

    started_ray = not ray.is_initialized()
    if started_ray:
        # the workers' output stays in Ray's logs: the epochs come back through the progress queue
        init_ray(None, num_cpus=os.cpu_count(), num_gpus=1 if use_gpu else 0, log_to_driver=False,
                 configure_logging=False)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    log(f"refit: {train_config['epochs']} epochs on all {len(x)} training images of the run, one Ray Train "
        f"worker on {'a GPU' if use_gpu else f'{cpus} CPU(s)'}")
    t0 = time.perf_counter()
    storage = tempfile.mkdtemp(prefix="refit-")
    progress = Queue(actor_options={"num_cpus": 0})  # the worker's epoch lines, logged here as they come
    try:
        trainer = TorchTrainer(
            train_loop,
            train_loop_config={"model": model_config, "train": train_config, "data_ref": ray.put({"x": x, "y": y}),
                               "seed": seed, "threads": cpus, "progress": progress},
            scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=use_gpu,
                                                   resources_per_worker={"CPU": cpus}),
            torch_config=TorchConfig(backend="gloo"),
            run_config=ray.train.RunConfig(name="refit", storage_path=storage),
        )
        with ThreadPoolExecutor(1) as pool:
            fit = pool.submit(trainer.fit)
            while not (fit.done() and progress.empty()):
                try:
                    log(progress.get(timeout=1.0))
                except Empty:
                    pass
            result = fit.result()
        with result.checkpoint.as_directory() as d:
            weights = load_checkpoint(os.path.join(d, "model.pt"), "the refit's checkpoint")
        device = result.metrics.get("device", "cpu")
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        if started_ray:
            ray.shutdown()
    return weights, device, time.perf_counter() - t0
