"""The CNN family: shapes, parameter counts and finite outputs across widths and depths."""
import pytest
import torch

from distributed.config import ModelConfig
from distributed.model import make_model, num_params


@pytest.mark.parametrize("width,depth,convs", [(8, 1, 1), (16, 2, 1), (32, 2, 2), (16, 3, 2), (64, 3, 1)])
def test_shapes_and_finite(width, depth, convs):
    cfg = ModelConfig(width=width, depth=depth, convs_per_block=convs, fc_width=64, dropout=0.3)
    model = make_model(cfg)
    x = torch.randn(5, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    logits = model(x)
    assert logits.shape == (5, 10) and torch.isfinite(logits).all()
    assert model.embed(x).shape == (5, 64)
    side = 28 // 2 ** depth
    conv = sum((1 if i == 0 and b == 0 else width * 2 ** b if i else width * 2 ** (b - 1)) * width * 2 ** b * 9
               + 2 * width * 2 ** b for b in range(depth) for i in range(convs))
    head = (width * 2 ** (depth - 1) * side * side) * 64 + 64 + 2 * 64 + 64 * 10 + 10
    assert num_params(model) == conv + head


def test_seed_sized_model_parameter_count():
    assert num_params(make_model(ModelConfig(width=32, depth=2, convs_per_block=2, fc_width=512))) == 1_677_482


def test_dropout_active_only_in_training():
    model = make_model(ModelConfig(dropout=0.5))
    x = torch.randn(4, 1, 28, 28)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model(x), model(x))
