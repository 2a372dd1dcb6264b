"""experiments/bench.py and its group modules (experiments/bench_*.py): the overhead arithmetic on a hand-made
run directory, and a real `--quick` run checked for a well-formed bench.json (keys, types, ranges). No timing
is asserted anywhere."""
import argparse
import json
import math

import pandas as pd
import pytest
import torch

from distributed import config
from distributed.cli import ArgumentParser, add_config_flags, config_from_args

from conftest import load_script

bench = load_script("bench")  # puts experiments/ on sys.path: its group modules import by name
import bench_accuracy  # noqa: E402
import bench_common  # noqa: E402
import bench_ensemble  # noqa: E402
import bench_goals  # noqa: E402
import bench_gpu  # noqa: E402
import bench_racing  # noqa: E402
import bench_search  # noqa: E402

TOP_LEVEL = {"throughput_img_s", "throughput_vs_compute_only", "throughput_vs_seed_pipeline", "mfu",
             "overhead_fraction", "asha_epoch_ratio", "asha_acc_gap", "time_to_93_s", "best_test_acc_15min",
             "full_ensemble_test_acc", "trial_start_latency_s", "search_start_s", "quick_search_wall_s", "racing_epoch_ratio", "racing_regret_asha",
             "racing_regret_fold_asha", "racing_asha_stops_fifo_winner", "racing_fold_asha_stops_fifo_winner", "machine", "versions", "repeats", "notes",
             "gpu_epoch_s_small", "gpu_epoch_s_wide", "gpu_mfu_deep", "gpu_full_search_s", "gpu_fixed_trial_acc",
             "gpu_full_ensemble_test_acc", "recipe_ema_val_gain", "recipe_ema_rung_gain", "recipe_ema_test_gain"}
# mfu is not among them: --quick times 2 short passes against a 3-matmul peak, which can put it above 1
# (1.04-1.05 seen on 2026-12-01 when the suite ran test_config first); the plumbing check asserts it positive.
FRACTIONS = ("overhead_fraction", "best_test_acc_15min", "full_ensemble_test_acc")


def write_trial(run_dir, trial_id, iterations):
    """iterations: (time_this_iter_s, slowest fold's seconds) per epoch."""
    d = run_dir / "tune" / trial_id
    d.mkdir(parents=True)
    total, lines, rows = 0.0, [], []
    for epoch, (this_iter, fold_s) in enumerate(iterations, 1):
        total += this_iter
        lines.append(json.dumps({"epoch": epoch, "training_iteration": epoch, "time_this_iter_s": this_iter,
                                 "time_total_s": total}))
        rows += [{"trial_id": trial_id, "epoch": epoch, "fold": f, "seconds": fold_s - f} for f in range(3)]
    (d / "result.json").write_text("\n".join(lines) + "\n")
    return rows


def test_overhead_from_run_splits_wall_time(tmp_path):
    rows = write_trial(tmp_path, "a", [(30.0, 10.0), (11.0, 10.0), (12.0, 10.0)])  # 20 s start, 3 s reporting
    rows += write_trial(tmp_path, "b", [(25.0, 5.0)])                               # 20 s start
    pd.DataFrame(rows).to_parquet(tmp_path / "epochs.parquet")
    (tmp_path / "summary.json").write_text(json.dumps(
        {"wall_s": 100.0, "n_trials": 2, "epochs_run_total": 4, "best_cv": {"val_acc_mean": 0.9}}))
    o = bench_search.overhead_from_run(tmp_path)
    assert o["compute_s"] == pytest.approx(35.0)  # the slowest fold of each epoch: 10 + 10 + 10 + 5
    assert o["overhead_fraction"] == pytest.approx(0.65)
    assert o["worker_start_s"] == pytest.approx(40.0)
    assert o["per_epoch_report_s"] == pytest.approx(3.0)
    assert o["between_trials_s"] == pytest.approx(100.0 - 53.0 - 25.0)
    assert (o["trials"], o["epochs_run_total"], o["best_val_acc_mean"]) == (2, 4, 0.9)


