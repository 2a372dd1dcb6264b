"""Accuracy against size (analysis.pareto) on small hand-made tables with known answers: the Pareto front
(ties, dominated points, missing values), the smallest trial within half a point, parameter counts
against the model itself, and the exported model's latency read from a hand-written model.json."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd

from analysis import pareto
from analysis.run_tables import Run
from distributed.config import PRESETS
from distributed.model import make_model, num_params


def test_pareto_front_of_a_known_table():
    df = pd.DataFrame({
        "trial_id": ["small", "mid", "mid_tie", "mid_worse", "big", "big_dominated", "same_acc_bigger", "nan"],
        "params":   [100,     1_000, 1_000,     1_000,       10_000, 20_000,        2_000,             50],
        "acc":      [0.80,    0.85,  0.85,      0.84,        0.90,   0.89,          0.85,              np.nan],
    }, index=list("abcdefgh"))
    front = pareto.pareto_front(df, "params", "acc")
    assert front.index.tolist() == list("abcdefgh")  # aligned with the input, not reordered
    # mid and mid_tie are identical: neither dominates the other, both are on the front. mid_worse has
    # mid's size and less accuracy; same_acc_bigger has mid's accuracy and more parameters; big_dominated
    # is bigger and worse than big. A missing accuracy is never on the front.
    assert df.trial_id[front].tolist() == ["small", "mid", "mid_tie", "big"]


def test_pareto_front_of_one_and_of_a_chain():
    one = pd.DataFrame({"p": [5], "a": [0.5]})
    assert pareto.pareto_front(one, "p", "a").tolist() == [True]
    chain = pd.DataFrame({"p": [1, 2, 3, 4], "a": [0.4, 0.3, 0.2, 0.1]})  # each bigger one is worse
    assert pareto.pareto_front(chain, "p", "a").tolist() == [True, False, False, False]


def test_smallest_within_half_a_point():
    df = pd.DataFrame({"trial_id": ["best", "close", "edge", "edge_worse", "far"],
                       "params": [10_000, 4_000, 2_000, 2_000, 500],
                       "val_acc_mean": [0.900, 0.897, 0.895, 0.8950 - 1e-4, 0.880]})
    # edge is exactly 0.5 points behind (inclusive); edge_worse is as small but just outside; far is 2 points behind
    assert pareto.smallest_within(df).trial_id == "edge"
    assert pareto.within_of_best(df).tolist() == [True, True, True, False, False]
    assert pareto.smallest_within(df, points=0.4).trial_id == "close"
    assert pareto.smallest_within(df, points=3).trial_id == "far"
    assert pareto.smallest_within(df, points=0).trial_id == "best"
    # of equally small trials within the margin, the more accurate
    tie = df.assign(params=[10_000, 4_000, 2_000, 2_000, 500], val_acc_mean=[0.9, 0.897, 0.896, 0.899, 0.8])
    assert pareto.smallest_within(tie).trial_id == "edge_worse"


def run_of(tmp_path, rows: list[dict]) -> Run:
    """A Run whose trials.parquet holds `rows` (trial_id, status, val_acc_mean, val_acc_std, searched values)."""
    cfg = PRESETS["smoke"]
    records = []
    for r in rows:
        sampled = {k: v for k, v in r.items() if k not in ("trial_id", "status", "val_acc_mean", "val_acc_std")}
        model = replace(cfg.model, **{k: v for k, v in sampled.items() if hasattr(cfg.model, k)})
        train = replace(cfg.train, **{k: v for k, v in sampled.items() if hasattr(cfg.train, k)})
        records.append({"trial_id": r["trial_id"], "status": r["status"], "epochs_run": 3,
                        "val_acc_mean": r["val_acc_mean"], "val_acc_std": r["val_acc_std"],
                        **{f"config_{k}": v for k, v in {**vars(model), **vars(train)}.items()},
                        "searched": ",".join(sorted(sampled))})
    trials = pd.DataFrame(records)
    best = trials[trials.status == "completed"].sort_values("val_acc_mean", ascending=False).trial_id.iloc[0]
    return Run(tmp_path, {"name": "x", "folds": 3, "max_epochs": 3, "best_trial_id": best}, cfg, trials,
               pd.DataFrame())


def test_params_of_builds_each_trial_model(tmp_path):
    run = run_of(tmp_path, [
        dict(trial_id="a", status="completed", val_acc_mean=0.8, val_acc_std=0.01, width=8, dropout=0.1),
        dict(trial_id="b", status="completed", val_acc_mean=0.7, val_acc_std=0.01, width=16, depth=3, dropout=0.2),
        dict(trial_id="c", status="pruned", val_acc_mean=0.5, val_acc_std=0.01, width=8, dropout=0.3, lr=1e-2)])
    params = pareto.params_of(run)
    base = PRESETS["smoke"].model
    small = num_params(make_model(replace(base, width=8)))
    assert params.to_dict() == {"a": small, "b": num_params(make_model(replace(base, width=16, depth=3))),
                                "c": small}  # dropout and lr change no parameter
    assert params["b"] > params["a"]


def write_model_json(run_dir, trial_id, ensemble: dict) -> None:
    (run_dir / "model").mkdir(exist_ok=True)
    (run_dir / "model" / "model.json").write_text(json.dumps(
        {"trial_id": trial_id, "models": {"ensemble": ensemble, "single": {"params": 1}}}))


def test_exported_latency_from_model_json(tmp_path):
    assert pareto.exported_latency(tmp_path) == (None, {})  # no export yet
    write_model_json(tmp_path, "b", {"params": 123, "latency_ms": {"batch_1": 0.75, "batch_256": 0.02}})
    assert pareto.exported_latency(tmp_path) == ("b", {"latency_ms_b1": 0.75, "latency_ms_b256": 0.02})
    write_model_json(tmp_path, "b", {"params": 123})  # an export without latencies
    assert pareto.exported_latency(tmp_path) == ("b", {})
    (tmp_path / "model" / "model.json").write_text("{not json")
    assert pareto.exported_latency(tmp_path) == (None, {})


def test_size_table_keeps_completed_trials_and_fills_the_exported_latency(tmp_path):
    run = run_of(tmp_path, [
        dict(trial_id="wide", status="completed", val_acc_mean=0.85, val_acc_std=0.01, width=16, dropout=0.1),
        dict(trial_id="narrow", status="completed", val_acc_mean=0.846, val_acc_std=0.02, width=4, dropout=0.2),
        dict(trial_id="mid", status="completed", val_acc_mean=0.84, val_acc_std=0.01, width=8, dropout=0.3),
        dict(trial_id="tiny", status="pruned", val_acc_mean=0.6, val_acc_std=0.05, width=2, dropout=0.3)])
    write_model_json(tmp_path, "narrow", {"latency_ms": {"batch_1": 0.5, "batch_256": 0.01}})
    table = pareto.size_table(run)
    assert table.trial_id.tolist() == ["narrow", "mid", "wide"]  # smallest first; the pruned trial left out
    assert table.on_front.tolist() == [True, False, True]
    assert table.within_half_point.tolist() == [True, False, True]
    assert table.dropout.tolist() == [0.2, 0.3, 0.1] and "width" in table  # the searched values
    assert table.latency_ms_b1.tolist()[0] == 0.5 and table.latency_ms_b256.tolist()[0] == 0.01
    assert table[["latency_ms_b1", "latency_ms_b256"]].iloc[1:].isna().all().all()
    assert pareto.smallest_within(table).trial_id == "narrow"
