"""The run-directory tables, built from what Tune wrote to disk (so a resumed run rebuilds them whole).

    RUN_DIR/tune/<trial_id>/result.json   one JSON line per epoch: fold-mean/std/per-fold metrics
    RUN_DIR/tune/<trial_id>/params.json   the sampled hyperparameters
    RUN_DIR/tune/<trial_id>/error.txt     present when the trial failed
  ->
    RUN_DIR/epochs.parquet   one row per (trial, epoch, fold)
    RUN_DIR/trials.parquet   one row per trial: config, status, epochs run, final fold-mean/std/per-fold metrics
    RUN_DIR/summary.json     the contract of DESIGN section 4
"""
from __future__ import annotations

import json
import posixpath
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from distributed.config import FOLD_METRICS, METRIC, MODE, ExperimentConfig, apply_hparams
from distributed.files import write_bytes_atomic, write_json_atomic

FINAL_METRICS = ("val_acc", "val_f1", "val_loss", "train_acc", "train_loss", "train_f1")
STATUSES = ("completed", "pruned", "errored", "running")


def read_trial(trial_dir: Path) -> tuple[dict, list[dict]]:
    params_file, result_file = trial_dir / "params.json", trial_dir / "result.json"
    params = json.loads(params_file.read_text()) if params_file.exists() else {}
    results = []
    if result_file.exists():
        for line in result_file.read_text().splitlines():
            try:
                results.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a killed driver
                break
    return params, results


def trial_dirs(*tune_dirs: Path) -> list[Path]:
    """Trial directories (those with params.json) in `tune_dirs`; a later directory's copy of a trial wins."""
    found = {}
    for tune_dir in map(Path, tune_dirs):
        if tune_dir.is_dir():
            found.update({p.name: p for p in tune_dir.iterdir() if p.is_dir() and (p / "params.json").exists()})
    return [found[name] for name in sorted(found)]


def infer_status(trial_dir: Path, epochs_run: int, max_epochs: int, known: str | None) -> str:
    if known:
        return known
    if (trial_dir / "error.txt").exists() or (trial_dir / "error.pkl").exists():
        return "errored"
    return "completed" if epochs_run >= max_epochs else "running"


def statuses_from_disk(run_dir: Path) -> dict[str, str]:
    """Statuses recorded in the previous trials.parquet (used when a run is resumed)."""
    path = Path(run_dir) / "trials.parquet"
    if not path.exists():
        return {}
    df = pd.read_parquet(path, columns=["trial_id", "status"])
    return {t: s for t, s in zip(df.trial_id, df.status) if s != "running"}


