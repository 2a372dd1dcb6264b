"""The report's sections 1-3, on the search: the headline (best trial, run facts, architecture), the search
(trials table, accuracy against size, Optuna's view, ASHA's rungs) and the learning curves.

Each function takes what it shows (the run's tables, the scores of metrics_json.score) and returns an
`html.Section` with its HTML, its figures (PNG bytes) and the tables behind them.
"""
from __future__ import annotations

from typing import Callable

import pandas as pd

from analysis import optuna_study, pareto, plots_curves, plots_search
from analysis.architecture import layer_table
from analysis.evaluate import Evaluation
from analysis.html import Section, cards, esc, table_html
from analysis.run_tables import (Run, deepest_shared_epoch, fold_band, fold_mean_curves, format_value, rung_table,
                                 trials_display)
from analysis.style import percent
from distributed.config import METRIC, ModelConfig
from distributed.model import make_model, num_params

Log = Callable[[str], None]

TITLES = ("1. Headline", "2. The search", "3. Learning curves")
SEED_VAL_ACC = 0.9197  # the validation accuracy the earlier single-machine project reported (its README)
TTA_NOTE = (" Every model scores an image by the mean of the softmax of the image and its mirror (flip "
            "test-time augmentation, the trial's <code>tta_flip</code>), as its fold worker validated it.")


def _kv_table(pairs: list[tuple[str, object]]) -> str:
    return table_html(pd.DataFrame(pairs, columns=["", "value"]).astype(str), left=("value",))


def headline(run: Run, ev: Evaluation, scores: dict) -> Section:
    s = run.summary
    sec = Section("headline", TITLES[0])
    cv, test, oof = s["best_cv"], scores["test"], scores["oof"]
    k = run.folds
    sec.text(cards([
        (f"{percent(cv['val_acc_mean'])} ± {percent(cv['val_acc_std'])}", f"{k}-fold validation accuracy (mean ± std)"),
        (f"{cv['val_f1_mean']:.4f}", "validation macro-F1 (fold mean)"),
        (percent(test["acc"]), f"test accuracy, {k}-fold ensemble"),
        (f"{test['macro_f1']:.4f}", "test macro-F1, ensemble"),
        (percent(SEED_VAL_ACC), "seed's validation accuracy (reference)"),
        (f"{s['n_trials_completed']}/{s['n_trials_pruned']}/{s['n_trials_errored']}",
         "trials completed / pruned / errored"),
        (f"{s['wall_s'] / 60:.1f} min", "search wall time"),
    ]))
    if s.get("limit_train"):
        sec.note(f"This run trained on {s['n_train']:,} of the 60,000 training images (--limit-train) with the "
                 f"'{s.get('preset')}' preset: its numbers are not comparable with the seed's {percent(SEED_VAL_ACC)}, "
                 f"which came from training on all 60,000 images for 15 epochs.")
    best = run.best
    per_fold = pd.DataFrame({
        "model": [f"fold {j}" for j in range(k)] + [f"ensemble (mean of {k} softmaxes)"],
        "validation acc (held-out fold)": [float(best[f"val_acc_fold{j}"]) for j in range(k)] + [oof["acc"]],
        "test acc": scores["test_acc_per_fold"] + [test["acc"]],
    })
    sec.table("test_acc_per_fold", per_fold, heading="Each fold model and the ensemble")
    sec.text(f"<p>The ensemble row's validation figure is the out-of-fold accuracy: every one of the "
             f"{oof['n']:,} training images predicted by the fold model that held it out "
             f"({esc(ev.oof_source)} predictions). The test accuracy is on the 10,000 test images, which no "
             f"model or search decision saw.{TTA_NOTE if ev.tta_flip else ''}</p>")

    searched = set(run.searched)
    config = pd.DataFrame([(k_, format_value(k_, v), "searched" if k_ in searched else "fixed")
                           for k_, v in s["best_config"].items()], columns=["hyperparameter", "value", "how"])
    sec.table("best_config", config, heading=f"Best configuration (trial {run.best_trial_id})", left=("value", "how"))

    dev, ver = s.get("devices") or {}, s.get("versions") or {}
    sec.text("<h3>Run</h3>" + _kv_table([
        ("run directory", run.run_dir), ("preset", s.get("preset")), ("folds", k),
        ("training images", f"{s['n_train']:,}" + (f" (limit_train {s['limit_train']})" if s.get("limit_train") else "")),
        ("trials sampled", f"{s.get('n_trials')} of {s.get('num_samples')}"),
        ("trial-epochs trained", f"{s.get('epochs_run_total')} (budget {s['max_epochs']} epochs per trial)"),
        ("ranking metric", f"{s.get('metric', METRIC)} ({s.get('mode', 'max')})"),
        ("wall time", f"{s['wall_s']:.0f} s"),
        ("search devices", ", ".join(f"{a}={b}" for a, b in dev.items())),
        ("report inference devices", ", ".join(sorted(set(ev.devices)))),
        ("versions", ", ".join(f"{a} {b}" for a, b in ver.items())),
        ("data / split fingerprints", f"{s['data_fingerprint']} / {s['split_fingerprint']}"),
    ]))

    model = make_model(ModelConfig(**{f: s["best_config"][f] for f in ModelConfig.__dataclass_fields__}))
    layers = layer_table(model)
    total = num_params(model)
    shown = pd.concat([layers, pd.DataFrame([{"layer": "total", "type": "", "output_shape": "",
                                              "params": int(layers.params.sum())}])], ignore_index=True)
    shown["params"] = [f"{int(v):,}" for v in shown.params]
    sec.table("architecture", layers, shown, heading=f"Architecture of the best model ({total:,} parameters)",
              left=("type", "output_shape"))
    return sec


