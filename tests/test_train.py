"""train_one_epoch / evaluate / predict (flip TTA) / macro_f1 on real Fashion-MNIST images, without Ray."""
import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from distributed.config import ModelConfig, TrainConfig
from distributed.model import make_model
from distributed.train import evaluate, macro_f1, make_optimizer, predict, steps_per_epoch, train_one_epoch


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


@pytest.fixture(scope="module")
def tiny_model(fmnist):
    """A small model after one epoch on 1,024 images, so that its predictions depend on the orientation."""
    n = 1024
    torch.manual_seed(0)
    x = torch.from_numpy(fmnist.train_x[:n].copy())
    y = torch.from_numpy(fmnist.train_y[:n].copy())
    cfg = TrainConfig(epochs=1, batch_size=64, lr=3e-3)
    model = make_model(ModelConfig(width=8, depth=2, convs_per_block=1, fc_width=32))
    opt, sched = make_optimizer(model, cfg, steps_per_epoch(n, cfg.batch_size))
    train_one_epoch(model, opt, sched, x, y, cfg)
    return model


def test_flip_tta_averages_the_softmax_of_the_image_and_its_mirror(fmnist, tiny_model):
    model = tiny_model
    x = torch.from_numpy(fmnist.test_x[:300].copy())
    plain = predict(model, x, batch_size=128, embed=True)
    mirrored = predict(model, x.flip(-1), batch_size=128)["probs"]
    tta = predict(model, x, batch_size=128, embed=True, tta_flip=True)
    assert tta["probs"].shape == (300, 10)
    torch.testing.assert_close(tta["probs"], (plain["probs"] + mirrored) / 2, rtol=0, atol=1e-6)
    torch.testing.assert_close(tta["probs"].sum(1), torch.ones(300), rtol=0, atol=1e-5)
    assert (tta["probs"] - plain["probs"]).abs().max() > 1e-3  # the mirror does change the prediction
    torch.testing.assert_close(tta["embeddings"], plain["embeddings"], rtol=0, atol=0)  # embeddings: the image's
    # batch boundaries do not matter: one batch of 300 gives the same numbers as batches of 128
    torch.testing.assert_close(predict(model, x, batch_size=1024, tta_flip=True)["probs"], tta["probs"],
                               rtol=0, atol=1e-6)


def test_flip_tta_of_a_mirror_symmetric_image_is_the_plain_prediction(fmnist, tiny_model):
    model = tiny_model
    half = torch.from_numpy(fmnist.test_x[:50, :, :14].copy())
    x = torch.cat([half, half.flip(-1)], dim=2)  # (50, 28, 28), each row a palindrome
    assert torch.equal(x, x.flip(-1))
    torch.testing.assert_close(predict(model, x, tta_flip=True)["probs"], predict(model, x)["probs"],
                               rtol=0, atol=1e-6)


def test_evaluate_with_flip_tta_scores_the_averaged_probabilities(fmnist, tiny_model):
    model = tiny_model
    x = torch.from_numpy(fmnist.test_x[:500].copy())
    y = torch.from_numpy(fmnist.test_y[:500].copy())
    ev = evaluate(model, x, y, tta_flip=True)
    probs = (predict(model, x)["probs"] + predict(model, x.flip(-1))["probs"]) / 2
    torch.testing.assert_close(ev["probs"], probs, rtol=0, atol=1e-6)
    assert ev["acc"] == pytest.approx((probs.argmax(1) == y).float().mean().item())
    assert ev["loss"] == pytest.approx(-probs[torch.arange(500), y].log().mean().item(), rel=1e-5)
    assert ev["f1"] == pytest.approx(f1_score(y, probs.argmax(1), average="macro", zero_division=0), abs=1e-12)
    assert ev["n"] == 500 and ev["acc"] != evaluate(model, x, y)["acc"]


@pytest.mark.parametrize("tta_flip", [False, True])
def test_the_report_evaluates_a_fold_model_with_its_trials_tta_setting(tmp_path, tta_flip):
    """The fold worker saves train_config beside the weights; analysis.evaluate reads tta_flip from it.
    A checkpoint written before the field existed loads with tta_flip off (how it was validated)."""
    from dataclasses import asdict

    from analysis.evaluate import load_fold_model
    model_cfg = ModelConfig(width=8, depth=2, convs_per_block=1, fc_width=32)
    model = make_model(model_cfg)
    train_config = asdict(TrainConfig(lr=0.004, tta_flip=tta_flip))
    torch.save({"model": model.state_dict(), "fold": 1, "epoch": 3, "model_config": model_cfg.__dict__,
                "train_config": train_config}, tmp_path / "fold_1.pt")
    loaded, cfg = load_fold_model(tmp_path / "fold_1.pt", "cpu", 1, 3)
    assert (cfg.tta_flip, cfg.lr) == (tta_flip, 0.004) and not loaded.training
    x = torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8)
    torch.testing.assert_close(predict(loaded, x)["probs"], predict(model, x)["probs"], rtol=0, atol=0)
    del train_config["tta_flip"]
    torch.save({"model": model.state_dict(), "fold": 1, "epoch": 3, "model_config": model_cfg.__dict__,
                "train_config": train_config}, tmp_path / "old.pt")
    assert load_fold_model(tmp_path / "old.pt", "cpu", 1, 3)[1].tta_flip is False
