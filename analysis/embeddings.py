"""UMAP maps of the test set: the model's penultimate-layer embeddings beside raw pixels for contrast.

umap-learn is imported only when a map is made (its numba start-up costs seconds). Inputs wider than
50 dimensions (raw pixels: 784) are first reduced with PCA to 50, the usual preprocessing, which cuts
UMAP's neighbour search several-fold and changes the picture little. A fixed random_state makes the
maps reproducible (UMAP then runs single-threaded).
"""
from __future__ import annotations

import numpy as np

from analysis.style import CLASS_COLORS, new_figure
from distributed.config import CLASS_NAMES

PCA_DIMS = 50


def sample_indices(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """A class-stratified random sample of n indices (sorted); all of them when n >= len(labels)."""
    if n >= len(labels):
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split
    idx, _ = train_test_split(np.arange(len(labels)), train_size=n, stratify=labels, random_state=seed)
    return np.sort(idx)


def umap_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """(n, d) features -> (n, 2) UMAP coordinates (PCA to 50 dimensions first when d > 50)."""
    import umap  # noqa: PLC0415 (heavy: numba compiles on first use)
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    if x.shape[1] > PCA_DIMS and len(x) > PCA_DIMS:
        from sklearn.decomposition import PCA
        x = PCA(PCA_DIMS, random_state=seed).fit_transform(x)
    n_neighbors = min(15, len(x) - 1)
    return umap.UMAP(n_neighbors=n_neighbors, min_dist=0.1, random_state=seed, n_jobs=1).fit_transform(x)


def plot_umap_pair(embedding_xy: np.ndarray, pixel_xy: np.ndarray, labels: np.ndarray, model_note: str = ""):
    """Two scatter maps side by side, coloured by true class, with one class legend."""
    fig = new_figure(13, 6)
    axes = fig.subplots(1, 2)
    titles = (f"UMAP of penultimate-layer embeddings{model_note}", "UMAP of raw pixels (PCA-50 first)")
    size = 4 if len(labels) > 3000 else 10
    for ax, xy, title in zip(axes, (embedding_xy, pixel_xy), titles):
        for k, name in enumerate(CLASS_NAMES):
            m = labels == k
            ax.scatter(xy[m, 0], xy[m, 1], s=size, color=CLASS_COLORS[k], alpha=0.7, lw=0, label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("UMAP 1")
        ax.set_ylabel("UMAP 2")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right center", markerscale=3, frameon=False,
               title="true class")
    fig.suptitle(f"{len(labels)} test images, coloured by true class")
    return fig
