"""What bench.py's groups share: the machine and versions a figure was measured on, summaries of repeated
timings, the fold loop's images/s, FLOPs per image and the measured matmul peak that MFU divides by.

    import bench_common   # beside bench.py, which puts experiments/ on sys.path
"""
from __future__ import annotations

import math
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from distributed.config import PRESETS, ModelConfig, TrainConfig
from distributed.model import make_model
from distributed.run import cpu_name
from distributed.train import train_one_epoch

SEED_MODEL = ModelConfig(width=32, depth=2, convs_per_block=2, fc_width=512)  # the seed's CNN, 1,677,482 params
QUICK_MODEL = PRESETS["quick"].model


def machine() -> dict:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "platform": platform.platform()}


def versions() -> dict:
    import torchvision

    from distributed.run import versions as engine_versions  # ray, torch, optuna: as summary.json records them
    return {"python": platform.python_version(), **engine_versions(), "torchvision": torchvision.__version__,
            "numpy": np.__version__, "cuda": torch.version.cuda}


def load_avg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def priority() -> dict:
    """This process's nice value and Linux autogroup: with autogroups (sched_autogroup_enabled) nice
    orders processes only within one session, so a niced job in another session is not out of the way."""
    try:
        autogroup = Path("/proc/self/autogroup").read_text().strip()
    except OSError:
        autogroup = None
    return {"nice": os.nice(0), "autogroup": autogroup}


def summarise(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def fold_loop(model, opt, sched, x_u8, y, cfg: TrainConfig) -> float:
    """Images/s of the project's fold loop: uint8 on the device, batched augmentation, metrics."""
    r = train_one_epoch(model, opt, sched, x_u8, y, cfg)
    return r["n"] / r["seconds"]


def flops_per_image(model_cfg: ModelConfig, device, train: bool = True, batch: int = 64) -> float:
    """FLOPs per image that FlopCounterMode counts: forward + backward of a training step (train=True),
    or one eval forward."""
    from torch.utils.flop_counter import FlopCounterMode
    model = make_model(model_cfg, device).train(train)
    x = torch.randn(batch, 1, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    with FlopCounterMode(display=False) as counter:
        if train:
            F.cross_entropy(model(x), y).backward()
        else:
            with torch.no_grad():
                model(x)
    return counter.get_total_flops() / batch


def matmul_peak(device, n: int, repeats: int) -> float:
    """FLOP/s of the best of `repeats` n x n matmuls: float32 on CPU, bf16 on GPU (what training uses there)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b  # first call: library initialisation
    best = math.inf
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best