def test_train_flops_of_the_seed_model_match_its_convolutions():
    # forward multiply-adds of the seed CNN: 4 convs + 2 linears, x2 FLOPs, x3 for forward + backward,
    # less the first conv's input gradient (the image needs none)
    macs = [28 * 28 * 32 * 1 * 9, 28 * 28 * 32 * 32 * 9, 14 * 14 * 64 * 32 * 9, 14 * 14 * 64 * 64 * 9,
            64 * 7 * 7 * 512, 512 * 10]
    expected = 2 * (3 * sum(macs) - macs[0])
    assert bench_common.flops_per_image(bench_common.SEED_MODEL, torch.device("cpu")) == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow  # 374 s on the fresh-clone run; CI's make test was 39 min (`make test-all` runs it)
@pytest.mark.ray
def test_quick_run_writes_a_well_formed_bench_json(ray_local, tmp_path):
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    b = json.loads(out.read_text())
    assert set(b) == TOP_LEVEL
    for key in TOP_LEVEL - {"machine", "versions", "repeats", "notes"}:
        value = b[key]
        if value is None:
            assert isinstance(b["notes"][key], str) and b["notes"][key], key  # a null carries its reason
        else:
            assert isinstance(value, (int, float)) and math.isfinite(value), key
    for key in FRACTIONS:
        assert b[key] is None or 0 <= b[key] <= 1, key
    for key in ("throughput_img_s", "throughput_vs_compute_only", "throughput_vs_seed_pipeline", "asha_epoch_ratio",
                "mfu"):
        assert b[key] > 0, key
    assert b["asha_acc_gap"] is None or -1 <= b["asha_acc_gap"] <= 1
    assert b["time_to_93_s"] is None or b["time_to_93_s"] > 0
    assert b["repeats"] == 2 and b["machine"]["cores"] >= 1 and len(b["machine"]["load_avg_end"]) == 3
    assert set(b["versions"]) >= {"torch", "ray", "optuna", "torchvision", "python"}
    tp = b["notes"]["details"]["throughput"]
    for model in ("seed_model", "quick_model"):
        for variant in ("fold_loop", "compute_only", "seed_pipeline"):
            s = tp[model]["img_s"][variant]
            assert s["n"] == 2 and 0 < s["min"] <= s["median"] <= s["max"]
    assert tp["seed_model"]["params"] == 1_677_482
    search, hpo = b["notes"]["details"]["search"], b["notes"]["details"]["hpo"]
    assert set(search) == {"asha"} and set(hpo) == {"asha", "fifo"}
    assert 0 < search["asha"]["compute_s"] < search["asha"]["wall_s"]
    # the warm-slot engine's figures come from the search's own summary.json (engine)
    assert 0 < b["search_start_s"] < b["quick_search_wall_s"] == search["asha"]["wall_s"]
    assert search["asha"]["trial_start_latency_s"]["n"] == search["asha"]["trials"]
    assert b["trial_start_latency_s"] == search["asha"]["trial_start_latency_after_first_s"]["median"] >= 0
    assert hpo["fifo"]["epochs_run_total"] == 2 * 2  # FIFO: every trial to max_t
    assert b["asha_epoch_ratio"] == pytest.approx(4 / hpo["asha"]["epochs_run_total"])
    assert set(b["notes"]["runs"]) == {"throughput", "search", "hpo", "accuracy", "ensemble"}
    assert b["full_ensemble_test_acc"] is None and "--ensemble-run" in b["notes"]["full_ensemble_test_acc"]


def racing_run(epochs, best, trials, best_config=None):
    """A racing_run dict: trials as (lr, status, epochs run[, fold-mean accuracy]); best_config: the winner's lr."""
    return {"epochs_run_total": epochs, "max_epochs": 16, "best_val_acc_mean": best, "best_trial_id": None,
            "best_config": None if best_config is None else {"lr": best_config},
            "trials": [{"trial_id": f"t{i}", "status": st, "epochs_run": e, "val_acc_mean": (acc or [None])[0],
                        "config": {"lr": lr}} for i, (lr, st, e, *acc) in enumerate(trials)], "wall_s": 1.0}


