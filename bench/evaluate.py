"""The chosen FAISS index against exact brute-force search in NumPy (for ``pipelines/bench.py``).

:func:`index_benchmark` draws a clustered gallery (``clusters`` isotropic Gaussian clusters,
L2-normalised like the product embeddings) and fresh queries from the same mixture, builds
the index :func:`evaluate.index.build_index` chooses (search parameters tuned as in the
evaluation), and times its search against a chunked NumPy ``Q @ G.T`` + top-k. Reports the
query-time speedup (build excluded, reported apart) and recall@k of the index against the
exact result. It is for benchmark scripts, not for tests.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def clustered_vectors(n: int, dim: int, clusters: int, rng: np.random.Generator, centers: np.ndarray | None = None,
                      spread: float = 0.5, chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """``n`` L2-normalised float32 vectors around ``clusters`` N(0, I) centres (std ``spread``)."""
    if centers is None:
        centers = rng.standard_normal((clusters, dim), dtype=np.float32)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        x = rng.standard_normal((e - s, dim), dtype=np.float32)
        x *= spread
        x += centers[rng.integers(0, len(centers), e - s)]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s:e] = x
    return out, centers


def numpy_topk(gallery: np.ndarray, queries: np.ndarray, k: int, chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product, brute force in NumPy over gallery chunks: (scores, rows)."""
    nq = queries.shape[0]
    best_s = np.full((nq, k), -np.inf, np.float32)
    best_i = np.full((nq, k), -1, np.int64)
    for s in range(0, gallery.shape[0], chunk):
        sc = queries @ gallery[s:s + chunk].T
        kk = min(k, sc.shape[1])
        part = np.argpartition(-sc, kk - 1, axis=1)[:, :kk]
        cand_s = np.concatenate([best_s, np.take_along_axis(sc, part, 1)], axis=1)
        cand_i = np.concatenate([best_i, part + s], axis=1)
        top = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, top, 1), np.take_along_axis(cand_i, top, 1)
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)


def index_benchmark(n: int, dim: int = 256, clusters: int = 1000, queries: int = 1000, k: int = 10,
                    seed: int = 0, repeats: int = 2) -> dict[str, Any]:
    """FAISS (chosen index) vs NumPy brute force on ``n`` clustered vectors; see the module docstring."""
    import faiss

    from scalemm.evaluate.index import ann_recall_at_k, build_index, choose_index, search

    rng = np.random.default_rng(seed)
    t = time.perf_counter()
    gallery, centers = clustered_vectors(n, dim, clusters, rng)
    q, _ = clustered_vectors(queries, dim, clusters, rng, centers=centers)
    gen_s = time.perf_counter() - t

    spec = choose_index(n, dim)
    t = time.perf_counter()
    built = build_index(gallery, spec=spec, seed=seed)
    build_s = time.perf_counter() - t

    def best(fn: Any, times_: int) -> tuple[float, Any]:
        times, out = [], None
        for _ in range(times_):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return min(times), out

    np_reps = repeats if n < 500_000 else 1  # seconds per pass at 1M: one is enough
    np_s, (ex_s, ex_i) = best(lambda: numpy_topk(gallery, q, k), np_reps)
    fa_s, (ap_s, ap_i) = best(lambda: search(built, q, k), max(repeats, 3))
    recall = ann_recall_at_k(ap_i, ex_i, k, approx_scores=ap_s, exact_scores=ex_s)
    strict = ann_recall_at_k(ap_i, ex_i, k)
    params = {k2: v for k2, v in built.spec.params.items() if k2 != "estimated_bytes"}
    del built, gallery
    return {"n": n, "dim": dim, "clusters": clusters, "queries": queries, "k": k, "data_seconds": gen_s,
            "index": spec.factory_string, "kind": spec.kind, "params": params,
            "build_s": build_s, "faiss_query_s": fa_s, "numpy_query_s": np_s,
            "faiss_qps": queries / fa_s, "numpy_qps": queries / np_s,
            "faiss_speedup": np_s / fa_s, f"ann_recall@{k}": recall, f"ann_recall@{k}_strict": strict,
            "faiss_threads": faiss.omp_get_max_threads(),
            "method": f"best of {np_reps} NumPy / {max(repeats, 3)} FAISS query passes; "
                      "build (train+add+tune) timed apart"}
