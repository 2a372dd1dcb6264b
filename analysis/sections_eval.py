"""The report's sections 4-8, on the best model: its evaluation (confusion matrices, per-class scores),
predictions and mistakes, embeddings (UMAP), the paired comparison of the top configurations, and CLIP.

Each function takes what it shows (the evaluation arrays, the scores of metrics_json.score) and returns an
`html.Section` with its HTML, its figures (PNG bytes) and the tables behind them.
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

from analysis import metrics, plots_eval
from analysis.embeddings import plot_umap_pair, sample_indices, umap_2d
from analysis.evaluate import Evaluation, RunData
from analysis.html import Section, esc
from analysis.run_tables import Run, deepest_shared_epoch, values_at_epoch
from analysis.stats import compare_to_best
from analysis.style import percent
from distributed.config import CLASS_NAMES

Log = Callable[[str], None]

TITLES = ("4. Best model evaluation", "5. Predictions and misclassified examples", "6. Embeddings",
          "7. Is the winner really better?", "8. CLIP zero-shot")


@dataclass(frozen=True)
class Options:
    """experiments/report.py's choices for the sections that sample images (5, 6) and compare trials (7)."""
    umap: bool = True
    umap_samples: int = 5000   # test images in each UMAP (10,000 = all; UMAP time grows ~linearly)
    top_k: int = 5             # configurations in the paired comparison of section 7
    grid_images: int = 24      # images per grid in section 5
    seed: int = 0              # image sampling and UMAP


def _confusion_frame(cm: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(cm, index=pd.Index(CLASS_NAMES, name="true"), columns=list(CLASS_NAMES)).reset_index()


def evaluation_section(run: Run, scores: dict) -> Section:
    sec = Section("evaluation", TITLES[0])
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
    sec = Section("predictions", TITLES[1])
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
    sec = Section("embeddings", TITLES[2])
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
    sec = Section("significance", TITLES[3])
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
    """Section 8 from RUN_DIR/clip (made by experiments/clip_zeroshot.py) via analysis.clip_report, if present."""
    sec = Section("clip", TITLES[4])
    clip_dir = Path(run_dir) / "clip"
    if not (clip_dir / "metrics.json").is_file():
        sec.note(f"No CLIP results in {clip_dir}. Make them with: python experiments/clip_zeroshot.py "
                 f"--run-dir {run_dir} (see its --help), then build this report again.")
        return sec, None
    if importlib.util.find_spec("analysis.clip_report") is None:
        sec.note(f"{clip_dir}/metrics.json exists, but this checkout has no analysis/clip_report.py to show it.")
        return sec, None
    try:
        from analysis import clip_report  # noqa: PLC0415 (optional part, written separately)
        test = scores["test"]  # the CNN's numbers are on the whole test split: compared only with CLIP's test
        same_split = json.loads((clip_dir / "metrics.json").read_text()).get("split") == "test"
        part = clip_report.report_section(
            clip_dir, cnn_per_class=metrics.per_class_dict(test["per_class"]) if same_split else None,
            cnn_summary={"acc": test["acc"], "macro_f1": test["macro_f1"]} if same_split else None)
        clip_metrics = {key: part["metrics"][key] for key in ("model", "pretrained", "acc", "macro_f1")}
    except Exception as e:  # a broken optional section must not cost the rest of the report
        log(f"warning: CLIP section failed: {type(e).__name__}: {e}")
        sec.note(f"The CLIP section failed: {type(e).__name__}: {e}")
        return sec, None
    sec.text(part["html"])
    return sec, clip_metrics