def test_racing_figures_give_regret_against_fifo_and_count_the_stops_of_fifos_first():
    done, pruned = "completed", "pruned"
    runs = {
        # seed 0: FIFO's winner lr 0.003; ASHA stops it at epoch 1, fold-asha lets it run to the end
        0: {"fifo": racing_run(48, 0.88, [(0.001, done, 16, 0.85), (0.003, done, 16, 0.88), (0.002, done, 16, 0.86)],
                               0.003),
            "asha": racing_run(24, 0.86, [(0.001, done, 16), (0.003, pruned, 1), (0.002, pruned, 4), (0.004, pruned, 3)]),
            "fold-asha": racing_run(36, 0.88, [(0.001, done, 16), (0.003, done, 16), (0.002, pruned, 4)])},
        # seed 1: both keep the winner (0.1 + 2e-12 is the same float draw, to the last digits)
        1: {"fifo": racing_run(32, 0.80, [(0.1, done, 16, 0.80), (0.2, done, 16, 0.78)], 0.1),
            "asha": racing_run(20, 0.80, [(0.1 + 2e-12, done, 16), (0.2, pruned, 4)]),
            "fold-asha": racing_run(20, 0.79, [(0.1, done, 16), (0.2, pruned, 4)])},
        # seed 2: FIFO's winner (0.6) is a TPE proposal ASHA never made: FIFO's first of the shared ones is 0.5,
        # which ASHA kept; fold-asha trained 0.6 and stopped it
        2: {"fifo": racing_run(32, 0.90, [(0.5, done, 16, 0.88), (0.6, done, 16, 0.90)], 0.6),
            "asha": racing_run(17, 0.87, [(0.5, done, 16), (0.7, pruned, 1)]),
            "fold-asha": racing_run(32, 0.89, [(0.5, done, 16), (0.6, pruned, 4), (0.8, done, 16)])},
    }
    figures, details, reasons = bench_racing.racing_figures(runs)
    seed0 = details["per_seed"][0]
    assert (seed0["asha"]["epochs"], seed0["asha"]["best"], seed0["asha"]["stopped_fifo_winner"]) == (24, 0.86, True)
    assert seed0["asha"]["regret"] == pytest.approx(0.02) and seed0["asha"]["fifo_first_shared"] == {"lr": 0.003}
    assert seed0["fold-asha"]["regret"] == pytest.approx(0.0) and seed0["fold-asha"]["stopped_fifo_winner"] is False
    assert seed0["fifo"]["regret"] == 0 and seed0["fifo"]["stopped_fifo_winner"] is False
    assert details["per_seed"][1]["asha"]["stopped_fifo_winner"] is False
    seed2 = details["per_seed"][2]
    assert seed2["asha"]["fifo_first_shared"] == {"lr": 0.5} and seed2["asha"]["stopped_fifo_winner"] is False
    assert (seed2["asha"]["ran_fifo_winner"], seed2["fold-asha"]["ran_fifo_winner"]) == (False, True)
    assert seed2["fold-asha"]["stopped_fifo_winner"] is True
    assert [details["per_seed"][s]["epoch_ratio"] for s in (0, 1, 2)] == pytest.approx([1.5, 1.0, 32 / 17])
    asha, fold = details["per_scheduler"]["asha"], details["per_scheduler"]["fold-asha"]
    assert asha["regret"] == pytest.approx({"min": 0.0, "median": 0.02, "max": 0.03, "n": 3})
    assert fold["regret"] == pytest.approx({"min": 0.0, "median": 0.01, "max": 0.01, "n": 3})
    assert fold["epochs"] == {"min": 20, "median": 32, "max": 36, "n": 3}
    assert (asha["stopped_fifo_winner"], asha["fifo_winner_not_run"]) == (1, 1)
    assert (fold["stopped_fifo_winner"], fold["fifo_winner_not_run"]) == (1, 0)
    assert figures == pytest.approx({"racing_epoch_ratio": 1.5, "racing_regret_asha": 0.02, "racing_regret_fold_asha": 0.01,
                                     "racing_asha_stops_fifo_winner": 1, "racing_fold_asha_stops_fifo_winner": 1})
    assert reasons == {}
    table = bench_racing.racing_table(details)
    assert "| asha | 20 [17, 24] | 0.8600 [0.8000, 0.8700] | +0.0200 [+0.0000, +0.0300] | 1 of 3 | 1 of 3 |" in table
    assert "| fold-asha | 32 [20, 36] |" in table and "| 1 of 3 | 0 of 3 |" in table
    # a goal relative to another figure: half of ASHA's median regret
    met = {key: check for key, _, _, check in bench_goals.GOALS}["racing_regret_fold_asha"]
    assert bench_goals.goal_met(met, 0.01, figures) and not bench_goals.goal_met(met, 0.011, figures)
    # no search completed a trial: no regret, and why
    none = {0: {s: racing_run(10, None, [(0.1, "pruned", 1)]) for s in ("fifo", "asha", "fold-asha")}}
    figures, details, reasons = bench_racing.racing_figures(none)
    assert figures["racing_regret_fold_asha"] is None and set(reasons) == {"racing_regret_asha", "racing_regret_fold_asha"}
    assert details["per_seed"][0]["asha"]["stopped_fifo_winner"] is None  # FIFO completed nothing: no first
    assert bench.DEFAULT_GROUPS == ("throughput", "search", "hpo", "accuracy", "ensemble")


