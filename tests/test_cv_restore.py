"""The fold checkpoint's restore path, without Ray (issue: every resume on a GPU crashed)."""
import io

import numpy as np
import torch

from distributed import storage
from distributed.config import PRESETS, override
from distributed.checkpoints import (epoch_dir, fold_file, fold_seed, latest_fold_epoch, load_fold_state, oof_file,
                                     prune_old_epoch, restore_rng, rng_state, write_fold_state, write_oof)
from distributed.model import make_model
from distributed.train import make_optimizer


def test_a_checkpoint_restores_weights_optimizer_and_rng_whatever_the_map_location(tmp_path):
    cfg = PRESETS["smoke"]
    model = make_model(cfg.model, torch.device("cpu"))
    opt, sched = make_optimizer(model, cfg.train, steps_per_epoch=10)
    model(torch.zeros(2, 1, 28, 28)).sum().backward()
    opt.step()
    sched.step()
    torch.manual_seed(123)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), **rng_state(torch.device("cpu"))}, buf)
    expected = torch.rand(5)  # what the generator gives right after the checkpoint
    path = tmp_path / "folds" / "t" / "epoch_002" / "fold_1.pt"
    storage.write_file(str(path), buf.getvalue())

    # what the old code did on a GPU: map_location=<device> moves the RNG ByteTensor off the CPU too
    moved = torch.load(io.BytesIO(buf.getvalue()), map_location="meta", weights_only=True)
    assert moved["rng"].device.type == "meta"

    state = load_fold_state(str(path))
    assert state["rng"].device.type == "cpu" and state["rng"].dtype == torch.uint8
    assert "cuda_rng" not in state  # a CPU fold saves only the CPU generator
    torch.manual_seed(0)
    restore_rng(state, torch.device("cpu"))
    assert torch.equal(torch.rand(5), expected)
    fresh = make_model(cfg.model, torch.device("cpu"))
    fresh.load_state_dict(state["model"])
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    opt2, _ = make_optimizer(fresh, cfg.train, steps_per_epoch=10)
    opt2.load_state_dict(state["optimizer"])
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"] == 1


def test_latest_fold_epoch_is_per_fold(tmp_path):
    root = str(tmp_path)
    for epoch, folds in ((1, (0, 1)), (2, (0, 1)), (3, (0,))):  # fold 1 died before writing epoch 3
        for k in folds:
            storage.write_file(f"{root}/folds/t/epoch_{epoch:03d}/fold_{k}.pt", b"x")
    assert latest_fold_epoch(root, "t", 0) == 3 and latest_fold_epoch(root, "t", 1) == 2
    assert latest_fold_epoch(root, "t", 2) == 0 and latest_fold_epoch(root, "other", 0) == 0


def test_the_layout_the_seeds_and_the_pruning_of_old_epochs(tmp_path):
    root = str(tmp_path)
    assert (fold_file(3), oof_file(3)) == ("fold_3.pt", "oof_fold_3.npz")
    assert epoch_dir(root, "t", 7) == f"{root}/folds/t/epoch_007"
    cfg = override(PRESETS["smoke"], fold_seed=4)
    assert [fold_seed(cfg, k) for k in range(3)] == [4000, 4001, 4002]  # the refit, one more fold: 4003
    for epoch in (1, 2, 3):
        write_fold_state(epoch_dir(root, "t", epoch), 0, {"epoch": epoch, "fold": 0})
        prune_old_epoch(root, "t", 0, epoch)  # keeps the newest KEEP_EPOCHS (2)
    assert sorted(p.name for p in (tmp_path / "folds" / "t").iterdir()) == ["epoch_002", "epoch_003"]
    assert load_fold_state(f"{epoch_dir(root, 't', 3)}/fold_0.pt") == {"epoch": 3, "fold": 0}
    probs = np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)
    write_oof(epoch_dir(root, "t", 3), 0, np.array([5, 2]), np.array([1, 1]), probs)
    oof = np.load(tmp_path / "folds" / "t" / "epoch_003" / "oof_fold_0.npz")
    assert {k: oof[k].tolist() for k in oof.files} == {"index": [5, 2], "fold": [0, 0], "true": [1, 1],
                                                       "pred": [1, 0], "probs": probs.tolist()}
