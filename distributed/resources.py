"""What a search runs on: the resources Ray offers, and the plan of per-fold-worker shares and slots.

    offered(cfg)               a local instance's resources, or what a cluster can scale to
    plan_resources(cfg, have)  CPU/GPU per fold worker and concurrent trials (= slots); ConfigError when
                               one trial cannot fit. A pure function: tests/test_plan_resources.py needs no Ray.
"""
from __future__ import annotations

import math
import sys

import ray

from distributed.config import ConfigError, ExperimentConfig
from distributed.trial import TRIAL_CPU


def offered(cfg: ExperimentConfig) -> dict:
    """What the search may plan for: a local instance's resources; with --address, what the cluster can scale
    to (an autoscaling cluster starts with its head alone: the slots' pending worker groups are the demand
    that makes the autoscaler add nodes, and Slots.start waits for them)."""
    if cfg.resources.address:
        from distributed.cluster import capacity
        return capacity()
    return ray.cluster_resources()


MIN_GPU_WORKER_CPU = 0.25  # below this a fold worker's data and Python overhead starve its GPU share


def plan_resources(cfg: ExperimentConfig, cluster: dict) -> dict:
    """Per-worker CPU/GPU and concurrent trials (= slots), from the flags and what the Ray cluster offers.

    On GPUs the CPUs per fold worker default to what lets every GPU run a trial (at most 1, at least
    MIN_GPU_WORKER_CPU): a 16-CPU, 4-GPU box runs 4 trials of 5 x 0.79 CPUs, not 3 of 5 x 1. When the CPUs
    allow fewer trials than the GPUs would, `limit` says why.
    """
    r, k = cfg.resources, cfg.cv.folds
    have_gpus, have_cpus = float(cluster.get("GPU", 0)), float(cluster.get("CPU", 0))
    num_gpus = have_gpus if r.num_gpus is None else float(r.num_gpus)
    if num_gpus > have_gpus:
        raise ConfigError(f"--num-gpus {r.num_gpus:g}: the Ray cluster offers {have_gpus:g} GPU(s)")
    limit = None
    if num_gpus > 0:
        gpu = r.gpus_per_worker or 1.0 / k
        by_gpu = int(math.floor(num_gpus / (gpu * k) + 1e-9))
        if by_gpu < 1:
            raise ConfigError(f"--num-gpus {num_gpus:g}: one trial needs {gpu * k:g} GPU(s) "
                              f"({k} folds x {gpu:g}); raise --num-gpus or lower --gpus-per-worker")
        wanted = min(by_gpu, cfg.search.num_samples, r.max_concurrent_trials or sys.maxsize)
        fair = math.floor((have_cpus - wanted * TRIAL_CPU) / (wanted * k) * 100) / 100
        cpu = r.cpus_per_worker or min(1.0, max(fair, MIN_GPU_WORKER_CPU))
    else:
        gpu = 0.0
        # CPU-only: one trial fills the machine (what its trial function holds aside)
        cpu = r.cpus_per_worker or max(math.floor((have_cpus - TRIAL_CPU) / k * 1e4) / 1e4, 0.01)
        by_gpu = wanted = sys.maxsize
    by_cpu = int(math.floor(have_cpus / (cpu * k + TRIAL_CPU) + 1e-9))
    if by_cpu < 1:
        raise ConfigError(f"--cpus-per-worker {cpu:g}: one trial needs {cpu * k:g} CPUs, "
                          f"the Ray cluster offers {have_cpus:g}")
    concurrent = min(by_gpu, by_cpu, cfg.search.num_samples)
    if r.max_concurrent_trials:
        concurrent = min(concurrent, r.max_concurrent_trials)
    if num_gpus > 0 and by_cpu < wanted:
        limit = (f"{by_cpu} trial(s) at once, not {wanted}: {have_cpus:g} CPUs hold {by_cpu} x {k} fold workers "
                 f"at {cpu:g} CPU each; lower --cpus-per-worker or add CPUs to use every GPU")
    return {"cpu": round(cpu, 4), "gpu": round(gpu, 4), "num_gpus": num_gpus, "concurrent": concurrent,
            "cluster": {"CPU": have_cpus, "GPU": have_gpus}, "limit": limit}