@pytest.mark.ray
def test_racing_run_reads_a_real_search_and_finds_its_own_winner(smoke_run):
    run_dir, code = smoke_run
    assert code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    trials = pd.read_parquet(run_dir / "trials.parquet")
    run = bench_racing.racing_run(run_dir)
    assert (run["epochs_run_total"], run["max_epochs"]) == (summary["epochs_run_total"], summary["max_epochs"])
    assert run["best_val_acc_mean"] == summary["best_cv"]["val_acc_mean"] and run["best_trial_id"] == summary["best_trial_id"]
    assert len(run["trials"]) == len(trials) == summary["n_trials"]
    assert {t["trial_id"]: t["val_acc_mean"] for t in run["trials"]} == dict(zip(trials.trial_id, trials.val_acc_mean))
    space = json.loads((run_dir / "config.json").read_text())["search"]["space"]
    assert set(run["best_config"]) == set(space) and all(set(t["config"]) == set(space) for t in run["trials"])
    assert bench_racing.stopped_config(run, run["best_config"]) is False  # the winner completed: it ran max_t epochs
    pruned = [t for t in run["trials"] if t["status"] == "pruned"]
    assert all(bench_racing.stopped_config(run, t["config"]) for t in pruned)
    assert bench_racing.stopped_config(run, {k: -1.0 for k in space}) is None


def test_the_racing_group_reuses_only_a_finished_run_of_the_same_search(tmp_path):
    from dataclasses import asdict

    args = bench_racing.racing_search_args(list(bench_search.HPO_ARGS), 3, "fold-asha")
    assert args[-4:] == ["--search-seed", "3", "--scheduler", "fold-asha"]
    run = tmp_path / "seed3-fold-asha"
    run.mkdir()
    parser = ArgumentParser(prog="tune.py")
    add_config_flags(parser)
    cfg = config_from_args(parser.parse_args(args + ["--name", run.name]), "quick")
    (run / "config.json").write_text(json.dumps(asdict(cfg)))
    assert not bench_racing.matches_args(run, args)  # no summary.json: the search did not finish
    (run / "summary.json").write_text("{}")
    assert bench_racing.matches_args(run, args)
    assert not bench_racing.matches_args(run, bench_racing.racing_search_args(list(bench_search.HPO_ARGS), 4, "fold-asha"))
    assert not bench_racing.matches_args(run, bench_racing.racing_search_args(list(bench_search.HPO_ARGS), 3, "asha"))
    assert not bench_racing.matches_args(run, args + ["--epochs", "8"])
    assert bench.seed_list("0,2,5") == (0, 2, 5)
    for bad, why in (("0,x", "comma-separated integers"), ("1,1", "a seed is repeated")):
        with pytest.raises(argparse.ArgumentTypeError, match=why):
            bench.seed_list(bad)


