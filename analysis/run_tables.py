"""Load and validate a run directory (DESIGN section 4), and the table views the report is built on.

`load_run` is the report's gate for bad input: everything wrong with the directory raises ConfigError
with one line saying what and what to do, before anything is computed or written. The other functions
are pure views of trials.parquet / epochs.parquet: trial ranking, fold-mean curves, fold bands, and
per-fold values at one epoch (the paired samples of the significance test); and of rungs.parquet (read by
distributed.racing.load_rungs): the fold spread at each rung and why each trial stopped.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from distributed.config import SEARCHABLE, ConfigError, ExperimentConfig
from distributed.config import load as load_config
from distributed.tables import rank_trials  # the engine's one ranking (best_trial, retention, the report)

SUMMARY_KEYS = ("name", "folds", "max_epochs", "best_trial_id", "best_config", "best_cv", "best_checkpoint",
                "split_fingerprint", "data_fingerprint", "n_train", "wall_s")
CURVE_METRICS = ("train_loss", "train_acc", "train_f1", "val_loss", "val_acc", "val_f1")
SCIENTIFIC = ("lr", "weight_decay")  # sampled on a log scale (distributed/search.py): shown as 1.23e-03


@dataclass(frozen=True)
class Run:
    run_dir: Path
    summary: dict
    config: ExperimentConfig
    trials: pd.DataFrame  # ranked (see rank_trials), with a `rank` column
    epochs: pd.DataFrame

    @property
    def folds(self) -> int:
        return int(self.summary["folds"])

    @property
    def best_trial_id(self) -> str:
        return self.summary["best_trial_id"]

    @property
    def best(self) -> pd.Series:
        return self.trials.set_index("trial_id").loc[self.best_trial_id]

    @property
    def searched(self) -> list[str]:
        """Hyperparameters any trial sampled, in the order of the search space."""
        names = {p for s in self.trials.searched.dropna() for p in s.split(",") if p}
        return [p for p in SEARCHABLE if p in names]


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: corrupt {what} ({e.msg} at line {e.lineno})") from None


def _read_parquet(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ConfigError(f"{path}: missing; the run directory is incomplete (was the search started?)")
    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for truncated or foreign files
        raise ConfigError(f"{path}: unreadable Parquet ({type(e).__name__}: {e})") from None


def load_run(run_dir) -> Run:
    """Read and check summary.json, config.json, trials.parquet, epochs.parquet. Raises ConfigError."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ConfigError(f"{run_dir}: no such directory")
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: not a directory")
    if not (run_dir / "summary.json").is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no summary.json); "
                          f"make one with python experiments/tune.py --name NAME")
    summary = _read_json(run_dir / "summary.json", "summary.json")
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    if missing:
        raise ConfigError(f"{run_dir}/summary.json: missing keys {', '.join(missing)}")
    if not (run_dir / "config.json").is_file():
        raise ConfigError(f"{run_dir}: no config.json; the run directory is incomplete")
    try:
        config = load_config(run_dir / "config.json")
    except json.JSONDecodeError as e:
        raise ConfigError(f"{run_dir}/config.json: corrupt ({e.msg} at line {e.lineno})") from None
    trials, epochs = _read_parquet(run_dir / "trials.parquet"), _read_parquet(run_dir / "epochs.parquet")
    best = summary["best_trial_id"]
    if best is None:
        raise ConfigError(f"{run_dir}: no trial completed its full budget of {summary['max_epochs']} epochs, so "
                          f"there is no best model to evaluate; continue the run with python "
                          f"experiments/tune.py --name {summary['name']} --resume")
    if trials.empty or best not in set(trials.trial_id):
        raise ConfigError(f"{run_dir}: best trial {best} of summary.json is not in trials.parquet")
    if trials.set_index("trial_id").loc[best, "status"] != "completed":
        raise ConfigError(f"{run_dir}: best trial {best} of summary.json is not a completed trial")
    return Run(run_dir, summary, config, rank_trials(trials), epochs)


def fold_mean_curves(epochs: pd.DataFrame) -> pd.DataFrame:
    """Per (trial_id, epoch): mean and std (ddof=1, as the engine reports) over folds of each metric."""
    grouped = epochs.groupby(["trial_id", "epoch"])[list(CURVE_METRICS)]
    mean, std = grouped.mean().add_suffix("_mean"), grouped.std(ddof=1).add_suffix("_std")
    return mean.join(std).reset_index()


def fold_band(epochs: pd.DataFrame, trial_id: str, metric: str) -> pd.DataFrame:
    """One trial's curve of `metric`: per epoch the value of every fold, their mean, std and mean ± std."""
    df = epochs[epochs.trial_id == trial_id]
    wide = df.pivot(index="epoch", columns="fold", values=metric).sort_index()
    wide.columns = [f"fold{k}" for k in wide.columns]
    folds = wide.to_numpy(dtype=float)
    out = pd.DataFrame({"epoch": wide.index.to_numpy(), "mean": folds.mean(axis=1),
                        "std": folds.std(axis=1, ddof=1) if folds.shape[1] > 1 else 0.0})
    out["lo"], out["hi"] = out["mean"] - out["std"], out["mean"] + out["std"]
    return pd.concat([out, wide.reset_index(drop=True)], axis=1)


