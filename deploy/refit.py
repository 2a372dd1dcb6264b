"""`export.py --refit`: the trial's configuration trained once more, on all of the run's training images.

scikit-learn's refit=True: the K fold models each saw (K-1)/K of the images; this one model sees them all,
with the same epoch budget, optimizer and schedule, augmentations and seed scheme as a fold worker
(distributed.cv), as one Ray Train worker (a TorchTrainer with num_workers=1: on a GPU when there is one).
Ray runs locally, on the machine that runs export.py. The worker sends the weights back as a Ray Train
checkpoint (model.pt, a state dict), which is loaded with weights_only=True.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Callable

import torch

Log = Callable[[str], None]


def train_loop(config: dict) -> None:
    """The Ray Train worker: one model on every image of the run, then a checkpoint with its weights."""
    import ray
    import ray.train
    import ray.train.torch

    from distributed.config import ModelConfig, TrainConfig
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
    optimizer, scheduler = make_optimizer(model, train_cfg, steps_per_epoch(len(x), train_cfg.batch_size))
    for epoch in range(1, train_cfg.epochs + 1):
        tr = train_one_epoch(model, optimizer, scheduler, x, y, train_cfg)
        config["progress"].put(f"refit: epoch {epoch}/{train_cfg.epochs}: train_loss {tr['loss']:.4f}, "
                               f"train_acc {tr['acc']:.4f}, {tr['seconds']:.1f} s on {device}")
        metrics = {"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"], "seconds": tr["seconds"]}
        if epoch < train_cfg.epochs:
            ray.train.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as d:
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            torch.save(state, os.path.join(d, "model.pt"))
            ray.train.report({**metrics, "device": str(device)},
                             checkpoint=ray.train.Checkpoint.from_directory(d))


def refit(plan, log: Log = print, use_gpu: bool | None = None):
    """Train the plan's configuration on all its run's training images; returns (model on CPU, info)."""
    from concurrent.futures import ThreadPoolExecutor

    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Empty, Queue

    from distributed.config import ModelConfig
    from distributed.cv import load_checkpoint
    from distributed.model import make_model
    from distributed.tuner import init_ray

    data = plan.data
    x, y = data.dataset.train_x[data.positions], data.dataset.train_y[data.positions]
    use_gpu = torch.cuda.is_available() if use_gpu is None else use_gpu
    started_ray = not ray.is_initialized()
    if started_ray:
        # the workers' output stays in Ray's logs: the epochs come back through the progress queue
        init_ray(None, num_cpus=os.cpu_count(), num_gpus=1 if use_gpu else 0, log_to_driver=False,
                 configure_logging=False)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    log(f"refit: {plan.train_cfg.epochs} epochs on all {len(x)} training images of the run, one Ray Train "
        f"worker on {'a GPU' if use_gpu else f'{cpus} CPU(s)'}")
    t0 = time.perf_counter()
    storage = tempfile.mkdtemp(prefix="refit-")
    progress = Queue(actor_options={"num_cpus": 0})  # the worker's epoch lines, logged here as they come
    try:
        trainer = TorchTrainer(
            train_loop,
            train_loop_config={"model": plan.model_config, "train": plan.train_cfg.__dict__, "data_ref": ray.put({"x": x, "y": y}),
                               "seed": plan.run.config.cv.fold_seed * 1000 + plan.run.folds, "threads": cpus,
                               "progress": progress},
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
    model = make_model(ModelConfig(**plan.model_config), "cpu")
    model.load_state_dict(weights)
    seconds = time.perf_counter() - t0
    log(f"refit: done in {seconds:.0f} s")
    return model.eval(), {"images": int(len(x)), "epochs": plan.train_cfg.epochs,
                          "seconds": round(seconds, 1), "device": device}
