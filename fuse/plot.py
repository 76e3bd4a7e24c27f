"""The training plot: loss terms (top) and learned modality importances (bottom) over steps.

Drawn from a run's ``log.jsonl`` into ``RUN/training.png`` at the end of training, and again
into the evaluation report (``EVAL/training_curves.png``). Matplotlib's Agg canvas through
``matplotlib.figure.Figure`` (no pyplot state), written atomically.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from scalemm.atomic import save_figure_atomic
from scalemm.runs import read_log

log = logging.getLogger(__name__)

HEAD_LOSSES = ("loss", "loss_simcl", "loss_mask")  # drawn first; then the per-modality masked losses


def plot_training(log_path: str | Path, out_path: str | Path) -> Path | None:
    """Write the PNG of the step records in ``log_path``; None (and a warning) if it holds none.

    Non-finite values (a diverged step) are left out of the lines."""
    recs = read_log(log_path)
    if not recs:
        log.warning("no training records in %s; no plot written", log_path)
        return None
    from matplotlib.figure import Figure

    keys = sorted({k for r in recs for k in r})
    panels = (
        ([k for k in HEAD_LOSSES if k in keys] + [k for k in keys if k.startswith("loss_mask_")], "loss"),
        ([k for k in keys if k.startswith("importance_")], "importance  mean W[m, m]"),
    )
    fig = Figure(figsize=(9, 7), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    for ax, (names, ylabel) in zip(axes, panels):
        for k in names:
            pts = [(r["step"], r[k]) for r in recs if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=k.removeprefix("importance_"), lw=2 if k == "loss" else 1,
                        ls=":" if k.startswith("loss_mask_") else "-")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if names:
            ax.legend(fontsize=7, ncol=2 if ylabel == "loss" else 3)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    axes[0].set_title("SCALE training")
    axes[1].set_xlabel("step")
    return save_figure_atomic(fig, out_path, dpi=100)
