"""Scale-out on a real 2-node local Ray cluster (ray.cluster_utils.Cluster): trials spread over nodes, a lost
node's trials are retried, two searches share one Ray instance, and the shared-storage check."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from distributed.storage import storage_problem

ROOT = Path(__file__).resolve().parents[1]


def test_storage_problem_names_the_blind_nodes():
    assert storage_problem("/data", {"a" * 20: True, "b" * 20: True}) is None
    msg = storage_problem("/local", {"a" * 20: True, "b" * 20: False})
    assert msg.startswith("--storage-path /local: not shared by all 2 nodes") and "bbbbbbbbbbbb" in msg
    assert "aaaaaaaaaaaa" not in msg


def tune(storage, name, address, *extra):
    return [sys.executable, str(ROOT / "experiments" / "tune.py"), "--preset", "smoke", "--scheduler", "fifo",
            "--storage-path", str(storage), "--name", name, "--address", address, "--cpus-per-worker", "0.3",
            *extra]


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


@pytest.fixture
def cluster(monkeypatch):
    """A head node with 1 CPU; tests add worker nodes. RAY_ADDRESS points every process the cluster starts
    at it: with several Ray instances on one machine (this suite's own, another search's), Ray Train's
    placement-group cleaner would otherwise attach to the newest one and leave a dead node's groups behind."""
    from ray._private.services import get_node_ip_address
    from ray.cluster_utils import Cluster
    port, dashboard_port = free_port(), free_port()
    monkeypatch.setenv("RAY_ADDRESS", f"{get_node_ip_address()}:{port}")
    # the dashboard stays on: without it Ray Train V2 leaks finished runs' placement groups
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "gcs_server_port": port,
                                                      "dashboard_port": dashboard_port})
    assert c.address == os.environ["RAY_ADDRESS"]
    yield c
    c.shutdown()


def fold_nodes(run_dir):
    nodes = {}
    for f in (run_dir / "tune").glob("*/result.json"):
        for line in f.read_text().splitlines():
            try:
                nodes.setdefault(f.parent.name, set()).update(json.loads(line)["fold_node_ids"].split(","))
            except (json.JSONDecodeError, KeyError):
                pass
    return nodes


@pytest.mark.slow  # 300 s on the fresh-clone run of 2026-12-02: make test was 37.8 min (`make test-all` runs it)
@pytest.mark.faults
@pytest.mark.ray
def test_lost_node_trials_are_retried_and_the_search_completes(cluster, tmp_path):
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    run_dir = tmp_path / "lost"
    # 2,000 images per fold and 6 epochs: a trial outlives the moment its node is removed
    proc = subprocess.Popen(tune(tmp_path, "lost", cluster.address, "--num-samples", "4", "--epochs", "6",
                                 "--limit-train", "3000"),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def early_on_worker() -> set[str]:
            """Trials with folds on the worker node and at most half their epochs done: still running when the
            node's removal (which takes a few seconds) is over."""
            return {t for t, ids in fold_nodes(run_dir).items() if worker.node_id in ids
                    and len((run_dir / "tune" / t / "result.json").read_text().splitlines()) <= 3}

        deadline, victims = time.monotonic() + 400, set()
        while time.monotonic() < deadline and proc.poll() is None and not victims:
            time.sleep(0.2)
            victims = early_on_worker()
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert victims  # trials running on the node when it dies
        cluster.remove_node(worker, allow_graceful=False)  # the node dies with its fold workers
        cluster.add_node(num_cpus=2)  # what the autoscaler would do: a replacement joins
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert len(trials) == 4 and (trials.status == "completed").all() and (trials.epochs_run == 6).all()
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    assert len(epochs) == 4 * 6 * 3 and not epochs.duplicated(["trial_id", "epoch", "fold"]).any()
    # the trials that had folds on the lost node finished elsewhere
    finished_on = dict(zip(trials.trial_id, trials.fold_node_ids))
    for t in victims:
        assert worker.node_id not in finished_on[t]
    spread = set(",".join(trials.fold_node_ids).split(","))
    assert len(spread) >= 2  # the search used more than one node


@pytest.mark.slow  # 99 s on the fresh-clone run; CI's make test was 39 min (`make test-all` runs it)
@pytest.mark.ray
def test_two_searches_share_one_ray_instance(cluster, tmp_path):
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    procs = {name: subprocess.Popen(tune(tmp_path, name, cluster.address, "--num-samples", "2", "--epochs", "1",
                                         "--max-concurrent-trials", "1"),
                                    cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name in ("left", "right")}
    outs = {name: p.communicate(timeout=900)[0] for name, p in procs.items()}
    for name, p in procs.items():
        assert p.returncode == 0, outs[name][-3000:]
    ids = {}
    for name in ("left", "right"):
        run_dir = tmp_path / name
        trials = pd.read_parquet(run_dir / "trials.parquet")
        summary = json.loads((run_dir / "summary.json").read_text())
        assert len(trials) == 2 and summary["name"] == name and summary["n_trials_completed"] == 2
        ids[name] = set(trials.trial_id)
        assert {p.name for p in (run_dir / "folds").iterdir()} == ids[name]  # only its own checkpoints
        assert {p.name for p in (run_dir / "tune").iterdir() if p.is_dir()} == ids[name]  # and its own trial logs
    assert not ids["left"] & ids["right"]