def accuracy_vs_size(sec: Section, run: Run, size: pd.DataFrame) -> None:
    """The figure, table and text of accuracy against parameter count (pareto.size_table's `size`): which
    smaller model is nearly as good as the best, and the command that exports it."""
    points = pareto.WITHIN_POINTS
    pick, best = pareto.smallest_within(size, points), size[size.trial_id == run.best_trial_id].iloc[0]
    sec.text("<h3>Accuracy against size</h3>")
    sec.figure("accuracy_vs_size", plots_search.plot_accuracy_vs_size(size, run.best_trial_id, pick.trial_id, points),
               f"Every completed trial's fold-mean validation accuracy at the full budget (bars: ± std over the "
               f"{run.folds} folds) against the parameter count of its model (log scale). Pruned trials are left "
               f"out: their accuracy comes from fewer epochs and is not comparable. Red diamonds are the Pareto "
               f"front: no other trial is as accurate with fewer parameters, or more accurate with as few. The "
               f"step line is the best accuracy reachable within a parameter budget; dashed, {points:g} points "
               f"below the best. Where error bars overlap, the difference is within fold noise. An exported "
               f"trial (RUN_DIR/model) is labelled with its measured CPU latency.")
    shown = pd.DataFrame({
        "trial": size.trial_id, "params": [f"{int(v):,}" for v in size.params],
        "val acc (mean ± std)": [f"{m:.4f} ± {s:.4f}" for m, s in zip(size.val_acc_mean, size.val_acc_std)],
        "Pareto front": ["yes" if v else "" for v in size.on_front],
        f"within {points:g} points": ["yes" if v else "" for v in size.within_half_point]})
    for name in run.searched:
        shown[name] = [format_value(name, v) for v in size[name]]
    for col, batch in (("latency_ms_b1", 1), ("latency_ms_b256", 256)):
        shown[f"ms/image, batch {batch}"] = ["—" if pd.isna(v) else f"{v:.3f}" for v in size[col]]
    sec.table("accuracy_vs_size", size, shown, heading="Completed trials by size, smallest first", left=("trial",))

    def described(r: pd.Series) -> str:
        return (f"trial {r.trial_id}: {int(r.params):,} parameters, validation accuracy "
                f"{percent(r.val_acc_mean)} ± {percent(r.val_acc_std)}")

    hparams = ", ".join(f"{n}={format_value(n, pick[n])}" for n in run.searched) or "no searched hyperparameters"
    if len(size) < 2:
        verdict = (f"Only one trial completed its full budget ({described(best)}), so there is no trade-off "
                   f"between size and accuracy to show yet.")
    elif pick.trial_id == run.best_trial_id:
        verdict = (f"No smaller configuration comes within {points:g} points of the best: the best, "
                   f"{described(best)} ({hparams}), is also the smallest that close.")
    else:
        verdict = (f"The smallest configuration within {points:g} points of the best is {described(pick)}, with "
                   f"{hparams}: {best.params / pick.params:.1f}x fewer parameters than the best ({described(best)}).")
    timed = size.trial_id[size[list(pareto.LATENCY_COLUMNS)].notna().any(axis=1)]  # the exported trial's row
    measured = (f"CPU latency is measured only for the exported trial {timed.iloc[0]} ({run.run_dir / 'model'})."
                if len(timed) else
                f"No model exported from a completed trial with measured latency in {run.run_dir / 'model'}: the "
                f"latency columns stay empty until export.py writes one.")
    command = f"python experiments/export.py {run.run_dir} --trial {pick.trial_id}"
    removed = pick.trial_id in (run.summary.get("checkpoints_removed") or ())
    export = (f"Export it with <code>{esc(command)}</code>; any trial on the front that kept its fold "
              f"checkpoints exports the same way." if not removed else
              f"Its fold checkpoints were deleted when the search ended (--keep-checkpoints "
              f"{esc(str(run.summary.get('keep_checkpoints')))}), so it cannot be exported from this run; "
              f"search again with --keep-checkpoints all, or train it alone with its hyperparameters.")
    sec.text(f"<p>{esc(verdict)} {export} {esc(measured)}</p>")