def test_the_markdown_table_shows_each_figure_against_its_goal(tmp_path):
    out = {key: None for key, *_ in bench_goals.GOALS}
    out.update(mfu=0.61, overhead_fraction=0.5, asha_epoch_ratio=3.2, throughput_img_s=900.0,
               racing_regret_asha=0.004, racing_regret_fold_asha=0.003, racing_epoch_ratio=1.2,
               machine={"cpu": "EPYC", "cores": 2, "gpu": None},
               versions={"torch": "2.14.1", "ray": "2.60.0", "optuna": "5.0.0"}, repeats=5,
               notes={"full_ensemble_test_acc": "not trained here", "details": {"racing": {"seeds": [0, 1]}}})
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\nintro\n\n<!-- bench.py table: begin -->\nstale row\n<!-- bench.py table: end -->\n\nafter\n")
    bench_goals.write_markdown_table(md, out)
    text = md.read_text()
    assert text.startswith("# Benchmarks\n\nintro\n\n<!-- bench.py table: begin -->") and text.endswith("-->\n\nafter\n")
    assert "stale row" not in text and text.count("<!-- bench.py table: begin -->") == 1
    rows = {line.split("`")[1]: line.split(" | ")[1:] for line in text.splitlines() if line.startswith("| `")}
    assert len(rows) == 27  # GOALS: 23, the GPU ensemble and the recipe group's three
    assert rows["gpu_full_search_s"] == ["null: not measured", "<= 300", "not measured |"]
    assert rows["mfu"] == ["0.61", ">= 0.60", "yes |"]
    assert rows["overhead_fraction"] == ["0.5", "<= 0.15", "**no** |"]
    assert rows["asha_epoch_ratio"] == ["3.2", ">= 3", "yes |"]
    assert rows["throughput_img_s"] == ["900", "(reported)", " |"]
    assert rows["full_ensemble_test_acc"] == ["null: not trained here", ">= 0.945", "not measured |"]
    assert rows["racing_regret_fold_asha"] == ["0.003 (2 of 5 seeds: 0,1)", "<= half of ASHA's", "**no** |"]  # > 0.004/2
    assert rows["racing_epoch_ratio"] == ["1.2 (2 of 5 seeds: 0,1)", "<= 1.5", "yes |"]
    assert "Machine: EPYC, 2 cores, GPU: none" in text
    out["notes"]["runs"] = {"throughput": {"machine": "EPYC"}, "hpo": {"machine": "EPYC"}, "racing": {"machine": "Xeon"}}
    assert "Machine: EPYC (throughput, hpo); Xeon (racing), 2 cores" in bench_goals.markdown_table(out)


@pytest.mark.parametrize("tta_flip", [False, True])
def test_train_to_accuracy_records_the_test_curve(fmnist, tta_flip):
    cfg = config.TrainConfig(epochs=2, batch_size=64, lr=3e-3, tta_flip=tta_flip)
    model = config.ModelConfig(width=8, depth=2, convs_per_block=1, fc_width=32)
    run = bench_accuracy.train_to_accuracy(fmnist, model, cfg, torch.device("cpu"), n_train=640, n_test=300)
    assert (run["n_train"], run["n_test"], run["train"]["tta_flip"]) == (640, 300, tta_flip)
    curve = run["curve"]
    assert [c["epoch"] for c in curve] == [1, 2]
    assert 0 < curve[0]["train_s"] < curve[1]["train_s"] == pytest.approx(run["train_s"], abs=0.01)
    assert all(0 <= c["test_acc"] <= 1 for c in curve)
    assert all(("test_acc_no_tta" in c) == tta_flip for c in curve)
    assert run["best_within_budget"] == max(c["test_acc"] for c in curve)  # 2 epochs: well within 15 minutes
    assert run["time_to_target_s"] is None and max(c["test_acc"] for c in curve) < bench_accuracy.TARGET_ACC


def test_the_time_to_accuracy_recipe_uses_flip_tta():
    assert bench_accuracy.RECIPE_TRAIN.tta_flip is True and bench_accuracy.RECIPE_TRAIN.label_smoothing == 0.1


