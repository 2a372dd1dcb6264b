"""Slots: warm fold-worker groups that outlive a trial.

A search starts one long-lived Ray Train run per concurrent-trial slot, once: a TorchTrainer of K workers
(world rank = fold) whose train loop (distributed.cv.fold_worker) serves trial after trial until the search
ends. Before this, every trial started its own Train run: a controller, helper actors and K workers, each
importing torch, 20-35 s per trial on a 2-core box (BENCHMARKS.md, section 3).

    Slots.start()   coordinator actor + S Train runs (each fit() blocks in a driver thread)
    SlotCallback    Tune's events -> coordinator: trial started, ASHA's decision after each epoch, trial over
    Slots.stop()    coordinator.shutdown -> the workers' loops return -> fit() returns -> threads joined

Fault tolerance stays Ray Train's: a dead fold worker fails its worker group, Train restarts the group
(FailureConfig), and the new workers ask the coordinator which trial they were running and resume it from
their folds' last checkpoints. Each trial still fails after --max-failures restarts (the coordinator counts
them per trial), so a long-lived slot may restart many more times than that in one search.
"""
from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass

import ray
import ray.train
import ray.tune
from ray.train.torch import TorchConfig, TorchTrainer
from ray.train.torch.config import _TorchBackend
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from distributed.config import ExperimentConfig, SearchStopped, to_dict
from distributed.coordinator import Coordinator
from distributed.cv import fold_worker

# What a slot's Train run does not need (set for every Ray process of the job, see ray_init.RAY_RUNTIME_ENV):
# - the preemption watcher: an extra actor polling for spot-instance notices every 5 s;
# - Train's Prometheus metrics callbacks on the controller and every worker.
SLOT_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_METRICS_ENABLED": "0"}


class _NoGroupBackend(_TorchBackend):
    """Ray's torch backend without its process group. The folds never exchange a tensor (fold metrics go
    through the coordinator actor), and the group cost a socket: rank 0's c10d TCPStore, which binds "::" or
    0.0.0.0 whatever MASTER_ADDR says (distributed.netbind). Kept from _TorchBackend: CUDA_VISIBLE_DEVICES
    shared by the workers of a node (share_cuda_visible_devices, applied by Train's accelerator setup before
    on_start), and on_shutdown's emptying of the CUDA cache (it destroys a process group only if one exists).
    ray.train.torch.get_device() reads Ray's GPU ids and CUDA_VISIBLE_DEVICES, not the group, and the
    config's train_func_context still sets each worker's CUDA device."""

    def on_start(self, worker_group, backend_config):
        pass  # Ray's: MASTER_ADDR/PORT, RANK/LOCAL_RANK/WORLD_SIZE (for init_process_group), init_process_group


@dataclass
class NoGroupConfig(TorchConfig):
    """A TorchTrainer's torch_config that sets up no torch.distributed process group, locally or on a
    cluster: no rendezvous store, no gloo or NCCL sockets, no group to tear down when a worker dies."""

    backend: str = "none"  # read only by _TorchBackend.on_start; shown as the run's backend by Ray's state API

    @property
    def backend_cls(self):
        return _NoGroupBackend


