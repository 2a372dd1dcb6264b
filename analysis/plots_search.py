"""Figures of the search itself: optimization history, importances, parallel coordinates, ASHA budgets and
rung decisions, accuracy against model size.

Each function takes tables (or a study) and returns a matplotlib Figure; nothing here reads files.
"""
from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from analysis.style import BEST_COLOR, SEQUENTIAL, STATUS_STYLE, new_figure


def asha_rungs(grace_period: int, reduction_factor: int, max_t: int) -> list[int]:
    """The epochs at which ASHA compares trials: grace_period * reduction_factor**k below max_t."""
    rungs, r = [], grace_period
    while r < max_t:
        rungs.append(r)
        r *= reduction_factor
    return rungs


def _status_legend(ax, statuses, extra=()) -> None:
    handles = [Line2D([], [], linestyle="none", markersize=7, label=s,
                      **{k: v for k, v in STATUS_STYLE[s].items() if k != "linestyle"}) for s in statuses]
    ax.legend(handles=[*handles, *extra], loc="best", fontsize=8, frameon=False)


def plot_optimization_history(trials: pd.DataFrame, order: pd.Series, metric_label: str = "validation accuracy"):
    """Each trial's fold-mean value (± fold std) at its last epoch, in sampling order; the running best
    of the completed trials as a step line. A pruned trial's point is an early-epoch value: its epoch
    count is printed beside it."""
    fig = new_figure(9, 4)
    ax = fig.add_subplot()
    df = trials.assign(number=trials.trial_id.map(order)).sort_values("number")
    for status, group in df.groupby("status"):
        style = STATUS_STYLE[status]
        g = group.dropna(subset=["val_acc_mean"])
        ax.errorbar(g.number, g.val_acc_mean, yerr=g.val_acc_std, fmt=style["marker"], color=style["color"],
                    alpha=style["alpha"], capsize=3, markersize=7)
        if status != "completed":
            for _, r in g.iterrows():
                ax.annotate(f"{r.epochs_run} ep", (r.number, r.val_acc_mean), textcoords="offset points",
                            xytext=(6, -3), fontsize=7, color=style["color"])
    done = df[df.status == "completed"]
    if len(done):
        best_so_far = done.val_acc_mean.cummax()
        ax.step(np.r_[done.number, df.number.max()], np.r_[best_so_far, best_so_far.iloc[-1]], where="post",
                color=BEST_COLOR, lw=1.5)
    ax.set_xlabel("trial number (order sampled by TPE)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"fold-mean {metric_label}")
    ax.set_title("Optimization history")
    ax.grid(alpha=0.3)
    _status_legend(ax, [s for s in STATUS_STYLE if s in set(df.status)],
                   [Line2D([], [], color=BEST_COLOR, label="best completed so far")])
    return fig


def plot_importances(importances: pd.Series, epoch: int, n_trials: int):
    """Horizontal bars of fANOVA importances (fractions of the explained variance)."""
    fig = new_figure(6.5, 0.5 * len(importances) + 1.4)
    ax = fig.add_subplot()
    imp = importances.sort_values()
    ax.barh(imp.index, imp.values, color="#4c72b0")
    for y, v in enumerate(imp.values):
        ax.text(v, y, f" {v:.2f}", va="center", fontsize=9)
    ax.set_xlim(0, max(1.0, imp.max() * 1.15))
    ax.set_xlabel("importance (fANOVA share of variance)")
    ax.set_title(f"Importance for validation accuracy\nat epoch {epoch}, {n_trials} trials", fontsize=10)
    return fig


def _short(t: float, log: bool) -> str:
    """A tick label in as few characters as it needs: 3e-4, 2.9e-3 on log axes; 0.15, 64 otherwise."""
    if not log:
        return f"{t:.3g}"
    mantissa, exponent = f"{t:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _nice_ticks(lo: float, hi: float, log: bool, integer: bool) -> list[float]:
    """The range's two ends (the axes span the search space) and the round values between them (powers of
    ten on a log axis) that do not crowd an end."""
    f = np.log10 if log else float

    def inner(candidates) -> list[float]:
        return [float(t) for t in candidates if min(f(t) - f(lo), f(hi) - f(t)) > 0.12 * (f(hi) - f(lo))]

    if not log:
        return [lo, *inner(MaxNLocator(nbins=4, steps=[1, 2, 5, 10], integer=integer).tick_values(lo, hi)), hi]
    decades = range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
    # less than a decade wide: 1, 2 and 5 times the powers of ten instead
    return [lo, *(inner(10.0 ** e for e in decades) or inner(m * 10.0 ** e for e in decades for m in (1, 2, 5))), hi]


def _axis_scale(dist, values: np.ndarray):
    """Map values to [0, 1] on a parameter's axis, and return a few (position, label) ticks."""
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        choices = list(dist.choices)
        pos = np.array([choices.index(v) for v in values]) / max(len(choices) - 1, 1)
        return pos, [(i / max(len(choices) - 1, 1), str(c)) for i, c in enumerate(choices)]
    lo, hi = float(dist.low), float(dist.high)
    log = getattr(dist, "log", False)
    f = np.log10 if log else (lambda v: np.asarray(v, dtype=float))
    pos = (f(values) - f(lo)) / (f(hi) - f(lo))
    integer = isinstance(dist, optuna.distributions.IntDistribution)
    ticks = _nice_ticks(lo, hi, log, integer)
    return pos, [(float((f(t) - f(lo)) / (f(hi) - f(lo))), _short(t, log and not integer)) for t in ticks]


# Axis value labels sit right of their axis, this many points away, on a white box above the trial lines,
# so neither the axis line nor a trial's line runs through a number.
LABEL_PAD_PT, LABEL_FONTSIZE = 4, 8.5
REPORT_WIDTH_IN = 11.2
LABEL_BOX = dict(boxstyle="square,pad=0.15", facecolor="white", edgecolor="none", alpha=0.85)


def plot_parallel_coordinates(study: optuna.Study, epoch: int):
    """One line per trial across the searched hyperparameters (on their sampling scale and full range)
    and the objective; colour = validation accuracy at `epoch`, the best drawn thick."""
    trials = study.get_trials(deepcopy=False)
    names = list(trials[0].distributions)
    values = np.array([t.value for t in trials])
    cols = [(n, *_axis_scale(trials[0].distributions[n], np.array([t.params[n] for t in trials]))) for n in names]
    vlo, vhi = values.min(), values.max()
    span = (vhi - vlo) or 1.0
    obj_pos = (values - vlo) / span
    obj_ticks = [((v - vlo) / span, f"{v:.3f}") for v in np.linspace(vlo, vhi, 4)]
    cols.append((f"val acc @ epoch {epoch}", obj_pos, obj_ticks))

    # About 1.2 inches per axis, at most the report column's 1,232 pixels (11.2 inches at 110 dpi), so the
    # browser shows the figure at its own size and the labels at their point size; at least 8 for the title.
    fig = new_figure(min(max(1.2 * len(cols) + 1.6, 8.0), REPORT_WIDTH_IN), 4.2)
    ax = fig.add_subplot()
    mappable = ScalarMappable(norm=Normalize(vlo, vhi), cmap=SEQUENTIAL)
    fig.colorbar(mappable, ax=ax, pad=0.02).set_label(f"validation accuracy at epoch {epoch}")
    xs = np.arange(len(cols))
    best = int(np.argmax(values))
    for i in np.argsort(values):  # best last, on top
        ys = [c[1][i] for c in cols]
        color = mappable.to_rgba(values[i])
        ax.plot(xs, ys, color=color, lw=3 if i == best else 1.4, alpha=1 if i == best else 0.75,
                zorder=3 if i == best else 2)
    for x, (name, _, ticks) in zip(xs, cols):
        ax.axvline(x, color="black", lw=0.8, zorder=1)
        for pos, label in ticks:
            ax.annotate(label, (x, pos), xytext=(LABEL_PAD_PT, 0), textcoords="offset points", ha="left",
                        va="center", fontsize=LABEL_FONTSIZE, color="#333333", bbox=LABEL_BOX, zorder=4)
    ax.set_xticks(xs, [c[0] for c in cols])
    ax.set_xlim(-0.15, len(cols) - 0.6)  # room right of the last axis for its labels
    ax.set_ylim(-0.05, 1.05)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"Parallel coordinates: {len(trials)} trials at epoch {epoch} (axes span the search space)")
    return fig