def test_tune_command_names_every_field_that_differs_from_the_preset():
    cfg = config.override(config.PRESETS["full"], name="e10", width=32, depth=2, epochs=10, lr=0.003,
                          space=(), num_samples=1)
    assert bench_ensemble.tune_command(cfg) == ('python experiments/tune.py --preset full --name e10 --width 32 --depth 2 '
                                       '--epochs 10 --lr 0.003 --num-samples 1 --space ""')
    assert bench_ensemble.tune_command(config.PRESETS["quick"]) == "python experiments/tune.py --preset quick --name quick"


def make_full_run(run_dir, preset="full", report=True, gpu=False, test_acc=0.9468, wall_s=4200.0, seed=0):
    """A finished run directory as tune.py and report.py leave it, reduced to what figure 6 reads."""
    cfg = config.override(config.PRESETS[preset], name=run_dir.name, width=32, depth=2, epochs=10, search_seed=seed)
    run_dir.mkdir(parents=True)
    config.save(cfg, run_dir / "config.json")
    devices = {"num_gpus": 1, "gpus_per_worker": 0.2, "cpus_per_worker": 1} if gpu else \
        {"num_gpus": 0, "gpus_per_worker": 0, "cpus_per_worker": 0.4}
    (run_dir / "summary.json").write_text(json.dumps(
        {"n_train": 60000, "best_trial_id": "t1", "best_config": {}, "wall_s": wall_s,
         "best_cv": {"val_acc_mean": 0.9321}, "devices": devices, "n_trials": 40, "epochs_run_total": 400}))
    if report:
        (run_dir / "report").mkdir()
        (run_dir / "report" / "metrics.json").write_text(json.dumps(
            {"test_acc": test_acc, "test_macro_f1": 0.9467, "test_acc_per_fold": [0.941, 0.94, 0.939, 0.942, 0.94],
             "oof_val_acc": 0.9322}))
    return run_dir


def test_figure_6_is_the_reports_ensemble_test_accuracy(tmp_path):
    run = bench_ensemble.ensemble_from_run(make_full_run(tmp_path / "full-e10"))
    assert bench_ensemble.ensemble_figures([run]) == {"full_ensemble_test_acc": 0.9468}
    assert run["command"] == "python experiments/tune.py --preset full --name full-e10 --width 32 --depth 2 --epochs 10"
    assert (run["folds"], run["n_train"], run["epochs"], run["gpu"]) == (5, 60000, 10, False)
    assert run["test_acc_per_fold"] == [0.941, 0.94, 0.939, 0.942, 0.94] and run["oof_val_acc"] == 0.9322
    assert run["model"]["width"] == 32 and run["train"]["tta_flip"] is True
    assert bench_ensemble.describe(run) == (
        f"  {run['run_dir']} (CPU, search seed 0): ensemble test 0.9468, fold models 0.9410, 0.9400, 0.9390, "
        f"0.9420, 0.9400; out-of-fold 0.9322; search 4200 s")


def test_gpu_runs_give_the_gpu_figures_their_mean_accuracy_and_slowest_search(tmp_path):
    runs = [bench_ensemble.ensemble_from_run(make_full_run(tmp_path / f"s{seed}", gpu=True, test_acc=acc,
                                                           wall_s=wall, seed=seed))
            for seed, acc, wall in ((0, 0.956, 480.0), (1, 0.954, 530.0))]
    assert [r["gpu"] for r in runs] == [True, True] and [r["search_seed"] for r in runs] == [0, 1]
    assert bench_ensemble.ensemble_figures(runs) == {"gpu_full_ensemble_test_acc": pytest.approx(0.955),
                                                     "gpu_full_search_s": 530.0}
    cpu = bench_ensemble.ensemble_from_run(make_full_run(tmp_path / "cpu"))
    with pytest.raises(config.ConfigError, match="some runs trained on GPUs and some on CPUs"):
        bench_ensemble.ensemble_figures([runs[0], cpu])


