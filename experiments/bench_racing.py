"""bench.py's racing group (figure 7, only with --only racing: 15 searches, about 3 hours on 2 cores).

The hpo group's search (bench_search.HPO_ARGS) with FIFO, ASHA and fold-asha for each of 5 Optuna seeds: per
scheduler the epochs used, the best fold-mean accuracy, the regret against FIFO's best and how often it
stopped FIFO's winner. With --racing-dir the runs are kept, and a finished run of the same search is reused.

    python experiments/bench.py --only racing --racing-dir racing   # fold-asha against ASHA and FIFO, 5 seeds
"""
from __future__ import annotations

import json
import math
import statistics
import tempfile
from dataclasses import asdict
from pathlib import Path

from bench_common import summarise
from bench_search import HPO_ARGS, SMOKE_SEARCH, search_config, tune_in_process

KEYS = ("racing_regret_asha", "racing_regret_fold_asha", "racing_asha_stops_fifo_winner",
        "racing_fold_asha_stops_fifo_winner", "racing_epoch_ratio")
# HPO_ARGS's search for each seed and scheduler (--quick: one seed of SMOKE_SEARCH)
RACING_SCHEDULERS = ("fifo", "asha", "fold-asha")
RACING_SEEDS = (0, 1, 2, 3, 4)


def racing_run(run_dir: Path) -> dict:
    """What the racing figures need from a finished search: its epochs, best fold-mean accuracy, the searched
    values of its best trial, and per trial the searched values, status and epochs run."""
    import pandas as pd
    summary = json.loads((run_dir / "summary.json").read_text())
    space = json.loads((run_dir / "config.json").read_text())["search"]["space"]
    trials = pd.read_parquet(run_dir / "trials.parquet")
    best = summary["best_config"]
    return {"epochs_run_total": int(summary["epochs_run_total"]), "max_epochs": int(summary["max_epochs"]),
            "best_val_acc_mean": (summary["best_cv"] or {}).get("val_acc_mean"), "best_trial_id": summary["best_trial_id"],
            "best_config": None if best is None else {k: best[k] for k in space},
            "trials": [{"trial_id": r.trial_id, "status": r.status, "epochs_run": int(r.epochs_run),
                        "val_acc_mean": None if pd.isna(r.val_acc_mean) else float(r.val_acc_mean),
                        "config": {k: getattr(r, f"config_{k}") for k in space}} for r in trials.itertuples()],
            "wall_s": float(summary["wall_s"])}


def same_config(a: dict, b: dict) -> bool:
    """The same searched values (Optuna's start-up draws are identical floats across searches with one seed)."""
    return a.keys() == b.keys() and all(math.isclose(float(a[k]), float(b[k]), rel_tol=1e-9) for k in a)


def trials_of(run: dict, config: dict) -> list[dict]:
    """The trials of `run` that trained `config`."""
    return [t for t in run["trials"] if same_config(t["config"], config)]


def stopped_config(run: dict, config: dict) -> bool | None:
    """Whether `run` stopped a trial of `config` before max_t; None when no trial of it ran (TPE proposed others)."""
    matches = trials_of(run, config)
    if not matches:
        return None
    return any(t["status"] == "pruned" or t["epochs_run"] < run["max_epochs"] for t in matches)


def fifo_first_shared(fifo: dict, run: dict) -> dict | None:
    """The configuration FIFO ranks first among those `run` also trained: FIFO's best completed trial whose
    searched values `run` has a trial of (the first 10 start-up configurations are shared by every search with
    one Optuna seed; TPE's later proposals follow each scheduler's own results). None: they share none."""
    ranked = sorted((t for t in fifo["trials"] if t["status"] == "completed" and t["val_acc_mean"] is not None),
                    key=lambda t: -t["val_acc_mean"])
    return next((t["config"] for t in ranked if trials_of(run, t["config"])), None)


