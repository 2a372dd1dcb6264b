"""A real autoscaling cluster on this machine: a head with 0 CPUs whose autoscaler (Ray's fake multi-node
provider) adds 2-CPU worker nodes on demand, as cluster.yaml's head and min_workers: 0 GPU workers do on AWS.

Ray 2.60's `ray.cluster_utils.AutoscalingCluster` cannot be used as it is: it reads an example config the
wheel does not ship (autoscaler/_private/fake_multi_node/example.yaml), and its start() and shutdown() run
`ray stop --force`, which kills every Ray process of the machine (this suite's own instance too). The head
here is started the same way (`ray start --head --autoscaling-config=... ` with RAY_FAKE_CLUSTER=1), with
the same config keys, and stopped by killing its own process tree only.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKER_TYPE = "cpu_worker"


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def autoscaler_config(gcs_address: str) -> dict:
    """The fake provider's config: a 0-CPU head, up to 2 worker nodes of 2 CPUs, none at the start."""
    return {
        "cluster_name": "fake_multinode", "max_workers": 2,
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            WORKER_TYPE: {"resources": {"CPU": 2}, "node_config": {}, "min_workers": 0, "max_workers": 2},
        },
        "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 10,
        "docker": {}, "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
    }


class AutoscalingHead:
    """`ray start --head --block` in a session of its own; every node the autoscaler adds is a child of it."""

    def __init__(self, tmp: Path, hide: Path | None = None):
        from ray._private.services import get_node_ip_address
        self.address = f"{get_node_ip_address()}:{free_port()}"
        self.config = tmp / "autoscaler.json"
        self.config.write_text(json.dumps(autoscaler_config(self.address)))
        ray_cli = str(Path(sys.executable).parent / "ray")
        cmd = [ray_cli, "start", "--head", "--block", "--port", self.address.rsplit(":", 1)[1], "--num-cpus", "0",
               "--dashboard-port", str(free_port()), f"--autoscaling-config={self.config}"]
        if hide is not None:  # the head and every node it starts see an empty tmpfs at `hide`: a node-local disk
            cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                   f"mount -t tmpfs tmpfs {hide} && exec {' '.join(cmd)}"]
        # RAY_AUTH_MODE explicit: unset, `ray start --head` turns token auth on whenever ~/.ray/auth_token exists
        # (any local ray.init() writes one), and drivers joining with the mode unset are then refused
        # (test_token_auth.py tests the token flow itself)
        self.env = {**os.environ, "RAY_ADDRESS": self.address, "RAY_FAKE_CLUSTER": "1",
                    "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_AUTH_MODE": "disabled"}
        self.log = open(tmp / "head.log", "w")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def nodes(self) -> list[dict]:
        """The cluster's alive nodes, asked from a fresh driver (this process may hold another Ray instance)."""
        out = subprocess.run([sys.executable, "-c", "import json, ray; ray.init(log_to_driver=False); "
                              "print('NODES=' + json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))"],
                             env=self.env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        # the driver may print the autoscaler's events too ("(autoscaler +3s) Resized to ...")
        line, = (x for x in out.stdout.splitlines() if x.startswith("NODES="))
        return json.loads(line[len("NODES="):])

    def wait_up(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"ray start exited {self.proc.returncode}")
            if "--block" in Path(self.log.name).read_text():  # ray start prints it once the head is up
                return
            time.sleep(1)
        raise AssertionError("the head did not start")

    def stop(self) -> None:
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        from conftest import kill_processes
        kill_processes(procs)
        self.log.close()


@pytest.fixture
def head(tmp_path):
    heads = []

    def start(hide: Path | None = None) -> AutoscalingHead:
        h = AutoscalingHead(tmp_path, hide)
        heads.append(h)
        h.wait_up()
        return h
    yield start
    for h in heads:
        h.stop()


def tune(h: AutoscalingHead, storage: Path, name: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "tune.py"), "--preset", "smoke", "--address", h.address,
         "--storage-path", str(storage), "--name", name, "--cpus-per-worker", "0.5"],
        env=h.env, capture_output=True, text=True, timeout=900, cwd=ROOT)


@pytest.mark.slow  # 274 s on the fresh-clone run; CI's make test was 39 min (`make test-all` runs it)
@pytest.mark.ray
def test_search_on_an_autoscaling_cluster_runs_on_the_nodes_the_autoscaler_adds(head, tmp_path):
    h = head()
    assert len(h.nodes()) == 1  # the head alone: 0 CPUs now
    out = tune(h, tmp_path / "runs", "as")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # planned from what the autoscaler can add (2 nodes x 2 CPUs), not from the 0 CPUs up at the start
    assert "cluster {'CPU': 4.0, 'GPU': 0.0}" in out.stdout
    assert "up to 2 trial(s) at once" in out.stdout
    run = tmp_path / "runs" / "as"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n_trials"] == 4 and summary["best_trial_id"] is not None
    assert summary["devices"]["cluster"] == {"CPU": 4.0, "GPU": 0.0}
    # every fold trained on a node the autoscaler added: not on the head (it has no CPU)
    import pandas as pd
    trials = pd.read_parquet(run / "trials.parquet")
    trained_on = {n for ids in trials["fold_node_ids"] for n in ids.split(",")}
    nodes = h.nodes()
    assert len(nodes) == 3  # the head and the two nodes the slots' worker groups asked for
    head_id = next(n for n in nodes if n not in trained_on)
    assert trained_on <= set(nodes) - {head_id} and len(trained_on) >= 1
    assert len(list((run / "folds").iterdir())) == 4  # each trial's fold checkpoints, on the shared disk


@pytest.mark.slow  # 58 s on the fresh-clone run: make test stays under 30 minutes (`make test-all` runs it)
@pytest.mark.ray
def test_a_node_that_cannot_see_the_run_directory_stops_the_search_in_one_line(head, tmp_path):
    storage = tmp_path / "runs"
    storage.mkdir()
    h = head(hide=storage)  # the head's processes and every node it adds see an empty directory there
    out = tune(h, storage, "blind")
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"tune.py: error: --storage-path {storage}: the run directory {storage}/blind "
                               f"is not visible on node ")
    assert "a multi-node search needs a directory every node mounts" in lines[0]
    run = storage / "blind"
    assert json.loads((run / "config.json").read_text())["name"] == "blind"  # the run directory is intact
    assert not (run / "folds").exists()  # no fold trained anywhere
    assert not (run / ".lock").exists()


def test_a_cluster_search_needs_an_absolute_shared_path_or_a_bucket(tmp_path, capsys):
    from conftest import load_script
    for storage in ([], ["--storage-path", "runs"]):
        with pytest.raises(SystemExit) as e:
            load_script("tune").main(["--preset", "smoke", "--address", "auto", *storage])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1
        assert err[0].startswith(f"tune.py: error: --address auto with --storage-path "
                                 f"{'runs' if storage else 'results'}: a search on a cluster needs a directory "
                                 f"every node mounts, as an absolute path")