class SlotCallback(ray.tune.Callback):
    """Tell the coordinator what Tune decided: the slots act on it at their next check."""

    def __init__(self, coordinator):
        self.coordinator = coordinator

    def __getstate__(self):
        # Tune pickles its callbacks into the experiment state; a resumed search brings its own coordinator
        # (and swaps in its own callbacks), and a dead actor's handle cannot be unpickled.
        return {"coordinator": None}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.coordinator.trial_started.remote(trial.trial_id, time.time())

    def on_trial_result(self, iteration, trials, trial, result, **info):
        # Tune calls this after the scheduler: result["done"] is set when ASHA (or anything else) stops the trial
        if "epoch" in result:
            self.coordinator.decide.remote(trial.trial_id, int(result["epoch"]), bool(result.get("done")))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.coordinator.end.remote(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.coordinator.end.remote(trial.trial_id)


class Slots:
    """The coordinator and the S warm Train runs of one search."""

    def __init__(self, cfg: ExperimentConfig, res: dict, data_ref, run_root: str):
        self.cfg, self.res, self.data_ref, self.run_root = cfg, res, data_ref, run_root
        self.n = res["concurrent"]
        self.threads: list[threading.Thread] = []
        self.coordinator = None

    def start(self) -> float:
        """Start the coordinator and the slots' Train runs; returns the seconds until every fold worker is up."""
        t0 = time.monotonic()
        cfg, res = self.cfg, self.res
        here = ray.get_runtime_context().get_node_id()  # the driver's node: it outlives any worker node
        self.coordinator = ray.remote(Coordinator).options(
            num_cpus=0, max_concurrency=1000,
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
        ).remote(cfg.cv.folds, self.n, cfg.train.epochs, cfg.search.max_failures)
        experiment = to_dict(cfg)
        for i in range(self.n):
            trainer = TorchTrainer(
                fold_worker,
                train_loop_config={"experiment": experiment, "data_ref": self.data_ref, "slot": i,
                                   "coordinator": self.coordinator, "run_root": self.run_root},
                scaling_config=ray.train.ScalingConfig(
                    num_workers=cfg.cv.folds, use_gpu=res["gpu"] > 0,
                    resources_per_worker={"CPU": res["cpu"], "GPU": res["gpu"]},
                ),
                # no process group: no tensor crosses ranks (and so no rendezvous store listening on every
                # interface, nor NCCL's refusal of fractional GPUs that share a device)
                torch_config=NoGroupConfig(),
                run_config=ray.train.RunConfig(
                    name=f"slot_{i}", storage_path=f"{self.run_root}/slots",
                    # the trials' failures are counted per trial by the coordinator (--max-failures); the slot
                    # itself may be restarted that often for every trial of the search
                    failure_config=ray.train.FailureConfig(
                        max_failures=(cfg.search.max_failures + 1) * cfg.search.num_samples),
                ),
            )
            thread = threading.Thread(target=self._run, args=(i, trainer), name=f"slot-{i}", daemon=True)
            thread.start()
            self.threads.append(thread)
        while True:  # the workers import torch and load their folds; on a cluster the autoscaler may add nodes
            state = ray.get(self.coordinator.wait_ready.remote(30.0))
            if state["fatal"]:  # a node that cannot see the run directory (before Tune's loop: nothing to save)
                raise SearchStopped(state["fatal"]["message"], state["fatal"]["code"])
            if state["up"] + len(state["dead"]) == self.n:
                break
            print(f"[slots] {state['up']}/{self.n} slot(s) up after {time.monotonic() - t0:.0f} s; "
                  f"waiting for the rest (Ray Train places their workers)", flush=True)
        return time.monotonic() - t0

    def _run(self, i: int, trainer: TorchTrainer) -> None:
        try:
            trainer.fit()
        except Exception as e:  # the slot is gone (worker group failed too often, or could not start)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            try:
                ray.get(self.coordinator.slot_failed.remote(i, f"slot {i}'s Train run failed: {first}"))
            except Exception:  # the search is shutting down
                traceback.print_exc()

    def stats(self) -> dict:
        return ray.get(self.coordinator.engine_stats.remote())

    def stop(self, timeout: float = 120.0) -> None:
        if self.coordinator is None:
            return
        try:
            ray.get(self.coordinator.shutdown.remote(), timeout=30)
        except Exception:
            pass
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        ray.kill(self.coordinator)


def _cuda_probe() -> dict:
    """On a node Ray gave a GPU share: can torch use it? (name, driver and torch's CUDA build, for the message)."""
    import subprocess

    import torch
    gpu_ids = ray.get_runtime_context().get_accelerator_ids().get("GPU", [])
    info = {"node_ip": ray.util.get_node_ip_address(), "gpu_ids": gpu_ids, "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "available": torch.cuda.is_available(), "gpu": None, "driver": None}
    if info["available"]:
        info["gpu"] = torch.cuda.get_device_name(0)
        return info
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        first = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
        info["gpu"], _, info["driver"] = (p.strip() for p in first.partition(","))
    except (OSError, subprocess.TimeoutExpired, IndexError):
        pass
    return info


def check_cuda(res: dict) -> None:
    """With GPUs planned, fail before any work when a node's torch cannot use the GPU Ray assigns it.

    Without this a fold worker falls back to the CPU or fails deep inside training (a driver too old for
    torch's CUDA build, a GPU torch no longer supports, a GPU declared to Ray that is not there)."""
    from distributed.config import ConfigError
    if res["gpu"] <= 0:
        return
    info = ray.get(ray.remote(_cuda_probe).options(num_cpus=0, num_gpus=res["gpu"]).remote(), timeout=900)
    if info["available"]:
        return
    gpu = info["gpu"] or "unknown (nvidia-smi found none)"
    driver = info["driver"] or "unknown"
    where = (f"--num-gpus {res['num_gpus']:g}: Ray assigned GPU {','.join(map(str, info['gpu_ids'])) or '?'} "
             f"on {info['node_ip']}, but torch {info['torch']} cannot use it "
             f"(GPU {gpu}, NVIDIA driver {driver}, torch.cuda.is_available() is False)")
    if not info["torch_cuda"]:
        raise ConfigError(f"{where}: this torch is a CPU-only build; install a CUDA build, or pass --num-gpus 0")
    raise ConfigError(f"{where}: torch's CUDA {info['torch_cuda']} build needs an NVIDIA driver that supports "
                      f"CUDA {info['torch_cuda']} (README, 'On GPUs'); update the driver, or pass --num-gpus 0")
