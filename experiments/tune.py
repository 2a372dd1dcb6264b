"""Hyperparameter search with 5-fold cross-validation inside every trial (Ray Tune + Optuna TPE + ASHA).

Each trial trains its K folds on a slot: K warm Ray Train workers, one per fold, started once per search
(distributed.slots); ASHA stops weak trials on the fold-mean validation accuracy. Fold workers that share a
GPU get a CUDA MPS daemon private to the search (distributed.mps). Results go to results/NAME (summary.json, trials.parquet, epochs.parquet, optuna.db).
Without --preset the preset follows the hardware: full when the search trains on GPUs, quick on the CPU;
without --name each run is a new one, PRESET-YYYYmmdd-HHMMSS.

    python experiments/tune.py                          # quick on a CPU, full on the GPUs it sees
    python experiments/tune.py --num-gpus 4             # the full preset on a 4-GPU box
    python experiments/tune.py --address auto --storage-path /mnt/shared   # a cluster: full if it scales to GPUs
    python experiments/tune.py --name quick-20261125-101500 --resume       # continue an interrupted run
"""
from __future__ import annotations

import atexit
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distributed.cli import (ArgumentParser, add_config_flags, check_visible_gpus, config_from_args,  # noqa: E402
                             fail, preset_from_args)
from distributed.cli_help import EXAMPLES, HelpFormatter  # noqa: E402
from distributed.config import EXIT_DISK_FULL, METRIC, ConfigError, SearchStopped, validate  # noqa: E402
from distributed.interrupt import EXIT_CODE, Interrupt  # noqa: E402
from distributed.run import prepare_run, start_run_dir  # noqa: E402


def resume_command(argv: list[str], name: str) -> str:
    """The command that continues this run: the same flags (a resume must keep them), its --name, --resume."""
    args = [a for a in argv if a != "--resume"]
    if "--name" not in args and not any(a.startswith("--name=") for a in args):
        args += ["--name", name]
    return shlex.join(["python", "experiments/tune.py", *args, "--resume"])


def main(argv=None) -> int:
    parser = ArgumentParser(prog="tune.py", description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
                            usage="%(prog)s [--preset PRESET] [--num-gpus N] [--name NAME] [--resume] [...]",
                            formatter_class=HelpFormatter, add_help=False)
    groups = add_config_flags(parser)
    groups["advanced"].add_argument("--ray-logs", action="store_true",
                                    help="stream Ray's worker and Train logs (default: only this script's "
                                         "progress lines)")
    args = parser.parse_args(argv)
    joined = []  # with --address and no --preset, what the cluster can scale to chooses the preset

    def join_cluster():
        from distributed.tuner import init_ray
        init_ray(args.address, log_to_driver=args.ray_logs, configure_logging=args.ray_logs)
        joined.append(args.address)

    try:  # everything that can be wrong with the input is found here, before Ray starts (or only joined)
        preset, why = preset_from_args(args, join_cluster)
        cfg = config_from_args(args, preset)
        validate(cfg)
        check_visible_gpus(cfg)  # a local run asks for GPUs this machine lacks: said before Ray starts
        run_dir, shared, meta = prepare_run(cfg)
    except ConfigError as e:
        if joined:
            import ray
            ray.shutdown()
        fail(f"tune.py: error: {e}")

    import ray
    from distributed.slots import check_cuda
    from distributed.storage import check_shared_storage
    from distributed.tuner import init_ray, offered, plan_resources, run_search

    mps_lines = []  # said after the preset line, once every check has passed
    if not ray.is_initialized():  # a fresh local instance unless --address joins a running cluster
        # fold workers that share a GPU get a CUDA MPS daemon of this search's own; Ray's processes inherit it
        from distributed.cluster import visible_gpus
        from distributed.mps import start_for_search
        r = cfg.resources
        mps = start_for_search(r.address, r.num_gpus, r.gpus_per_worker, cfg.cv.folds, visible_gpus(),
                               say=mps_lines.append)
        if mps is not None:
            atexit.register(mps.stop)  # registered before ray.init's own exit hook, so it runs after it
        init_ray(cfg.resources.address, log_to_driver=args.ray_logs, configure_logging=args.ray_logs)
    try:
        res = plan_resources(cfg, offered(cfg))  # e.g. --num-gpus beyond what the cluster has (or can scale to)
        check_shared_storage(cfg.storage_path)  # multi-node: every node must see the run directory
        check_cuda(res)  # a GPU that Ray assigns but torch cannot use: say so now, not deep in a fold worker
        lock = start_run_dir(run_dir, cfg)  # made atomically, locked: one tune.py writes a run at a time
    except ConfigError as e:
        ray.shutdown()
        fail(f"tune.py: error: {e}")

    if why:  # only now that every check has passed: a refused run prints its one error line and nothing else
        print(f"preset {cfg.preset}: {why}", flush=True)
    for line in mps_lines:
        print(line, flush=True)
    print(f"run directory: {run_dir}  ({meta['n_train']} training images, {cfg.cv.folds} folds, "
          f"{cfg.search.num_samples} trials x up to {cfg.train.epochs} epochs)", flush=True)
    interrupt = Interrupt(resume_command(sys.argv[1:] if argv is None else argv, cfg.name), lock.release).install()
    try:
        summary = run_search(cfg, run_dir, shared, meta, res)
    except SearchStopped as e:  # stopped early, as by Ctrl-C (a full disk, a node that cannot see the run)
        then = "free some space, then continue" if e.code == EXIT_DISK_FULL else "continue"
        fail(f"tune.py: error: {e}; {then} with: {interrupt.resume_command}", e.code)
    finally:
        lock.release()

    ended = summary["n_trials_completed"] + summary["n_trials_pruned"] + summary["n_trials_errored"]
    if interrupt.interrupted and ended < cfg.search.num_samples:
        print(f"\ninterrupted: {summary['n_trials_completed']} of {cfg.search.num_samples} trials finished "
              f"their budget, {summary['n_trials_pruned']} pruned, {summary['epochs_run_total']} trial-epochs "
              f"in {summary['wall_s']:.0f} s; the rest continue with: {interrupt.resume_command}")
        return EXIT_CODE
    print(f"\n{summary['n_trials']} trials: {summary['n_trials_completed']} completed, "
          f"{summary['n_trials_pruned']} pruned, {summary['n_trials_errored']} errored; "
          f"{summary['epochs_run_total']} trial-epochs in {summary['wall_s']:.0f} s")
    if summary["best_trial_id"] is None:
        print(f"no trial completed its full budget: no best configuration (run directory: {run_dir}/)",
              file=sys.stderr)
        return 1
    cv = summary["best_cv"]
    print(f"best trial {summary['best_trial_id']}: {METRIC} {cv['val_acc_mean']:.4f} ± {cv['val_acc_std']:.4f}, "
          f"macro-F1 {cv['val_f1_mean']:.4f}")
    print("best config: " + ", ".join(f"{k}={v}" for k, v in summary["best_config"].items()))
    print(f"results: {run_dir}/  (report: python experiments/report.py {run_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
