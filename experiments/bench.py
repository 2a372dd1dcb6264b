"""Benchmarks of the engine on the machine it runs on -> bench.json, plus a printed table.

This file is the CLI (its flags, and each group handed to its module beside it); bench.json keeps every group's
figures, their details and the machine each group ran on. The groups, each against a baseline run in the same
process:
  throughput  bench_throughput.py: the fold training loop (uint8 data + on-device augmentation) in images/s,
              against the same steps over pre-made tensors and against the seed's PIL + DataLoader pipeline;
              MFU over the measured peak of a large matmul.
  search      bench_search.py: a real quick-preset search (ASHA): the share of its wall time the folds spend
              computing.
  hpo         bench_search.py: one search twice, ASHA and FIFO (same Optuna seed and trial count), at a budget
              where successive halving has rungs to work with (HPO_ARGS): epochs consumed and best accuracy.
  accuracy    bench_accuracy.py: one model trained on all 60,000 images with distributed.train: seconds to 93%
              test accuracy (flip TTA, as the recipe says), and the best test accuracy within 15 minutes.
  ensemble    bench_ensemble.py: the full preset's 5-fold ensemble, read from a finished full-preset run and
              its report (--ensemble-run RUN_DIR); without one, only an estimate of its training time.
  recipe      bench_recipe.py (only with --only recipe: 6 fixed 5-fold runs, about 12 minutes on 2 cores): a recipe
              change (the EMA of the weights) against the recipe without it, 3 seeds, paired: fold-mean validation
              accuracy and the 5-fold ensemble's test accuracy.
  racing      bench_racing.py (only with --only racing: 15 searches, about 3 hours on 2 cores): the hpo group's
              search with FIFO, ASHA and fold-asha for each of 5 Optuna seeds: per scheduler the epochs used,
              the best fold-mean accuracy, the regret against FIFO's best and how often it stopped FIFO's winner.
  gpu         bench_gpu.py (only with --only gpu, on one CUDA GPU, <= 8 minutes): the fold loop's GPU figures,
              lever by lever, and the full preset's search wall time.
The searches run in this process through distributed.launch.run_tune, the entry point tune.py calls. Shared
helpers (machine, versions, FLOPs, matmul peak) are in bench_common.py; the goals and both tables in
bench_goals.py.

    python experiments/bench.py                          # everything, into bench.json (about an hour on 2 cores)
    python experiments/bench.py --quick --out /tmp/b.json  # reduced sizes, a few minutes: checks the plumbing
    python experiments/bench.py --only throughput        # re-measure some groups, keep the others in --out
    python experiments/bench.py --only ensemble --ensemble-run results/full   # figure 6 from a full run (GPU: gpu_ keys)
    python experiments/bench.py --only racing --racing-dir racing   # fold-asha against ASHA and FIFO, 5 seeds
    python experiments/bench.py --only recipe           # EMA of the weights against none, 3 seeds, paired
    python experiments/bench.py --only gpu               # on a GPU machine: per-fold epoch s, MFU, full search
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))  # the group modules beside this file, also when loaded by path

import torch  # noqa: E402

import bench_accuracy  # noqa: E402
import bench_ensemble  # noqa: E402
import bench_gpu  # noqa: E402
import bench_racing  # noqa: E402
import bench_recipe  # noqa: E402
import bench_search  # noqa: E402
import bench_throughput  # noqa: E402
from bench_common import load_avg, machine, priority, versions  # noqa: E402
from bench_goals import print_table, write_markdown_table  # noqa: E402
from distributed.cli import ArgumentParser  # noqa: E402
from distributed.config import EXIT_OK, ConfigError, DataConfig  # noqa: E402
from distributed.data import load  # noqa: E402

GROUPS = {  # each group's figures, in bench.json's and the printed table's order
    "throughput": bench_throughput.KEYS,
    "search": bench_search.SEARCH_KEYS,
    "hpo": bench_search.HPO_KEYS,
    "accuracy": bench_accuracy.KEYS,
    "ensemble": bench_ensemble.KEYS,
    "recipe": bench_recipe.KEYS,
    "racing": bench_racing.KEYS,
    "gpu": bench_gpu.KEYS,
}
# recipe is 6 runs and racing 15 searches, gpu needs a CUDA GPU: they are asked for by name
DEFAULT_GROUPS = tuple(g for g in GROUPS if g not in ("recipe", "racing", "gpu"))
FIGURES = tuple(k for keys in GROUPS.values() for k in keys)


def seed_list(text: str) -> tuple[int, ...]:
    """--racing-seeds: "0,1,2" -> (0, 1, 2); at least one, no repeats."""
    from argparse import ArgumentTypeError
    try:
        seeds = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ArgumentTypeError(f"{text!r}: comma-separated integers, e.g. 0,1,2,3,4") from None
    if len(set(seeds)) != len(seeds):
        raise ArgumentTypeError(f"{text!r}: a seed is repeated")
    return seeds


def measure(group: str, args, data, device: torch.device, repeats: int) -> tuple[dict, dict, dict]:
    """One group's figures, their details for bench.json's notes, and the reasons for its null figures."""
    if group == "throughput":
        return bench_throughput.bench_throughput(data, device, args.quick, repeats, args.seed_workers)
    if group == "search":
        return bench_search.bench_search(args.quick, args.search_args.split(), args.before)
    if group == "hpo":
        return bench_search.bench_hpo(args.quick, args.hpo_args.split())
    if group == "accuracy":
        return bench_accuracy.bench_accuracy(data, device, args.quick)
    if group == "recipe":
        return bench_recipe.bench_recipe(args.quick, args.recipe_args.split())
    if group == "racing":
        return bench_racing.bench_racing(args.quick, args.racing_args.split(), args.racing_dir, args.racing_seeds)
    if group == "gpu":
        return bench_gpu.bench_gpu(data, device, args.quick)
    return bench_ensemble.bench_ensemble(data, device, args.quick, args.ensemble_run)


def main(argv=None) -> int:
    parser = ArgumentParser(prog="bench.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced sizes (a few minutes): checks the plumbing")
    parser.add_argument("--out", default=str(ROOT / "bench.json"), help="where to write (default: bench.json)")
    parser.add_argument("--only", default=",".join(DEFAULT_GROUPS),
                        help=f"comma-separated groups to measure, of {', '.join(GROUPS)} (default all but "
                             f"racing); the others keep their values from --out")
    parser.add_argument("--repeats", type=int, default=None, help="throughput repeats (default 5, --quick 2)")
    parser.add_argument("--seed-workers", type=int, default=0,
                        help="DataLoader workers of the seed pipeline baseline (default 0: see BENCHMARKS.md)")
    parser.add_argument("--markdown", default=None,
                        help="the Markdown file whose figures table to rewrite (default: BENCHMARKS.md, "
                             "except with --quick; 'none' to skip)")
    parser.add_argument("--table-only", action="store_true",
                        help="measure nothing: rewrite the --markdown table from the figures in --out")
    parser.add_argument("--before", type=Path, default=None,
                        help="a checkout of an earlier engine (e.g. git worktree add ../before 9f66c8d): the search "
                             "group also runs the same search with its tune.py, for the wall-time comparison")
    parser.add_argument("--search-args", default="", help="extra tune.py flags for the overhead search, e.g. "
                                                          "'--num-samples 12'")
    parser.add_argument("--hpo-args", default="",
                        help=f"extra tune.py flags for both HPO searches (after {' '.join(bench_search.HPO_ARGS)}), "
                             f"e.g. '--limit-train 10000'")
    parser.add_argument("--racing-args", default="",
                        help=f"extra tune.py flags for the racing searches (after {' '.join(bench_search.HPO_ARGS)})")
    parser.add_argument("--recipe-args", default="",
                        help="extra tune.py flags for the recipe group's runs (after --preset quick), e.g. "
                             "'--limit-train 10000'")
    parser.add_argument("--racing-dir", type=Path, default=None,
                        help="keep the racing group's 15 runs here (seed{S}-{scheduler}) and reuse the finished "
                             "ones of the same search, so an interrupted benchmark continues (default: a temporary "
                             "directory)")
    parser.add_argument("--racing-seeds", type=seed_list, default=bench_racing.RACING_SEEDS,
                        help="comma-separated Optuna seeds of the racing group (default 0,1,2,3,4)")
    parser.add_argument("--ensemble-run", default=None, type=Path, action="append",
                        help="a finished run of the full preset, with its report: figure 6 is its 5-fold "
                             "ensemble's test accuracy (GPU runs: gpu_full_ensemble_test_acc and gpu_full_search_s); "
                             "give it again for each further run, say a second --search-seed: the figure is their "
                             "mean (default: not measured, an estimate of the time only)")
    args = parser.parse_args(argv)
    groups = [g for g in args.only.split(",") if g]
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        parser.error(f"--only {','.join(bad)}: choose from {', '.join(GROUPS)}")
    if args.ensemble_run is not None:
        if "ensemble" not in groups:
            parser.error("--ensemble-run: add ensemble to --only")
        try:
            for run_dir in args.ensemble_run:
                bench_ensemble.check_ensemble_run(run_dir)
        except ConfigError as e:
            parser.error(str(e))
    repeats = args.repeats or (2 if args.quick else 5)
    markdown = args.markdown or ("none" if args.quick else str(ROOT / "BENCHMARKS.md"))
    if args.table_only:
        out = json.loads(Path(args.out).read_text())
        write_markdown_table(Path(markdown), out)
        print(f"wrote the table in {markdown} from {args.out}")
        return EXIT_OK
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if "gpu" in groups and device.type != "cuda" and not args.quick:
        parser.error("--only gpu measures a CUDA GPU, and torch sees none here (--quick checks its plumbing on "
                     "the CPU)")

    out_path = Path(args.out)
    old = json.loads(out_path.read_text()) if out_path.exists() and set(groups) != set(GROUPS) else {}
    out = {key: old.get(key) for key in FIGURES}
    notes = old.get("notes", {"details": {}, "runs": {}})
    for run in notes["runs"].values():  # groups measured before bench.json kept a machine per group
        run.setdefault("machine", (old.get("machine") or {}).get("cpu"))
    data = load(DataConfig())
    for group in groups:
        started, load_before = time.strftime("%Y-%m-%d %H:%M:%S"), load_avg()
        print(f"== {group} (load average {load_before})", flush=True)
        figures, details, reasons = measure(group, args, data, device, repeats)
        if group == "gpu":
            out["gpu_device"] = details["device"]
        # A null figure carries its reason; a measured one drops an old reason. A group may leave out figures it
        # did not measure this time (the ensemble of CPU runs has no GPU figure): those keep their values.
        for key, value in figures.items():
            notes.pop(key, None)
            if value is None:
                notes[key] = reasons[key]
        out.update(figures)
        notes["details"][group] = details
        notes["runs"][group] = {"command": "python experiments/bench.py " + " ".join(argv or sys.argv[1:]),
                                "started": started, "load_avg_before": load_before, "load_avg_after": load_avg(),
                                "quick": args.quick, "priority": priority(), "machine": machine()["cpu"]}
    for group, keys in GROUPS.items():  # never measured, here or in --out
        for key in keys:
            if out[key] is None and key not in notes:
                notes[key] = f"not measured: python experiments/bench.py --only {group}"
    if device.type == "cpu":
        notes["gpu"] = "no GPU on this machine: the GPU goals (>= 5x the seed pipeline, bf16 MFU) are not measured"
    out.update(machine=machine(), versions=versions(), repeats=repeats, notes=notes)
    out["machine"]["load_avg_end"] = load_avg()
    out_path.write_text(json.dumps(out, indent=1) + "\n")
    print_table(out, FIGURES)
    print(f"\nwrote {out_path}")
    if markdown != "none":
        write_markdown_table(Path(markdown), out)
        print(f"wrote the table in {markdown}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
