"""Learning curves: every trial's validation curves, the best trial fold by fold, the top configurations.

Inputs are epochs.parquet-shaped tables (one row per trial, epoch, fold) and the ranked trials table.
"""
from __future__ import annotations

import math
import textwrap

import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from analysis.style import BEST_COLOR, STATUS_STYLE, TRAIN_COLOR, VAL_COLOR, new_figure
from analysis.run_tables import fold_band, fold_mean_curves, hparam_label


def plot_all_trials(epochs: pd.DataFrame, trials: pd.DataFrame, best_trial_id: str):
    """Fold-mean validation loss and accuracy per epoch for every trial; pruned trials dashed grey and
    ending in a triangle where ASHA stopped them; the best trial thick red."""
    curves = fold_mean_curves(epochs)
    status = trials.set_index("trial_id").status
    fig = new_figure(11, 4)
    axes = fig.subplots(1, 2)
    for ax, metric, label in zip(axes, ("val_loss", "val_acc"), ("validation loss", "validation accuracy")):
        for trial_id, c in curves.groupby("trial_id"):
            s = status.get(trial_id, "running")
            style = STATUS_STYLE[s]
            if trial_id == best_trial_id:
                ax.plot(c.epoch, c[f"{metric}_mean"], color=BEST_COLOR, lw=2.5, marker="o", ms=4, zorder=4)
                continue
            ax.plot(c.epoch, c[f"{metric}_mean"], color=style["color"], ls=style["linestyle"], lw=1.2,
                    alpha=style["alpha"], zorder=2)
            if s != "completed":  # mark where the trial stopped
                ax.plot(c.epoch.iloc[-1], c[f"{metric}_mean"].iloc[-1], marker=style["marker"],
                        color=style["color"], ms=6, zorder=3)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"fold-mean {label}")
        ax.grid(alpha=0.3)
    present = [s for s in STATUS_STYLE if s in set(status)]
    handles = [Line2D([], [], color=STATUS_STYLE[s]["color"], ls=STATUS_STYLE[s]["linestyle"],
                      marker=STATUS_STYLE[s]["marker"] if s != "completed" else None, label=s) for s in present]
    handles.append(Line2D([], [], color=BEST_COLOR, lw=2.5, marker="o", ms=4, label=f"best ({best_trial_id})"))
    axes[1].legend(handles=handles, fontsize=8, frameon=False, loc="lower right")
    fig.suptitle(f"Validation curves of all {curves.trial_id.nunique()} trials")
    return fig


def plot_fold_curves(epochs: pd.DataFrame, trial_id: str, title: str = ""):
    """One trial's train and validation loss and accuracy: each fold thin, the fold mean bold, and a
    band of ± one standard deviation across folds (the seed's "average across 5 folds" plot)."""
    fig = new_figure(11, 4)
    axes = fig.subplots(1, 2)
    for ax, quantity in zip(axes, ("loss", "accuracy")):
        key = "loss" if quantity == "loss" else "acc"
        for split, color in (("train", TRAIN_COLOR), ("val", VAL_COLOR)):
            band = fold_band(epochs, trial_id, f"{split}_{key}")
            for col in (c for c in band.columns if c.startswith("fold")):
                ax.plot(band.epoch, band[col], color=color, lw=0.8, alpha=0.35)
            ax.fill_between(band.epoch, band.lo, band.hi, color=color, alpha=0.2, lw=0)
            name = "train" if split == "train" else "validation"
            ax.plot(band.epoch, band["mean"], color=color, lw=2.2, marker="o", ms=4,
                    label=f"{name} (fold mean ± std)")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(quantity)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    k = epochs[epochs.trial_id == trial_id].fold.nunique()
    fig.suptitle(title or f"Trial {trial_id}: {k} folds (thin lines), their mean and ± std band")
    return fig


TITLE_CHARS = 52  # characters per title line of a small multiple (fontsize 8 on a 4.2-inch panel)


def plot_top_configs(epochs: pd.DataFrame, trials: pd.DataFrame, names: list[str], top: int = 6):
    """Small multiples for the top-ranked trials: train and validation accuracy, fold mean ± std, with
    the trial's hyperparameters as the title (the seed's grid of per-configuration curves)."""
    chosen = trials[trials.epochs_run > 0].head(top)
    ncols = 2 if len(chosen) == 4 else min(3, len(chosen))
    nrows = math.ceil(len(chosen) / ncols)
    last_epoch = int(epochs.epoch.max())
    fig = new_figure(4.2 * ncols, 3.1 * nrows)
    # One x range for every panel (the longest any trial ran): a pruned trial's short curve shows how far it got.
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel()
    for ax, (_, row) in zip(axes, chosen.iterrows()):
        for split, color in (("train", TRAIN_COLOR), ("val", VAL_COLOR)):
            band = fold_band(epochs, row.trial_id, f"{split}_acc")
            ax.fill_between(band.epoch, band.lo, band.hi, color=color, alpha=0.2, lw=0)
            ax.plot(band.epoch, band["mean"], color=color, lw=1.8, marker="o", ms=3,
                    label="train" if split == "train" else "validation")
        # wrapped at the commas: a panel is ~4 inches wide, and unwrapped titles ran into their neighbours
        label = textwrap.fill(hparam_label(row, names), width=TITLE_CHARS, break_long_words=False)
        ax.set_title(f"#{row['rank']} {row.trial_id} ({row.status}, {row.epochs_run} ep)\n{label}", fontsize=8)
        ax.set_xlim(0.8, last_epoch + 0.2)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[len(chosen):]:
        ax.set_visible(False)
    for ax in axes[::ncols]:
        ax.set_ylabel("accuracy")
    axes[0].legend(fontsize=8, frameon=False, loc="lower right")
    fig.suptitle(f"Top {len(chosen)} configurations: accuracy per epoch (fold mean ± std)")
    return fig
