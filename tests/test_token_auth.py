"""The README's cluster flow with Ray's token authentication, on a real head started here.

The head plays cluster.yaml's: its token made by `ray get-auth-token --generate` in a home of its own (as the
head's setup does), `ray start --head` with RAY_AUTH_MODE=token, on ports of its own (and on loopback, as every
Ray instance of this suite). The submitting machine is another home without a token: there the README's
token step runs as written, except that `ray rsync-down cluster.yaml HEAD_PATH` (SSH to a cloud head) becomes a
copy from the head's home, and then the README's submit command runs a smoke search to a valid run directory.
The real ~/.ray is never read or written. The head is stopped by killing its own processes only (`ray stop`
would kill every Ray process of the machine): each carries a marker in its environment.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pandas as pd
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # this venv's ray and python, as ~/venv/bin on the nodes
MARKER = "FASHION_MNIST_TUNE_TOKEN_TEST"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def readme_cluster_steps() -> dict[str, str]:
    """The token step and the submit command of the README's "On a Ray cluster" block, as written."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## On a Ray cluster\n.*?```bash\n(.*?)```", text, re.S).group(1)
    lines = [re.sub(r"\s+#.*$", "", line) for line in block.replace("\\\n", " ").splitlines()]
    step = {}
    for line in lines:
        for key, start in (("fetch", "mkdir -p ~/.ray && ray rsync-down "), ("export", "export RAY_AUTH_MODE="),
                           ("submit", "ray job submit ")):
            if line.startswith(start):
                step[key] = " ".join(line.split())
    assert set(step) == {"fetch", "export", "submit"}, step
    return step


class Head:
    """`ray start --head --block` in a session of its own, token mode, its own home, ports and temp dir."""

    def __init__(self, tmp: Path):
        self.home, self.marker = tmp / "head-home", uuid.uuid4().hex
        self.home.mkdir()
        self.temp_dir = tempfile.mkdtemp(prefix="rtok-", dir="/tmp")  # short: Ray's socket paths live under it
        port, self.dashboard_port = free_port(), free_port()
        base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env = {**base, "HOME": str(self.home), "PATH": f"{BIN}:{base['PATH']}", MARKER: self.marker,
                    "RAY_AUTH_MODE": "token", "RAY_ADDRESS": f"127.0.0.1:{port}",
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # loopback only (distributed/netbind.py)
        made = subprocess.run(["ray", "get-auth-token", "--generate"], env=self.env, capture_output=True,
                              text=True, timeout=60)  # cluster.yaml's head_setup_commands
        assert made.returncode == 0, made.stderr
        self.token = self.home / ".ray" / "auth_token"
        assert self.token.read_text() == made.stdout
        self.log = open(tmp / "head.log", "w")
        self.proc = subprocess.Popen(
            ["ray", "start", "--head", "--block", "--port", str(port), "--num-cpus", "2",
             "--dashboard-port", str(self.dashboard_port), "--dashboard-agent-listen-port", str(free_port()),
             "--temp-dir", self.temp_dir],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_up(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, Path(self.log.name).read_text()[-3000:]
            if "--block" in Path(self.log.name).read_text():  # ray start prints it once the head is up
                return
            time.sleep(1)
        raise AssertionError("the head did not start: " + Path(self.log.name).read_text()[-3000:])

    def stop(self) -> None:
        """Kill this head's processes only: those with its marker in their environment (the raylet's workers
        and the job's driver, in a session of its own, included)."""
        mine = []
        for p in psutil.process_iter():
            try:
                if p.environ().get(MARKER) == self.marker:
                    mine.append(p)
            except psutil.Error:
                pass
        from conftest import kill_processes
        kill_processes(mine)
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture
def head(tmp_path):
    h = Head(tmp_path)
    try:
        h.wait_up()
        yield h
    finally:
        h.stop()


@pytest.mark.ray
def test_readme_token_step_then_submit_runs_a_smoke_search(head, tmp_path):
    step = readme_cluster_steps()
    home = tmp_path / "client-home"  # the machine that submits: no token of its own
    home.mkdir()
    client = {k: v for k, v in head.env.items() if not k.startswith("RAY_") and k != MARKER}
    client.update(HOME=str(home))
    dashboard = f"http://127.0.0.1:{head.dashboard_port}"
    submit = step["submit"].replace("http://127.0.0.1:8265", dashboard)
    assert submit.startswith(f"ray job submit --address {dashboard} --working-dir . -- "
                             "python experiments/tune.py --address auto --storage-path /mnt/shared/results")
    storage = tmp_path / "runs"
    submit = submit.replace("--storage-path /mnt/shared/results",
                            f"--storage-path {shlex.quote(str(storage))} --preset smoke --name tok")

    # without the token step: refused, as the issue saw it
    refused = subprocess.run(["bash", "-c", f"ray job submit --address {dashboard} -- echo hi"], env=client,
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "Missing authentication token" in refused.stdout + refused.stderr

    # the README's token step: the head's token fetched (here copied, there rsync-down over SSH), then exported
    src, dst = re.fullmatch(r"mkdir -p ~/\.ray && ray rsync-down cluster\.yaml (\S+) (\S+)", step["fetch"]).groups()
    assert src == "/home/ubuntu/.ray/auth_token"  # where the head's setup made it (ssh_user ubuntu)
    assert dst.removeprefix("~/") in step["export"] and dst.startswith("~/.ray/")  # the file the export names
    fetch = step["fetch"].replace(f"ray rsync-down cluster.yaml {src}", f"cp {shlex.quote(str(head.token))}")
    script = "set -e\n" + "\n".join([fetch, step["export"], submit])
    t0 = time.monotonic()
    out = subprocess.run(["bash", "-c", script], env=client, cwd=ROOT, capture_output=True, text=True, timeout=900)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert (home / ".ray" / "fashion-mnist-tune.token").read_text() == head.token.read_text()
    assert not (home / ".ray" / "auth_token").exists()  # the submitting machine's own token file untouched
    job = re.search(r"Job '(raysubmit_\w+)' succeeded", log)
    assert job, log[-4000:]

    # the job's status, asked with the token; the run directory meets the contract
    status = subprocess.run(["bash", "-c", f"{step['export']}; ray job status --address {dashboard} {job.group(1)}"],
                            env=client, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and f"Job '{job.group(1)}' succeeded" in status.stdout, status.stdout[-2000:]
    run = storage / "tok"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["name"] == "tok" and summary["preset"] == "smoke" and summary["n_trials"] == 4
    assert summary["n_trials_completed"] + summary["n_trials_pruned"] == 4 and summary["n_trials_errored"] == 0
    assert 0.1 < summary["best_cv"]["val_acc_mean"] <= 1.0 and summary["best_trial_id"] is not None
    trials = pd.read_parquet(run / "trials.parquet")
    epochs = pd.read_parquet(run / "epochs.parquet")
    assert len(trials) == 4 and set(epochs.trial_id) == set(trials.trial_id)
    assert (run / "optuna.db").stat().st_size > 0 and (run / "tune").is_dir()
    print(f"submit to finish: {time.monotonic() - t0:.0f} s")
