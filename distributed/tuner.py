"""Wiring: Ray Tune (OptunaSearch + ASHA) over trials that run on warm K-worker Ray Train slots.

    run_search(cfg, dataset)
      -> ray.put the uint8 arrays + the fold split once
      -> Slots.start(): a coordinator actor + one long-lived TorchTrainer(fold_worker, K workers) per slot
      -> Tuner(trial.run_trial, CVOptunaSearch(TPE, optuna.db), ASHA, RunConfig(storage=RUN_DIR/tune))
           run_trial: a torch-free client; the coordinator hands it to a free slot and relays its epochs
           SlotCallback: ASHA's decision after every epoch -> the coordinator -> the slot's fold workers
      -> RUN_DIR: summary.json, trials.parquet, epochs.parquet (rewritten after every finished trial),
         rungs.parquet (by the ASHA schedulers of distributed.racing, at every rung decision)
"""
from __future__ import annotations

import math
import os
import socket
import sys
import time
from pathlib import Path

import ray
import ray.tune

from distributed import io, retention, storage, tables
from distributed.config import EXIT_DISK_FULL, METRIC, MODE, ConfigError, ExperimentConfig, SearchStopped
from distributed.search import make_searcher
from distributed.guard import StopGuard
from distributed.racing import FoldASHA
from distributed.slots import SLOT_ENV, SlotCallback, Slots
from distributed.trial import TRIAL_CPU, run_trial


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


