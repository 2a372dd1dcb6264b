"""The report's eight sections, one function each, assembled from the analysis functions.

Each function takes what it shows (the run's tables, the evaluation arrays, the scores derived from
them) and returns an `html.Section` holding its HTML, its figures (PNG bytes) and the tables behind
them. `build` runs them in report order and returns the sections with metrics.json's dict: the numbers
in metrics.json and in the figures come from the same `scores`.
"""
from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from analysis import metrics, pareto, plots_curves, plots_eval, plots_search, search
from analysis.architecture import layer_table
from analysis.embeddings import plot_umap_pair, sample_indices, umap_2d
from analysis.evaluate import Evaluation, RunData
from analysis.html import Section, cards, esc, table_html
from analysis.stats import compare_to_best
from analysis.style import percent
from analysis.tables import (Run, deepest_shared_epoch, fold_band, fold_mean_curves, format_value, load_rungs,
                             trials_display, values_at_epoch)
from distributed.config import CLASS_NAMES, METRIC, ModelConfig
from distributed.model import make_model, num_params

Log = Callable[[str], None]

SEED_VAL_ACC = 0.9197  # the validation accuracy the earlier single-machine project reported (its README)
SECTION_TITLES = ("1. Headline", "2. The search", "3. Learning curves", "4. Best model evaluation",
                  "5. Predictions and misclassified examples", "6. Embeddings",
                  "7. Is the winner really better?", "8. CLIP zero-shot")


@dataclass(frozen=True)
class Options:
    umap: bool = True
    umap_samples: int = 5000   # test images in each UMAP (10,000 = all; UMAP time grows ~linearly)
    top_k: int = 5             # configurations in the paired comparison of section 7
    grid_images: int = 24      # images per grid in section 5
    seed: int = 0              # image sampling and UMAP


def score(ev: Evaluation) -> dict:
    """Confusion matrices and every derived number, for the OOF set, the test ensemble and each fold."""
    return {
        "oof": metrics.summarize(ev.oof_true, ev.oof_pred),
        "test": metrics.summarize(ev.test_true, ev.test_pred),
        "test_acc_per_fold": [metrics.accuracy(metrics.confusion_matrix(ev.test_true, p.argmax(1)))
                              for p in ev.test_probs_folds],
    }


def metrics_json(run: Run, ev: Evaluation, scores: dict, clip: dict | None, size: dict | None = None) -> dict:
    """report/metrics.json (DESIGN section 4), plus the confusion matrices the figures draw, and `size`
    (size_metrics: the Pareto front of accuracy against parameters)."""
    oof, test = scores["oof"], scores["test"]
    return {
        "run": run.summary["name"], "best_trial_id": run.best_trial_id,
        "checkpoint": run.summary["best_checkpoint"], "cv": run.summary["best_cv"],
        "test_acc": test["acc"], "test_macro_f1": test["macro_f1"],
        "test_acc_per_fold": scores["test_acc_per_fold"],
        "oof_val_acc": oof["acc"], "oof_val_macro_f1": oof["macro_f1"],
        "per_class": metrics.per_class_dict(test["per_class"]),
        "oof_per_class": metrics.per_class_dict(oof["per_class"]),
        "n_test": test["n"], "n_oof": oof["n"], "oof_source": ev.oof_source,
        "confusion_test": test["confusion"].tolist(), "confusion_oof": oof["confusion"].tolist(),
        "inference_devices": ev.devices, "tta_flip": ev.tta_flip,
        "clip": clip, "size": size,
    }


def size_metrics(size: pd.DataFrame) -> dict:
    """metrics.json's "size": the Pareto front's trial ids (smallest first) and the smallest trial within
    half a point of the best, from pareto.size_table."""
    pick = pareto.smallest_within(size)
    return {"front": size.trial_id[size.on_front].tolist(),
            "smallest_within_half_point": {"trial_id": pick.trial_id, "params": int(pick.params)}}


TTA_NOTE = (" Every model scores an image by the mean of the softmax of the image and its mirror (flip "
            "test-time augmentation, the trial's <code>tta_flip</code>), as its fold worker validated it.")


def _kv_table(pairs: list[tuple[str, object]]) -> str:
    return table_html(pd.DataFrame(pairs, columns=["", "value"]).astype(str), left=("value",))


