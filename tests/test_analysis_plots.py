"""Plot functions, the search views and the HTML helpers on small synthetic inputs: what each figure
draws (class names on class axes, the data behind lines and bars), not only that it ran."""
from __future__ import annotations

import re

import numpy as np
import optuna
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PathCollection

from analysis import html, optuna_study, plots_curves, plots_eval, plots_search
from analysis.embeddings import plot_umap_pair, sample_indices
from analysis.metrics import confusion_matrix, summarize
from analysis.stats import compare_to_best
from analysis.style import DPI, to_png
from analysis.run_tables import Run, format_value
from distributed.config import CLASS_NAMES, PRESETS, SEARCHABLE
from distributed.search import define_space

from test_analysis_tables import synthetic_epochs

NAMES = list(CLASS_NAMES)


def tick_labels(axis) -> list[str]:
    return [t.get_text() for t in axis.get_ticklabels()]


def test_confusion_figure_labels_classes_and_shows_trace_over_total():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 10, 1000)
    pred = np.where(rng.random(1000) < 0.7, true, rng.integers(0, 10, 1000))
    cm = confusion_matrix(true, pred)
    fig = plots_eval.plot_confusion(cm, "Test")
    counts, normed = fig.axes
    for ax in (counts, normed):
        assert tick_labels(ax.xaxis) == NAMES and tick_labels(ax.yaxis) == NAMES
        assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"
    assert f"accuracy {np.trace(cm)}/1000" in fig.get_suptitle()
    cells = [t.get_text() for t in counts.texts]
    assert sum(int(c) for c in cells) == 1000 and cells[0] == str(cm[0, 0])
    np.testing.assert_array_equal(counts.images[0].get_array(), cm)
    assert to_png(fig)[:8] == b"\x89PNG\r\n\x1a\n"


def test_per_class_figure_has_class_names_and_bar_lengths():
    rng = np.random.default_rng(1)
    true = rng.integers(0, 10, 400)
    test, oof = summarize(true, true)["per_class"], summarize(true, rng.integers(0, 10, 400))["per_class"]
    fig = plots_eval.plot_per_class(test, oof)
    assert tick_labels(fig.axes[0].yaxis) == NAMES
    f1_bars = fig.axes[2].patches
    np.testing.assert_allclose([b.get_width() for b in f1_bars], np.r_[oof.f1, test.f1])


def test_image_grids_are_titled_with_class_names():
    imgs = np.zeros((3, 28, 28), np.uint8)
    fig = plots_eval.plot_misclassified(imgs, np.array([6, 0, 4]), np.array([0, 6, 2]), np.array([0.9, 0.8, 0.7]), "x")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["true: Shirt\npred: T-shirt/top 90%", "true: T-shirt/top\npred: Shirt 80%",
                      "true: Coat\npred: Pullover 70%"]
    fig = plots_eval.plot_predictions(imgs[:2], np.array([9, 1]), np.array([9, 3]), np.array([0.99, 0.5]))
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["Ankle boot\n(Ankle boot) 99%", "Dress\n(Trouser) 50%"]
    assert axes[0].title.get_color() != axes[1].title.get_color()  # right vs wrong


def test_umap_pair_legend_names_every_class():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 5)
    fig = plot_umap_pair(rng.normal(size=(50, 2)), rng.normal(size=(50, 2)), labels)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == NAMES
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == 50


def test_sample_indices_is_stratified():
    labels = np.repeat(np.arange(10), 100)
    idx = sample_indices(labels, 200, seed=0)
    assert len(idx) == 200 and np.all(np.diff(idx) > 0)
    assert np.bincount(labels[idx]).tolist() == [20] * 10
    assert len(sample_indices(labels, 5000)) == 1000


def test_fold_curves_draw_the_fold_mean_and_band_of_known_curves():
    epochs = synthetic_epochs({"t": [[0.1, 0.2, 0.3], [0.5, 0.5, 0.5], [0.6, 0.8, 0.7]]})
    fig = plots_curves.plot_fold_curves(epochs, "t")
    acc = fig.axes[1]
    mean = next(l for l in acc.lines if l.get_label() == "validation (fold mean ± std)")
    np.testing.assert_allclose(mean.get_ydata(), [0.2, 0.5, 0.7])
    assert len(acc.lines) == 2 * (3 + 1)  # train and validation: 3 folds + the mean
    band = acc.collections[1].get_paths()[0].vertices  # validation band (train is drawn first)
    assert band[:, 1].min() == pytest.approx(0.1) and band[:, 1].max() == pytest.approx(0.8)


