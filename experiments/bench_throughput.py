"""bench.py's throughput group (figure 1): the fold training loop in images/s, and its MFU.

train_one_epoch (uint8 data + on-device augmentation) against (a) the same model stepping over pre-made
tensors without augmentation and (b) the seed's torchvision Dataset + per-image PIL transforms + DataLoader;
the variants are interleaved and repeated, and min/median are kept. MFU: model FLOPs (FlopCounterMode) x
images/s over the measured peak of a large matmul (float32 on CPU, bf16 on GPU).

    python experiments/bench.py --only throughput
"""
from __future__ import annotations

import statistics
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench_common import QUICK_MODEL, SEED_MODEL, flops_per_image, fold_loop, matmul_peak, summarise, sync
from distributed.augment import to_input
from distributed.config import TrainConfig
from distributed.model import make_model, num_params
from distributed.train import autocast, make_optimizer, steps_per_epoch

KEYS = ("throughput_img_s", "throughput_vs_compute_only", "throughput_vs_seed_pipeline", "mfu")


def compute_only(model, opt, sched, batches, cfg: TrainConfig, device) -> float:
    """Images/s of the same training step over pre-made, pre-normalised batches: the upper bound."""
    model.train()
    sync(device)
    t0 = time.perf_counter()
    for xb, yb in batches:
        plain_step(model, opt, sched, xb, yb, cfg, device)
    sync(device)
    return sum(len(yb) for _, yb in batches) / (time.perf_counter() - t0)


def plain_step(model, opt, sched, xb, yb, cfg: TrainConfig, device) -> None:
    """One optimisation step of a baseline: the loss, backward and update of train_one_epoch, nothing else."""
    with autocast(device):
        loss = F.cross_entropy(model(xb), yb, label_smoothing=cfg.label_smoothing)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()


def write_idx(path: Path, array: np.ndarray) -> None:
    magic = 0x803 if array.ndim == 3 else 0x801
    path.write_bytes(struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes())


def seed_loader(data, n: int, batch_size: int, workers: int, root: Path):
    """The seed's input pipeline: torchvision's FashionMNIST Dataset, per-image PIL transforms, a DataLoader."""
    from torchvision import datasets, transforms
    raw = root / "FashionMNIST" / "raw"  # the layout torchvision's class reads (uncompressed IDX files)
    raw.mkdir(parents=True, exist_ok=True)
    for name, array in (("train-images-idx3-ubyte", data.train_x), ("train-labels-idx1-ubyte", data.train_y),
                        ("t10k-images-idx3-ubyte", data.test_x), ("t10k-labels-idx1-ubyte", data.test_y)):
        write_idx(raw / name, array)
    tf = transforms.Compose([transforms.RandomRotation(10), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    ds = torch.utils.data.Subset(datasets.FashionMNIST(str(root), train=True, transform=tf), range(n))
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True,
                                       num_workers=workers, pin_memory=torch.cuda.is_available())


def seed_pipeline(model, opt, sched, loader, cfg: TrainConfig, device) -> float:
    model.train()
    sync(device)
    t0, n = time.perf_counter(), 0
    for xb, yb in loader:
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        plain_step(model, opt, sched, xb, yb, cfg, device)
        n += len(yb)
    sync(device)
    return n / (time.perf_counter() - t0)


def bench_throughput(data, device, quick: bool, repeats: int, workers: int) -> tuple[dict, dict, dict]:
    n = 512 if quick else 8192
    x_u8 = torch.from_numpy(data.train_x[:n].copy()).to(device)
    y = torch.from_numpy(data.train_y[:n].copy()).to(device)
    peak = matmul_peak(device, 1024 if quick else (8192 if device.type == "cuda" else 2048), 3 if quick else 10)
    details = {"images_per_pass": n, "device": str(device), "seed_pipeline_workers": workers,
               "peak_flop_s": peak, "peak_kind": "bf16 matmul" if device.type == "cuda" else "float32 matmul"}
    with tempfile.TemporaryDirectory() as root:
        for name, model_cfg in (("seed_model", SEED_MODEL), ("quick_model", QUICK_MODEL)):
            cfg = TrainConfig(batch_size=128, epochs=10_000)  # a long schedule: only the step cost matters here
            model = make_model(model_cfg, device)
            opt, sched = make_optimizer(model, cfg, steps_per_epoch(n, cfg.batch_size))
            bs = cfg.batch_size
            batches = [(to_input(x_u8[i:i + bs]), y[i:i + bs]) for i in range(0, n - bs + 1, bs)]
            loader = seed_loader(data, n, bs, workers, Path(root))
            fold_loop(model, opt, sched, x_u8[:4 * bs], y[:4 * bs], cfg)  # warm-up: oneDNN/cuDNN plans, allocator
            runs = {"fold_loop": [], "compute_only": [], "seed_pipeline": []}
            for _ in range(repeats):  # interleaved, so that a noisy neighbour hits all three alike
                runs["fold_loop"].append(fold_loop(model, opt, sched, x_u8, y, cfg))
                runs["compute_only"].append(compute_only(model, opt, sched, batches, cfg, device))
                runs["seed_pipeline"].append(seed_pipeline(model, opt, sched, loader, cfg, device))
            vs_a = [f / c for f, c in zip(runs["fold_loop"], runs["compute_only"])]
            vs_b = [f / s for f, s in zip(runs["fold_loop"], runs["seed_pipeline"])]
            flops = flops_per_image(model_cfg, device)
            details[name] = {
                "config": model_cfg.__dict__, "params": num_params(model), "batch_size": bs,
                "img_s": {k: summarise(v) for k, v in runs.items()},
                "vs_compute_only": summarise(vs_a), "vs_seed_pipeline": summarise(vs_b),
                "train_flops_per_image": flops,
                "achieved_flop_s": flops * statistics.median(runs["fold_loop"]),
                "mfu": flops * statistics.median(runs["fold_loop"]) / peak,
                "mfu_best": flops * max(runs["fold_loop"]) / peak,
            }
    seed = details["seed_model"]
    figures = {"throughput_img_s": seed["img_s"]["fold_loop"]["median"],
               "throughput_vs_compute_only": seed["vs_compute_only"]["median"],
               "throughput_vs_seed_pipeline": seed["vs_seed_pipeline"]["median"],
               "mfu": seed["mfu"]}
    return figures, details, {}
