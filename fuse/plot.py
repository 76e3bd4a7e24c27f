"""The training plot: loss terms and learned modality importances over steps."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def read_log(path: str | Path) -> list[dict]:
    """The records of a ``log.jsonl`` (lines that are not JSON objects are skipped)."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "step" in rec:
            out.append(rec)
    return out


def plot_training(log_path: str | Path, out_path: str | Path) -> Path | None:
    """Write a PNG with the loss terms (top) and importances (bottom) per step."""
    recs = read_log(log_path)
    if not recs:
        log.warning("no training records in %s; no plot written", log_path)
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in recs]
    keys = sorted({k for r in recs for k in r})
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for k in ["loss", "loss_simcl", "loss_mask"] + [k for k in keys if k.startswith("loss_mask_")]:
        if k in keys:
            ys = [r.get(k, float("nan")) for r in recs]
            ax1.plot(steps, ys, label=k, lw=2 if k == "loss" else 1,
                     ls="-" if not k.startswith("loss_mask_") else ":")
    ax1.set_ylabel("loss")
    ax1.set_title("SCALE training")
    ax1.legend(fontsize=7, ncol=2)
    ax1.grid(alpha=0.3)
    for k in [k for k in keys if k.startswith("importance_")]:
        ax2.plot(steps, [r.get(k, float("nan")) for r in recs], label=k.removeprefix("importance_"))
    ax2.set_ylabel("importance  mean W[m, m]")
    ax2.set_xlabel("step")
    ax2.legend(fontsize=7, ncol=3)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out_path)
    return out_path