def synthetic_trials() -> pd.DataFrame:
    return pd.DataFrame({
        "rank": [1, 2, 3], "trial_id": ["a", "b", "c"], "status": ["completed", "pruned", "pruned"],
        "epochs_run": [3, 1, 1], "val_acc_mean": [0.7, 0.4, 0.3], "val_acc_std": [0.1, 0.05, 0.05],
        "config_lr": [1e-3, 2e-3, 3e-3], "config_dropout": [0.1, 0.2, 0.3], "searched": ["dropout,lr"] * 3})


def test_all_trial_curves_and_top_configs():
    epochs = synthetic_epochs({"a": [[0.1, 0.2, 0.3], [0.5, 0.5, 0.5], [0.6, 0.8, 0.7]],
                               "b": [[0.3, 0.4, 0.5]], "c": [[0.2, 0.3, 0.4]]})
    trials = synthetic_trials()
    fig = plots_curves.plot_all_trials(epochs, trials, "a")
    best = max(fig.axes[1].lines, key=lambda l: l.get_linewidth())
    np.testing.assert_allclose(best.get_ydata(), [0.2, 0.5, 0.7])
    fig = plots_curves.plot_top_configs(epochs, trials, ["lr", "dropout"])
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles[0] == "#1 a (completed, 3 ep)\nlr=1.00e-03, dropout=0.1"
    assert len(titles) == 3
    # the full search space's eight values wrap at the commas instead of running into the next panel
    names = ["lr", "weight_decay", "dropout", "batch_size", "width", "depth", "label_smoothing", "erase_p"]
    wide = trials.assign(**{f"config_{n}": 0.123456 for n in names})
    title = plots_curves.plot_top_configs(epochs, wide, names).axes[0].get_title()
    lines = title.split("\n")
    assert len(lines) >= 3 and all(len(line) <= plots_curves.TITLE_CHARS for line in lines[1:])
    assert " ".join(lines[1:]) == ", ".join(f"{n}={format_value(n, 0.123456)}" for n in names)


def test_search_figures():
    trials = synthetic_trials()
    order = pd.Series({"a": 0, "b": 1, "c": 2})
    fig = plots_search.plot_optimization_history(trials, order)
    assert fig.axes[0].get_xlabel().startswith("trial number")
    fig = plots_search.plot_asha_epochs(trials, order, max_epochs=3, rungs=[1])
    bars = fig.axes[0].patches
    assert sorted(b.get_width() for b in bars) == [1, 1, 3]
    assert "5 of 9 trial-epochs" in fig.axes[0].get_title()
    fig = plots_search.plot_importances(pd.Series({"lr": 0.7, "dropout": 0.3}), epoch=1, n_trials=3)
    assert tick_labels(fig.axes[0].yaxis) == ["dropout", "lr"]


def test_asha_rungs():
    assert plots_search.asha_rungs(1, 3, 15) == [1, 3, 9]
    assert plots_search.asha_rungs(1, 2, 3) == [1, 2]
    assert plots_search.asha_rungs(3, 3, 3) == []


def synthetic_run(tmp_path) -> Run:
    epochs = synthetic_epochs({"a": [[0.3, 0.4], [0.6, 0.7]], "b": [[0.2, 0.3]], "c": [[0.1, 0.1]],
                               "d": [[0.5, 0.4]]})
    trials = pd.DataFrame({"rank": [1, 2, 3, 4], "trial_id": list("adbc"), "status": ["completed"] + ["pruned"] * 3,
                           "epochs_run": [2, 1, 1, 1], "config_lr": [1e-3, 5e-3, 2e-3, 8e-3],
                           "config_dropout": [0.1, 0.5, 0.2, 0.3], "searched": ["dropout,lr"] * 4})
    return Run(tmp_path, {"name": "x", "folds": 2, "max_epochs": 2, "best_trial_id": "a"},
               PRESETS["smoke"], trials, epochs)


