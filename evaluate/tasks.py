"""Downstream tasks on an :class:`EmbeddingSet`: retrieval, classification, clustering,
modality ablation and the recall cost of approximate indexing."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from scalemm.evaluate.embeddings import EmbeddingSet
from scalemm.evaluate.index import EXACT_THRESHOLD, IndexSpec, build_index, estimate_bytes, save_index, search
from scalemm.evaluate.metrics import classification, clustering, retrieval_scores
from scalemm.modalities import ABLATION_NAMES

log = logging.getLogger(__name__)

K = 10
EXACT_PAIRS = 4_000_000_000  # sampled queries x gallery up to which retrieval search is brute force


def ranked_neighbors(es: EmbeddingSet, k: int = K, *, index_dir: str | Path | None = None,
                     seed: int = 0, memory_budget_bytes: int | None = None,
                     exact_threshold: int = EXACT_THRESHOLD, queries: np.ndarray | None = None,
                     query_rows: np.ndarray | None = None) -> np.ndarray:
    """Every item's top ``k + 1`` gallery rows (itself included), through the chosen index.

    ``queries`` (float32 [N, D], row i = item i seen another way, e.g. with modalities dropped)
    searches the gallery with those vectors instead of the items' own. ``query_rows``: only
    these items are queries (a sample; one result row each), against the whole gallery; the
    search is then exact when queries x gallery <= ``EXACT_PAIRS`` (brute force over a sample
    of queries costs less than building an approximate index)."""
    spec = None
    if query_rows is not None and len(query_rows) * len(es) <= EXACT_PAIRS:
        spec = IndexSpec("flat", "Flat", {"estimated_bytes": estimate_bytes("flat", len(es), es.dim)})
    built = build_index(es.vectors, es.ids, spec, memory_budget_bytes=memory_budget_bytes,
                        exact_threshold=exact_threshold, seed=seed)
    if index_dir is not None:
        save_index(built, index_dir)
    q = es.vectors if queries is None else np.ascontiguousarray(queries, dtype=np.float32)
    if q.shape != es.vectors.shape:
        raise ValueError(f"queries of shape {q.shape} for a gallery of shape {es.vectors.shape}")
    if query_rows is not None:
        q = q[np.asarray(query_rows, dtype=np.int64)]
    _, rows = search(built, q, min(k + 1, len(es)))
    if rows.shape[1] < k + 1:  # gallery smaller than k + 1: pad with "no result"
        rows = np.pad(rows, ((0, 0), (0, k + 1 - rows.shape[1])), constant_values=-1)
    return rows


def evaluate_retrieval(es: EmbeddingSet, k: int = K, *,
                       per_query: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                       **index_kwargs: Any) -> dict[str, dict[str, float]]:
    """Coarse and fine retrieval metrics ({"coarse": {...}, "fine": {...}}); ``queries=`` and
    ``query_rows=`` as in :func:`ranked_neighbors`; ``per_query`` as in
    :func:`~evaluate.metrics.retrieval_scores`."""
    return retrieval_scores(ranked_neighbors(es, k, **index_kwargs), es.labels, es.instances, k,
                            query_rows=index_kwargs.get("query_rows"), per_query=per_query)


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
    measures recall@k of its top ``k`` against exact search for ``n_queries`` gallery items
    (:func:`evaluate.catalogue.index_catalogue`, which the evaluation runs on the catalogue).
    """
    from scalemm.evaluate.catalogue import index_catalogue

    res = index_catalogue(es.vectors, es.ids, memory_budget_bytes=memory_budget_bytes, seed=seed, k=k,
                          n_queries=n_queries)
    return {"type": res["type"], f"ann_recall@{k}": res[f"ann_recall@{k}"]}
