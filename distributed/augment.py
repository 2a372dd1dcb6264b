"""Batched augmentation on the training device (plain torch, no Ray).

The seed applied RandomRotation(10) + RandomHorizontalFlip(0.5) per image in PIL on the CPU. Here a
whole uint8 batch is augmented in one shot on whatever device holds it: each sample gets its own angle
and flip folded into one 2x3 affine matrix, and one `grid_sample` applies them all. Then normalise to
[-1, 1] ((x/255 - 0.5) / 0.5, as the seed did), then optional random erasing.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def to_input(x_u8: torch.Tensor) -> torch.Tensor:
    """(B, 28, 28) uint8 -> (B, 1, 28, 28) float in [-1, 1], channels_last. No augmentation."""
    x = x_u8.unsqueeze(1).float().div_(127.5).sub_(1.0)
    return x.contiguous(memory_format=torch.channels_last)


def random_affine(batch: int, rotate_deg: float, flip_p: float, generator: torch.Generator | None,
                  device: torch.device) -> torch.Tensor:
    """(B, 2, 3) matrices for affine_grid: a rotation in [-rotate_deg, rotate_deg], then a flip with flip_p."""
    u = torch.rand(batch, 2, generator=generator, device=device)
    angle = (u[:, 0] * 2 - 1) * math.radians(rotate_deg)
    flip = torch.where(u[:, 1] < flip_p, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(batch, 2, 3, device=device)
    # Output pixel (x, y) samples input at R @ (flip * x, y): flipping the x axis of the sampling grid
    # mirrors the image; the rotation is about the centre.
    theta[:, 0, 0] = cos * flip
    theta[:, 0, 1] = -sin
    theta[:, 1, 0] = sin * flip
    theta[:, 1, 1] = cos
    return theta


def affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """F.affine_grid(theta, (B, C, h, w), align_corners=False) as one (2B x 3) @ (3 x hw) matmul.

    The same sampling points (pixel centres at (2i + 1) / size - 1); F.affine_grid's batched matmul over an
    expanded base grid cost ~20 us per 28x28 image on one CPU core, 85% of augment() (BENCHMARKS.md);
    this costs ~2 us. Returns a (B, h, w, 2) view, which grid_sample takes as it is.
    """
    xs = (torch.arange(w, device=theta.device, dtype=theta.dtype) * 2 + 1) / w - 1
    ys = (torch.arange(h, device=theta.device, dtype=theta.dtype) * 2 + 1) / h - 1
    base = torch.stack((xs.repeat(h), ys.repeat_interleave(w), torch.ones_like(xs).repeat(h)))  # (3, h*w)
    return (theta @ base).view(-1, 2, h, w).permute(0, 2, 3, 1)


def random_erase(x: torch.Tensor, p: float, generator: torch.Generator | None,
                 scale=(0.02, 0.2), ratio=(0.3, 3.3)) -> torch.Tensor:
    """Per sample with probability p, set one random rectangle to 0 (torchvision RandomErasing's default)."""
    if p <= 0:
        return x
    b, _, h, w = x.shape
    dev = x.device
    u = torch.rand(b, 5, generator=generator, device=dev)
    area = (scale[0] + (scale[1] - scale[0]) * u[:, 0]) * h * w
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    aspect = torch.exp(log_r)
    eh = torch.sqrt(area * aspect).round().clamp(1, h)
    ew = torch.sqrt(area / aspect).round().clamp(1, w)
    top = ((h - eh + 1) * u[:, 2]).floor()
    left = ((w - ew + 1) * u[:, 3]).floor()
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    box = ((rows >= top.view(-1, 1, 1)) & (rows < (top + eh).view(-1, 1, 1))
           & (cols >= left.view(-1, 1, 1)) & (cols < (left + ew).view(-1, 1, 1)))
    box &= (u[:, 4] < p).view(-1, 1, 1)
    return x.masked_fill(box.unsqueeze(1), 0.0)


def augment(x_u8: torch.Tensor, rotate_deg: float = 10.0, flip_p: float = 0.5, erase_p: float = 0.0,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, 28, 28) uint8 on any device -> augmented (B, 1, 28, 28) float in [-1, 1], channels_last."""
    x = x_u8.unsqueeze(1).float().div_(255.0)  # [0, 1]; the background is 0, as is grid_sample's padding
    theta = random_affine(x.shape[0], rotate_deg, flip_p, generator, x.device)
    grid = affine_grid(theta, x.shape[2], x.shape[3])
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = x.mul_(2.0).sub_(1.0)
    x = random_erase(x, erase_p, generator)
    return x.contiguous(memory_format=torch.channels_last)
