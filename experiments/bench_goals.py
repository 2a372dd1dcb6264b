"""bench.py's figures against their goals: GOALS, the printed table, and the Markdown table kept in
BENCHMARKS.md between its markers (rewritten by every bench.py run, or alone with --table-only).

    python experiments/bench.py --table-only     # the BENCHMARKS.md table from the figures in bench.json
"""
from __future__ import annotations

from pathlib import Path

import bench_racing


def print_table(out: dict, figures: tuple[str, ...]) -> None:
    """The machine, the throughput variants and then each of `figures` (a bench.json's keys), on stdout."""
    m, v = out["machine"], out["versions"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores, GPU {m['gpu']}; torch {v['torch']}, ray {v['ray']}, "
          f"optuna {v['optuna']}; repeats {out['repeats']}")
    details = out["notes"].get("details", {})
    tp = details.get("throughput", {})
    for name in ("seed_model", "quick_model"):
        if name in tp:
            d = tp[name]
            for variant, s in d["img_s"].items():
                print(f"  {name:11s} {variant:13s} img/s  min {s['min']:8.0f}  median {s['median']:8.0f}  (n={s['n']})")
            print(f"  {name:11s} MFU {d['mfu']:.3f} (FLOPs/img {d['train_flops_per_image'] / 1e6:.1f} M, "
                  f"peak {tp['peak_flop_s'] / 1e9:.0f} GFLOP/s)")
    for key in figures:
        value = out[key]
        shown = "null: " + str(out["notes"].get(key, "")) if value is None else f"{value:.4g}"
        print(f"{key:30s} {shown}")


# (figure, what it is, goal as text, goal check) for BENCHMARKS.md; a check of None: reported, no goal
GOALS = (
    ("throughput_img_s", "fold-loop training throughput, seed-sized CNN (img/s)", "", None),
    ("throughput_vs_compute_only", "... as a fraction of compute only (same model, no augmentation)", ">= 0.9",
     lambda v: v >= 0.9),
    ("throughput_vs_seed_pipeline", "... against the seed's PIL + DataLoader pipeline", "> 1 (GPU: >= 5)",
     lambda v: v > 1),
    ("mfu", "model FLOP/s / measured peak, seed-sized CNN", ">= 0.60", lambda v: v >= 0.6),
    ("overhead_fraction", "share of a quick search's wall time not spent computing (slot start included)",
     "<= 0.15", lambda v: v <= 0.15),
    ("trial_start_latency_s", "median s from Tune starting a trial to its folds' first step, after the first",
     "<= 2", lambda v: v <= 2),
    ("search_start_s", "one-time start of the slots (coordinator + warm worker groups)", "", None),
    ("quick_search_wall_s", "wall time of the quick search (bench.json: against the engine before, with --before)",
     "", None),
    ("asha_epoch_ratio", "epochs FIFO / epochs ASHA, same seed and trials", ">= 3", lambda v: v >= 3),
    ("asha_acc_gap", "best fold-mean accuracy FIFO minus ASHA", "<= 0.005", lambda v: v <= 0.005),
    ("time_to_93_s", "training seconds to 93% test accuracy (flip TTA), one model, 60k images", "<= 300",
     lambda v: v <= 300),
    ("best_test_acc_15min", "best test accuracy within 15 minutes of training", "", None),
    ("full_ensemble_test_acc", "test accuracy of the full preset's best 5-fold ensemble", ">= 0.945",
     lambda v: v >= 0.945),
    ("recipe_ema_val_gain", "EMA of the weights (half-life 0.25 epoch): fold-mean val acc gain after the last "
     "epoch, quick preset (paired, mean of 3 seeds)", "", None),
    ("recipe_ema_rung_gain", "... at the first ASHA rung (epoch = grace period)", "", None),
    ("recipe_ema_test_gain", "... 5-fold ensemble test acc gain (measured after the choice, never used for it)", "",
     None),
    ("racing_regret_asha", "ASHA's regret: FIFO's best fold-mean accuracy minus ASHA's (median over seeds)", "",
     None),
    ("racing_regret_fold_asha", "fold-asha's regret, the same way (median over seeds)", "<= half of ASHA's",
     lambda v, out: out.get("racing_regret_asha") is not None and v <= out["racing_regret_asha"] / 2),
    ("racing_asha_stops_fifo_winner", "seeds in which ASHA stopped the configuration FIFO ranks first (of those "
     "both trained)", "", None),
    ("racing_fold_asha_stops_fifo_winner", "seeds in which fold-asha stopped it", "<= 1 (of 5 seeds)",
     lambda v: v <= 1),
    ("racing_epoch_ratio", "epochs fold-asha / epochs ASHA, same seed (median over seeds)", "<= 1.5",
     lambda v: v <= 1.5),
    ("gpu_epoch_s_small", "GPU: w32 d3 b64 (config C), 5 folds sharing one GPU, per-fold epoch s", "<= 1.0",
     lambda v: v <= 1.0),
    ("gpu_epoch_s_wide", "GPU: w64 d2 b256 (config A), the same way", "<= 0.7", lambda v: v <= 0.7),
    ("gpu_mfu_deep", "GPU: w64 d3 b256 (config B), model FLOP/s of the 5 folds / measured bf16 peak", ">= 0.25",
     lambda v: v >= 0.25),
    ("gpu_full_search_s", "GPU: wall s of `tune.py --num-gpus 1` (full preset, all its trials)", "<= 300",
     lambda v: v <= 300),
    ("gpu_fixed_trial_acc", "GPU: fold-mean val acc of config A's trial (30 epochs)", ">= 0.948",
     lambda v: v >= 0.948),
    ("gpu_full_ensemble_test_acc", "GPU: test acc of the full search's best 5-fold ensemble (bench.py --only "
     "ensemble --ensemble-run RUN)", ">= 0.955", lambda v: v >= 0.955),
)
TABLE_BEGIN, TABLE_END = "<!-- bench.py table: begin -->", "<!-- bench.py table: end -->"


