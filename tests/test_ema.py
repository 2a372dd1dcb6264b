"""The weight average (distributed.ema): its arithmetic, its place in the training step, and its checkpoint."""
import io
from dataclasses import replace

import pytest
import torch

from distributed.checkpoints import model_state, restore_model, restore_rng, rng_state
from distributed.config import PRESETS, ConfigError, override, validate
from distributed.ema import WeightEMA, decay_per_step, make_ema
from distributed.model import make_model
from distributed.train import make_optimizer, steps_per_epoch, train_one_epoch

SMOKE = PRESETS["smoke"]


def tiny_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_the_decay_halves_a_steps_weight_in_the_half_life():
    d = decay_per_step(0.5, 200)  # half an epoch of 200 steps
    assert d ** 100 == pytest.approx(0.5, rel=1e-9)
    assert decay_per_step(2.0, 10) ** 20 == pytest.approx(0.5, rel=1e-9)
    assert make_ema(torch.nn.Linear(2, 2), 0.0, 10) is None  # 0: no average


def test_each_update_is_the_ema_formula_with_the_warm_up():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = WeightEMA(model, halflife_epochs=1.0, steps_per_epoch=10)  # decay 0.5 ** 0.1 = 0.933
    w0 = ema.module[0].weight.clone()
    expected = w0.clone()
    for step in range(1, 41):
        with torch.no_grad():
            model[0].weight.add_(0.1 * step)
            model(torch.randn(8, 3))  # train mode: BN's running stats and num_batches_tracked move
        d = ema.decay_now()
        assert d == pytest.approx(min(0.5 ** 0.1, (1 + step) / (10 + step)))
        ema.update()
        expected = d * expected + (1 - d) * model[0].weight
        assert torch.allclose(ema.module[0].weight, expected, atol=1e-6)
    assert ema.updates == 40
    assert ema.decay_now() == pytest.approx(42 / 51)  # still warming up: (1 + t) / (10 + t) < 0.933
    ema.updates = 200
    assert ema.decay_now() == pytest.approx(0.5 ** 0.1)  # from t = 125 on, the half-life's decay
    # the BN statistics are averaged too, its step count copied; the trained model is untouched
    assert not torch.equal(ema.module[1].running_mean, model[1].running_mean)
    assert int(ema.module[1].num_batches_tracked) == 0  # not copied every step (BN with a momentum ignores it)
    assert int(ema.state_dict()["module"]["1.num_batches_tracked"]) == int(model[1].num_batches_tracked) == 40
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())


def test_train_one_epoch_moves_the_average_once_per_step():
    x, y = tiny_data()
    cfg = replace(SMOKE.train, batch_size=32, epochs=2, ema_halflife=0.5)
    torch.manual_seed(0)
    model = make_model(SMOKE.model)
    steps = steps_per_epoch(len(x), cfg.batch_size)
    opt, sched = make_optimizer(model, cfg, steps)
    ema = make_ema(model, cfg.ema_halflife, steps)
    train_one_epoch(model, opt, sched, x, y, cfg, ema=ema)
    assert ema.updates == steps == 3
    avg, trained = ema.module.state_dict(), model.state_dict()
    moved = [k for k in avg if avg[k].is_floating_point() and not torch.equal(avg[k], trained[k])]
    assert len(moved) == len([k for k in avg if avg[k].is_floating_point()])  # every float tensor lags behind

    # without an average the same seed trains the same weights: the average only watches
    torch.manual_seed(0)
    plain = make_model(SMOKE.model)
    opt2, sched2 = make_optimizer(plain, cfg, steps)
    train_one_epoch(plain, opt2, sched2, x, y, cfg)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), trained.values()))


def test_a_checkpoint_with_an_average_resumes_to_the_same_weights():
    """Two epochs straight == one epoch, model_state through torch.save, restore_model, one more epoch."""
    x, y = tiny_data()
    cfg = replace(SMOKE.train, batch_size=32, epochs=2, ema_halflife=0.5)
    steps = steps_per_epoch(len(x), cfg.batch_size)

    def start():
        torch.manual_seed(0)
        m = make_model(SMOKE.model)
        o, s = make_optimizer(m, cfg, steps)
        return m, o, s, make_ema(m, cfg.ema_halflife, steps)

    model, opt, sched, ema = start()
    for epoch in range(2):
        train_one_epoch(model, opt, sched, x, y, cfg, ema=ema, generator=torch.Generator().manual_seed(epoch))
    straight = model_state(model, ema)

    model, opt, sched, ema = start()
    train_one_epoch(model, opt, sched, x, y, cfg, ema=ema, generator=torch.Generator().manual_seed(0))
    buf = io.BytesIO()
    torch.save({**model_state(model, ema), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                **rng_state(torch.device("cpu"))}, buf)
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    assert set(state) >= {"model", "train_model", "ema_updates"} and state["ema_updates"] == steps
    model, opt, sched, ema = start()
    restore_model(state, model, ema)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    restore_rng(state, torch.device("cpu"))  # augmentation and dropout go on with the same draws
    train_one_epoch(model, opt, sched, x, y, cfg, ema=ema, generator=torch.Generator().manual_seed(1))
    resumed = model_state(model, ema)
    assert resumed["ema_updates"] == straight["ema_updates"] == 2 * steps
    for key in ("model", "train_model"):
        assert all(torch.allclose(a.float(), b.float(), atol=1e-6)
                   for a, b in zip(resumed[key].values(), straight[key].values()))


def test_without_an_average_the_checkpoint_holds_the_model_only():
    model = make_model(SMOKE.model)
    state = model_state(model)
    assert list(state) == ["model"]
    other = make_model(SMOKE.model)
    restore_model(state, other)
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), model.state_dict().values()))


def test_the_half_life_is_validated():
    with pytest.raises(ConfigError, match=r"^--ema-halflife -1.0: must be between 0 \(off\) and --epochs \(3\)$"):
        validate(override(SMOKE, ema_halflife=-1.0))
    with pytest.raises(ConfigError, match=r"--ema-halflife 4.0"):
        validate(override(SMOKE, ema_halflife=4.0))
    validate(override(SMOKE, ema_halflife=0.5))