def rung_view(sec: Section, run: Run) -> None:
    """Every rung decision of rungs.parquet: a figure per rung and the table behind it."""
    rungs = rung_table(run.run_dir)
    if rungs.empty:
        return
    alpha = run.config.search.racing_alpha
    rule = (f"fold-asha: a trial below the cutoff is stopped only when the one-sided corrected resampled t-test "
            f"of its {run.folds} paired fold differences from the cutoff trial gives p <= {alpha:g}, else let "
            f"through on doubt" if run.config.search.scheduler == "fold-asha" else
            "ASHA: a trial below the cutoff is stopped on its fold mean alone")
    sec.figure("rungs", plots_search.plot_rungs(rungs),
               f"Every decision at every rung (rungs.parquet). Each trial is drawn where it arrived at the rung, as "
               f"its fold-mean validation accuracy with its fold spread (bars: ± std, dots: the folds); the dashed "
               f"line is the cutoff it met (the {100 * (1 - 1 / run.config.search.reduction_factor):.0f}th percentile "
               f"of the fold means already there). {rule}.")
    shown = pd.DataFrame({"trial": rungs.trial_id, "rung": rungs.rung, "folds": [
        " ".join(f"{v:.3f}" for v in f) for f in rungs.folds], "mean ± std": [
        f"{m:.4f} ± {sd:.4f}" for m, sd in zip(rungs.value, rungs.fold_std)],
        "cutoff": [f"{c:.4f}" if pd.notna(c) else "—" for c in rungs.cutoff],
        "cutoff trial": rungs.cutoff_trial_id.fillna("—"),
        "t": [f"{v:.2f}" if pd.notna(v) else "—" for v in rungs.t],
        "p": [f"{v:.3g}" if pd.notna(v) else "—" for v in rungs.p], "decision": rungs.decision})
    sec.table("rungs", rungs, shown,
              heading="Rung decisions, in the order they were made", left=("trial", "folds", "decision"))


