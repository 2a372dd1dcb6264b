"""A real smoke search with the weight average on (--ema-halflife): what each fold checkpoints, and that the
recorded out-of-fold predictions are those of the averaged model the checkpoint names `model`."""
import json

import numpy as np
import pytest
import torch

from distributed.checkpoints import fold_file, oof_file
from distributed.config import PRESETS, ModelConfig
from distributed.model import make_model
from distributed.train import predict, steps_per_epoch
from conftest import load_script

pytestmark = pytest.mark.ray
SMOKE = PRESETS["smoke"]


def test_a_search_with_an_ema_validates_and_keeps_the_average(ray_local, tmp_path, fmnist):
    code = load_script("tune").main(["--preset", "smoke", "--name", "ema", "--storage-path", str(tmp_path),
                                     "--num-samples", "1", "--space", "", "--ema-halflife", "0.5"])
    assert code == 0
    run_dir = tmp_path / "ema"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert json.loads((run_dir / "config.json").read_text())["train"]["ema_halflife"] == 0.5
    ckpt = run_dir / summary["best_checkpoint"]
    n_train = SMOKE.data.limit_train * (SMOKE.cv.folds - 1) // SMOKE.cv.folds
    for k in range(SMOKE.cv.folds):
        state = torch.load(ckpt / fold_file(k), weights_only=True)
        assert state["epoch"] == SMOKE.train.epochs
        assert state["ema_updates"] == SMOKE.train.epochs * steps_per_epoch(n_train, SMOKE.train.batch_size)
        assert state["train_config"]["ema_halflife"] == 0.5
        differ = [name for name, t in state["model"].items()
                  if t.is_floating_point() and not torch.equal(t, state["train_model"][name])]
        assert len(differ) == len([t for t in state["model"].values() if t.is_floating_point()])
        # the averaged weights are the fold's model: its held-out predictions are the recorded ones
        model = make_model(ModelConfig(**state["model_config"]))
        model.load_state_dict(state["model"])
        with np.load(ckpt / oof_file(k)) as oof:
            probs = predict(model, torch.from_numpy(fmnist.train_x[oof["index"]]))["probs"]
            assert np.allclose(probs.numpy(), oof["probs"], atol=1e-5)
            assert state["metrics"]["val_acc"] == pytest.approx((oof["pred"] == oof["true"]).mean(), abs=1e-6)
