"""What a search can train on, for the choice of its preset: the GPUs this machine shows, probed before Ray
starts (no torch, no Ray), and the CPUs and GPUs a joined Ray cluster can scale to.

A cluster started by `ray up` begins with its head alone (cluster.yaml's GPU workers have min_workers 0), so
`ray.cluster_resources()` shows 0 GPUs until the first trial asks for one. What the autoscaler can add is in
its config, which `ray up` writes on the head node with every node type's resources filled in (on AWS from
the instance type: g5.12xlarge -> 48 CPUs, 4 GPUs). Ray 2.60 has no public API for the autoscaler's node
types: its GCS key for them (`ray._private.state.get_max_resources_from_cluster_config`) is empty unless a
platform reports it, and the autoscaler v1 and v2 statuses list nodes, not node types. The config file is
what Ray Tune's own "is this an autoscaling cluster?" check reads (ray/tune/execution/cluster_info.py).
Which file that is, the head's autoscaler says itself: its monitor process runs with
`--autoscaling-config=PATH` (`ray up`'s BOOTSTRAP_CONFIG, or any file given to `ray start --head`).
"""
from __future__ import annotations

import ctypes
import math
import os
from pathlib import Path

# Where `ray up` puts the autoscaler's config on the head node (the monitor runs with --autoscaling-config=it)
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"


def visible_gpus() -> int:
    """The GPUs a local Ray instance started now would offer: NVML's device count (what Ray's detection
    reads), capped as Ray caps it by CUDA_VISIBLE_DEVICES ("" or "NoDevFiles": none). Milliseconds: the
    driver's library only, no torch import, no CUDA context."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env in ("", "NoDevFiles"):
        return 0
    count = nvml_device_count()
    return count if env is None else min(count, len(env.split(",")))


def nvml_device_count() -> int:
    """NVIDIA GPUs on this machine per NVML; 0 without an NVIDIA driver (no libnvidia-ml) or when NVML fails."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return 0
    if nvml.nvmlInit_v2() != 0:  # 0 is NVML_SUCCESS; e.g. a driver/library version mismatch
        return 0
    try:
        count = ctypes.c_uint(0)
        return int(count.value) if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0 else 0
    finally:
        nvml.nvmlShutdown()


def scalable_resources(config: dict) -> dict[str, float]:
    """The most CPUs and GPUs an autoscaler config reaches: its head node plus every worker node type at its
    max_workers (default: the global max_workers, as the autoscaler fills it in), with at most the global
    max_workers worker nodes in all, the node types richest in that resource first."""
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    cap = config.get("max_workers")
    out = {}
    for resource in ("CPU", "GPU"):
        total = float((types.get(head) or {}).get("resources", {}).get(resource, 0))
        workers = sorted(((float(t.get("resources", {}).get(resource, 0)), t.get("max_workers", cap or 0))
                          for name, t in types.items() if name != head), reverse=True)
        left = math.inf if cap is None else cap
        for per_node, count in workers:
            take = min(count, left)
            total += per_node * take
            left -= take
        out[resource] = total
    return out


def read_autoscaling_config(path: str | Path) -> dict | None:
    """The autoscaler config at path (JSON as `ray up` writes it, or YAML), or None when absent or unreadable."""
    import yaml
    try:
        config = yaml.safe_load(Path(path).expanduser().read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return config if isinstance(config, dict) and config.get("available_node_types") else None


def autoscaling_config_path(gcs_address: str) -> str:
    """The config file the autoscaler of the cluster at gcs_address runs with, read from its monitor
    process's command line (it runs on the head node, as does this driver); BOOTSTRAP_CONFIG if none is found."""
    import psutil
    for proc in psutil.process_iter(["cmdline"]):
        args = proc.info["cmdline"] or []
        if (any(a.endswith("autoscaler/_private/monitor.py") for a in args)
                and f"--gcs-address={gcs_address}" in args):
            for a in args:
                if a.startswith("--autoscaling-config="):
                    return a.partition("=")[2]
    return BOOTSTRAP_CONFIG


def capacity(config_path: str | Path | None = None) -> dict[str, float]:
    """{"CPU", "GPU"} the joined Ray cluster can scale to (Ray already initialised).

    What `ray.cluster_resources()` offers now, or, on the head node of an autoscaling cluster (the driver of
    `ray job submit` runs there), the most its autoscaler config reaches, whichever is larger. Not their sum:
    worker nodes the autoscaler has already started are in both (a node joined by hand outside the
    autoscaler's count is then missed). Off the head, or without the config (a cluster that does not
    autoscale), what is there now.
    """
    import ray
    now = ray.cluster_resources()
    now = {r: float(now.get(r, 0)) for r in ("CPU", "GPU")}
    me = ray.get_runtime_context().get_node_id()
    on_head = any(n["NodeID"] == me and "node:__internal_head__" in n["Resources"]
                  for n in ray.nodes() if n["Alive"])
    if on_head and config_path is None:
        config_path = autoscaling_config_path(ray.get_runtime_context().gcs_address)
    config = read_autoscaling_config(config_path) if on_head else None
    if config is None:
        return now
    most = scalable_resources(config)
    return {r: max(now[r], most[r]) for r in now}