def headline(run: Run, ev: Evaluation, scores: dict) -> Section:
    s = run.summary
    sec = Section("headline", SECTION_TITLES[0])
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
    rungs = load_rungs(run.run_dir)
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
    sec = Section("search", SECTION_TITLES[1])
    s, cfg = run.summary, run.config
    sec.table("trials", run.trials, trials_display(run), heading="Trials, best first",
              left=("trial", "status", "checkpoint"))
    sec.text("<p>Completed trials are ranked by the fold-mean validation accuracy at the full budget; pruned "
             "trials follow, by how far ASHA let them run, since their values come from fewer epochs. "
             "Trials whose checkpoint is missing are listed but not evaluated; \"removed\": deleted by "
             "--keep-checkpoints when the search ended.</p>")
    accuracy_vs_size(sec, run, size)
    study = search.load_study(run)
    order = search.start_order(study, run)
    sec.figure("optimization_history", plots_search.plot_optimization_history(run.trials, order),
               "Each trial's fold-mean validation accuracy (bars: ± std over folds) at the last epoch it ran, in "
               "the order TPE sampled it. Triangles are trials ASHA stopped early, labelled with their epochs; "
               "the red step line is the best completed trial so far.")

    # Five trials at one epoch (all of them in a smaller run, but never fewer than three) is the least
    # that importances and parallel coordinates can say anything about.
    need = max(3, min(5, len(run.trials)))
    epoch = deepest_shared_epoch(run.epochs, run.folds, need)
    dists = search.distributions(study)
    if study is None:
        sec.note(f"No readable Optuna study '{s['name']}' in {run.run_dir}/optuna.db: no importances or "
                 f"parallel coordinates.")
    elif epoch is None:
        sec.note("Importances and parallel coordinates need at least 3 trials with values at a shared epoch.")
    else:
        fid = search.study_at_epoch(run, dists, epoch)
        n = len(fid.trials)
        at = (f"the full budget of {epoch} epochs" if epoch == s["max_epochs"] else
              f"epoch {epoch}, the deepest epoch that at least {need} trials reached (too few "
              f"completed the full {s['max_epochs']} epochs)")
        imp = search.param_importances(fid, seed=0)
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
    sec = Section("curves", SECTION_TITLES[2])
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