def build_tables(run_dir: Path, cfg: ExperimentConfig, statuses: dict[str, str],
                 live_dir: Path | None = None, remote_root: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The run tables from the trials' logs in RUN_DIR/tune, overridden by `live_dir` where it has a trial.

    While a search runs, Tune writes the trial logs on the driver (`live_dir`) and copies them to RUN_DIR/tune
    only every ten seconds or more, so the tracker passes the live copy: a finished trial is never read stale.
    remote_root: the run's path in its bucket (bucket/prefix/NAME) when it is stored in one; checkpoint paths
    are recorded relative to it, as they are to the run directory otherwise.
    """
    run_dir = Path(run_dir)
    trial_rows, epoch_rows = [], []
    for d in trial_dirs(run_dir / "tune", *([live_dir] if live_dir else [])):
        hparams, results = read_trial(d)
        trial_id = d.name
        by_epoch = {r["epoch"]: r for r in results if "epoch" in r}  # a retried epoch: keep the last report
        for epoch, r in sorted(by_epoch.items()):
            for fold in range(r["num_folds"]):
                row = {"trial_id": trial_id, "epoch": epoch, "fold": fold}
                row.update({m: r[f"{m}_folds"][fold] for m in FOLD_METRICS})
                epoch_rows.append(row)
        last = by_epoch[max(by_epoch)] if by_epoch else {}
        epochs_run = int(last.get("epoch", 0))
        model_cfg, train_cfg = apply_hparams(cfg, hparams)
        row = {"trial_id": trial_id,
               "status": infer_status(d, epochs_run, cfg.train.epochs, statuses.get(trial_id)),
               "epochs_run": epochs_run}
        row.update({f"config_{k}": v for k, v in {**asdict(model_cfg), **asdict(train_cfg)}.items()})
        row["searched"] = ",".join(sorted(hparams))
        for m in FINAL_METRICS:
            row[f"{m}_mean"] = last.get(f"{m}_mean")
            row[f"{m}_std"] = last.get(f"{m}_std")
            for fold, v in enumerate(last.get(f"{m}_folds", [])):
                row[f"{m}_fold{fold}"] = v
        ckpt = last.get("checkpoint_path")
        row["checkpoint_path"] = relative_checkpoint(ckpt, run_dir, remote_root) if ckpt else None
        row["node_ip"] = last.get("node_ip")  # where the trial function ran
        for key in ("fold_node_ids", "fold_node_ips"):  # where each fold worker ran (a list before 2026-12-02)
            where = last.get(key, "")
            row[key] = where if isinstance(where, str) else ",".join(where)
        row["time_total_s"] = last.get("time_total_s")
        trial_rows.append(row)
    trials = pd.DataFrame(trial_rows)
    epochs = pd.DataFrame(epoch_rows, columns=["trial_id", "epoch", "fold", *FOLD_METRICS])
    return trials, epochs


def relative_checkpoint(ckpt: str, run_dir: Path, remote_root: str | None = None) -> str:
    """A checkpoint's path relative to the run: folds/<trial>/checkpoint_... (the same for local and bucket runs)."""
    if remote_root is not None:  # Ray names checkpoints in a bucket as bucket/prefix/NAME/folds/...
        return posixpath.relpath(ckpt.split("://", 1)[-1], remote_root.strip("/"))
    return str(Path(ckpt).resolve().relative_to(Path(run_dir).resolve()))


STATUS_ORDER = {"completed": 0, "running": 1, "pruned": 2, "errored": 3}  # the last tie-break of rank_trials


def rank_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials best first, with a `rank` column (1 = best) and a fresh index: the one ranking of the engine
    (best_trial, retention) and the report.

    Completed trials by the metric (MODE), then the others by the epochs they reached and their last fold-mean
    metric (a pruned trial's value comes from fewer epochs, so it never outranks a completed one), then by
    STATUS_ORDER. A missing value ranks last in its group; equal values keep the table's order (trial id)."""
    df = trials.copy()
    if df.empty:
        df.insert(0, "rank", np.arange(1, len(df) + 1))
        return df.reset_index(drop=True)
    unfinished = df.status != "completed"
    df["_status"] = df.status.map(STATUS_ORDER).fillna(len(STATUS_ORDER))
    df["_metric"] = df[METRIC] if MODE == "max" else -df[METRIC]
    df["_unfinished"] = unfinished
    df["_epochs"] = df.epochs_run.where(unfinished, 0)  # completed: all ran the full budget, the metric decides
    df = df.sort_values(["_unfinished", "_epochs", "_metric", "_status"],
                        ascending=[True, False, False, True], na_position="last", kind="stable")
    df = df.drop(columns=["_status", "_metric", "_unfinished", "_epochs"]).reset_index(drop=True)
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    return df


def best_trial(trials: pd.DataFrame) -> pd.Series | None:
    """The best trial by the one metric, among trials that ran the full budget (others are not comparable):
    rank_trials' first completed trial with a value."""
    ranked = rank_trials(trials)
    if ranked.empty:
        return None
    done = ranked[(ranked.status == "completed") & ranked[METRIC].notna()]
    return None if done.empty else done.iloc[0].drop("rank")


def make_summary(cfg: ExperimentConfig, trials: pd.DataFrame, epochs: pd.DataFrame, meta: dict, wall_s: float) -> dict:
    count = (lambda s: int((trials.status == s).sum())) if not trials.empty else (lambda s: 0)
    best = best_trial(trials)
    best_config = None
    best_cv = None
    if best is not None:
        best_config = {k[len("config_"):]: _py(best[k]) for k in best.index if k.startswith("config_")}
        best_cv = {"val_acc_mean": _py(best.val_acc_mean), "val_acc_std": _py(best.val_acc_std),
                   "val_f1_mean": _py(best.val_f1_mean), "val_loss_mean": _py(best.val_loss_mean)}
    return {
        "name": cfg.name, "preset": cfg.preset, "folds": cfg.cv.folds,
        "num_samples": cfg.search.num_samples,
        "n_trials": int(len(trials)),
        "n_trials_completed": count("completed"), "n_trials_pruned": count("pruned"),
        "n_trials_errored": count("errored"),
        "epochs_run_total": int(trials.epochs_run.sum()) if not trials.empty else 0,
        "max_epochs": cfg.train.epochs,
        "metric": METRIC, "mode": MODE,
        "best_trial_id": None if best is None else best.trial_id,
        "best_config": best_config, "best_cv": best_cv,
        "best_checkpoint": None if best is None else best.checkpoint_path,
        "split_fingerprint": meta["split_fingerprint"], "data_fingerprint": meta["data_fingerprint"],
        "n_train": meta["n_train"], "limit_train": cfg.data.limit_train,
        "wall_s": round(wall_s, 2), "versions": meta["versions"], "devices": meta.get("devices"),
        "engine": meta.get("engine"),  # slots, search_start_s, trial_start_latency_s (after the search), restarts
    }


def _py(v):
    return v.item() if hasattr(v, "item") else v


def write_run_tables(run_dir: Path, cfg: ExperimentConfig, meta: dict, statuses: dict[str, str], wall_s: float,
                     live_dir: Path | None = None, remote_root: str | None = None) -> dict:
    trials, epochs = build_tables(run_dir, cfg, statuses, live_dir, remote_root)
    for name, df in (("trials.parquet", trials), ("epochs.parquet", epochs)):
        write_bytes_atomic(Path(run_dir) / name, df.to_parquet(index=False))
    summary = make_summary(cfg, trials, epochs, meta, wall_s)
    write_json_atomic(Path(run_dir) / "summary.json", summary)
    return summary
