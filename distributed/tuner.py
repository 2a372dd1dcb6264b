"""Wiring: Ray Tune (OptunaSearch + ASHA) over trials that run on warm K-worker Ray Train slots.

    run_search(cfg, where, shared, meta, res)     where: prepare_run's RunLocation; res: plan_resources
      -> ray.put the uint8 arrays + the fold split once
      -> Slots.start(): a coordinator actor + one long-lived TorchTrainer(fold_worker, K workers) per slot
      -> Tuner(trial.run_trial, CVOptunaSearch(TPE, optuna.db), ASHA, RunConfig(storage=RUN_DIR/tune))
           run_trial: a torch-free client; the coordinator hands it to a free slot and relays its epochs
           SlotCallback: ASHA's decision after every epoch -> the coordinator -> the slot's fold workers
           RunTracker (distributed.tracker): progress lines; the tables after every finished trial
           StopGuard (distributed.guard): a full disk or a blind node stops the search as Ctrl-C does
      -> RUN_DIR: summary.json, trials.parquet, epochs.parquet (rewritten after every finished trial),
         rungs.parquet (by the ASHA schedulers of distributed.racing, at every rung decision)
      -> retention: --keep-checkpoints once the search has ended; the run's size in summary.json

Ray is started (or joined) before this by distributed.ray_init, and the plan comes from distributed.resources.
"""
from __future__ import annotations

import os
from pathlib import Path

import ray
import ray.tune

from distributed import files, retention, tables
from distributed.config import EXIT_DISK_FULL, METRIC, MODE, ExperimentConfig, SearchStopped
from distributed.guard import StopGuard
from distributed.racing import FoldASHA
from distributed.search import make_searcher
from distributed.slots import SlotCallback, Slots
from distributed.storage import RunLocation
from distributed.tracker import RunTracker  # also the name a pickled tuner.pkl of an older run asks for
from distributed.trial import TRIAL_CPU, run_trial


def make_scheduler(cfg: ExperimentConfig, run_dir: Path):
    """ASHA on fold-mean accuracy (the metric and mode come from TuneConfig), fold-paired ASHA, or FIFO: every
    trial runs to the end. Both ASHAs write each rung decision to RUN_DIR/rungs.parquet (distributed.racing),
    which is also what a resumed search rebuilds their rungs from."""
    s = cfg.search
    if s.scheduler == "fifo":
        return ray.tune.schedulers.FIFOScheduler()
    return FoldASHA(run_dir, alpha=s.racing_alpha if s.scheduler == "fold-asha" else None, max_t=cfg.train.epochs,
                    grace_period=s.grace_period, reduction_factor=s.reduction_factor)


def run_search(cfg: ExperimentConfig, where: RunLocation, shared: dict, meta: dict, res: dict) -> dict:
    """Run (or resume) the search stored at `where` (prepare_run's RunLocation) on the plan `res`
    (plan_resources, checked by the CLI before any work); return the summary dict. Ray must already be
    initialised."""
    where = where.resolved()  # Ray's storage layer takes absolute paths or URIs only
    meta["devices"] = {"num_gpus": res["num_gpus"], "gpus_per_worker": res["gpu"], "cpus_per_worker": res["cpu"],
                       "concurrent_trials": res["concurrent"], "cluster": res["cluster"]}
    print(f"resources: {cfg.cv.folds} fold workers per trial x ({res['cpu']:g} CPU, {res['gpu']:g} GPU); "
          f"up to {res['concurrent']} trial(s) at once; cluster {res['cluster']}", flush=True)
    if res["limit"]:
        print(f"resources: {res['limit']}", flush=True)

    # The nodes write fold checkpoints and the Tune experiment to where.root: the run directory, or the bucket.
    data_ref = ray.put(shared)  # the only copy of the data; fold workers read it zero-copy
    slots = Slots(cfg, res, data_ref, where.root)
    try:
        summary = _search(cfg, where, meta, slots)
    finally:
        slots.stop()
    # Once the slots are gone nothing writes the run any more: --keep-checkpoints (only if every trial ended),
    # then the run's size on disk into summary.json
    summary = retention.apply(cfg, where, summary)
    print(retention.describe(summary), flush=True)
    return summary


def _search(cfg: ExperimentConfig, where: RunLocation, meta: dict, slots: Slots) -> dict:
    run_dir = where.local_dir  # absolute (run_search); with a bucket, the driver's working copy
    # Tune saves its experiment state (trials, searcher) at most every 10 s by default. A warm trial can start
    # and finish inside that window, and a driver killed there loses it: the resumed search would sample and
    # train it again under a new id. Save after every controller step instead (a few ms of JSON each).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    # Tune's new output engine prints its "Configuration for experiment" table and a TensorBoard hint into
    # the Ray session's temporary directory (gone after the run) whatever `verbose` says; the legacy one at
    # verbose=0 prints nothing, so the search's own progress lines are all the user reads.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    tracker = RunTracker(cfg, where, meta)  # its clock (summary.json's wall_s) includes starting the slots
    search_start = slots.start()
    print(f"slots: {slots.n} warm worker group(s) of {cfg.cv.folds} fold workers up in {search_start:.1f} s; "
          f"they serve every trial of the search", flush=True)
    meta["engine"] = {"slots": slots.n, "search_start_s": round(search_start, 3)}
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(run_trial, coordinator=slots.coordinator), {"cpu": TRIAL_CPU})
    # the disk to watch: the run directory, or with a bucket the driver's working copy (the bucket has no "full")
    guard = StopGuard(slots.coordinator, run_dir, cfg.resources.min_free_mb)
    callbacks = [SlotCallback(slots.coordinator), tracker, guard]
    tune_dir = f"{where.root}/tune"
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
        restored.name, restored.storage_path = experiment, where.parent
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
                name=experiment, storage_path=where.parent, callbacks=callbacks, verbose=0,
                failure_config=ray.tune.FailureConfig(max_failures=cfg.search.max_failures),
            ),
        )
    try:
        tuner.fit()
    except Exception as e:  # a write of Tune's or Optuna's own found the disk full before the guard did
        if not files.is_disk_full(e):
            raise
        raise SearchStopped(files.low_disk_message(run_dir, cfg.resources.min_free_mb), EXIT_DISK_FULL) from e
    meta["engine"].update(slots.stats())
    where.download("tune")  # with a bucket: the final tables read the trial logs Tune has now written there
    summary = tracker.write()
    if guard.reason:  # stopped early, as by Ctrl-C: the tables hold what ran, and the run resumes
        raise SearchStopped(*guard.reason)
    return summary
