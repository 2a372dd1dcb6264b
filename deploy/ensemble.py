"""The exported model (plain torch): uint8 images in, class probabilities out, preprocessing inside.

    Exported(models, tta_flip)   the mean of the K fold models' softmaxes (K = 1: one model), each with
                                 the flip test-time augmentation when the run validated with it

Input: uint8 images (N, 28, 28), 0-255, a light garment on a dark background as in Fashion-MNIST. They are
scaled to [-1, 1] exactly as training did (distributed.augment.to_input), so a user never re-implements the
preprocessing. Output: float32 probabilities (N, 10), rows summing to 1, in CLASS_NAMES order.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from distributed.config import NUM_CLASSES


class Exported(nn.Module):
    def __init__(self, models: list[nn.Module], tta_flip: bool):
        super().__init__()
        self.models = nn.ModuleList(models)
        self.tta_flip = tta_flip
        self.num_classes = NUM_CLASSES  # an attribute: TorchScript cannot read module globals

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.unsqueeze(1).float().div(127.5).sub(1.0)  # as distributed.augment.to_input: [-1, 1]
        total = torch.zeros(images.shape[0], self.num_classes, dtype=torch.float32, device=images.device)
        for model in self.models:
            p = model(x).float().softmax(1)
            if self.tta_flip:
                p = (p + model(x.flip(-1)).float().softmax(1)) / 2
            total = total + p
        return total / len(self.models)


def build(models: list[nn.Module], tta_flip: bool) -> Exported:
    """The exported module on the CPU in eval mode (fp32, contiguous memory: what ONNX and TorchScript store)."""
    cpu = [m.to("cpu", memory_format=torch.contiguous_format).float().eval() for m in models]
    return Exported(cpu, tta_flip).eval()
