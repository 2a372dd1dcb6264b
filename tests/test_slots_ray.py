"""Warm slots on a real local Ray instance: one slot's K fold worker processes serve every trial of a search,
a trial that ASHA stops gets nothing after the epoch it was stopped at, anywhere, and a slot's workers have
no torch.distributed process group (nor its rendezvous store listening on every interface)."""
import json

import optuna
import pandas as pd
import pytest

from distributed.config import PRESETS
from tests.conftest import load_script

pytestmark = pytest.mark.ray
K = PRESETS["smoke"].cv.folds


@pytest.fixture(scope="module")
def six_trials(ray_local, tmp_path_factory):
    storage = tmp_path_factory.mktemp("slots")
    code = load_script("tune").main(["--preset", "smoke", "--name", "six", "--storage-path", str(storage),
                                     "--num-samples", "7", "--max-concurrent-trials", "1", "--epochs", "4",
                                     "--keep-checkpoints", "all"])
    assert code == 0
    run_dir = storage / "six"
    lines = {}
    for f in sorted((run_dir / "tune").glob("*/result.json")):
        lines[f.parent.name] = [json.loads(l) for l in f.read_text().splitlines() if l]
    return run_dir, lines


def test_one_slot_starts_its_fold_workers_once_for_every_trial(six_trials):
    run_dir, lines = six_trials
    assert len(lines) == 7
    pids = {tuple(r["fold_pids"]) for results in lines.values() for r in results}
    assert len(pids) == 1  # every epoch of every trial: the same K processes, in fold order
    (worker_pids,) = pids
    assert len(set(worker_pids)) == K
    summary = json.loads((run_dir / "summary.json").read_text())
    engine = summary["engine"]
    assert engine["slots"] == 1 and engine["search_start_s"] > 0 and engine["restarts"] == {}
    assert sorted(engine["trial_start_latency_s"]) == sorted(lines)


def test_a_stopped_trial_has_no_epoch_after_its_stop(six_trials):
    run_dir, lines = six_trials
    trials = pd.read_parquet(run_dir / "trials.parquet").set_index("trial_id")
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    study = optuna.load_study(study_name="six", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    by_lr = {round(t.params["lr"], 12): t for t in study.trials}
    pruned = trials[trials.status == "pruned"]
    assert len(pruned) >= 2 and (trials.status == "completed").sum() >= 1
    for trial_id, t in trials.iterrows():
        last = int(t.epochs_run)
        assert [r["epoch"] for r in lines[trial_id]] == list(range(1, last + 1))
        assert epochs[epochs.trial_id == trial_id].epoch.max() == last
        assert len(epochs[epochs.trial_id == trial_id]) == last * K
        assert max(by_lr[round(t.config_lr, 12)].intermediate_values) == last
        written = sorted(p.name for p in (run_dir / "folds" / trial_id).iterdir())
        # the newest two epochs are kept per fold; nothing beyond the last one Tune saw
        assert written[-1] == f"epoch_{last:03d}" and len(written) == min(last, 2)
        assert sorted(p.name for p in (run_dir / "folds" / trial_id / written[-1]).glob("fold_*.pt")) == \
            [f"fold_{k}.pt" for k in range(K)]
        assert run_dir / t.checkpoint_path == run_dir / "folds" / trial_id / written[-1]


def _run_probe(config, out):
    """A 2-worker TorchTrainer whose workers write what they see: process group, device, listening sockets."""
    import ray.train
    from ray.train.torch import TorchTrainer

    def probe(loop_config):  # nested: pickled by value (the workers cannot import this test module)
        import json
        import os

        import psutil
        import ray.train
        import ray.train.torch
        import torch.distributed as dist
        ctx = ray.train.get_context()
        listen = sorted(f"{c.laddr.ip} {c.laddr.port}" for c in psutil.Process().net_connections(kind="inet")
                        if c.status == psutil.CONN_LISTEN)
        seen = {"group": dist.is_initialized(), "device": str(ray.train.torch.get_device()),
                "rank": ctx.get_world_rank(), "world": ctx.get_world_size(), "listen": listen}
        with open(os.path.join(loop_config["out"], f"rank_{ctx.get_world_rank()}.json"), "w") as f:
            json.dump(seen, f)

    out.mkdir()
    TorchTrainer(probe, train_loop_config={"out": str(out)}, torch_config=config,
                 scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                 run_config=ray.train.RunConfig(name=out.name, storage_path=str(out.parent / "train"))).fit()
    return [json.loads((out / f"rank_{r}.json").read_text()) for r in range(2)]


def test_a_slots_workers_have_no_process_group_and_listen_on_loopback_only(ray_local, tmp_path):
    from ray.train.torch import TorchConfig

    from distributed.slots import NoGroupConfig
    from tests.test_loopback import is_loopback
    seen = _run_probe(NoGroupConfig(), tmp_path / "nogroup")
    assert [(s["rank"], s["world"], s["group"], s["device"]) for s in seen] == [(0, 2, False, "cpu"),
                                                                              (1, 2, False, "cpu")]
    for s in seen:
        assert s["listen"] and all(is_loopback(a.split()[0]) for a in s["listen"]), s["listen"]
    # not vacuous: the same probe under Ray's own TorchConfig finds the group and rank 0's store on "::"/0.0.0.0
    seen = _run_probe(TorchConfig(backend="gloo"), tmp_path / "gloo")
    assert [s["group"] for s in seen] == [True, True]
    assert [a for a in seen[0]["listen"] if not is_loopback(a.split()[0])], seen[0]["listen"]
