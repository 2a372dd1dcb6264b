"""Hyperparameter search with 5-fold cross-validation inside every trial (Ray Tune + Optuna TPE + ASHA).

Each trial trains its K folds on a slot: K warm Ray Train workers, one per fold, started once per search
(distributed.slots); ASHA stops weak trials on the fold-mean validation accuracy. Fold workers that share a
GPU get a CUDA MPS daemon private to the search (distributed.mps). Results go to results/NAME (summary.json,
trials.parquet, epochs.parquet, optuna.db). This file is the CLI: flags -> config -> distributed.launch.run_tune,
which does the checks, starts Ray and runs the search (bench.py calls it too).
Without --preset the preset follows the hardware: full when the search trains on GPUs, quick on the CPU;
without --name each run is a new one, PRESET-YYYYmmdd-HHMMSS.

    python experiments/tune.py                          # quick on a CPU, full on the GPUs it sees
    python experiments/tune.py --num-gpus 4             # the full preset on a 4-GPU box
    python experiments/tune.py --address auto --storage-path /mnt/shared   # a cluster: full if it scales to GPUs
    python experiments/tune.py --name quick-20261125-101500 --resume       # continue an interrupted run
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distributed.cli import ArgumentParser, add_config_flags, config_from_args, fail, preset_from_args  # noqa: E402
from distributed.cli_help import EXAMPLES, HelpFormatter  # noqa: E402
from distributed.config import ConfigError, SearchStopped  # noqa: E402
from distributed.launch import resume_command, run_tune  # noqa: E402


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
        from distributed.ray_init import init_ray
        init_ray(args.address, log_to_driver=args.ray_logs, configure_logging=args.ray_logs)
        joined.append(args.address)

    try:  # bad input is refused with one line, before Ray starts (or once joined, before the run directory)
        preset, why = preset_from_args(args, join_cluster)
        cfg = config_from_args(args, preset)
        resume = resume_command(sys.argv[1:] if argv is None else argv, cfg.name)
        return run_tune(cfg, resume, why, ray_logs=args.ray_logs)
    except ConfigError as e:
        if joined:
            import ray
            ray.shutdown()
        fail(f"tune.py: error: {e}")
    except SearchStopped as e:  # stopped early, as by Ctrl-C; e says how to continue
        fail(f"tune.py: error: {e}", e.code)


if __name__ == "__main__":
    sys.exit(main())
