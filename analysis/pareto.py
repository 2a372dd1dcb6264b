"""Accuracy against size: each completed trial's parameter count, the Pareto front, and the smallest
configuration that is nearly as good as the best.

A user who would ship a smaller model needs to know what it costs in accuracy. Only completed trials are
compared: a pruned trial's accuracy comes from fewer epochs, so it would look worse than its size deserves.
The latency of an exported model (RUN_DIR/model/model.json, written by experiments/export.py) joins the
table where it was measured; the export measures one trial, so the other rows leave it empty.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.run_tables import Run
from distributed.config import METRIC, ModelConfig, apply_hparams
from distributed.model import make_model, num_params

WITHIN_POINTS = 0.5  # "as good as the best" = within half a percentage point of fold-mean accuracy
LATENCY_COLUMNS = {"latency_ms_b1": "batch_1", "latency_ms_b256": "batch_256"}  # table column -> model.json key


def hparams_of(row: pd.Series) -> dict:
    """The values a trial sampled (its `searched` names, read from its config_ columns)."""
    names = row.searched.split(",") if isinstance(row.searched, str) else []
    return {n: row[f"config_{n}"] for n in names if n}


def params_of(run: Run) -> pd.Series:
    """trial_id -> parameter count of the model the trial trained: the run's model config with the trial's
    sampled values applied, built and counted. Counted once per distinct model config (a full search
    repeats few architectures, and building the widest CNN takes a while on a CPU)."""
    counts: dict[ModelConfig, int] = {}
    out = {}
    for _, row in run.trials.iterrows():
        model_cfg, _ = apply_hparams(run.config, hparams_of(row))
        if model_cfg not in counts:
            counts[model_cfg] = num_params(make_model(model_cfg))
        out[row.trial_id] = counts[model_cfg]
    return pd.Series(out, name="params", dtype="int64")


def pareto_front(df: pd.DataFrame, size_col: str, acc_col: str) -> pd.Series:
    """Boolean mask (df's index): the rows no other row dominates. Row j dominates row i when it is no
    larger and no less accurate, and strictly better in one of the two.

    Ties: rows with the same size and the same accuracy do not dominate each other, so all of them are on
    the front (or none); of rows with the same size, only the most accurate can be; of rows with the same
    accuracy, only the smallest. Rows with a missing size or accuracy are never on the front.
    """
    size, acc = df[size_col].to_numpy(dtype=float), df[acc_col].to_numpy(dtype=float)
    valid = ~(np.isnan(size) | np.isnan(acc))
    s, a = size[valid], acc[valid]
    # n x n comparisons: fine for the tens of trials a search has, and plainly the definition above
    no_worse = (s[None, :] <= s[:, None]) & (a[None, :] >= a[:, None])     # [i, j]: j is no worse than i
    better = (s[None, :] < s[:, None]) | (a[None, :] > a[:, None])         # [i, j]: j beats i somewhere
    on_front = np.zeros(len(df), dtype=bool)
    on_front[valid] = ~(no_worse & better).any(axis=1)
    return pd.Series(on_front, index=df.index, name="on_front")


def within_of_best(df: pd.DataFrame, points: float = WITHIN_POINTS, acc_col: str = METRIC) -> pd.Series:
    """Boolean mask: accuracy at most `points` percentage points below the best (inclusive)."""
    best = df[acc_col].max()
    # 1e-12: 0.9 - 0.005 is not exactly 0.895 in floats; a trial exactly 0.5 points behind counts as within
    return df[acc_col] >= best - points / 100 - 1e-12


def smallest_within(df: pd.DataFrame, points: float = WITHIN_POINTS, size_col: str = "params",
                    acc_col: str = METRIC) -> pd.Series:
    """The smallest row whose accuracy is within `points` percentage points of the best; of equally small
    rows the most accurate, then the first. It is on the Pareto front: whatever dominated it would also be
    within `points` and smaller, or as small and more accurate."""
    near = df[within_of_best(df, points, acc_col)]
    order = near.sort_values([size_col, acc_col], ascending=[True, False], kind="stable")
    return order.iloc[0]


def exported_latency(run_dir: Path) -> tuple[str | None, dict[str, float]]:
    """(trial_id, {table column: ms per image}) of the ensemble exported to RUN_DIR/model, read from its
    model.json; (None, {}) without one. A model.json without latencies, or unreadable, gives no latency:
    the report does not depend on an export."""
    path = Path(run_dir) / "model" / "model.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None, {}
    latency = ((meta.get("models") or {}).get("ensemble") or {}).get("latency_ms") or {}
    values = {col: float(latency[key]) for col, key in LATENCY_COLUMNS.items() if key in latency}
    return meta.get("trial_id"), values


def size_table(run: Run) -> pd.DataFrame:
    """One row per completed trial, smallest first: trial_id, params, val_acc_mean, val_acc_std, on_front,
    within_half_point, the searched hyperparameters, and the exported ensemble's CPU latency (ms per
    image at batch 1 and 256) on its trial's row."""
    done = run.trials[(run.trials.status == "completed") & run.trials[METRIC].notna()]
    table = pd.DataFrame({"trial_id": done.trial_id.to_numpy(),
                          "params": params_of(run).reindex(done.trial_id).to_numpy(),
                          "val_acc_mean": done[METRIC].to_numpy(dtype=float),
                          "val_acc_std": done.val_acc_std.to_numpy(dtype=float)})
    table["on_front"] = pareto_front(table, "params", "val_acc_mean")
    table["within_half_point"] = within_of_best(table)
    for name in run.searched:
        table[name] = done[f"config_{name}"].to_numpy()
    trial_id, latency = exported_latency(run.run_dir)
    for col in LATENCY_COLUMNS:
        table[col] = np.where(table.trial_id == trial_id, latency.get(col, np.nan), np.nan)
    return table.sort_values(["params", "val_acc_mean"], ascending=[True, False], kind="stable",
                             ignore_index=True)
