"""Figures of the best model's evaluation: confusion matrices, per-class scores, image grids, and the
paired comparison of the top configurations. Class names label every class axis."""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.metrics import row_normalize
from analysis.style import COUNTS, TRAIN_COLOR, VAL_COLOR, new_figure
from distributed.config import CLASS_NAMES


def _matrix(ax, values: np.ndarray, labels: list[str], fmt, vmax: float) -> None:
    ax.imshow(values, cmap=COUNTS, vmin=0, vmax=vmax)
    n = len(values)
    for i in range(n):
        for j in range(n):
            v = values[i, j]
            ax.text(j, i, fmt(v), ha="center", va="center", fontsize=7,
                    color="white" if v > 0.55 * vmax else "black")
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")


def plot_confusion(cm: np.ndarray, title: str):
    """Counts (left) and row-normalised percentages (right: each true class sums to 100%, the diagonal
    is the per-class recall). The title carries the total and the accuracy trace/total."""
    cm = np.asarray(cm)  # also a nested list, as metrics.json holds it
    fig = new_figure(13, 5.6)
    left, right = fig.subplots(1, 2)
    labels = list(CLASS_NAMES)
    _matrix(left, cm, labels, lambda v: f"{int(v)}", vmax=max(cm.max(), 1))
    left.set_title(f"counts (total {int(cm.sum())})")
    _matrix(right, 100 * row_normalize(cm), labels, lambda v: f"{v:.0f}" if v >= 0.5 else "", vmax=100)
    right.set_title("row-normalised, % of each true class")
    fig.suptitle(f"{title}: accuracy {np.trace(cm)}/{int(cm.sum())} = {np.trace(cm) / max(cm.sum(), 1):.4f}")
    return fig


def plot_per_class(test: pd.DataFrame, oof: pd.DataFrame):
    """Precision, recall and F1 per class, out-of-fold validation beside the test ensemble."""
    fig = new_figure(12, 4.4)
    axes = fig.subplots(1, 3, sharey=True)
    y = np.arange(len(test))
    for ax, col in zip(axes, ("precision", "recall", "f1")):
        ax.barh(y - 0.2, oof[col], height=0.4, color=TRAIN_COLOR, label="out-of-fold validation")
        ax.barh(y + 0.2, test[col], height=0.4, color=VAL_COLOR, label="test (ensemble)")
        ax.set_xlim(0, 1)
        ax.set_title(col if col != "f1" else "F1")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, list(test["class"]))
    axes[0].invert_yaxis()
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2, frameon=False)
    fig.suptitle("Per-class precision, recall and F1")
    return fig


def _image_grid(images: np.ndarray, titles: list[str], colors: list[str], suptitle: str, ncols: int = 8):
    nrows = max(1, int(np.ceil(len(images) / ncols)))
    fig = new_figure(1.45 * ncols, 1.75 * nrows + 0.5)
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, img, title, color in zip(axes, images, titles, colors):
        ax.imshow(img, cmap="gray_r", vmin=0, vmax=255)
        ax.set_title(title, fontsize=7, color=color)
    fig.suptitle(suptitle, fontsize=11)
    return fig


def plot_predictions(images: np.ndarray, true: np.ndarray, pred: np.ndarray, conf: np.ndarray,
                     suptitle: str = "Random test images: predicted (true)"):
    """A grid of images titled 'predicted (true)' and the confidence; green when right, red when wrong."""
    titles = [f"{CLASS_NAMES[p]}\n({CLASS_NAMES[t]}) {100 * c:.0f}%" for p, t, c in zip(pred, true, conf)]
    colors = ["#1a7f37" if p == t else "#cf222e" for p, t in zip(pred, true)]
    return _image_grid(images, titles, colors, suptitle)


def plot_misclassified(images: np.ndarray, true: np.ndarray, pred: np.ndarray, conf: np.ndarray, suptitle: str):
    """Misclassified images titled with the true label, the predicted label and its confidence."""
    titles = [f"true: {CLASS_NAMES[t]}\npred: {CLASS_NAMES[p]} {100 * c:.0f}%" for t, p, c in zip(true, pred, conf)]
    return _image_grid(images, titles, ["#cf222e"] * len(images), suptitle)


# Height of one comparison's row and of the title, axis label and margins around the rows, in inches:
# the panel grows with the number of challengers instead of leaving a fixed empty band.
ROW_INCHES, FRAME_INCHES = 0.45, 1.35


def plot_paired_differences(comparison: pd.DataFrame, alpha: float = 0.05):
    """Per challenger, on one row: the per-fold accuracy differences (winner - challenger) as dots, their
    mean (diamond) and the corrected-t (1 - alpha) confidence interval; an interval clear of zero is a real
    difference. Each row is one unit of y and ROW_INCHES of height, so the panel has no empty band."""
    n = len(comparison)
    fig = new_figure(9, ROW_INCHES * n + FRAME_INCHES)
    ax = fig.add_subplot()
    for y, (_, r) in enumerate(comparison.iterrows()):
        color = "#1a7f37" if r.significant else "#6e7781"
        ax.errorbar(r["mean"], y, xerr=[[r["mean"] - r.ci_low], [r.ci_high - r["mean"]]], fmt="D",
                    color=color, capsize=5, ms=8, lw=1.6, zorder=2)
        # The folds on the interval's own line, drawn over it (a fold at the mean shows on the diamond).
        ax.scatter(r.diffs, np.full(len(r.diffs), float(y)), s=22, color="black", alpha=0.7, linewidths=0,
                   zorder=3)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(n), [f"#1 vs #{r['rank']} {r.trial_id}" for _, r in comparison.iterrows()])
    ax.set_ylim(n - 0.5, -0.5)  # one unit per row, the first at the top
    ax.tick_params(labelsize=10)
    ax.set_xlabel("validation accuracy difference, winner − challenger (dots: folds)", fontsize=10)
    ax.set_title(f"Paired fold differences with Nadeau–Bengio corrected {100 * (1 - alpha):.0f}% intervals",
                 fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return fig