def plot_asha_epochs(trials: pd.DataFrame, order: pd.Series, max_epochs: int, rungs: list[int]):
    """Epochs each trial received, in sampling order, with ASHA's rungs as dashed lines."""
    df = trials.assign(number=trials.trial_id.map(order)).sort_values("number", ascending=False)
    fig = new_figure(8, 0.28 * len(df) + 1.6)
    ax = fig.add_subplot()
    labels = [f"{n}: {t}" for n, t in zip(df.number, df.trial_id)]
    ax.barh(labels, df.epochs_run, color=[STATUS_STYLE[s]["color"] for s in df.status], alpha=0.85)
    for r in rungs:
        ax.axvline(r, color="black", ls="--", lw=0.8)
    ax.axvline(max_epochs, color="black", lw=1)
    ax.set_xlim(0, max_epochs + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epochs trained (all folds in parallel); dashed: ASHA rungs, solid: the budget")
    ax.set_ylabel("trial number: id")
    spent, full = int(df.epochs_run.sum()), len(df) * max_epochs
    ax.set_title(f"Epochs per trial under ASHA: {spent} of {full} trial-epochs "
                 f"({100 * spent / max(full, 1):.0f}% of running every trial to {max_epochs})", fontsize=10)
    handles = [Patch(color=STATUS_STYLE[s]["color"], label=s) for s in STATUS_STYLE if s in set(df.status)]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    ax.tick_params(axis="y", labelsize=8)
    return fig


# How each rung decision is drawn: marker, colour, legend label
DECISION_STYLE = {"continue": ("o", "#2ca02c", "continued (at or above the cutoff)"),
                  "let_through": ("^", "#ff7f0e", "let through on doubt (below, p > alpha)"),
                  "stop": ("X", "#d62728", "stopped")}


def plot_rungs(rungs: pd.DataFrame):
    """One panel per rung: every trial that reached it, in the order it arrived, as its fold mean ± fold std
    (the folds themselves as small dots), marked by the decision, with the cutoff it met as a dashed dash
    (ASHA's cutoff moves as trials arrive). A trial's p (fold-asha) is printed beside it when it was below."""
    milestones = sorted(rungs.rung.unique())
    fig = new_figure(4.2 * len(milestones) + 1.5, 4)
    axes = fig.subplots(1, len(milestones), sharey=True, squeeze=False)[0]
    for ax, milestone in zip(axes, milestones):
        g = rungs[rungs.rung == milestone].reset_index(drop=True)
        x = np.arange(1, len(g) + 1)
        ax.hlines(g.cutoff, x - 0.4, x + 0.4, color="black", ls="--", lw=1)  # NaN (first arrival): none drawn
        for i, r in g.iterrows():
            marker, color, _ = DECISION_STYLE[r.decision]
            ax.scatter(np.full(len(r.folds), x[i]), r.folds, s=8, color=color, alpha=0.35, linewidths=0)
            ax.errorbar(x[i], r.value, yerr=r.fold_std, fmt=marker, color=color, capsize=3, markersize=7)
            if pd.notna(r.p):
                ax.annotate(f"p={r.p:.2g}", (x[i], r.value), textcoords="offset points", xytext=(7, -3),
                            fontsize=7, color=color)
        ax.set_title(f"rung at epoch {milestone}: {len(g)} trial(s), {int((g.decision == 'stop').sum())} stopped",
                     fontsize=10)
        ax.set_xticks(x, g.trial_id, rotation=45, ha="right", fontsize=7)
        ax.set_xlabel("trials, in the order they reached the rung")
        ax.set_xlim(0.4, len(g) + 0.8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fold-mean validation accuracy (± fold std)")
    handles = [Line2D([], [], linestyle="none", marker=m, color=c, markersize=7, label=lab)
               for d, (m, c, lab) in DECISION_STYLE.items() if d in set(rungs.decision)]
    handles.append(Line2D([], [], color="black", ls="--", lw=1, label="the cutoff each trial met"))
    axes[-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    return fig


def plot_accuracy_vs_size(table: pd.DataFrame, best_id: str, pick_id: str, within_points: float):
    """Fold-mean validation accuracy (± fold std) against parameter count (log scale) for the trials in
    `table` (analysis.pareto.size_table). The Pareto front is a step line, read as the best accuracy
    reachable within a size budget; the best trial and `pick_id` (the smallest within `within_points` of
    it) are labelled, and a trial with a measured export latency says so beside its point."""
    fig = new_figure(8, 4.5)
    ax = fig.add_subplot()
    style = STATUS_STYLE["completed"]
    rest, front = table[~table.on_front], table[table.on_front].sort_values("params", kind="stable")
    if len(rest):  # an empty errorbar would still get a legend entry
        ax.errorbar(rest.params, rest.val_acc_mean, yerr=rest.val_acc_std, fmt=style["marker"],
                    color=style["color"], alpha=0.6, capsize=3, markersize=6, label="completed trial (± fold std)")
    ax.errorbar(front.params, front.val_acc_mean, yerr=front.val_acc_std, fmt="D", color=BEST_COLOR,
                capsize=3, markersize=7, label="on the Pareto front")
    xs, ys = front.params.to_numpy(dtype=float), front.val_acc_mean.to_numpy()
    ax.step(np.r_[xs, table.params.max()], np.r_[ys, ys[-1]], where="post", color=BEST_COLOR, lw=1.2, alpha=0.8)
    best_acc = table.val_acc_mean.max()
    ax.axhline(best_acc - within_points / 100, color="black", ls="--", lw=0.8,
               label=f"{within_points:g} points below the best")
    by_id = table.set_index("trial_id")
    pick_label = f"smallest within {within_points:g}"
    labels = ({best_id: "best", pick_id: pick_label} if pick_id != best_id else {best_id: f"best, also {pick_label}"})
    for tid, what in labels.items():
        r = by_id.loc[tid]
        ax.annotate(f"{what}: {tid}", (r.params, r.val_acc_mean), textcoords="offset points", xytext=(8, 6),
                    fontsize=8, color=BEST_COLOR)
    for tid, r in by_id[by_id.latency_ms_b1.notna()].iterrows():
        ax.annotate(f"exported: {r.latency_ms_b1:.2f} ms/image (batch 1)", (r.params, r.val_acc_mean),
                    textcoords="offset points", xytext=(8, -12), fontsize=7.5, color="#333333")
    ax.set_xscale("log")
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("fold-mean validation accuracy")
    ax.set_title(f"Accuracy against size: {len(table)} completed trial{'s' if len(table) != 1 else ''}, "
                 f"{int(table.on_front.sum())} on the Pareto front")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    return fig
