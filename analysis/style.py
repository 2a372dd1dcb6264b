"""Figure conventions shared by every plot module: the Agg backend, sizes, colours, PNG encoding.

Plot functions build `matplotlib.figure.Figure` objects directly (no pyplot), so no global figure
registry grows while a report is built and nothing needs closing. Only optuna's helpers use pyplot,
hence the backend choice here, before anything imports pyplot.
"""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI; must precede any pyplot import

from matplotlib.figure import Figure  # noqa: E402

from distributed.config import CLASS_NAMES  # noqa: E402

DPI = 110
# tab10 is the one qualitative map whose 10 colours stay distinguishable: class k is always colour k.
CLASS_COLORS = [matplotlib.colormaps["tab10"](k) for k in range(len(CLASS_NAMES))]
SEQUENTIAL = "viridis"  # perceptually uniform, readable in grey: for values (accuracy along a search)
COUNTS = "Blues"        # confusion matrices: white = 0, so the diagonal and big confusions stand out

# How each trial status is drawn wherever trials appear (curves, history, ASHA bars).
STATUS_STYLE = {
    "completed": dict(color="#1f77b4", linestyle="-", marker="o", alpha=0.9),
    "pruned": dict(color="#8c8c8c", linestyle="--", marker="v", alpha=0.7),
    "running": dict(color="#ff7f0e", linestyle="-.", marker="s", alpha=0.8),
    "errored": dict(color="#d62728", linestyle=":", marker="x", alpha=0.8),
}
BEST_COLOR = "#d62728"
TRAIN_COLOR, VAL_COLOR = "#1f77b4", "#ff7f0e"


def new_figure(width: float, height: float, **kwargs) -> Figure:
    """A figure in inches, laid out with constrained_layout so long class names are not clipped."""
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained", **kwargs)


def to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return buf.getvalue()


def percent(x: float, digits: int = 2) -> str:
    return f"{100 * x:.{digits}f}%"
