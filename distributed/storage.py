"""Is the run directory's storage shared by every node of the Ray cluster?

Fold workers on every node write checkpoints into RUN_DIR/folds and the driver reads them back, so a
multi-node search needs a --storage-path that all nodes see (NFS, EFS). A node-local path would "work"
until the report or a resume found half the checkpoints missing: refuse it up front.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

from distributed.config import ConfigError


def storage_problem(path: str, visible: dict[str, bool]) -> str | None:
    """The error message for a probe result {node id: saw the probe file}, or None when every node saw it."""
    blind = sorted(node for node, seen in visible.items() if not seen)
    if not blind:
        return None
    return (f"--storage-path {path}: not shared by all {len(visible)} nodes of the Ray cluster "
            f"(not visible on node(s) {', '.join(n[:12] for n in blind)}); a multi-node search needs a "
            f"directory every node mounts (NFS/EFS, see cluster.yaml)")


def _probe(path: str) -> bool:
    return os.path.exists(path)


def check_shared_storage(storage_path: str) -> int:
    """Write a probe file under storage_path and look for it from every alive node. Returns the node count."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    if len(nodes) < 2:
        return len(nodes)
    root = Path(storage_path).resolve()
    root.mkdir(parents=True, exist_ok=True)
    probe = root / f".storage-probe-{uuid.uuid4().hex}"
    probe.write_text("probe\n")
    try:
        remote = ray.remote(num_cpus=0)(_probe)
        refs = {n: remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(str(probe))
                for n in nodes}
        visible = {n: ray.get(r, timeout=120) for n, r in refs.items()}
    finally:
        probe.unlink(missing_ok=True)
    problem = storage_problem(storage_path, visible)
    if problem:
        raise ConfigError(problem)
    return len(nodes)
