"""CLIP's own figures: a query's retrieved images and per-class F1 of several models side by side. The
zero-shot confusion matrix is plots_eval.plot_confusion, as the CNN's."""
from __future__ import annotations

import numpy as np

from analysis.style import new_figure
from distributed.config import CLASS_NAMES


def retrieval_figure(images: np.ndarray, labels: np.ndarray, scores: np.ndarray, query: str,
                     class_names=CLASS_NAMES, target: int | None = None, ncols: int = 8):
    """The top-k images of one query, best first, each titled with its true class and similarity;
    green/red titles when the query names a class."""
    nrows = max(1, -(-len(images) // ncols))
    fig = new_figure(1.3 * ncols, 1.55 * nrows + 0.5)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, y, s in zip(axes.flat, images, labels, scores):
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        colour = "black" if target is None else ("green" if y == target else "red")
        ax.set_title(f"{class_names[y]}\n{s:.3f}", fontsize=7, color=colour)
    hits = "" if target is None else f"  (precision@{len(labels)} {np.mean(np.asarray(labels) == target):.2f})"
    fig.suptitle(f'"{query}"{hits}', fontsize=10)
    return fig


def per_class_f1_figure(series: dict[str, dict[str, float]], class_names=CLASS_NAMES):
    """Grouped bars: one group per class, one bar per model (e.g. CNN, CLIP zero-shot, CLIP linear probe)."""
    fig = new_figure(9, 3.8)
    ax = fig.add_subplot()
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(class_names))
    for k, (name, f1) in enumerate(series.items()):
        ax.bar(x + (k - (len(series) - 1) / 2) * width, [f1.get(c, np.nan) for c in class_names], width, label=name)
    ax.set_xticks(x, class_names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.set_title("per-class F1")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(axis="y", alpha=0.3)
    return fig
