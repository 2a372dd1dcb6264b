"""train_one_epoch / evaluate / macro_f1 on real Fashion-MNIST images, without Ray."""
import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from distributed.config import ModelConfig, TrainConfig
from distributed.model import make_model
from distributed.train import evaluate, macro_f1, make_optimizer, steps_per_epoch, train_one_epoch


@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 10, 300)
    pred = np.where(rng.random(300) < 0.6, true, rng.integers(0, 7, 300))  # classes 7..9 sometimes never predicted
    expected = f1_score(true, pred, average="macro", zero_division=0)
    assert macro_f1(torch.from_numpy(pred), torch.from_numpy(true)) == pytest.approx(expected, abs=1e-12)


def test_macro_f1_only_averages_present_labels():
    true, pred = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 0])
    assert macro_f1(pred, true) == pytest.approx(f1_score(true, pred, average="macro"), abs=1e-12)


def test_training_learns_real_images(fmnist):
    torch.manual_seed(0)
    x = torch.from_numpy(fmnist.train_x[:2000].copy())
    y = torch.from_numpy(fmnist.train_y[:2000].copy())
    xv = torch.from_numpy(fmnist.test_x[:1000].copy())
    yv = torch.from_numpy(fmnist.test_y[:1000].copy())
    cfg = TrainConfig(epochs=3, batch_size=64, lr=3e-3, label_smoothing=0.1, erase_p=0.2)
    model = make_model(ModelConfig(width=8, depth=2, convs_per_block=1, fc_width=32))
    opt, sched = make_optimizer(model, cfg, steps_per_epoch(len(x), cfg.batch_size))
    before = evaluate(model, xv, yv)
    history = [train_one_epoch(model, opt, sched, x, y, cfg) for _ in range(cfg.epochs)]
    after = evaluate(model, xv, yv)
    assert set(history[0]) == {"loss", "acc", "f1", "lr", "seconds", "n"}
    assert history[0]["n"] == 2000 // 64 * 64  # the last partial batch is dropped
    assert history[-1]["loss"] < history[0]["loss"]
    assert after["acc"] > 0.65 > before["acc"]
    assert after["probs"].shape == (1000, 10)
    assert torch.allclose(after["probs"].sum(1), torch.ones(1000), atol=1e-5)
    assert after["acc"] == pytest.approx((after["probs"].argmax(1) == yv).float().mean().item())
    assert sched.last_epoch == cfg.epochs * steps_per_epoch(2000, 64)  # one-cycle ran exactly its length
    assert history[-1]["lr"] < cfg.lr / 100  # and annealed to ~0