def test_bench_ensemble_of_gpu_runs_keeps_the_cpu_figure(tmp_path):
    """Two GPU runs (two search seeds) through bench.py: the GPU figures are written, the CPU one stays."""
    out = tmp_path / "bench.json"
    runs = [make_full_run(tmp_path / f"s{seed}", gpu=True, test_acc=acc, wall_s=wall, seed=seed)
            for seed, acc, wall in ((0, 0.957, 480.0), (1, 0.955, 530.0))]
    bench.main(["--quick", "--only", "ensemble", "--out", str(out), "--markdown", "none"])
    b = json.loads(out.read_text())
    b["full_ensemble_test_acc"] = 0.9419  # as measured on the CPU before
    out.write_text(json.dumps(b))
    bench.main(["--quick", "--only", "ensemble", "--ensemble-run", str(runs[0]), "--ensemble-run", str(runs[1]),
                "--out", str(out), "--markdown", "none"])
    b = json.loads(out.read_text())
    assert b["full_ensemble_test_acc"] == 0.9419
    assert b["gpu_full_ensemble_test_acc"] == pytest.approx(0.956) and b["gpu_full_search_s"] == 530.0
    assert "gpu_full_ensemble_test_acc" not in b["notes"] and "gpu_full_search_s" not in b["notes"]
    details = b["notes"]["details"]["ensemble"]
    assert [r["test_acc"] for r in details["runs"]] == [0.957, 0.955]
    assert [len(r["test_acc_per_fold"]) for r in details["runs"]] == [5, 5]


@pytest.mark.parametrize("make, message", [
    (lambda d: make_full_run(d, preset="quick"), "a run of the quick preset; figure 6 is the full preset's ensemble"),
    (lambda d: make_full_run(d, report=False), "no report/metrics.json; run python experiments/report.py"),
    (lambda d: d.mkdir(), "not a finished run directory (no config.json/summary.json)"),
])
def test_bench_refuses_a_run_that_cannot_give_figure_6(tmp_path, capsys, make, message):
    run = tmp_path / "run"
    make(run)
    before = sorted(str(p) for p in run.rglob("*"))
    out = tmp_path / "bench.json"
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--only", "ensemble", "--ensemble-run", str(run), "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"bench.py: error: --ensemble-run {run}: ") and message in err
    assert not out.exists() and sorted(str(p) for p in run.rglob("*")) == before


# ---------------------------------------------------------------- the gpu group (its plumbing, on the CPU)


def test_the_gpu_group_is_asked_for_by_name_and_refused_without_cuda(capsys):
    assert "gpu" not in bench.DEFAULT_GROUPS and bench.GROUPS["gpu"] == bench_gpu.KEYS
    assert {key for key, *_ in bench_goals.GOALS} >= set(bench_gpu.KEYS)  # each has its row in BENCHMARKS.md
    if torch.cuda.is_available():
        pytest.skip("refusal is for machines without CUDA")
    with pytest.raises(SystemExit) as e:
        bench.main(["--only", "gpu", "--out", "/nonexistent/bench.json"])
    assert e.value.code == 2
    assert capsys.readouterr().err == ("bench.py: error: --only gpu measures a CUDA GPU, and torch sees none here "
                                       "(--quick checks its plumbing on the CPU)\n")


def test_the_fold_harness_runs_the_engines_fold_loop_in_one_process_per_fold(fmnist):
    """Two folds (and two trials' worth of them) of 600 real images, on the CPU: per-fold figures of the
    epoch that each fold trained on its own part of the engine's split."""
    shared = bench_gpu.split(fmnist.train_x[:600], fmnist.train_y[:600], k=2)
    model = config.ModelConfig(width=4, depth=2, convs_per_block=1, fc_width=16)
    train = config.TrainConfig(epochs=1, batch_size=50, tta_flip=True)
    run = bench_gpu.shared_epochs(shared, model, train, 2, "cpu", k=2, trials=2, chunk="auto", cudnn=False)
    assert run["processes"] == 4 and len(run["epoch_s_folds"]) == 4 and run["mps"] is False
    assert run["train_n"] == 300 // 50 * 50 and run["val_n"] == 300  # each fold trains on the other's 300
    assert run["epoch_s"] > 0 and run["first_epoch_s"] > 0
    assert 0.0 <= run["val_acc_mean"] <= 1.0


