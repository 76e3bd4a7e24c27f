"""Evaluation outputs, written into ``EVAL/``: ``metrics.json`` (fixed schema,
:mod:`evaluate.schema`), the plots (``methods.png``, ``paired.png``, ``ablation.png``: :mod:`evaluate.plots`;
``training_curves.png``: :func:`fuse.plot.plot_training`; ``importances.png``), the HTML
gallery (:mod:`evaluate.gallery`) and ``report.md`` (:mod:`evaluate.markdown`), which links
them all.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from scalemm.atomic import write_text_atomic
from scalemm.evaluate.gallery import write_gallery
from scalemm.evaluate.markdown import render_markdown
from scalemm.evaluate.plots import plot_ablation, plot_importances, plot_methods, plot_paired
from scalemm.evaluate.schema import write_metrics_json
from scalemm.fuse.plot import plot_training

log = logging.getLogger(__name__)


def write_report(out_dir: str | Path, metrics: Mapping[str, Any], *,
                 training_log: str | Path | None = None, importance: np.ndarray | None = None,
                 importance_labels: Sequence[str] | None = None, gallery_set: Any = None,
                 product_info: Mapping[str, Mapping[str, Any]] | None = None,
                 seed: int = 0) -> dict[str, Path]:
    """Write metrics.json, the plots, gallery.html (when ``gallery_set`` and ``product_info``
    are given) and report.md into ``out_dir``. Returns the written files by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {"metrics.json": write_metrics_json(metrics, out / "metrics.json")}
    images: dict[str, str] = {}
    if metrics.get("methods"):
        written["methods.png"] = plot_methods(metrics["methods"], out / "methods.png")
        images["methods"] = "methods.png"
    if metrics.get("paired"):
        written["paired.png"] = plot_paired(metrics["paired"], out / "paired.png")
        images["scale minus each method (paired bootstrap 95 % intervals)"] = "paired.png"
    if metrics.get("ablation"):
        written["ablation.png"] = plot_ablation(metrics["ablation"], out / "ablation.png")
        images["modality ablation"] = "ablation.png"
    if training_log is not None:
        if Path(training_log).is_file():
            if plot_training(training_log, out / "training_curves.png") is not None:
                written["training_curves.png"] = out / "training_curves.png"
                images["training curves"] = "training_curves.png"
        else:
            log.warning("training log %s not found; no training_curves.png", training_log)
    if importance is not None and importance_labels is not None:
        written["importances.png"] = plot_importances(importance, importance_labels,
                                                      out / "importances.png")
        images["modality importances"] = "importances.png"
    gallery = None
    if gallery_set is not None and product_info is not None:
        written["gallery.html"] = write_gallery(gallery_set, product_info, out / "gallery.html",
                                                seed=seed)
        gallery = "gallery.html"
    written["report.md"] = write_text_atomic(out / "report.md", render_markdown(metrics, images, gallery))
    log.info("report written to %s (%s)", out, ", ".join(written))
    return written
