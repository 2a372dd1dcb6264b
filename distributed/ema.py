"""Weight averaging of a fold model: an exponential moving average (EMA) of its weights and BN statistics.

With `TrainConfig.ema_halflife` > 0 (in epochs) a fold keeps, beside the model it trains, a copy whose every
float tensor (weights, biases, BN running means and variances) follows the trained one with

    ema <- ema + (1 - decay_t) * (model - ema)      after every optimizer step,

decay_t = min(decay, (1 + t) / (10 + t)), where decay halves a step's weight in ema_halflife epochs of steps
and the second term keeps the first few hundred steps from dragging the random initialisation along (the
TensorFlow / timm warm-up). The averaged copy is the model that is validated, ranked by the search,
checkpointed as the fold's `model`, ensembled by the report and exported; the trained weights travel in the
checkpoint as `train_model` only so that a resumed fold goes on where it stopped.

The update is torch's own EMA step (torch.optim.swa_utils.get_ema_multi_avg_fn: one fused lerp over all
tensors); the tensor lists are built once, as the optimizer and BN update their tensors in place. It never
reads a value back from the device, so a GPU step is not synchronised by it.
"""
from __future__ import annotations

import copy

import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn


def decay_per_step(halflife_epochs: float, steps_per_epoch: int) -> float:
    """The per-step decay whose weight halves in `halflife_epochs` epochs of `steps_per_epoch` steps."""
    return 0.5 ** (1.0 / max(halflife_epochs * steps_per_epoch, 1e-9))


class WeightEMA:
    """The moving average of `model` (its `module` is an eval-mode copy); update() after each optimizer step."""

    def __init__(self, model: torch.nn.Module, halflife_epochs: float, steps_per_epoch: int):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay_per_step(halflife_epochs, steps_per_epoch)
        self.updates = 0
        pairs = list(zip(self._tensors(self.module), self._tensors(model), strict=True))
        self._float = ([e for e, m in pairs if e.is_floating_point()], [m for e, m in pairs if e.is_floating_point()])
        # BN's num_batches_tracked: unused by BN with a momentum (ours), so copied only into a state_dict, not
        # by one small kernel per BN layer per step
        self._other = [(e, m) for e, m in pairs if not e.is_floating_point()]

    @staticmethod
    def _tensors(model: torch.nn.Module) -> list[torch.Tensor]:
        return [t.detach() for t in (*model.parameters(), *model.buffers())]

    def decay_now(self) -> float:
        """The decay of the next update (the warm-up's, early on)."""
        t = self.updates + 1
        return min(self.decay, (1 + t) / (10 + t))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average one step towards the trained model's current tensors."""
        get_ema_multi_avg_fn(self.decay_now())(*self._float, None)
        self.updates += 1

    @torch.no_grad()
    def state_dict(self) -> dict:
        for e, m in self._other:
            e.copy_(m)
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])  # in place: the tensor lists stay valid
        self.updates = int(state["updates"])


def kept(model: torch.nn.Module, ema: WeightEMA | None) -> torch.nn.Module:
    """The fold's model, the one validated, checkpointed as `model` and ensembled: the average when there is one."""
    return ema.module if ema is not None else model


def make_ema(model: torch.nn.Module, halflife_epochs: float, steps_per_epoch: int) -> WeightEMA | None:
    """The model's WeightEMA, or None when the recipe has none (halflife 0)."""
    return WeightEMA(model, halflife_epochs, steps_per_epoch) if halflife_epochs > 0 else None