DISTS = {"lr": optuna.distributions.FloatDistribution(3e-4, 1e-2, log=True),
         "dropout": optuna.distributions.FloatDistribution(0.0, 0.6)}


def test_study_at_epoch_values_are_fold_means_at_that_epoch(tmp_path):
    run = synthetic_run(tmp_path)
    study = optuna_study.study_at_epoch(run, DISTS, epoch=1)
    values = {t.user_attrs["trial_id"]: t.value for t in study.trials}
    assert values == pytest.approx({"a": 0.35, "b": 0.25, "c": 0.1, "d": 0.45})
    assert study.trials[0].params.keys() == {"lr", "dropout"}
    assert list(optuna_study.study_at_epoch(run, DISTS, epoch=2).trials[0].user_attrs.values()) == ["a"]
    imp = optuna_study.param_importances(study)
    assert set(imp.index) == {"lr", "dropout"} and imp.sum() == pytest.approx(1.0)
    assert optuna_study.param_importances(optuna_study.study_at_epoch(run, DISTS, epoch=2)).empty  # one trial
    fig = plots_search.plot_parallel_coordinates(study, epoch=1)
    assert tick_labels(fig.axes[0].xaxis) == ["lr", "dropout", "val acc @ epoch 1"]
    trial_lines = [line for line in fig.axes[0].lines if len(line.get_xdata()) == 3]  # not the axis rules
    assert len(trial_lines) == 4
    best = max(trial_lines, key=lambda line: line.get_linewidth())
    assert best.get_ydata()[-1] == pytest.approx(1.0)  # d, the best at epoch 1, tops the objective axis
    lr_pos = (np.log10(5e-3) - np.log10(3e-4)) / (np.log10(1e-2) - np.log10(3e-4))
    assert best.get_ydata()[0] == pytest.approx(lr_pos)  # log scale over the search range


def test_start_order_matches_trials_to_optuna_numbers(tmp_path):
    run = synthetic_run(tmp_path)
    stored = optuna.create_study(direction="maximize")
    for tid in ["b", "a", "c"]:  # sampled in this order; d is not in the study
        row = run.trials.set_index("trial_id").loc[tid]
        stored.add_trial(optuna.trial.create_trial(
            params={"lr": float(row.config_lr), "dropout": float(row.config_dropout)}, distributions=DISTS, value=0.5))
    order = optuna_study.start_order(stored, run)
    assert order.to_dict() == {"b": 0, "a": 1, "c": 2, "d": 3}
    assert optuna_study.start_order(None, run).to_dict() == {"a": 0, "d": 1, "b": 2, "c": 3}
    assert optuna_study.distributions(stored) == DISTS


def drawn(fig):
    """Lay the figure out and draw it with Agg, as to_png does, so window extents are the PNG's pixels."""
    FigureCanvasAgg(fig).draw()
    return fig.canvas.get_renderer()


def comparison_of(n_rows: int, k: int = 5):
    rng = np.random.default_rng(n_rows)
    means = np.linspace(0.9, 0.8, n_rows + 1)[:, None]
    folds = pd.DataFrame(means + rng.normal(0, 0.01, (n_rows + 1, k)), index=[f"t{i}" for i in range(n_rows + 1)],
                         columns=[f"fold{j}" for j in range(k)])
    return compare_to_best(folds, 1 / (k - 1))