def search_section(run: Run, log: Log, size: pd.DataFrame) -> Section:
    sec = Section("search", TITLES[1])
    s, cfg = run.summary, run.config
    sec.table("trials", run.trials, trials_display(run), heading="Trials, best first",
              left=("trial", "status", "checkpoint"))
    sec.text("<p>Completed trials are ranked by the fold-mean validation accuracy at the full budget; pruned "
             "trials follow, by how far ASHA let them run, since their values come from fewer epochs. "
             "Trials whose checkpoint is missing are listed but not evaluated; \"removed\": deleted by "
             "--keep-checkpoints when the search ended.</p>")
    accuracy_vs_size(sec, run, size)
    study = optuna_study.load_study(run)
    order = optuna_study.start_order(study, run)
    sec.figure("optimization_history", plots_search.plot_optimization_history(run.trials, order),
               "Each trial's fold-mean validation accuracy (bars: ± std over folds) at the last epoch it ran, in "
               "the order TPE sampled it. Triangles are trials ASHA stopped early, labelled with their epochs; "
               "the red step line is the best completed trial so far.")

    # Five trials at one epoch (all of them in a smaller run, but never fewer than three) is the least
    # that importances and parallel coordinates can say anything about.
    need = max(3, min(5, len(run.trials)))
    epoch = deepest_shared_epoch(run.epochs, run.folds, need)
    dists = optuna_study.distributions(study)
    if study is None:
        sec.note(f"No readable Optuna study '{s['name']}' in {run.run_dir}/optuna.db: no importances or "
                 f"parallel coordinates.")
    elif epoch is None:
        sec.note("Importances and parallel coordinates need at least 3 trials with values at a shared epoch.")
    else:
        fid = optuna_study.study_at_epoch(run, dists, epoch)
        n = len(fid.trials)
        at = (f"the full budget of {epoch} epochs" if epoch == s["max_epochs"] else
              f"epoch {epoch}, the deepest epoch that at least {need} trials reached (too few "
              f"completed the full {s['max_epochs']} epochs)")
        imp = optuna_study.param_importances(fid, seed=0)
        if len(imp):
            sec.tables["importances"] = imp.rename_axis("hyperparameter").reset_index()
            sec.figure("importances", plots_search.plot_importances(imp, epoch, n),
                       f"fANOVA importance (Optuna's importance API) of each searched hyperparameter for the "
                       f"fold-mean validation accuracy at {at}, over {n} trials. With few trials this is a "
                       f"rough guide, not a measurement.")
        else:
            sec.note(f"No importances: the {n} trials at epoch {epoch} have identical accuracies or too few differ.")
        sec.figure("parallel_coordinates", plots_search.plot_parallel_coordinates(fid, epoch),
                   f"Every trial that reached {at} as one line through its hyperparameters (each axis spans the "
                   f"search range, log-scaled where sampled log-uniformly) and its validation accuracy there.")
        log(f"search plots: importances and parallel coordinates at epoch {epoch} over {n} trials")

    rungs = (plots_search.asha_rungs(cfg.search.grace_period, cfg.search.reduction_factor, s["max_epochs"])
             if cfg.search.scheduler in ("asha", "fold-asha") else [])
    sec.figure("asha_epochs", plots_search.plot_asha_epochs(run.trials, order, s["max_epochs"], rungs),
               f"Epochs each trial received (each epoch trains all {run.folds} folds). ASHA "
               f"(grace period {cfg.search.grace_period}, reduction factor {cfg.search.reduction_factor}) "
               f"compares trials at the dashed rungs and stops the weaker ones."
               if rungs else "Epochs each trial received (FIFO scheduler: no early stopping).")
    rung_view(sec, run)
    sec.text(f"<p>The study opens in Optuna's dashboard (on 127.0.0.1): <code>make dashboard RUN="
             f"{esc(run.run_dir.name)}</code>, or <code>python experiments/dashboard.py {esc(run.run_dir)}</code></p>")
    return sec


def curves_section(run: Run) -> Section:
    sec = Section("curves", TITLES[2])
    sec.tables["curves"] = fold_mean_curves(run.epochs)
    sec.figure("curves_all_trials", plots_curves.plot_all_trials(run.epochs, run.trials, run.best_trial_id),
               "Fold-mean validation loss and accuracy per epoch for every trial. Pruned trials are dashed "
               "grey and end in a triangle where ASHA stopped them; the best trial is thick red.")
    bands = pd.concat([fold_band(run.epochs, run.best_trial_id, f"{sp}_{m}").assign(metric=f"{sp}_{m}")
                       for sp in ("train", "val") for m in ("loss", "acc")], ignore_index=True)
    sec.tables["best_trial_folds"] = bands
    sec.figure("curves_best_trial_folds", plots_curves.plot_fold_curves(run.epochs, run.best_trial_id),
               f"Best trial {run.best_trial_id}: train (blue) and validation (orange) loss and accuracy of each of "
               f"the {run.folds} folds (thin), the fold mean (bold) and ± one standard deviation across folds "
               f"(band). Train metrics are measured on augmented batches during the epoch, validation on clean "
               f"images after it.")
    sec.figure("curves_top_configs", plots_curves.plot_top_configs(run.epochs, run.trials, run.searched),
               "The top-ranked configurations, one panel each: fold-mean train and validation accuracy with "
               "± std bands; the title gives rank, trial, status, epochs and the sampled hyperparameters.")
    return sec