def values_at_epoch(epochs: pd.DataFrame, epoch: int, folds: int, metric: str = "val_acc") -> pd.DataFrame:
    """Per-fold `metric` at `epoch`: index trial_id, columns fold0..fold{K-1}; only trials with every fold."""
    df = epochs[epochs.epoch == epoch].pivot(index="trial_id", columns="fold", values=metric)
    df = df.reindex(columns=range(folds)).dropna()
    df.columns = [f"fold{k}" for k in df.columns]
    return df


def deepest_shared_epoch(epochs: pd.DataFrame, folds: int, min_trials: int) -> int | None:
    """The largest epoch at which at least `min_trials` trials have a value for every fold, or None.

    Trials compared at one epoch were trained equally long: comparing a 1-epoch value with a 30-epoch
    value would rank budgets, not configurations.
    """
    complete = epochs.groupby(["epoch", "trial_id"]).fold.nunique() >= folds
    counts = complete[complete].groupby(level="epoch").size()
    reached = counts[counts >= min_trials]
    return int(reached.index.max()) if len(reached) else None


def format_value(name: str, value) -> str:
    """A hyperparameter value as people read it: 3 significant digits, scientific for log-scale ones."""
    if isinstance(value, (float, np.floating)):
        return f"{value:.2e}" if name in SCIENTIFIC else f"{value:.3g}"
    return str(value)


def hparam_label(row: pd.Series, names: list[str]) -> str:
    return ", ".join(f"{n}={format_value(n, row[f'config_{n}'])}" for n in names)


def trials_display(run: Run) -> pd.DataFrame:
    """The report's trials table: rank, id, status, epochs, searched values, fold-mean ± std, checkpoint."""
    t = run.trials
    out = pd.DataFrame({"rank": t["rank"], "trial": t.trial_id, "status": t.status, "epochs": t.epochs_run})
    for name in run.searched:
        out[name] = [format_value(name, v) for v in t[f"config_{name}"]]
    out["val acc (mean ± std)"] = [
        "—" if pd.isna(m) else f"{m:.4f} ± {s:.4f}" for m, s in zip(t.val_acc_mean, t.val_acc_std)]
    out["val macro-F1"] = [f"{v:.4f}" if pd.notna(v) else "—" for v in t.val_f1_mean]
    out["val loss"] = [f"{v:.4f}" if pd.notna(v) else "—" for v in t.val_loss_mean]
    out["time (s)"] = [f"{v:.0f}" if pd.notna(v) else "—" for v in t.time_total_s]
    removed = set(run.summary.get("checkpoints_removed") or ())  # --keep-checkpoints, when the search ended
    out["checkpoint"] = ["yes" if isinstance(p, str) and (run.run_dir / p).is_dir() else
                         "removed" if trial in removed else "missing"
                         for trial, p in zip(t.trial_id, t.checkpoint_path)]
    out["why it stopped"] = why_stopped(t, rung_table(run.run_dir)).to_numpy()
    return out


def rung_table(run_dir) -> pd.DataFrame:
    """RUN_DIR/rungs.parquet as the engine reads it (distributed.racing.load_rungs: one row per trial and
    rung; empty for a FIFO search or a run from before the file existed), with each row's fold std added
    (ddof=1; 0 for a single fold): the report's rung view."""
    from distributed.racing import load_rungs  # noqa: PLC0415 (it imports ray.tune: only once a report is built)
    df = load_rungs(run_dir)
    df["fold_std"] = [float(np.std(f, ddof=1)) if len(f) > 1 else 0.0 for f in df.folds]
    return df


def why_stopped(trials: pd.DataFrame, rungs: pd.DataFrame) -> pd.Series:
    """Per trial (in `trials`' order) the rung decision that ended it, or why it ran on: the report's
    "why it stopped" column. A trial let through on doubt says at which rungs and with which p."""
    by_trial = {tid: g for tid, g in rungs.groupby("trial_id", sort=False)}
    out = []
    for tid, status, epochs in zip(trials.trial_id, trials.status, trials.epochs_run):
        g = by_trial.get(tid, rungs.iloc[:0])
        doubt = "; ".join(f"let through at rung {r.rung} (p = {r.p:.3f})"
                          for r in g[g.decision == "let_through"].itertuples())
        stop = g[g.decision == "stop"]
        if status == "errored":
            why = "errored"
        elif len(stop):
            r = stop.iloc[-1]
            why = f"rung {r.rung}: {r.value:.4f} < cutoff {r.cutoff:.4f} ({r.cutoff_trial_id})"
            why += f", p = {r.p:.3g} <= {r.alpha:g}" if pd.notna(r.p) else " (ASHA: the mean alone)"
        elif status == "completed":
            why = "ran the full budget"
        elif status == "pruned":
            why = f"stopped after {epochs} epoch(s), no rung decision recorded"
        else:
            why = status
        out.append(f"{why}; {doubt}" if doubt else why)
    return pd.Series(out, index=trials.index, name="why it stopped")
