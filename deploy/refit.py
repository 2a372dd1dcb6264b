"""`export.py --refit`: the trial's configuration trained once more, on all of the run's training images.

scikit-learn's refit=True: the K fold models each saw (K-1)/K of the images; this one model sees them all,
with the same epoch budget, optimizer and schedule, augmentations and seed scheme as a fold worker. The
training itself is the engine's (distributed.refit: one Ray Train worker, on a GPU when there is one); this
module picks the plan's images and configuration and returns the model on the CPU.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

Log = Callable[[str], None]


def refit(plan, log: Log = print, use_gpu: bool | None = None):
    """Train the plan's configuration on all its run's training images; returns (model on CPU, info)."""
    from distributed.checkpoints import fold_seed
    from distributed.config import ModelConfig
    from distributed.model import make_model
    from distributed.refit import train_on_all

    data = plan.data
    x, y = data.dataset.train_x[data.positions], data.dataset.train_y[data.positions]
    use_gpu = torch.cuda.is_available() if use_gpu is None else use_gpu
    # seeded as one more fold: fold K of K (the fold workers are 0..K-1)
    weights, device, trained_s = train_on_all(plan.model_config, plan.train_cfg.__dict__, x, y,
                                              fold_seed(plan.run.config, plan.run.folds), use_gpu, log)
    t1 = time.perf_counter()
    model = make_model(ModelConfig(**plan.model_config), "cpu")
    model.load_state_dict(weights)
    seconds = trained_s + time.perf_counter() - t1
    log(f"refit: done in {seconds:.0f} s")
    return model.eval(), {"images": int(len(x)), "epochs": plan.train_cfg.epochs,
                          "seconds": round(seconds, 1), "device": device}
