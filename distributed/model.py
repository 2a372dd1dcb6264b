"""The CNN family (plain torch, no Ray): blocks of [conv3x3 + BN + ReLU] x n + max-pool, then an FC head.

This is the seed's architecture with its sizes as parameters: `width` channels in the first block,
doubled per block; `depth` blocks each halve the resolution (28 -> 14 -> 7 -> 3); a hidden FC layer of
`fc_width` units with dropout before the classifier. The seed-sized model is width=32, depth=2,
convs_per_block=2, fc_width=512: 1,677,482 parameters, the "1.7M" of the seed.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from distributed.config import NUM_CLASSES, ModelConfig


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),  # BN supplies the bias
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class CNN(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        blocks, c_in, side = [], 1, 28
        for b in range(cfg.depth):
            c_out = cfg.width * 2 ** b
            layers = [conv_bn_relu(c_in if i == 0 else c_out, c_out) for i in range(cfg.convs_per_block)]
            blocks.append((f"block{b + 1}", nn.Sequential(*layers, nn.MaxPool2d(2))))
            c_in, side = c_out, side // 2
        self.features = nn.Sequential(OrderedDict(blocks))
        self.embed_head = nn.Sequential(  # flatten -> the penultimate embedding (used by the UMAP)
            nn.Flatten(),
            nn.Linear(c_in * side * side, cfg.fc_width),
            nn.BatchNorm1d(cfg.fc_width),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.fc_width, NUM_CLASSES)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_head(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.embed(x)))  # logits; softmax lives in the loss


def make_model(cfg: ModelConfig, device: torch.device | str = "cpu") -> CNN:
    return CNN(cfg).to(device=device, memory_format=torch.channels_last)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
