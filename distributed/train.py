"""One epoch of training and one evaluation pass (plain torch, no Ray).

Data stays as uint8 tensors on the training device; batches are index slices of it and are augmented
on the device (distributed.augment), so there is no DataLoader and no per-image Python work.

On a GPU the cost of a small model's step is the number of kernels, not their size (DESIGN.md section 6:
~6 ms a step, ~80 of its ~200 kernels augmentation). So there the epoch's images are augmented in a few
large chunks (AUG_CHUNK_CUDA images each) rather than once per batch, and flip TTA runs both views in one
forward pass. The arithmetic is the same per image; on the CPU, where a kernel launch costs nothing,
augmentation stays per batch (it keeps the working set in cache).
"""
from __future__ import annotations

import ctypes
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from distributed.augment import augment, to_input
from distributed.config import NUM_CLASSES, TrainConfig


def _keep_freed_memory() -> None:
    """Keep freed tensor memory mapped in this process, instead of handing it back to the OS every step.

    By default glibc serves each large tensor with its own mmap, or trims the heap once the backward pass
    has freed the activations, so the next step page-faults the same memory in again. For the seed CNN on
    a 2-core VM that was ~13,500 page faults and ~15% of a training step's CPU time (BENCHMARKS.md). Large
    blocks now come from the heap, which is never trimmed: the process keeps its peak memory.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl): leave the allocator alone
        return
    m_trim_threshold, m_mmap_max = -1, -4  # mallopt parameter numbers from glibc's malloc.h
    libc.mallopt(m_trim_threshold, 2 ** 31 - 1)
    libc.mallopt(m_mmap_max, 0)


_keep_freed_memory()  # here, so that every process that trains (driver, fold workers) gets it


def macro_f1(pred: torch.Tensor, true: torch.Tensor, num_classes: int = NUM_CLASSES) -> float:
    """Macro-averaged F1 from a confusion matrix; equals sklearn's f1_score(average='macro', zero_division=0).

    Written in torch so that fold workers need not import scikit-learn (worker start-up time matters).
    """
    cm = torch.bincount(true.long() * num_classes + pred.long(), minlength=num_classes ** 2)
    cm = cm.view(num_classes, num_classes).double()
    tp = cm.diag()
    denom = cm.sum(0) + cm.sum(1)  # (tp + fp) + (tp + fn)
    present = (cm.sum(0) + cm.sum(1)) > 0  # sklearn averages over labels seen in true or pred
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))
    return float(f1[present].mean()) if present.any() else 0.0


def autocast(device: torch.device):
    # bf16 on CUDA (no loss scaling needed); CPU bf16 is slower than fp32 on most CPUs, so fp32 there.
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, steps_per_epoch: int):
    """AdamW with a one-cycle schedule over the full budget (cfg.epochs); stepped once per batch."""
    decay = [p for p in model.parameters() if p.ndim > 1]      # conv / linear weights
    no_decay = [p for p in model.parameters() if p.ndim <= 1]  # BN and biases
    # fused: one kernel for all parameters. On CPU the default is a Python loop over the parameters,
    # 18 ms of a ~260 ms seed-CNN step on one core; fused takes ~2 ms (BENCHMARKS.md). Same update rule.
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, fused=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.25)
    return opt, sched


def steps_per_epoch(n: int, batch_size: int) -> int:
    return n // batch_size if n >= batch_size else 1  # drop the last partial batch (BN needs > 1 sample)


AUG_CHUNK_CUDA = 16384  # images augmented per call on a GPU: ~3 calls per epoch, ~150 MB of float32 at a time


def aug_chunk(device: torch.device, batch_size: int) -> int:
    """Images per augment() call: a few thousand on CUDA (whole batches of them), one batch elsewhere."""
    if device.type != "cuda":
        return batch_size
    return max(batch_size, AUG_CHUNK_CUDA // batch_size * batch_size)


def augmented_batches(x_u8: torch.Tensor, order: torch.Tensor, bs: int, steps: int, cfg: TrainConfig, chunk: int):
    """Yield (step, augmented images) for the epoch's `steps` batches of `bs` indices from `order`.

    Each image is augmented once, independently of the others (its own angle, flip and erasing), so
    augmenting `chunk` images in one call draws from the same distribution as one call per batch; only the
    number of kernel launches changes. chunk is a multiple of bs.
    """
    per_call = max(1, chunk // bs)
    for start in range(0, steps, per_call):
        stop = min(steps, start + per_call)
        xs = augment(x_u8[order[start * bs:stop * bs]], cfg.rotate_deg, cfg.flip_p, cfg.erase_p, generator=None)
        for step in range(start, stop):
            yield step, xs[(step - start) * bs:(step - start + 1) * bs]


def train_one_epoch(model, optimizer, scheduler, x_u8: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
                    generator: torch.Generator | None = None, should_stop=None, check_every_s: float = 1.0,
                    chunk: int | None = None, ema=None) -> dict:
    """x_u8 (N, 28, 28) uint8 and y (N,) on the model's device. Returns loss, acc, f1, lr, seconds, n.

    should_stop: a callable asked about once every `check_every_s` seconds; when it says True the epoch ends
    at once and the dict is {"stopped": True, "seconds": ...} (a slot abandoning a trial that Tune stopped).
    chunk: images augmented per call (default aug_chunk(device, batch size)).
    ema: the model's distributed.ema.WeightEMA, moved after every optimizer step (None: no weight average).
    """
    device = x_u8.device
    model.train()
    t0 = time.perf_counter()
    n = len(x_u8)
    bs = min(cfg.batch_size, n)
    order = torch.randperm(n, generator=generator, device="cpu").to(device)
    total_loss = torch.zeros((), device=device)
    preds, trues = [], []
    next_check = t0 + check_every_s
    steps = steps_per_epoch(n, bs)
    for step, xb in augmented_batches(x_u8, order, bs, steps, cfg, chunk or aug_chunk(device, bs)):
        if should_stop is not None and time.perf_counter() >= next_check:
            if should_stop():
                return {"stopped": True, "seconds": time.perf_counter() - t0}
            next_check = time.perf_counter() + check_every_s
        yb = y[order[step * bs:(step + 1) * bs]]
        with autocast(device):
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update()
        total_loss += loss.detach() * len(yb)
        preds.append(logits.detach().argmax(1))
        trues.append(yb)
    pred, true = torch.cat(preds), torch.cat(trues)
    seen = len(true)
    return {
        "loss": float(total_loss) / seen,
        "acc": float((pred == true).float().mean()),
        "f1": macro_f1(pred.cpu(), true.cpu()),
        "lr": optimizer.param_groups[0]["lr"],
        "seconds": time.perf_counter() - t0,
        "n": seen,
    }


@torch.no_grad()
def predict(model, x_u8: torch.Tensor, batch_size: int = 1024, embed: bool = False, tta_flip: bool = False) -> dict:
    """Softmax probabilities (N, 10) (and penultimate embeddings if embed) for uint8 images, in eval mode.

    tta_flip: the probabilities are the mean of the softmax of each image and of its horizontal mirror
    (training flips images too, so the model has seen both); the embeddings stay those of the image. Both
    views go through the model in one forward pass (in eval mode an image's output does not depend on its
    batch): half the kernel launches of two passes.
    """
    model.eval()
    device = next(model.parameters()).device
    probs, embs = [], []
    for start in range(0, len(x_u8), batch_size):
        xb = to_input(x_u8[start:start + batch_size].to(device))
        b = len(xb)
        if tta_flip:
            xb = torch.cat((xb, xb.flip(-1)))
        with autocast(device):
            e = model.embed(xb)
            logits = model.classifier(e).float()
        p = logits.softmax(1)
        probs.append((p[:b] + p[b:]) / 2 if tta_flip else p)
        if embed:
            embs.append(e[:b].float())
    out = {"probs": torch.cat(probs)}
    if embed:
        out["embeddings"] = torch.cat(embs)
    return out


def evaluate(model, x_u8: torch.Tensor, y: torch.Tensor, batch_size: int = 1024, tta_flip: bool = False) -> dict:
    """Loss, accuracy and macro-F1 on un-augmented images (with tta_flip: the mean of the softmax of each
    image and its mirror, see predict); also returns probs for out-of-fold predictions."""
    t0 = time.perf_counter()
    probs = predict(model, x_u8, batch_size, tta_flip=tta_flip)["probs"]
    y = y.to(probs.device)
    pred = probs.argmax(1)
    loss = F.nll_loss(probs.clamp_min(1e-12).log(), y)
    return {
        "loss": float(loss),
        "acc": float((pred == y).float().mean()),
        "f1": macro_f1(pred.cpu(), y.cpu()),
        "seconds": time.perf_counter() - t0,
        "n": len(y),
        "probs": probs,
    }
