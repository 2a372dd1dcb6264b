"""What a local Ray instance listens on: loopback only, with Ray's token authentication mode set explicitly.

Ray 2.60 on Linux binds its GCS, raylet and worker gRPC servers to all interfaces and the Prometheus metrics
endpoints (dashboard agent, dashboard, autoscaler monitor) to 0.0.0.0. Asking for 127.0.0.1 does not help:
ray.init(_node_ip_address="127.0.0.1") and `ray start --node-ip-address 127.0.0.1` are turned back into the
machine's address by services.resolve_ip_for_localhost. Ray's one loopback mode is the single-node mode it
uses on macOS and Windows: with ray_constants.ENABLE_RAY_CLUSTER false (env RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0)
services.get_node_ip_address() is 127.0.0.1, every process of the instance gets that node IP, and each then
binds its servers to it (the C++ gRPC servers, the dashboard agent's HTTP and metrics, the runtime-env
agent, and the monitor and dashboard metrics, which listen on loopback when the head's IP is loopback).

Ray reads that variable once, at import: the processes the instance starts read it from the environment
they inherit, and this (already importing) process needs the constant itself. Both are set only while the
instance starts: a `ray start --address` run from this process later (a test's cluster) would refuse to
join anything with it set. A driver that joins such an instance needs the constant too: Ray would turn
127.0.0.1:PORT into the machine's address:PORT (resolve_ip_for_localhost again), where nothing listens.

torch.distributed is kept out of it: a process group would add a socket on all interfaces. Ray Train's own
TorchConfig sets one up in every worker group (ray/train/torch/config.py, _TorchBackend.on_start:
init_process_group with init_method "env://"), and its rank 0 hosts a c10d TCPStore whose server binds "::" or
"0.0.0.0" whatever MASTER_ADDR is (torch/csrc/distributed/c10d/TCPStoreLibUvBackend.cpp,
UvTcpServer::makeWithPort; only a pre-bound socket, which Ray Train cannot pass, avoids it), unauthenticated.
The slots' fold workers never exchange a tensor, so their TorchTrainers set up no process group, locally or on
a cluster (distributed.slots.NoGroupConfig). GLOO_SOCKET_IFNAME still names the loopback interface, so that a
gloo group something else might set up keeps gloo's own sockets there (they bind the address of the host name
otherwise).

Token mode: a local ray.init() with RAY_AUTH_MODE unset turns token authentication on, writes
~/.ray/auth_token if missing, and logs "Token authentication is enabled for this Ray cluster. Set
RAY_AUTH_MODE=disabled to opt out" (authentication_token_setup.enable_token_auth_by_default). On loopback
there is nothing to act on, so the mode is set explicitly here, as that function would set it, and Ray
logs nothing. A RAY_AUTH_MODE the user set is kept.
"""
from __future__ import annotations

import ipaddress
import os
import socket
from contextlib import contextmanager

LOOPBACK = "127.0.0.1"
SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR


def loopback_env() -> dict[str, str]:
    """The environment the processes of a loopback-only instance start with (on top of this one's)."""
    import psutil
    env = {SINGLE_NODE_ENV: "0"}
    lo = [name for name, addrs in psutil.net_if_addrs().items()
          if any(a.family == socket.AF_INET and a.address == LOOPBACK for a in addrs)]
    if lo and "GLOO_SOCKET_IFNAME" not in os.environ:
        env["GLOO_SOCKET_IFNAME"] = lo[0]  # "lo" on Linux, "lo0" on macOS
    return env


def joins_loopback_instance(address: str | None) -> bool:
    """Whether a Ray address ("HOST:PORT", or "auto": RAY_ADDRESS) names a loopback-only instance on this machine:
    a loopback host, and a local raylet whose GCS address is 127.0.0.1:PORT (one started in single-node mode).
    A loopback address of an instance that listens everywhere (`ray start --head`) is left to Ray."""
    from ray._private.services import find_gcs_addresses
    if address in (None, "auto"):
        address = os.environ.get("RAY_ADDRESS")
    if not address or "://" in address:  # ray:// is Ray Client: no GCS address to resolve here
        return False
    host, _, port = address.rpartition(":")
    try:
        if not (host.strip("[]") == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback):
            return False
    except ValueError:
        return False
    find_gcs_addresses.cache_clear()  # Ray caches what it found; instances come and go
    return f"{LOOPBACK}:{port}" in find_gcs_addresses()


@contextmanager
def _single_node(env: dict[str, str]):
    import ray._private.ray_constants as ray_constants
    saved_env, saved_flag = {k: os.environ.get(k) for k in env}, ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(env)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        for k, v in saved_env.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


@contextmanager
def loopback_only():
    """Around a ray.init that starts a local instance: every process it starts listens on 127.0.0.1."""
    from ray._raylet import Config
    if "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"  # stays, as Ray's own default leaves it for this process
        Config.initialize("")  # RayConfig is cached: reread RAY_AUTH_MODE (what Ray does when it sets it)
    with _single_node(loopback_env()):
        yield


@contextmanager
def keep_loopback(address: str | None):
    """Around a ray.init that joins `address`: the address of a loopback-only instance stays loopback."""
    if not joins_loopback_instance(address):
        yield
        return
    with _single_node({SINGLE_NODE_ENV: "0"}):
        yield
