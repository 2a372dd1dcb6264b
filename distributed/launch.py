"""The search's one importable entry point: run_tune(cfg), what `experiments/tune.py` does once its flags are a
config, and what `experiments/bench.py` calls for each of its searches.

    run_tune(cfg, resume=COMMAND)
      -> checks before Ray: validate, the GPUs this machine shows, the run directory (prepare_run)
      -> without a running Ray: the search's own CUDA MPS daemon when fold workers share a GPU, then a local Ray
      -> checks on Ray: plan_resources, shared storage, CUDA in the workers; the run directory made and locked
      -> "preset P: WHY", the MPS line, "run directory: ..."; Ctrl-C handled (distributed.interrupt)
      -> run_search (distributed.tuner) -> the closing lines; the exit code: 0, 1 (no best trial), 130

Ray is started by distributed.ray_init, and imported only once the checks that need no Ray have passed, so bad
input is refused at once; the trials are planned by distributed.resources. Refusals raise ConfigError, and a
search stopped early raises SearchStopped whose message ends with the command that continues it: the caller
says them (tune.py: one "tune.py: error: ..." line, exit 2, or e.code).
"""
from __future__ import annotations

import atexit
import shlex
import sys
from pathlib import Path

from distributed.cli import check_visible_gpus
from distributed.config import (EXIT_DISK_FULL, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, METRIC, ConfigError,
                               ExperimentConfig, SearchStopped, validate)
from distributed.interrupt import Interrupt
from distributed.run import prepare_run, start_run_dir


def resume_command(argv: list[str], name: str) -> str:
    """The command that continues this run: the same flags (a resume must keep them), its --name, --resume."""
    args = [a for a in argv if a != "--resume"]
    if "--name" not in args and not any(a.startswith("--name=") for a in args):
        args += ["--name", name]
    return shlex.join(["python", "experiments/tune.py", *args, "--resume"])


def _stop_after_ray(mps) -> None:
    """At exit: Ray first (its exit hook, registered when ray was imported, would run after this one), so the
    fold workers, the daemon's clients, are gone when it is asked to quit."""
    import ray
    ray.shutdown()
    mps.stop()


def run_tune(cfg: ExperimentConfig, resume: str, why: str | None = None, ray_logs: bool = False) -> int:
    """Run the search of `cfg` to its end and print its progress and closing lines; the exit code.

    resume: the command that continues this run (resume_command), said on Ctrl-C and on an early stop;
    why: why cfg has its preset, printed as "preset P: WHY" once every check has passed (None: no such line);
    ray_logs: stream Ray's worker and Train logs, when this call starts Ray. A Ray instance already running
    in this process (a joined cluster, a benchmark's private one) is used as it is, with no MPS daemon.
    """
    validate(cfg)  # everything that can be wrong with the input is found here, before Ray starts
    check_visible_gpus(cfg)  # a local run asks for GPUs this machine lacks: said before Ray starts
    where, shared, meta = prepare_run(cfg)  # where the run is stored (storage.RunLocation)
    run_dir = where.local_dir

    import ray
    from distributed.ray_init import init_ray
    from distributed.resources import offered, plan_resources
    from distributed.slots import check_cuda
    from distributed.storage import check_shared_storage
    from distributed.tuner import run_search

    mps_lines = []  # said after the preset line, once every check has passed
    if not ray.is_initialized():  # a fresh local instance unless --address joins a running cluster
        # fold workers that share a GPU get a CUDA MPS daemon of this search's own; Ray's processes inherit it
        from distributed.cluster import visible_gpus
        from distributed.mps import start_for_search
        r = cfg.resources
        mps = start_for_search(r.address, r.num_gpus, r.gpus_per_worker, cfg.cv.folds, visible_gpus(),
                               say=mps_lines.append)
        if mps is not None:
            atexit.register(_stop_after_ray, mps)
        init_ray(cfg.resources.address, log_to_driver=ray_logs, configure_logging=ray_logs)
    try:
        res = plan_resources(cfg, offered(cfg))  # e.g. --num-gpus beyond what the cluster has (or can scale to)
        check_shared_storage(cfg.storage_path)  # multi-node: every node must see the run directory
        check_cuda(res)  # a GPU that Ray assigns but torch cannot use: say so now, not deep in a fold worker
        lock = start_run_dir(where, cfg)  # made atomically, locked: one search writes a run at a time
    except ConfigError:
        ray.shutdown()
        raise

    if why:  # only now that every check has passed: a refused run prints its one error line and nothing else
        print(f"preset {cfg.preset}: {why}", flush=True)
    for line in mps_lines:
        print(line, flush=True)
    print(f"run directory: {run_dir}  ({meta['n_train']} training images, {cfg.cv.folds} folds, "
          f"{cfg.search.num_samples} trials x up to {cfg.train.epochs} epochs)", flush=True)
    interrupt = Interrupt(resume, lock.release).install()
    try:
        summary = run_search(cfg, where, shared, meta, res)
    except SearchStopped as e:  # stopped early, as by Ctrl-C (a full disk, a node that cannot see the run)
        then = "free some space, then continue" if e.code == EXIT_DISK_FULL else "continue"
        raise SearchStopped(f"{e}; {then} with: {interrupt.resume_command}", e.code) from e
    finally:
        lock.release()
    return closing_lines(cfg, run_dir, summary, interrupt.interrupted, interrupt.resume_command)


def closing_lines(cfg: ExperimentConfig, run_dir: Path, summary: dict, interrupted: bool, resume: str) -> int:
    """What a finished (or Ctrl-C'd: `resume` continues it) search prints last, from its summary; the exit code."""
    ended = summary["n_trials_completed"] + summary["n_trials_pruned"] + summary["n_trials_errored"]
    if interrupted and ended < cfg.search.num_samples:
        print(f"\ninterrupted: {summary['n_trials_completed']} of {cfg.search.num_samples} trials finished "
              f"their budget, {summary['n_trials_pruned']} pruned, {summary['epochs_run_total']} trial-epochs "
              f"in {summary['wall_s']:.0f} s; the rest continue with: {resume}")
        return EXIT_INTERRUPTED
    print(f"\n{summary['n_trials']} trials: {summary['n_trials_completed']} completed, "
          f"{summary['n_trials_pruned']} pruned, {summary['n_trials_errored']} errored; "
          f"{summary['epochs_run_total']} trial-epochs in {summary['wall_s']:.0f} s")
    if summary["best_trial_id"] is None:
        print(f"no trial completed its full budget: no best configuration (run directory: {run_dir}/)",
              file=sys.stderr)
        return EXIT_FAILURE
    cv = summary["best_cv"]
    print(f"best trial {summary['best_trial_id']}: {METRIC} {cv['val_acc_mean']:.4f} ± {cv['val_acc_std']:.4f}, "
          f"macro-F1 {cv['val_f1_mean']:.4f}")
    print("best config: " + ", ".join(f"{k}={v}" for k, v in summary["best_config"].items()))
    print(f"results: {run_dir}/  (report: python experiments/report.py {run_dir})")
    return EXIT_OK
