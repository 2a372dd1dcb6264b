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


def test_augmenting_in_chunks_yields_every_batch_of_the_epoch_in_order(fmnist):
    """The GPU path augments a few thousand images per call: the batches (images and order) are the ones
    per-batch augmentation yields; with augmentation off, to_input of each batch's images (grid_sample's identity, to 1e-5)."""
    from distributed.augment import to_input
    from distributed.train import aug_chunk, augmented_batches
    x = torch.from_numpy(fmnist.train_x[:1000].copy())
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(rotate_deg=0.0, flip_p=0.0, erase_p=0.0)
    steps, bs = steps_per_epoch(1000, 64), 64
    for chunk in (64, 256, 960, 4096):
        got = list(augmented_batches(x, order, bs, steps, cfg, chunk))
        assert [s for s, _ in got] == list(range(15))
        for step, xb in got:
            assert xb.shape == (64, 1, 28, 28)
            torch.testing.assert_close(xb, to_input(x[order[step * 64:(step + 1) * 64]]), rtol=0, atol=1e-5)
    assert aug_chunk(torch.device("cpu"), 256) == 256  # the CPU augments per batch
    assert aug_chunk(torch.device("cuda"), 256) == 16384 and aug_chunk(torch.device("cuda"), 100) == 16300
    assert aug_chunk(torch.device("cuda"), 32768) == 32768


def test_augmenting_in_chunks_draws_the_same_distribution_as_per_batch(fmnist):
    """Each image gets its own angle, flip and erasing whatever the chunk: the flip rate, the erased share and
    the pixel statistics of 4,096 augmented images agree between one call per batch and one per epoch."""
    from distributed.train import augmented_batches
    x = torch.from_numpy(fmnist.train_x[:4096].copy())
    order = torch.arange(4096)
    cfg = TrainConfig(rotate_deg=10.0, flip_p=0.5, erase_p=0.3)
    stats = {}
    for chunk in (64, 4096):
        torch.manual_seed(1)
        xs = torch.cat([xb for _, xb in augmented_batches(x, order, 64, 64, cfg, chunk)])
        erased = ((xs == 0).flatten(1).sum(1) > 0).float().mean()  # background is -1; an erased box is 0
        stats[chunk] = (float(xs.mean()), float(xs.std()), float(erased))
        # flips: without rotation and erasing, each image is either itself or its mirror
        torch.manual_seed(2)
        flip_cfg = TrainConfig(rotate_deg=0.0, flip_p=0.5, erase_p=0.0)
        fl = torch.cat([xb for _, xb in augmented_batches(x, order, 64, 64, flip_cfg, chunk)])
        plain = x.unsqueeze(1).float() / 127.5 - 1
        same = (fl - plain).abs().flatten(1).amax(1) < 1e-5
        mirrored = (fl - plain.flip(-1)).abs().flatten(1).amax(1) < 1e-5
        assert bool((same | mirrored).all())
        assert 0.46 < float((mirrored & ~same).float().sum() / (~(same & mirrored)).float().sum()) < 0.54
    (m1, s1, e1), (m2, s2, e2) = stats[64], stats[4096]
    assert abs(m1 - m2) < 0.01 and abs(s1 - s2) < 0.01
    assert 0.26 < e1 < 0.34 and 0.26 < e2 < 0.34 and abs(e1 - e2) < 0.04


def test_an_epoch_trained_with_chunked_augmentation_sees_every_batch(fmnist):
    x = torch.from_numpy(fmnist.train_x[:640].copy())
    y = torch.from_numpy(fmnist.train_y[:640].copy())
    cfg = TrainConfig(epochs=1, batch_size=64, lr=3e-3)
    for chunk in (64, 640):
        torch.manual_seed(0)
        model = make_model(ModelConfig(width=8, depth=2, convs_per_block=1, fc_width=32))
        opt, sched = make_optimizer(model, cfg, steps_per_epoch(len(x), cfg.batch_size))
        out = train_one_epoch(model, opt, sched, x, y, cfg, chunk=chunk)
        assert out["n"] == 640 and sched.last_epoch == 10 and np.isfinite(out["loss"])
