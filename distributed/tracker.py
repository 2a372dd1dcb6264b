"""RunTracker: the search's progress lines on the driver, and its run tables rewritten after every trial.

A Tune callback. Tune pickles it into RUN_DIR/tune/tuner.pkl by reference; runs made before it moved here
name it distributed.tuner.RunTracker, which tuner.py still imports (a resumed search swaps in a new one).
"""
from __future__ import annotations

import time
from pathlib import Path

import ray.tune

from distributed import tables
from distributed.config import ExperimentConfig
from distributed.storage import RunLocation


class RunTracker(ray.tune.Callback):
    """Driver-side progress lines, and the run-directory tables rewritten after every finished trial."""

    def __init__(self, cfg: ExperimentConfig, where: RunLocation, meta: dict):
        self.cfg, self.where, self.meta = cfg, where, meta
        self.run_dir = where.local_dir  # with a bucket, the driver's working copy
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
        summary = tables.write_run_tables(self.run_dir, self.cfg, self.meta, self.statuses, wall, live_dir,
                                          self.where.remote_root)
        self.where.upload()  # the bucket's copy of the driver's files, so a resume or a report can start anywhere
        return summary