class RunTracker(ray.tune.Callback):
    """Driver-side progress lines, and the run-directory tables rewritten after every finished trial."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, meta: dict):
        self.cfg, self.run_dir, self.meta = cfg, run_dir, meta
        self.store = storage.parse_storage_uri(cfg.storage_path)  # None: the run directory is all there is
        self.t0 = time.monotonic()
        self.statuses: dict[str, str] = {}

    def _say(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {msg}", flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        hp = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.config.items())
        self._say(f"trial {trial.trial_id} started: {hp}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        folds = " ".join(f"{v:.3f}" for v in result.get("val_acc_folds", []))
        self._say(f"trial {trial.trial_id} epoch {result['epoch']}/{self.cfg.train.epochs}: "
                  f"val_acc {result['val_acc_mean']:.4f} ± {result['val_acc_std']:.4f} (folds {folds}), "
                  f"val_loss {result['val_loss_mean']:.4f}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        epochs = trial.last_result.get("epoch", 0) if trial.last_result else 0
        status = "completed" if epochs >= self.cfg.train.epochs else "pruned"
        self.statuses[trial.trial_id] = status
        self._say(f"trial {trial.trial_id} {status} after {epochs} epoch(s)")
        self.write(live_dir=Path(trial.local_path).parent)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.statuses[trial.trial_id] = "errored"
        error = Path(trial.local_path) / "error.txt"  # Tune's live copy; RUN_DIR/tune gets it later
        last = error.read_text().strip().splitlines()[-1] if error.exists() else "no error.txt"
        self._say(f"trial {trial.trial_id} errored: {last} "
                  f"(full trace: {self.run_dir / 'tune' / trial.trial_id / 'error.txt'})")
        self.write(live_dir=Path(trial.local_path).parent)

    def write(self, live_dir: Path | None = None) -> dict:
        """The run tables, from Tune's driver-side trial logs `live_dir` (ahead of RUN_DIR/tune) while the search
        runs; the final call passes none: Tune has copied every log to RUN_DIR/tune when fit() returns."""
        wall = self.meta.get("wall_s_before", 0.0) + time.monotonic() - self.t0
        root = self.store.fs_path(self.cfg.name) if self.store else None
        summary = tables.write_run_tables(self.run_dir, self.cfg, self.meta, self.statuses, wall, live_dir, root)
        if self.store:  # the bucket's copy of the driver's files, so a resume or a report can start anywhere
            storage.upload(self.run_dir, self.store, self.cfg.name)
        return summary


def make_scheduler(cfg: ExperimentConfig, run_dir: Path):
    """ASHA on fold-mean accuracy (the metric and mode come from TuneConfig), fold-paired ASHA, or FIFO: every
    trial runs to the end. Both ASHAs write each rung decision to RUN_DIR/rungs.parquet (distributed.racing),
    which is also what a resumed search rebuilds their rungs from."""
    s = cfg.search
    if s.scheduler == "fifo":
        return ray.tune.schedulers.FIFOScheduler()
    return FoldASHA(run_dir, alpha=s.racing_alpha if s.scheduler == "fold-asha" else None, max_t=cfg.train.epochs,
                    grace_period=s.grace_period, reduction_factor=s.reduction_factor)


def run_search(cfg: ExperimentConfig, run_dir: Path, shared: dict, meta: dict, res: dict) -> dict:
    """Run (or resume) the search on the plan `res` (plan_resources, checked by the CLI before any work);
    return the summary dict. Ray must already be initialised."""
    run_dir = run_dir.resolve()  # Ray's storage layer takes absolute paths or URIs only
    meta["devices"] = {"num_gpus": res["num_gpus"], "gpus_per_worker": res["gpu"], "cpus_per_worker": res["cpu"],
                       "concurrent_trials": res["concurrent"], "cluster": res["cluster"]}
    print(f"resources: {cfg.cv.folds} fold workers per trial x ({res['cpu']:g} CPU, {res['gpu']:g} GPU); "
          f"up to {res['concurrent']} trial(s) at once; cluster {res['cluster']}", flush=True)
    if res["limit"]:
        print(f"resources: {res['limit']}", flush=True)

    # Where the nodes write fold checkpoints and the Tune experiment: the run directory, or the bucket.
    store = storage.parse_storage_uri(cfg.storage_path)
    parent = store.uri if store else str(run_dir.parent)
    run_root = f"{parent}/{run_dir.name}"
    data_ref = ray.put(shared)  # the only copy of the data; fold workers read it zero-copy
    slots = Slots(cfg, res, data_ref, run_root)
    try:
        summary = _search(cfg, run_dir, meta, slots, parent, run_root, store)
    finally:
        slots.stop()
    # Once the slots are gone nothing writes the run any more: --keep-checkpoints (only if every trial ended),
    # then the run's size on disk into summary.json
    summary = retention.apply(cfg, run_dir, run_root, summary)
    print(retention.describe(summary), flush=True)
    return summary


def _search(cfg, run_dir, meta, slots, parent, run_root, store) -> dict:
    # Tune saves its experiment state (trials, searcher) at most every 10 s by default. A warm trial can start
    # and finish inside that window, and a driver killed there loses it: the resumed search would sample and
    # train it again under a new id. Save after every controller step instead (a few ms of JSON each).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    # Tune's new output engine prints its "Configuration for experiment" table and a TensorBoard hint into
    # the Ray session's temporary directory (gone after the run) whatever `verbose` says; the legacy one at
    # verbose=0 prints nothing, so the search's own progress lines are all the user reads.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    tracker = RunTracker(cfg, run_dir, meta)  # its clock (summary.json's wall_s) includes starting the slots
    search_start = slots.start()
    print(f"slots: {slots.n} warm worker group(s) of {cfg.cv.folds} fold workers up in {search_start:.1f} s; "
          f"they serve every trial of the search", flush=True)
    meta["engine"] = {"slots": slots.n, "search_start_s": round(search_start, 3)}
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(run_trial, coordinator=slots.coordinator), {"cpu": TRIAL_CPU})
    # the disk to watch: the run directory, or with a bucket the driver's working copy (the bucket has no "full")
    guard = StopGuard(slots.coordinator, run_dir, cfg.resources.min_free_mb)
    callbacks = [SlotCallback(slots.coordinator), tracker, guard]
    tune_dir = f"{run_root}/tune"
    # The experiment is RUN_DIR/tune, named "<run name>/tune" under RUN_DIR's parent rather than "tune"
    # under RUN_DIR: Tune stages its driver files in <ray session>/artifacts/<start second>/<name>, so two
    # searches started in the same second on one Ray instance would otherwise share (and mix) those files.
    experiment = f"{run_dir.name}/tune"
    if cfg.resume and ray.tune.Tuner.can_restore(tune_dir):
        tracker.statuses = tables.statuses_from_disk(run_dir)
        tuner = ray.tune.Tuner.restore(tune_dir, trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
        # The restored RunConfig carries the previous session's tracker (its clock and statuses are
        # stale): swap in this session's, and the run-named experiment (see below). Ray has no public
        # setter for either.
        restored = tuner._local_tuner.get_run_config()
        restored.callbacks = callbacks
        restored.name, restored.storage_path = experiment, parent
        restored.verbose = 0  # as a new search: only our progress lines
        # The scheduler was pickled with the first session's run directory (a bucket run resumed on another
        # machine has its working copy elsewhere): it rebuilds its rungs from, and writes, this session's.
        if isinstance(tuner._local_tuner._tune_config.scheduler, FoldASHA):
            tuner._local_tuner._tune_config.scheduler.run_dir = str(run_dir)
    else:
        scheduler = make_scheduler(cfg, run_dir)
        # The searcher counts the search's trials and its running trials (FINISHED after --num-samples, None
        # while the slots are busy): Tune's own counts are saved apart from the searcher's state, and a driver
        # killed between the two saves would resume with counts that disagree with it (search.py, restore)
        tuner = ray.tune.Tuner(
            trainable,
            tune_config=ray.tune.TuneConfig(
                metric=METRIC, mode=MODE, num_samples=-1,
                search_alg=make_searcher(cfg, f"sqlite:///{(run_dir / 'optuna.db').resolve()}"),
                scheduler=scheduler, max_concurrent_trials=slots.n, reuse_actors=True,
                trial_dirname_creator=lambda t: t.trial_id, trial_name_creator=lambda t: t.trial_id,
            ),
            run_config=ray.tune.RunConfig(
                name=experiment, storage_path=parent, callbacks=callbacks, verbose=0,
                failure_config=ray.tune.FailureConfig(max_failures=cfg.search.max_failures),
            ),
        )
    try:
        tuner.fit()
    except Exception as e:  # a write of Tune's or Optuna's own found the disk full before the guard did
        if not io.is_disk_full(e):
            raise
        raise SearchStopped(io.low_disk_message(run_dir, cfg.resources.min_free_mb), EXIT_DISK_FULL) from e
    meta["engine"].update(slots.stats())
    if store:  # the final tables read the trial logs Tune has now written to the bucket
        storage.download(store, cfg.name, run_dir, "tune")
    summary = tracker.write()
    if guard.reason:  # stopped early, as by Ctrl-C: the tables hold what ran, and the run resumes
        raise SearchStopped(*guard.reason)
    return summary