def racing_figures(runs: dict) -> tuple[dict, dict, dict]:
    """The racing group's figures from {seed: {scheduler: racing_run dict}}.

    Per seed and scheduler: epochs used, best fold-mean accuracy, regret (FIFO's best minus this one's), and
    whether it stopped the configuration FIFO ranks first among those both trained (fifo_first_shared; None
    when they share none), and whether it trained FIFO's overall winner at all. Per scheduler: median and
    range over seeds, and the count of seeds in which it stopped FIFO's first. The figures:
    fold-asha's epochs over ASHA's (median of the per-seed ratios), both median regrets, and both counts.
    Returns (figures, {"per_seed": ..., "per_scheduler": ...}, reasons for null figures).
    """
    per_seed = {}
    for seed, r in runs.items():
        fifo = r["fifo"]
        per_seed[seed] = {}
        for s in RACING_SCHEDULERS:
            best, first = r[s]["best_val_acc_mean"], fifo_first_shared(fifo, r[s])
            per_seed[seed][s] = {
                "epochs": r[s]["epochs_run_total"], "best": best,
                "regret": None if best is None or fifo["best_val_acc_mean"] is None else fifo["best_val_acc_mean"] - best,
                "fifo_first_shared": first,
                "stopped_fifo_winner": None if first is None else stopped_config(r[s], first),
                "ran_fifo_winner": fifo["best_config"] is not None and bool(trials_of(r[s], fifo["best_config"]))}
        per_seed[seed]["epoch_ratio"] = r["fold-asha"]["epochs_run_total"] / r["asha"]["epochs_run_total"]
    per_scheduler = {}
    for s in RACING_SCHEDULERS:
        rows = [d[s] for d in per_seed.values()]
        per_scheduler[s] = {key: summarise(vals) if (vals := [x[key] for x in rows if x[key] is not None]) else None
                            for key in ("epochs", "best", "regret")}
        per_scheduler[s]["stopped_fifo_winner"] = sum(x["stopped_fifo_winner"] is True for x in rows)
        per_scheduler[s]["fifo_winner_not_run"] = sum(not x["ran_fifo_winner"] for x in rows)
        per_scheduler[s]["seeds"] = len(rows)
    ratios = [d["epoch_ratio"] for d in per_seed.values()]
    figures = {"racing_epoch_ratio": statistics.median(ratios) if ratios else None,
               "racing_regret_asha": (per_scheduler["asha"]["regret"] or {}).get("median"),
               "racing_regret_fold_asha": (per_scheduler["fold-asha"]["regret"] or {}).get("median"),
               "racing_asha_stops_fifo_winner": per_scheduler["asha"]["stopped_fifo_winner"] if per_seed else None,
               "racing_fold_asha_stops_fifo_winner": per_scheduler["fold-asha"]["stopped_fifo_winner"] if per_seed else None}
    reasons = {key: "no seed's searches completed a trial at max_t in FIFO and in this scheduler: no regret"
               for key in ("racing_regret_asha", "racing_regret_fold_asha") if figures[key] is None}
    for key in ("racing_epoch_ratio", "racing_asha_stops_fifo_winner", "racing_fold_asha_stops_fifo_winner"):
        if figures[key] is None:
            reasons[key] = "no seed was run"
    return figures, {"per_seed": per_seed, "per_scheduler": per_scheduler}, reasons


def racing_table(details: dict) -> str:
    """The racing group's per-scheduler Markdown table: median [min, max] over seeds."""
    def span(d, fmt):
        return "-" if d is None else f"{d['median']:{fmt}} [{d['min']:{fmt}}, {d['max']:{fmt}}]"
    lines = ["| scheduler | epochs used | best fold-mean val accuracy | regret vs FIFO's best | "
             "stopped FIFO's first (seeds) | did not train FIFO's winner (seeds) |", "|---|---|---|---|---|---|"]
    for s, d in details["per_scheduler"].items():
        lines.append(f"| {s} | {span(d['epochs'], '.0f')} | {span(d['best'], '.4f')} | {span(d['regret'], '+.4f')} | "
                     f"{d['stopped_fifo_winner']} of {d['seeds']} | {d['fifo_winner_not_run']} of {d['seeds']} |")
    return "\n".join(lines)


def racing_search_args(base: list[str], seed: int, scheduler: str) -> list[str]:
    return base + ["--search-seed", str(seed), "--scheduler", scheduler]


def matches_args(run_dir: Path, args: list[str]) -> bool:
    """Whether a finished run in `run_dir` is the search tune.py `args` would run (data, model, train, cv and
    search sections of its config.json), so the racing group can reuse it instead of running it again."""
    if not (run_dir / "summary.json").exists() or not (run_dir / "config.json").exists():
        return False
    cfg, _ = search_config(args + ["--name", run_dir.name, "--storage-path", str(run_dir.parent)])
    want = json.loads(json.dumps(asdict(cfg)))
    have = json.loads((run_dir / "config.json").read_text())
    return all(want[k] == have.get(k) for k in ("data", "model", "train", "cv", "search"))


def bench_racing(quick: bool, racing_args: list[str], racing_dir: Path | None = None,
                 seeds: tuple[int, ...] = RACING_SEEDS) -> tuple[dict, dict, dict]:
    """Fold-paired ASHA against ASHA and FIFO: the hpo group's search, per seed, with each scheduler.

    With racing_dir the 15 runs are kept there as seed{S}-{scheduler}, and a finished run of the same search is
    reused (the three searches of a seed belong to one machine: see BENCHMARKS.md section 4)."""
    base = (SMOKE_SEARCH if quick else list(HPO_ARGS)) + racing_args
    runs, commands = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(racing_dir) if racing_dir is not None else Path(tmp)
        for seed in (seeds[:1] if quick else seeds):
            runs[seed] = {}
            for scheduler in RACING_SCHEDULERS:
                args, name = racing_search_args(base, seed, scheduler), f"seed{seed}-{scheduler}"
                commands[name] = "python experiments/tune.py " + " ".join(args)
                if matches_args(storage / name, args):
                    print(f"racing: {name}: reusing the finished run in {storage / name}", flush=True)
                else:
                    print(f"racing: {name}: {commands[name]}", flush=True)
                    tune_in_process(args, name, storage)
                runs[seed][scheduler] = racing_run(storage / name)
    figures, details, reasons = racing_figures(runs)
    details.update(seeds=list(runs), commands=commands,
                   wall_s={f"seed{seed}-{s}": r[s]["wall_s"] for seed, r in runs.items() for s in RACING_SCHEDULERS})
    print(racing_table(details), flush=True)
    return figures, details, reasons