def _confusion_frame(cm: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(cm, index=pd.Index(CLASS_NAMES, name="true"), columns=list(CLASS_NAMES)).reset_index()


def evaluation_section(run: Run, scores: dict) -> Section:
    sec = Section("evaluation", SECTION_TITLES[3])
    oof, test = scores["oof"], scores["test"]
    sec.tables["confusion_oof"] = _confusion_frame(oof["confusion"])
    sec.figure("confusion_oof", plots_eval.plot_confusion(oof["confusion"], "Out-of-fold validation"),
               f"Out-of-fold confusion matrix over all {oof['n']:,} training images of the run, each predicted by "
               f"the fold model that did not train on it. Left counts, right row-normalised (diagonal = recall).")
    sec.tables["confusion_test"] = _confusion_frame(test["confusion"])
    sec.figure("confusion_test", plots_eval.plot_confusion(test["confusion"], f"Test, {run.folds}-fold ensemble"),
               f"Test confusion matrix of the ensemble (mean of the {run.folds} fold models' probabilities) on "
               f"the {test['n']:,} test images.")
    both = oof["per_class"].merge(test["per_class"], on="class", suffixes=(" (OOF)", " (test)"))
    sec.table("per_class", both, heading="Per-class precision, recall and F1 (scikit-learn definitions)")
    sec.figure("per_class", plots_eval.plot_per_class(test["per_class"], oof["per_class"]),
               "Per-class precision, recall and F1: out-of-fold validation (blue) and test ensemble (orange).")
    def pairs_table(name: str, cm: np.ndarray, title: str) -> None:
        pairs = metrics.most_confused(cm)
        shown = pairs.assign(share_of_true=[percent(v, 1) for v in pairs.share_of_true]).rename(
            columns={"share_of_true": "% of true class"})
        sec.table(name, pairs, shown, heading=title, left=("predicted",))

    sec.text('<div class="row"><div>')
    pairs_table("most_confused_test", test["confusion"], "Most-confused pairs, test ensemble")
    sec.text("</div><div>")
    pairs_table("most_confused_oof", oof["confusion"], "Most-confused pairs, out-of-fold")
    sec.text("</div></div>")
    return sec


def predictions_section(data: RunData, ev: Evaluation, opts: Options) -> Section:
    sec = Section("predictions", SECTION_TITLES[4])
    ds, n = data.dataset, opts.grid_images
    rng = np.random.default_rng(opts.seed)
    idx = np.sort(rng.choice(len(ds.test_x), size=min(n, len(ds.test_x)), replace=False))
    probs = ev.test_probs
    sec.figure("test_predictions", plots_eval.plot_predictions(
        ds.test_x[idx], ev.test_true[idx], ev.test_pred[idx], probs[idx].max(1)),
        f"{len(idx)} random test images, titled with the ensemble's prediction, the true label in brackets, and "
        f"the predicted class's probability; green when right, red when wrong.")
    test_table = pd.DataFrame({"index": np.arange(len(ev.test_true)), "true": ev.test_true, "pred": ev.test_pred,
                               "confidence": probs.max(1)})
    for k, p in enumerate(ev.test_probs_folds):
        test_table[f"pred_fold{k}"] = p.argmax(1)
    sec.tables["test_predictions"] = pd.concat(
        [test_table, pd.DataFrame(probs, columns=[f"p_{c}" for c in CLASS_NAMES])], axis=1)
    oof_table = pd.DataFrame({"index": ev.oof_index, "fold": ev.oof_fold, "true": ev.oof_true, "pred": ev.oof_pred,
                              "confidence": ev.oof_probs.max(1)})
    sec.tables["oof_predictions"] = pd.concat(
        [oof_table, pd.DataFrame(ev.oof_probs, columns=[f"p_{c}" for c in CLASS_NAMES])], axis=1)

    for name, table, images, label in (("misclassified_oof", oof_table, ds.train_x, "out-of-fold validation"),
                                       ("misclassified_test", test_table, ds.test_x, "test")):
        wrong = table[table.true != table.pred].sort_values("confidence", ascending=False, kind="stable")
        top = wrong.head(n)
        if top.empty:
            sec.note(f"No misclassified {label} images.")
            continue
        sec.figure(name, plots_eval.plot_misclassified(
            images[top["index"].to_numpy()], top.true.to_numpy(), top.pred.to_numpy(), top.confidence.to_numpy(),
            f"Most confident mistakes, {label} ({len(wrong):,} of {len(table):,} wrong)"),
            f"The {len(top)} {label} images misclassified with the highest confidence, titled with the true label, "
            f"the predicted label and its probability. Confident mistakes are where label noise and truly "
            f"ambiguous items (shirt vs T-shirt, pullover vs coat) show up.")
    return sec


def embeddings_section(data: RunData, ev: Evaluation, opts: Options, log: Log) -> Section:
    sec = Section("embeddings", SECTION_TITLES[5])
    if not opts.umap:
        sec.note("UMAP skipped (--no-umap).")
        return sec
    idx = sample_indices(ev.test_true, opts.umap_samples, opts.seed)
    t0 = time.perf_counter()
    log(f"UMAP: {len(idx)} test embeddings ({ev.embeddings.shape[1]}-d) ...")
    emb = umap_2d(ev.embeddings[idx], opts.seed)
    log(f"UMAP: embeddings done in {time.perf_counter() - t0:.0f} s; raw pixels (784-d) ...")
    t0 = time.perf_counter()
    pix = umap_2d(data.dataset.test_x[idx].reshape(len(idx), -1) / 255.0, opts.seed)
    log(f"UMAP: raw pixels done in {time.perf_counter() - t0:.0f} s")
    sec.tables["umap"] = pd.DataFrame({"index": idx, "true": ev.test_true[idx], "embedding_x": emb[:, 0],
                                       "embedding_y": emb[:, 1], "pixels_x": pix[:, 0], "pixels_y": pix[:, 1]})
    sec.figure("umap", plot_umap_pair(emb, pix, ev.test_true[idx], " (fold-0 model)"),
               f"UMAP maps of {len(idx):,} test images (class-stratified sample) coloured by true class. Left: the "
               f"{ev.embeddings.shape[1]}-d penultimate-layer activations of fold 0's model (one fold model, since "
               f"the folds' embedding spaces differ). Right: raw pixels. Classes the model separates but pixels "
               f"do not show what training learned; overlaps that remain (shirt, T-shirt, pullover, coat) are "
               f"where its errors are.")
    return sec


def significance_section(run: Run, opts: Options, alpha: float = 0.05) -> Section:
    sec = Section("significance", SECTION_TITLES[6])
    k, max_epochs = run.folds, run.summary["max_epochs"]
    epoch = deepest_shared_epoch(run.epochs, k, min_trials=2)
    if epoch is None:
        sec.note("A paired comparison needs at least two trials with values on every fold at a shared epoch.")
        return sec
    values = values_at_epoch(run.epochs, epoch, k)
    ranked = values.loc[values.mean(axis=1).sort_values(ascending=False, kind="stable").index[:opts.top_k]]
    comparison = compare_to_best(ranked, test_train_ratio=1 / (k - 1), alpha=alpha)
    at = (f"at the full budget ({max_epochs} epochs)" if epoch == max_epochs else
          f"at epoch {epoch}, the deepest epoch that two or more trials reached: fewer than two trials completed "
          f"all {max_epochs} epochs, so this compares configurations before their budget ran out")
    sec.text(f"<p>All trials use the same {k} folds, so configurations can be compared fold by fold. A plain "
             f"paired t-test on the {k} differences is over-confident because the folds' training sets overlap; "
             f"the corrected resampled t-test of Nadeau and Bengio (2003) inflates the variance by "
             f"(1/K + n<sub>test</sub>/n<sub>train</sub>) = (1/{k} + 1/{k - 1}) and uses {k - 1} degrees of freedom. "
             f"Trials are compared {esc(at)}. Winner: {esc(ranked.index[0])}.</p>")
    shown = pd.DataFrame({
        "challenger": [f"#{r['rank']} {r.trial_id}" for _, r in comparison.iterrows()],
        "winner acc": comparison.best_mean, "challenger acc": comparison.challenger_mean,
        "difference": comparison["mean"],
        f"{100 * (1 - alpha):.0f}% CI (corrected)": [f"[{lo:+.4f}, {hi:+.4f}]" for lo, hi in
                                                       zip(comparison.ci_low, comparison.ci_high)],
        "t (corrected)": comparison.t, "p (corrected)": comparison.p, "p (naive paired t)": comparison.p_naive,
        "verdict": ["better beyond fold noise" if sig else "within fold noise" for sig in comparison.significant],
    })
    sec.table("significance", comparison.drop(columns=["diffs"]).assign(
        diffs=[json.dumps(d) for d in comparison.diffs], epoch=epoch), shown, left=("verdict",))
    first = comparison.iloc[0]
    verdict = (f"#1 beats #2 beyond fold noise: corrected p = {first.p:.3g} < {alpha}." if first.significant else
               f"#1 does not beat #2 beyond fold noise: the difference {first['mean']:+.4f} has corrected "
               f"p = {first.p:.3g} (a naive paired t-test would say p = {first.p_naive:.3g}).")
    sec.text(f'<p class="verdict">{esc(verdict)}</p>')
    sec.figure("significance", plots_eval.plot_paired_differences(comparison, alpha),
               f"Per challenger: the {k} per-fold differences in validation accuracy (winner − challenger, dots), "
               f"their mean (diamond) and the corrected {100 * (1 - alpha):.0f}% confidence interval; green when the "
               f"interval excludes zero. With {k} folds the test has {k - 1} degrees of freedom, so only large, "
               f"consistent gaps register. The winner was also selected as the maximum of many trials, which "
               f"flatters it further; no test here corrects for that or for comparing several challengers.")
    return sec


def clip_section(run_dir: Path, scores: dict, log: Log) -> tuple[Section, dict | None]:
    """Section 8 from RUN_DIR/clip (made by experiments/clip_zeroshot.py) via analysis.clip, if present."""
    sec = Section("clip", SECTION_TITLES[7])
    clip_dir = Path(run_dir) / "clip"
    if not (clip_dir / "metrics.json").is_file():
        sec.note(f"No CLIP results in {clip_dir}. Make them with: python experiments/clip_zeroshot.py "
                 f"--run-dir {run_dir} (see its --help), then build this report again.")
        return sec, None
    if importlib.util.find_spec("analysis.clip") is None:
        sec.note(f"{clip_dir}/metrics.json exists, but this checkout has no analysis/clip.py to show it.")
        return sec, None
    try:
        from analysis import clip  # noqa: PLC0415 (optional part, written separately; open_clip is heavy)
        test = scores["test"]  # the CNN's numbers are on the whole test split: compared only with CLIP's test
        same_split = json.loads((clip_dir / "metrics.json").read_text()).get("split") == "test"
        part = clip.report_section(
            clip_dir, cnn_per_class=metrics.per_class_dict(test["per_class"]) if same_split else None,
            cnn_summary={"acc": test["acc"], "macro_f1": test["macro_f1"]} if same_split else None)
        clip_metrics = {key: part["metrics"][key] for key in ("model", "pretrained", "acc", "macro_f1")}
    except Exception as e:  # a broken optional section must not cost the rest of the report
        log(f"warning: CLIP section failed: {type(e).__name__}: {e}")
        sec.note(f"The CLIP section failed: {type(e).__name__}: {e}")
        return sec, None
    sec.text(part["html"])
    return sec, clip_metrics


def build(run: Run, data: RunData, ev: Evaluation, opts: Options, log: Log) -> tuple[list[Section], dict]:
    """All eight sections in report order, and metrics.json's dict."""
    scores = score(ev)
    sections = [headline(run, ev, scores)]
    log("section 2: search")
    size = pareto.size_table(run)
    sections.append(search_section(run, log, size))
    log("section 3: learning curves")
    sections.append(curves_section(run))
    log("sections 4-5: evaluation, predictions")
    sections += [evaluation_section(run, scores), predictions_section(data, ev, opts)]
    sections.append(embeddings_section(data, ev, opts, log))
    log("section 7: paired comparison")
    sections.append(significance_section(run, opts))
    clip_sec, clip_metrics = clip_section(run.run_dir, scores, log)
    sections.append(clip_sec)
    return sections, metrics_json(run, ev, scores, clip_metrics, size_metrics(size))
