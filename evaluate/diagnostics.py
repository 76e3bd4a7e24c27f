"""The default model's diagnostics beyond its retrieval figures: what its learned importances say
(:func:`importance_figures`) and how well a title finds its image (:func:`cross_modal_figures`).

Both read one seed's :meth:`fuse.embedder.Embedder.embed` result of the ``scale`` model: its
``presence``, ``importances`` and the encoders' pooled outputs ``enc_pooled``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .budget import Samples
from .embeddings import l2_normalize
from .metrics import cross_modal_recall
from .protocol import SplitView, spearman


def cross_modal_figures(res: dict[str, Any], local: Samples, trained: list[str], max_queries: int,
                        seed: int) -> dict[str, Any]:
    """Text-to-image recall over the evaluated products that have both (at most ``max_queries``
    text queries, drawn with ``seed``, against every image)."""
    pres = res["presence"][local.eval_rows]  # columns: the trained modalities
    rows = local.eval_rows[pres[:, trained.index("text")] & pres[:, trained.index("image")]]
    pooled = list(res.get("pooled_modalities") or trained)  # the columns of enc_pooled
    q = None
    if len(rows) > max_queries:
        q = np.sort(np.random.default_rng([int(seed), 0xC405]).choice(len(rows), size=max_queries, replace=False))
    text, image = (res["enc_pooled"][rows, pooled.index(m)] for m in ("text", "image"))
    return {"text_to_image": cross_modal_recall(l2_normalize(text), l2_normalize(image), query_rows=q),
            "items": int(len(rows)), "queries": int(len(rows) if q is None else len(q))}


def importance_figures(res: dict[str, Any], view: SplitView | Samples, results: dict[str, Any],
                       planted: set[str] | None) -> dict[str, Any]:
    """Mean learned importance per modality (evaluated split, present items), its Spearman rank
    correlation with the coarse mAP@1 of each modality's frozen vectors (``frozen_<m>``), and the
    title's importance on products planted with a wrong title against the others."""
    mods, rows = res["modalities"], view.eval_rows
    pres, imp = res["presence"][rows], res["importances"][rows]
    mean = {m: float(imp[pres[:, j], j].mean()) if pres[:, j].any() else float("nan") for j, m in enumerate(mods)}
    ranked = [m for m in mods if f"frozen_{m}" in results]
    out: dict[str, Any] = {"mean": mean,
                           "spearman_vs_frozen_coarse": spearman([mean[m] for m in ranked],
                                                                 [results[f"frozen_{m}"]["coarse"]["mAP@1"]
                                                                  for m in ranked])}
    if planted is not None and "text" in mods:
        t = mods.index("text")
        ids = np.asarray(res["ids"], dtype=object)[rows]
        is_p = np.isin(ids, list(planted)) & pres[:, t]
        other = ~np.isin(ids, list(planted)) & pres[:, t]
        out["planted_wrong_title"] = {
            "products": int(is_p.sum()),
            "title_importance_planted": float(imp[is_p, t].mean()) if is_p.any() else float("nan"),
            "title_importance_others": float(imp[other, t].mean()) if other.any() else float("nan")}
    return out
