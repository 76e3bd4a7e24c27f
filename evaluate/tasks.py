"""Downstream tasks on an :class:`EmbeddingSet`: retrieval, classification, clustering,
modality ablation and the recall cost of approximate indexing."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from scalemm.evaluate.embeddings import EmbeddingSet
from scalemm.evaluate.index import (EXACT_THRESHOLD, ann_recall_at_k, build_index, exact_search,
                            save_index, search)
from scalemm.evaluate.metrics import classification, clustering, retrieval_scores
from scalemm.modalities import ABLATION_NAMES

log = logging.getLogger(__name__)

K = 10


def ranked_neighbors(es: EmbeddingSet, k: int = K, *, index_dir: str | Path | None = None,
                     seed: int = 0, memory_budget_bytes: int | None = None,
                     exact_threshold: int = EXACT_THRESHOLD, queries: np.ndarray | None = None) -> np.ndarray:
    """Every item's top ``k + 1`` gallery rows (itself included), through the chosen index.

    ``queries`` (float32 [N, D], row i = item i seen another way, e.g. with modalities dropped)
    searches the gallery with those vectors instead of the items' own."""
    built = build_index(es.vectors, es.ids, memory_budget_bytes=memory_budget_bytes,
                        exact_threshold=exact_threshold, seed=seed)
    if index_dir is not None:
        save_index(built, index_dir)
    q = es.vectors if queries is None else np.ascontiguousarray(queries, dtype=np.float32)
    if q.shape != es.vectors.shape:
        raise ValueError(f"queries of shape {q.shape} for a gallery of shape {es.vectors.shape}")
    _, rows = search(built, q, min(k + 1, len(es)))
    if rows.shape[1] < k + 1:  # gallery smaller than k + 1: pad with "no result"
        rows = np.pad(rows, ((0, 0), (0, k + 1 - rows.shape[1])), constant_values=-1)
    return rows


def evaluate_retrieval(es: EmbeddingSet, k: int = K, **index_kwargs: Any) -> dict[str, dict[str, float]]:
    """Coarse and fine retrieval metrics ({"coarse": {...}, "fine": {...}}); ``queries=`` as in
    :func:`ranked_neighbors`."""
    return retrieval_scores(ranked_neighbors(es, k, **index_kwargs), es.labels, es.instances, k)


def evaluate_set(es: EmbeddingSet, index_dir: str | Path | None = None, seed: int = 0, *,
                 memory_budget_bytes: int | None = None,
                 exact_threshold: int = EXACT_THRESHOLD) -> dict[str, dict[str, float]]:
    """All tasks for one embedding set.

    Returns ``{"coarse": {...}, "fine": {...}, "classification": {"accuracy", "macro_f1"},
    "clustering": {"nmi", "purity"}}``. The retrieval ranking goes through the index chosen
    for the gallery size (saved to ``index_dir`` when given).
    """
    if len(es) < 2:
        raise ValueError(f"cannot evaluate {len(es)} item(s); retrieval needs at least two")
    out: dict[str, dict[str, float]] = dict(evaluate_retrieval(
        es, K, index_dir=index_dir, seed=seed, memory_budget_bytes=memory_budget_bytes,
        exact_threshold=exact_threshold))
    out["classification"] = classification(es.vectors, es.labels, seed=seed)
    out["clustering"] = clustering(es.vectors, es.labels, seed=seed)
    return out


def evaluate_methods(methods: dict[str, EmbeddingSet], index_root: str | Path | None = None,
                     seed: int = 0, **kwargs: Any) -> dict[str, dict[str, Any]]:
    """:func:`evaluate_set` for every method: ``{"methods": {name: {...}}}``.

    Indexes are saved under ``index_root/<name>`` when ``index_root`` is given.
    """
    results: dict[str, Any] = {}
    for name, es in tqdm(methods.items(), desc="methods", leave=False):
        log.info("evaluating %s (%d items, dim %d)", name, len(es), es.dim)
        idx_dir = Path(index_root) / name if index_root is not None else None
        results[name] = evaluate_set(es, idx_dir, seed, **kwargs)
    return {"methods": results}


def evaluate_ablation(subsets: dict[str, EmbeddingSet], seed: int = 0,
                      **kwargs: Any) -> dict[str, dict[str, dict[str, float]]]:
    """Coarse and fine retrieval for each modality subset: ``{name: {"coarse", "fine"}}``.

    ``subsets`` maps ablation names (``ABLATION_NAMES``, e.g. ``"text+image"``) to the
    embeddings computed from those modalities only; other names are kept but warned about.
    """
    unknown = [n for n in subsets if n not in ABLATION_NAMES]
    if unknown:
        log.warning("ablation subsets %s are not among %s", unknown, list(ABLATION_NAMES))
    return {name: evaluate_retrieval(es, K, seed=seed, **kwargs)
            for name, es in tqdm(subsets.items(), desc="ablation", leave=False)}


def index_report(es: EmbeddingSet, *, memory_budget_bytes: int | None = None, seed: int = 0,
                 k: int = K, n_queries: int = 1000) -> dict[str, Any]:
    """The recall lost to approximate search: ``{"type": kind, "ann_recall@10": recall}``.

    Builds the approximate index :func:`~evaluate.index.choose_index` would pick for this
    gallery (approximate even when the gallery is small enough for exact search), and
    measures recall@k of its top ``k`` against exact search for ``n_queries`` gallery items.
    """
    built = build_index(es.vectors, es.ids, memory_budget_bytes=memory_budget_bytes,
                        force_approximate=True, seed=seed)
    rng = np.random.default_rng(seed + 1)  # other queries than the ones used for tuning
    q = es.vectors[rng.choice(len(es), size=min(n_queries, len(es)), replace=False)]
    kk = min(k, len(es))
    ex_s, ex_i = exact_search(es.vectors, q, kk)
    ap_s, ap_i = search(built, q, kk)
    recall = ann_recall_at_k(ap_i, ex_i, kk, approx_scores=ap_s, exact_scores=ex_s)
    log.info("index %s (%s): recall@%d vs exact %.4f", built.spec.kind,
             built.spec.factory_string, k, recall)
    return {"type": built.spec.kind, f"ann_recall@{k}": recall}
