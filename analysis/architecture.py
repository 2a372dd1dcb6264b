"""The model's architecture as a layer table (layer, type, output shape, parameters): the seed's figure.

Found by running one dummy image through the model with forward hooks on every leaf module, so the
table shows what the code builds, not what a hand-written summary claims.
"""
from __future__ import annotations

import pandas as pd
import torch
import torch.nn as nn


def _describe(m: nn.Module) -> str:
    if isinstance(m, nn.Conv2d):
        return f"Conv2d {m.in_channels}→{m.out_channels}, {m.kernel_size[0]}×{m.kernel_size[1]}"
    if isinstance(m, nn.Linear):
        return f"Linear {m.in_features}→{m.out_features}"
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return f"{type(m).__name__}({m.num_features})"
    if isinstance(m, nn.MaxPool2d):
        return f"MaxPool2d {m.kernel_size}×{m.kernel_size}"
    if isinstance(m, nn.Dropout):
        return f"Dropout(p={m.p:.3g})"
    return type(m).__name__


@torch.no_grad()
def layer_table(model: nn.Module, input_shape=(1, 1, 28, 28)) -> pd.DataFrame:
    """One row per leaf module in execution order: layer (module path), type, output shape, params.

    Parameters are counted per leaf module, so the column sums to the model's total when every
    parameter lives in a leaf (true of the CNN family); the caller can check that.
    """
    rows, hooks = [], []
    for name, module in model.named_modules():
        if next(module.children(), None) is not None:
            continue  # containers: their leaves are listed

        def hook(mod, inputs, output, name=name):
            rows.append({"layer": name, "type": _describe(mod),
                         "output_shape": "×".join(str(s) for s in output.shape[1:]),
                         "params": sum(p.numel() for p in mod.parameters(recurse=False))})
        hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()  # BatchNorm1d refuses a batch of one in training mode
    try:
        device = next(model.parameters()).device
        model(torch.zeros(input_shape, device=device).contiguous(memory_format=torch.channels_last))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return pd.DataFrame(rows, columns=["layer", "type", "output_shape", "params"])