def test_mfu_counts_training_steps_and_both_tta_views_of_every_fold():
    model, train = config.ModelConfig(width=8, depth=2, convs_per_block=1, fc_width=32), config.TrainConfig(tta_flip=True)
    cpu = torch.device("cpu")
    fwd, step = bench_common.flops_per_image(model, cpu, train=False), bench_common.flops_per_image(model, cpu, train=True)
    assert 2.5 * fwd < step < 3.0 * fwd  # backward: about twice the forward (the first conv needs no input grad)
    run = {"train_n": 1000, "val_n": 250, "processes": 5, "epoch_s": 2.0}
    got = bench_gpu.mfu(model, train, run, peak=1e12, device=cpu)
    assert got["flops_per_fold_epoch"] == pytest.approx(step * 1000 + fwd * 2 * 250)
    assert got["mfu"] == pytest.approx(got["flops_per_fold_epoch"] * 5 / 2.0 / 1e12)
    no_tta = bench_gpu.mfu(model, config.TrainConfig(tta_flip=False), run, peak=1e12, device=cpu)
    assert no_tta["flops_per_fold_epoch"] == pytest.approx(step * 1000 + fwd * 250)


def test_the_issues_configurations_are_the_ones_measured():
    shapes = {name: (m.width, m.depth, t.batch_size) for name, (m, t) in bench_gpu.CONFIGS.items()}
    assert shapes == {"A": (64, 2, 256), "B": (64, 3, 256), "C": (32, 3, 64), "D": (16, 3, 64)}
    m, t = bench_gpu.FIXED_TRIAL
    assert (t.lr, t.weight_decay, m.dropout, t.label_smoothing, t.erase_p, m.convs_per_block, m.fc_width,
            t.tta_flip, t.epochs) == (0.00206, 0.00442, 0.362, 0.158, 0.264, 2, 256, True, 30)


# ---------------------------------------------------------------- the recipe group


def test_the_recipe_figures_are_paired_differences_over_the_seeds():
    import bench_recipe
    runs = {"base": {0: {"val_acc_mean": 0.90, "test_acc": 0.89}, 1: {"val_acc_mean": 0.91, "test_acc": 0.90}},
            "ema": {0: {"val_acc_mean": 0.905, "test_acc": 0.893}, 1: {"val_acc_mean": 0.913, "test_acc": 0.899}}}
    assert bench_recipe.paired_gain(runs, "ema", lambda r: r["val_acc_mean"], (0, 1)) == pytest.approx(0.004)
    assert bench_recipe.paired_gain(runs, "ema", lambda r: r["test_acc"], (0, 1)) == pytest.approx(0.001)
    assert bench_recipe.VARIANTS["base"] == ["--ema-halflife", "0"] and bench.GROUPS["recipe"] == bench_recipe.KEYS
    assert "recipe" not in bench.DEFAULT_GROUPS  # six 5-fold runs: asked for by name


@pytest.mark.slow
def test_the_recipe_group_trains_each_variant_and_seed_and_reads_the_test_set_as_the_report(tmp_path):
    """bench.py --quick --only recipe: 2 seeds x 2 variants of a smoke run, each evaluated like the report."""
    out = tmp_path / "bench.json"
    bench.main(["--quick", "--only", "recipe", "--out", str(out), "--markdown", "none"])
    b = json.loads(out.read_text())
    details = b["notes"]["details"]["recipe"]
    assert details["seeds"] == [0, 1] and set(details["runs"]) == {"base", "ema"}
    for variant in ("base", "ema"):
        for seed in ("0", "1"):
            r = details["runs"][variant][seed]
            assert len(r["val_acc_curve"]) == r["epochs"] == 2 and len(r["test_acc_per_fold"]) == 2
            assert 0 <= r["test_acc"] <= 1 and r["val_acc_mean"] == r["val_acc_curve"][-1]
    base, ema = details["runs"]["base"], details["runs"]["ema"]
    expected = sum(ema[s]["test_acc"] - base[s]["test_acc"] for s in ("0", "1")) / 2
    assert b["recipe_ema_test_gain"] == pytest.approx(expected)