def test_paired_differences_figure_puts_each_rows_folds_on_its_interval():
    folds = pd.DataFrame({"fold0": [0.9, 0.8], "fold1": [0.92, 0.81], "fold2": [0.91, 0.83]}, index=["a", "b"])
    fig = plots_eval.plot_paired_differences(compare_to_best(folds, 0.5))
    assert tick_labels(fig.axes[0].yaxis) == ["#1 vs #2 b"]

    comparison = comparison_of(4)
    ax = plots_eval.plot_paired_differences(comparison).axes[0]
    assert tick_labels(ax.yaxis) == [f"#1 vs #{i} t{i - 1}" for i in range(2, 6)]
    means = [line for line in ax.lines if line.get_marker() == "D"]
    dots = [c for c in ax.collections if isinstance(c, PathCollection)]
    intervals = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(means) == len(dots) == len(intervals) == 4
    for row, r in comparison.iterrows():
        assert list(means[row].get_ydata()) == [row] and means[row].get_xdata()[0] == pytest.approx(r["mean"])
        (x0, y0), (x1, y1) = intervals[row].get_segments()[0]
        assert (y0, y1) == (row, row) and (x0, x1) == pytest.approx((r.ci_low, r.ci_high))
        np.testing.assert_array_equal(dots[row].get_offsets()[:, 1], np.full(5, row))  # the interval's y
        np.testing.assert_allclose(dots[row].get_offsets()[:, 0], r.diffs)
        assert dots[row].get_zorder() > intervals[row].get_zorder()  # folds drawn over the interval
    assert ax.get_ylim() == (3.5, -0.5)  # one unit per row, the first on top, no empty band


def test_paired_differences_figure_height_grows_by_one_row_per_challenger():
    heights, panels = {}, {}
    for n in (1, 2, 4):
        fig = plots_eval.plot_paired_differences(comparison_of(n))
        renderer = drawn(fig)
        heights[n] = fig.get_size_inches()[1]
        panels[n] = fig.axes[0].get_window_extent(renderer).height
        assert panels[n] > 0.6 * fig.bbox.height  # the panel, not margins, fills the figure
        labels = [t.get_window_extent(renderer) for t in fig.axes[0].get_yticklabels()]
        assert all(t.get_fontsize() >= 10 for t in fig.axes[0].get_yticklabels())
        assert all(b.x0 >= 0 for b in labels)  # not cut off at the left edge
        assert not any(a.overlaps(b) for a, b in zip(labels, labels[1:]))
    assert heights[1] == pytest.approx(plots_eval.ROW_INCHES + plots_eval.FRAME_INCHES)
    assert heights[4] - heights[1] == pytest.approx(3 * plots_eval.ROW_INCHES)
    # every added row adds one row's height to the panel itself (the frame around it stays the same)
    row_px = plots_eval.ROW_INCHES * DPI
    assert panels[2] - panels[1] == pytest.approx(row_px, abs=1)
    assert panels[4] - panels[1] == pytest.approx(3 * row_px, abs=1)


def full_space_study(n_trials: int = 12) -> optuna.Study:
    """The search's real space (every searchable hyperparameter) with random values."""
    rng = np.random.default_rng(0)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (define_space(t, SEARCHABLE), float(rng.uniform(0.8, 0.92)))[1], n_trials=n_trials)
    return study


@pytest.mark.parametrize("space", ["full", "two"])
def test_parallel_coordinates_labels_clear_every_axis_line(space, tmp_path):
    study = full_space_study() if space == "full" else optuna_study.study_at_epoch(synthetic_run(tmp_path), DISTS, epoch=1)
    fig = plots_search.plot_parallel_coordinates(study, epoch=1)
    renderer = drawn(fig)
    ax = fig.axes[0]
    rules = [line for line in ax.lines if len(line.get_xdata()) == 2]  # axvline: one per axis
    n_axes = len(study.trials[0].distributions) + 1
    assert len(rules) == n_axes
    half_width = max(line.get_linewidth() for line in rules) * DPI / 72 / 2
    rule_px = [ax.transData.transform((line.get_xdata()[0], 0))[0] for line in rules]
    labels = ax.texts
    assert len(labels) >= 2 * n_axes  # at least both ends of every axis
    top_line = max(line.get_zorder() for line in ax.lines)
    for text in labels:
        box = text.get_window_extent(renderer)
        hit = [x for x in rule_px if box.x0 - half_width <= x <= box.x1 + half_width]
        assert not hit, f"{text.get_text()!r} at {box} crosses the axis line at x={hit}"
        assert box.x1 <= fig.bbox.x1
        patch = text.get_bbox_patch()  # the white box that keeps trial lines from running through the digits
        assert patch is not None and patch.get_facecolor()[:3] == (1.0, 1.0, 1.0)
        box = patch.get_window_extent(renderer)
        assert not [x for x in rule_px if box.x0 - half_width <= x <= box.x1 + half_width]
        assert text.get_zorder() > top_line  # above every trial's line
    names = [t.get_window_extent(renderer) for t in ax.get_xticklabels()]
    assert not any(a.overlaps(b) for a, b in zip(names, names[1:]))  # axis names side by side, not on top
    assert fig.get_size_inches()[0] <= plots_search.REPORT_WIDTH_IN  # shown at its own size in the report