def goal_met(check, value, out: dict) -> bool:
    """A goal's check: of the figure alone, or (two arguments) of the figure and the others (a relative goal)."""
    return check(value, out) if check.__code__.co_argcount == 2 else check(value)


def markdown_table(out: dict) -> str:
    """The figures of `out` (a bench.json) next to their goals, as the Markdown block bench.py keeps in BENCHMARKS.md."""
    m, v = out["machine"], out["versions"]
    by_cpu = {}  # the machine each group was measured on (bench.json notes.runs), when they differ
    for group, run in ((out.get("notes") or {}).get("runs") or {}).items():
        by_cpu.setdefault(run.get("machine") or m["cpu"], []).append(group)
    where = (next(iter(by_cpu), m["cpu"]) if len(by_cpu) <= 1 else
             "; ".join(f"{cpu} ({', '.join(groups)})" for cpu, groups in by_cpu.items()))
    seeds = ((out.get("notes") or {}).get("details", {}).get("racing") or {}).get("seeds")
    partial = (f" ({len(seeds)} of {len(bench_racing.RACING_SEEDS)} seeds: {','.join(map(str, seeds))})"
               if seeds is not None and len(seeds) < len(bench_racing.RACING_SEEDS) else "")
    lines = [TABLE_BEGIN,
             f"Machine: {where}, {m['cores']} cores, GPU: {m['gpu'] or 'none'}; torch {v['torch']}, "
             f"ray {v['ray']}, optuna {v['optuna']}; throughput repeats: {out['repeats']} (median shown).",
             "", "| figure | measured | goal | met |", "|---|---|---|---|"]
    for key, label, goal, check in GOALS:
        value = out.get(key)
        if value is None:
            shown, met = f"null: {out['notes'].get(key, 'not measured')}", "not measured"
        else:
            shown = f"{value:.4g}"
            met = "" if check is None else ("yes" if goal_met(check, value, out) else "**no**")
            if key in bench_racing.KEYS:
                shown += partial
        lines.append(f"| `{key}`: {label} | {shown} | {goal or '(reported)'} | {met} |")
    lines.append(TABLE_END)
    return "\n".join(lines)


def write_markdown_table(path: Path, out: dict) -> None:
    """Replace the block between the table markers in `path` (appended at the end if it has none)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = markdown_table(out)
    if TABLE_BEGIN in text and TABLE_END in text:
        head, rest = text.split(TABLE_BEGIN, 1)
        text = head + block + rest.split(TABLE_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
