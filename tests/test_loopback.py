"""A local search (no --address) listens on loopback only: every listening socket of every process in the
search's process tree, sampled with psutil while a real smoke search runs, has a loopback local address
(127.0.0.0/8, ::1, or IPv4 loopback mapped into IPv6, ::ffff:127.0.0.1). There is no exception: the slots'
fold workers set up no torch.distributed process group, whose rendezvous store would listen on every
interface (distributed.netbind, distributed.slots.NoGroupConfig).

The search runs as `python experiments/tune.py` in a subprocess of its own: its driver starts the Ray
instance, so the GCS, the raylet, the dashboard and its agent, the runtime-env agent, the autoscaler monitor
and every worker are descendants of that one process (this suite's own instance, if up, is not looked at).
"""
from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1, an IPv6 socket bound to IPv4 loopback
    return (mapped or addr).is_loopback


def role(cmd: list[str]) -> str:
    """What a process of a local Ray instance is, from its command line."""
    exe, line = (Path(cmd[0]).name if cmd else ""), " ".join(cmd)
    if exe in ("gcs_server", "raylet"):
        return exe
    for script, name in (("dashboard/agent.py", "dashboard agent"), ("dashboard/dashboard.py", "dashboard"),
                         ("runtime_env/agent/main.py", "runtime-env agent"), ("log_monitor.py", "log monitor"),
                         ("autoscaler/_private/monitor.py", "autoscaler monitor"), ("experiments/tune.py", "driver")):
        if script in line:
            return name
    if line.startswith("ray::"):  # Ray renames its workers: ray::IDLE, ray::RayTrainWorker, ray::DashboardAgent
        first = line.split()[0]
        return {"ray::DashboardAgent": "dashboard agent", "ray::RuntimeEnvAgent": "runtime-env agent"}.get(
            first, "train worker" if first.startswith("ray::RayTrainWorker") else "worker")
    return exe or "?"


class Sampler:
    """Every LISTEN socket (TCP, v4 and v6) of a process tree."""

    def __init__(self, root_pid: int):
        self.root = psutil.Process(root_pid)
        self.listen: dict[tuple[int, str, int], str] = {}  # (pid, ip, port) -> role
        self.gcs_env: dict[str, str] = {}  # the environment the GCS started with
        self.roles: dict[int, str] = {}  # pid -> role, from its command line when last seen with one

    def sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for p in procs:
            try:
                cmd, conns = p.cmdline(), p.net_connections(kind="inet")
            except psutil.Error:  # gone since children() listed it
                continue
            # An exiting process (and one not yet exec'd) has no command line: it is what it was last seen as,
            # or, never seen, it waits for the next sample
            who = role(cmd) if cmd else self.roles.get(p.pid)
            if who is None:
                continue
            self.roles[p.pid] = who
            if who == "gcs_server" and not self.gcs_env:
                self.gcs_env = p.environ()
            for c in conns:
                if c.status == psutil.CONN_LISTEN:
                    self.listen[(p.pid, c.laddr.ip, c.laddr.port)] = who


def test_loopback_includes_127_0_0_0_8_and_ipv4_mapped_loopback():
    for ip in ("127.0.0.1", "127.0.1.1", "::1", "::ffff:127.0.0.1", "::1%lo"):
        assert is_loopback(ip), ip
    for ip in ("0.0.0.0", "::", "10.0.0.5", "::ffff:10.0.0.5", "::ffff:0.0.0.0", "fe80::1%eth0"):
        assert not is_loopback(ip), ip


def test_only_the_address_of_a_loopback_only_instance_is_kept_on_loopback(monkeypatch):
    """Joining keeps Ray's own address handling, except for 127.0.0.1:PORT of an instance a local run started
    (its raylet's GCS address is 127.0.0.1:PORT): Ray would turn that into this machine's address."""
    from distributed.netbind import joins_loopback_instance, loopback_env
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for address in ("192.0.2.7:6379", "ray://127.0.0.1:10001", "auto", None, "head.example:6379"):
        assert not joins_loopback_instance(address), address
    with socket.socket() as sock:  # a port no Ray instance of this machine uses
        sock.bind(("127.0.0.1", 0))
        assert not joins_loopback_instance(f"127.0.0.1:{sock.getsockname()[1]}")
    env = loopback_env()
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert env.get("GLOO_SOCKET_IFNAME", os.environ.get("GLOO_SOCKET_IFNAME")) in psutil.net_if_addrs()


@pytest.mark.ray
def test_a_local_search_listens_on_loopback_only(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a fresh local instance, as a user's
    log = open(tmp_path / "tune.log", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "experiments" / "tune.py"), "--preset", "smoke",
                             "--name", "loopback", "--storage-path", str(tmp_path)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        s = Sampler(proc.pid)
        deadline = time.monotonic() + 900
        while proc.poll() is None and time.monotonic() < deadline:
            s.sample()
            time.sleep(0.5)
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        log.close()
    out = (tmp_path / "tune.log").read_text()
    assert rc == 0, out[-3000:]
    summary = json.loads((tmp_path / "loopback" / "summary.json").read_text())
    assert summary["n_trials"] == 4 and summary["best_trial_id"] is not None

    # not vacuous: the sampler saw the sockets of every kind of Ray process, and of many workers
    roles = set(s.listen.values())
    for expected in ("driver", "gcs_server", "raylet", "dashboard", "dashboard agent", "runtime-env agent",
                     "worker", "train worker"):
        assert expected in roles, (expected, sorted(roles))
    workers = {pid for (pid, _, _), who in s.listen.items() if who in ("worker", "train worker")}
    assert len(workers) >= 8, workers  # trial actors, the coordinator, a slot's controller and 3 fold workers...
    assert len(s.listen) >= 20, len(s.listen)

    # no exception: a socket on "::", 0.0.0.0 or the machine's address fails the test, whoever holds it
    exposed = sorted(f"{who} (pid {pid}) listens on {ip}:{port}" for (pid, ip, port), who in s.listen.items()
                     if not is_loopback(ip))
    assert exposed == [], "\n".join(exposed)

    # Ray's single-node (loopback) mode, token authentication on, and Ray's line about it not printed (the mode
    # is set explicitly)
    assert s.gcs_env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0" and s.gcs_env["RAY_AUTH_MODE"] == "token"
    assert "Token authentication is enabled" not in out and "Token authentication is disabled" not in out