def test_parallel_coordinates_tick_labels_are_short_and_round():
    texts = {}
    fig = plots_search.plot_parallel_coordinates(full_space_study(), epoch=9)
    ax = fig.axes[0]
    for line in ax.lines:
        if len(line.get_xdata()) == 2:
            x = line.get_xdata()[0]
            texts[tick_labels(ax.xaxis)[int(x)]] = [t.get_text() for t in ax.texts if t.xy[0] == x]
    assert texts["lr"] == ["3e-4", "1e-3", "1e-2"]
    assert texts["weight_decay"] == ["1e-5", "1e-4", "1e-3", "1e-2", "5e-2"]
    assert texts["dropout"] == ["0", "0.2", "0.4", "0.6"]
    assert texts["batch_size"] == ["64", "128", "256"]
    assert texts["depth"] == ["2", "3"]  # an integer axis has no 2.33
    assert texts["label_smoothing"] == ["0", "0.05", "0.1", "0.15", "0.2"]
    assert texts["erase_p"] == ["0", "0.2", "0.4", "0.5"]
    assert max(len(t) for labels in texts.values() for t in labels) <= 5


def test_html_is_escaped_and_self_contained():
    sec = html.Section("s", "1. <Title>")
    sec.table("t", pd.DataFrame({"name": ["<script>alert(1)</script>"], "v": [0.123456]}))
    fig = plots_eval.plot_confusion(np.eye(10, dtype=int), "x")
    sec.figure("cm", fig, "caption & more")
    sec.note("see https://example.org")
    page = html.page("T", "sub", [sec])
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<td>0.1235</td>" in page and "caption &amp; more" in page
    assert '<h2>1. &lt;Title&gt;</h2>' in page and '<a href="#s">' in page
    assert re.findall(r'src="data:image/png;base64,', page) and sec.figures["cm"][:4] == b"\x89PNG"
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', page)
    assert sec.tables["t"].shape == (1, 2)


def test_accuracy_vs_size_draws_the_front_and_labels_two_trials():
    table = pd.DataFrame({"trial_id": ["s", "m", "b"], "params": [1_000, 5_000, 20_000],
                          "val_acc_mean": [0.897, 0.80, 0.90], "val_acc_std": [0.01, 0.02, 0.005],
                          "on_front": [True, False, True], "within_half_point": [True, False, True],
                          "latency_ms_b1": [0.4, np.nan, np.nan], "latency_ms_b256": [0.01, np.nan, np.nan]})
    ax = plots_search.plot_accuracy_vs_size(table, best_id="b", pick_id="s", within_points=0.5).axes[0]
    assert ax.get_xscale() == "log"
    step = next(line for line in ax.lines if line.get_drawstyle() == "steps-post")
    np.testing.assert_allclose(step.get_xdata(), [1_000, 20_000, 20_000])
    np.testing.assert_allclose(step.get_ydata(), [0.897, 0.90, 0.90])
    threshold = next(line for line in ax.lines if line.get_linestyle() == "--")
    assert threshold.get_ydata()[0] == pytest.approx(0.895)
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == ["best: b", "exported: 0.40 ms/image (batch 1)", "smallest within 0.5: s"]
    markers = {line.get_marker(): list(line.get_xdata()) for line in ax.lines if line.get_marker() in ("o", "D")}
    assert markers == {"o": [5_000], "D": [1_000, 20_000]}  # the front's points stand out
    alone = plots_search.plot_accuracy_vs_size(table.iloc[[2]], best_id="b", pick_id="b", within_points=0.5)
    assert [t.get_text() for t in alone.axes[0].texts] == ["best, also smallest within 0.5: b"]
    assert [t.get_text() for t in alone.axes[0].get_legend().get_texts()] == [
        "0.5 points below the best", "on the Pareto front"]
