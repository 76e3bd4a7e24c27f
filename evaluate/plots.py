"""The evaluation's figures: methods side by side, the paired intervals of scale minus each
method, the modality ablation, learned importances.

Drawn with matplotlib's Agg canvas (``matplotlib.figure.Figure``, no pyplot state) and written
atomically. The training curves come from the training plot itself
(:func:`fuse.plot.plot_training`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from scalemm.atomic import save_figure_atomic
from scalemm.evaluate.schema import as_number
from scalemm.modalities import ABLATION_NAMES, MODALITIES


def _figure(figsize: tuple[float, float]) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _grouped_bars(ax: Any, groups: Sequence[str], series: Mapping[str, Sequence[float]]) -> None:
    x = np.arange(len(groups))
    width = 0.8 / max(len(series), 1)
    for j, (name, vals) in enumerate(series.items()):
        ax.bar(x + (j - (len(series) - 1) / 2) * width, vals, width, label=name)
    ax.set_xticks(x, groups, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def plot_ablation(ablation: Mapping[str, Any], path: str | Path) -> Path:
    """Bar chart of coarse and fine mAP@1 per modality subset."""
    names = [n for n in ABLATION_NAMES if n in ablation] + [n for n in ablation if n not in ABLATION_NAMES]
    fig = _figure((7, 4))
    ax = fig.subplots()
    _grouped_bars(ax, names, {
        "coarse mAP@1": [as_number(ablation[n]["coarse"]["mAP@1"]) for n in names],
        "fine mAP@1": [as_number(ablation[n]["fine"]["mAP@1"]) for n in names],
    })
    ax.set_title("Modality ablation")
    return save_figure_atomic(fig, path, dpi=110)


def plot_methods(methods: Mapping[str, Any], path: str | Path) -> Path:
    """Grouped bars per method: coarse / fine mAP@1, classification accuracy, NMI."""
    names = list(methods)
    fig = _figure((max(6, 1.1 * len(names) + 3), 4))
    ax = fig.subplots()
    _grouped_bars(ax, names, {
        "coarse mAP@1": [as_number(methods[n]["coarse"]["mAP@1"]) for n in names],
        "fine mAP@1": [as_number(methods[n]["fine"]["mAP@1"]) for n in names],
        "accuracy": [as_number(methods[n]["classification"]["accuracy"]) for n in names],
        "NMI": [as_number(methods[n]["clustering"]["nmi"]) for n in names],
    })
    ax.set_title("Methods")
    return save_figure_atomic(fig, path, dpi=110)


def plot_paired(paired: Mapping[str, Any], path: str | Path) -> Path:
    """One panel per task (coarse mAP@1, fine mAP@1, accuracy): scale minus each method in points,
    a dot at the difference and a bar over its paired bootstrap interval; the line at 0."""
    names = list(paired)
    tasks = (("coarse", "coarse mAP@1"), ("fine", "fine mAP@1"), ("classification", "accuracy"))
    fig = _figure((11, max(2.5, 0.32 * len(names) + 1.2)))
    axes = fig.subplots(1, len(tasks), sharey=True)
    y = np.arange(len(names))[::-1]
    for ax, (task, title) in zip(axes, tasks):
        cells = [paired[n].get(task, {}) for n in names]
        d = np.array([100 * float(c.get("diff", np.nan)) for c in cells])
        lo = np.array([100 * float(c.get("lo", np.nan)) for c in cells])
        hi = np.array([100 * float(c.get("hi", np.nan)) for c in cells])
        sure = (lo > 0) | (hi < 0)
        ax.hlines(y, lo, hi, color=np.where(sure, "tab:blue", "tab:gray"), lw=2)
        ax.plot(d, y, "o", color="black", ms=4)
        ax.axvline(0, color="tab:red", lw=1)
        ax.set_title(f"scale - method: {title}", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, names, fontsize=8)
    return save_figure_atomic(fig, path, dpi=110)


def plot_importances(importance: np.ndarray, labels: Sequence[str], path: str | Path, *,
                     modalities: Sequence[str] = MODALITIES, max_categories: int = 30) -> Path:
    """Learned modality importances: overall mean (bar) and per-category mean (heatmap).

    ``importance`` is [N, M] (M = len(modalities)); NaN marks a missing modality and is left
    out of the means. The heatmap shows the ``max_categories`` most frequent categories.
    """
    imp = np.asarray(importance, dtype=np.float64)
    if imp.ndim != 2 or imp.shape[1] != len(modalities) or imp.shape[0] != len(labels):
        raise ValueError(f"importance must be [N={len(labels)}, {len(modalities)}], got {imp.shape}")
    lab = np.asarray(list(labels), dtype=object)
    uniq, counts = np.unique(lab.astype(str), return_counts=True) if len(lab) else ([], [])
    cats = [c for _, c in sorted(zip(-np.asarray(counts), uniq))][:max_categories]
    heat = np.full((len(cats), len(modalities)), np.nan)
    with warnings.catch_warnings():  # a modality no product (of a category) has: NaN, masked below
        warnings.simplefilter("ignore", RuntimeWarning)
        overall = np.nanmean(imp, axis=0) if len(imp) else np.zeros(len(modalities))
        for r, c in enumerate(cats):
            heat[r] = np.nanmean(imp[lab == c], axis=0)
    fig = _figure((11, max(3.5, 0.28 * len(cats) + 1.5)))
    ax_b, ax_h = fig.subplots(1, 2, width_ratios=[1, 1.4])
    ax_b.bar(list(modalities), np.nan_to_num(overall))
    ax_b.set_title("mean importance (all products)")
    ax_b.grid(axis="y", alpha=0.3)
    im = ax_h.imshow(np.ma.masked_invalid(heat) if len(cats) else np.zeros((1, len(modalities))),
                     aspect="auto", cmap="viridis")
    ax_h.set_xticks(range(len(modalities)), list(modalities))
    ax_h.set_yticks(range(len(cats)), [str(c)[:30] for c in cats], fontsize=7)
    ax_h.set_title("mean importance per category")
    fig.colorbar(im, ax=ax_h)
    return save_figure_atomic(fig, path, dpi=110)
