"""Starting or joining Ray for a search, an export's refit, the CLIP script or the tests: init_ray.

A fresh local instance listens on 127.0.0.1 only and knows its own address (distributed.netbind); every Ray
process of the job gets RAY_RUNTIME_ENV's environment.
"""
from __future__ import annotations

import os
import socket

import ray

from distributed.slots import SLOT_ENV


# Passed to ray.init by the CLI and the tests, so every Ray process of the job sees them:
# - Ray Train gives a worker group 60 s to start; five workers importing torch on a busy 2-core machine can
#   take longer, and a timed-out start counts as a failure.
# - Ray Train's controller polls its workers' health every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s). Epoch
#   metrics no longer travel that way (the coordinator relays them), so the poll only bounds how soon a dead
#   fold worker is noticed: 1 s.
# - SLOT_ENV: the Train helpers a slot does not need (distributed.slots).
RAY_RUNTIME_ENV = {"env_vars": {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "600",
                                "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "1", **SLOT_ENV}}


def init_ray(address: str | None, **kwargs) -> None:
    """ray.init: join `address` (Ray's own binding and auth, as the cluster was started), or start a fresh
    local instance that knows its own address and listens on 127.0.0.1 only (distributed.netbind).

    With several Ray instances on one machine, Ray Train's placement-group cleaner finds "its" cluster by
    auto-detection, attaches to the newest one, and a finished trial's placement group is never freed (the
    next trial waits forever). A local instance therefore gets a GCS port picked here, and RAY_ADDRESS names
    it for every process it starts (raylet and workers inherit this process's environment).
    """
    from distributed.netbind import LOOPBACK, keep_loopback, loopback_only
    if address:
        with keep_loopback(address):  # 127.0.0.1:PORT (another local search's instance) stays on loopback
            ray.init(address=address, runtime_env=RAY_RUNTIME_ENV, **kwargs)
        return
    with socket.socket() as sock:
        sock.bind(("", 0))
        port = sock.getsockname()[1]
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    os.environ["RAY_ADDRESS"] = f"{LOOPBACK}:{port}"
    try:
        with loopback_only():
            ray.init(address="local", runtime_env=RAY_RUNTIME_ENV, **kwargs)
    finally:
        del os.environ["RAY_GCS_SERVER_PORT"]  # only for the instance started here
