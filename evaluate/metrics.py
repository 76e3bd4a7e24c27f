"""The evaluation protocol of the SCALE paper on embedding arrays.

* Retrieval: every item is a query against the gallery of all the other items, ranked by
  inner product (the query itself is left out). A hit is a gallery item with the same
  category label (coarse) or the same instance (fine). Fine queries are only the items
  whose instance is known and has at least one other listing; coarse queries are the items
  with a known label. Metrics: mAP@K and Prec@K for K = 1, 5, 10.
* Classification: a linear probe (logistic regression) on a seeded, stratified held-out
  split; accuracy and macro-F1.
* Clustering: k-means (FAISS, k = the number of labels, seeded); NMI and purity.
* Cross-modal retrieval (text to image): query i's correct answer is gallery item i; R@K.

Every value lies in [0, 1]. An empty query set gives 0.0 and a warning.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

RETRIEVAL_KS: tuple[int, ...] = (1, 5, 10)
RETRIEVAL_KEYS: tuple[str, ...] = tuple(f"mAP@{k}" for k in RETRIEVAL_KS) + tuple(
    f"Prec@{k}" for k in RETRIEVAL_KS)
CLASSIFICATION_KEYS: tuple[str, ...] = ("accuracy", "macro_f1")
CLUSTERING_KEYS: tuple[str, ...] = ("nmi", "purity")


# ----------------------------------------------------------------------------- retrieval

def retrieval_metrics(ranked_hits: np.ndarray, ks: Sequence[int] = RETRIEVAL_KS) -> dict[str, float]:
    """mAP@K and Prec@K from a boolean hit matrix ``ranked_hits[q, r]`` (rank r+1 of query q).

    Definitions, for one query with hits h_1..h_K (h_k = 1 if the result at rank k is a hit):

    * Prec@K = (1/K) * sum_{k<=K} h_k
    * AP@K   = (1/H_K) * sum_{k<=K, h_k=1} Prec@k, where H_K = sum_{k<=K} h_k is the number
      of hits in the top K; AP@K = 0 when H_K = 0.

    mAP@K and the reported Prec@K are the means over queries (rows). Rows shorter than K
    (a gallery smaller than K) count the missing ranks as misses. Keys: ``mAP@K`` then
    ``Prec@K`` for each K in ``ks``.
    """
    h = np.asarray(ranked_hits, dtype=bool)
    if h.ndim != 2:
        raise ValueError(f"ranked_hits must be [Q, K], got shape {h.shape}")
    kmax = max(ks)
    if h.shape[1] < kmax:
        h = np.pad(h, ((0, 0), (0, kmax - h.shape[1])), constant_values=False)
    out_map: dict[str, float] = {}
    out_prec: dict[str, float] = {}
    if h.shape[0] == 0:
        log.warning("retrieval_metrics: no queries; reporting 0.0")
        return {**{f"mAP@{k}": 0.0 for k in ks}, **{f"Prec@{k}": 0.0 for k in ks}}
    hf = h[:, :kmax].astype(np.float64)
    cum = np.cumsum(hf, axis=1)  # hits within the top k, k = 1..kmax
    prec_at = cum / np.arange(1, kmax + 1)  # Prec@k per query
    for k in ks:
        n_hits = cum[:, k - 1]
        ap = np.divide((prec_at[:, :k] * hf[:, :k]).sum(axis=1), n_hits,
                       out=np.zeros_like(n_hits), where=n_hits > 0)
        out_map[f"mAP@{k}"] = float(ap.mean())
        out_prec[f"Prec@{k}"] = float(prec_at[:, k - 1].mean())
    return {**out_map, **out_prec}


def drop_self(neighbors: np.ndarray, query_rows: np.ndarray, k: int) -> np.ndarray:
    """Remove each query's own row from its neighbor list and keep the first ``k``.

    ``neighbors[i]`` are gallery rows ranked for query row ``query_rows[i]``, searched with at
    least ``k + 1`` results. If the query is not among them (ties, approximate search) the
    last result is dropped instead. ``-1`` (no result) is kept as is.
    """
    nb = np.asarray(neighbors, dtype=np.int64)
    q = np.asarray(query_rows, dtype=np.int64).reshape(-1, 1)
    if nb.shape[0] != q.shape[0]:
        raise ValueError(f"{nb.shape[0]} neighbor rows for {q.shape[0]} queries")
    if nb.shape[1] < k + 1:
        raise ValueError(f"need at least k+1={k + 1} neighbors per query to leave the query out, "
                         f"got {nb.shape[1]}")
    nb = nb[:, :k + 1]
    is_self = nb == q
    # keep everything except the first occurrence of self, or the last column if absent
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)
    keep = np.ones_like(nb, dtype=bool)
    keep[np.arange(nb.shape[0]), drop] = False
    return nb[keep].reshape(nb.shape[0], k)


def hits_from_neighbors(neighbors: np.ndarray, query_rows: np.ndarray,
                        keys: Sequence[str]) -> np.ndarray:
    """``hits[i, r]``: gallery row ``neighbors[i, r]`` has the same non-empty key as the query."""
    keys_arr = np.asarray(list(keys), dtype=object)
    nb = np.asarray(neighbors, dtype=np.int64)
    qk = keys_arr[np.asarray(query_rows, dtype=np.int64)]
    valid = nb >= 0
    gk = keys_arr[np.where(valid, nb, 0)]
    return valid & (gk == qk[:, None]) & (qk[:, None] != "")


def fine_query_mask(instances: Sequence[str]) -> np.ndarray:
    """Items usable as fine-grained queries: known instance with at least one other listing."""
    counts = Counter(instances)
    return np.array([bool(s) and counts[s] >= 2 for s in instances], dtype=bool)


def coarse_query_mask(labels: Sequence[str]) -> np.ndarray:
    """Items usable as coarse queries: known (non-empty) label."""
    return np.array([bool(s) for s in labels], dtype=bool)


def retrieval_scores(neighbors: np.ndarray, labels: Sequence[str], instances: Sequence[str],
                     k: int = 10, query_rows: np.ndarray | None = None,
                     per_query: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> dict[str, dict[str, float]]:
    """Coarse and fine retrieval metrics from every item's ranked neighbors.

    ``neighbors[i]`` ranks the gallery rows for query item ``i`` (all N items are both the
    queries and the gallery), with at least ``k + 1`` columns so that the query itself can
    be left out (:func:`drop_self`). ``query_rows``: only these gallery items were queries
    (a sample; ``neighbors[j]`` belongs to item ``query_rows[j]``), the gallery is still all N.
    ``per_query`` (a dict, filled when given): ``{"coarse" | "fine": (query item rows, hit at rank 1)}``,
    what mAP@1 averages (the paired bootstrap, :mod:`evaluate.paired`, resamples them).
    """
    n = len(labels)
    nb = np.asarray(neighbors)
    rows = np.arange(n) if query_rows is None else np.asarray(query_rows, dtype=np.int64)
    if nb.shape[0] != len(rows) or len(instances) != n:
        raise ValueError(f"neighbors ({nb.shape[0]} rows), queries ({len(rows)}), labels ({n}) and instances "
                         f"({len(instances)}) must describe the same items")
    ranked = drop_self(nb, rows, k)
    out: dict[str, dict[str, float]] = {}
    for name, keys, usable in (("coarse", labels, coarse_query_mask(labels)),
                               ("fine", instances, fine_query_mask(instances))):
        mask = usable[rows]  # usable as a query: decided on the whole gallery
        if not mask.any():
            log.warning("%s retrieval: no usable queries (%s); reporting 0.0", name,
                        "no labels" if name == "coarse" else "no instance has two listings")
        hits = hits_from_neighbors(ranked[mask], rows[mask], keys)
        out[name] = retrieval_metrics(hits, RETRIEVAL_KS)
        if per_query is not None:
            per_query[name] = (rows[mask].copy(), hits[:, 0].copy() if hits.shape[1] else np.zeros(len(hits), bool))
    return out


# ----------------------------------------------------------------------------- classification

def stratified_split(labels: Sequence[str], test_size: float = 0.3,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class held-out split: (train rows, test rows).

    Each class with c >= 2 examples puts round(c * test_size) of them (at least 1, at most
    c - 1) in the test set; classes with a single example go to train. (scikit-learn's
    stratified splitters refuse long-tailed label sets with fewer test slots than classes,
    which is the normal case here.)
    """
    if not 0.0 < test_size < 1.0:
        raise ValueError("test_size must be in (0, 1)")
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    train: list[int] = []
    test: list[int] = []
    for y in sorted(by_class):
        idx = np.array(by_class[y])
        if len(idx) < 2:
            train.extend(idx.tolist())
            continue
        idx = rng.permutation(idx)
        n_test = int(min(len(idx) - 1, max(1, round(len(idx) * test_size))))
        test.extend(idx[:n_test].tolist())
        train.extend(idx[n_test:].tolist())
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(test, dtype=np.int64))


def classification(vectors: np.ndarray, labels: Sequence[str], *, test_size: float = 0.3,
                   seed: int = 0, C: float = 1.0, max_iter: int = 1000) -> dict[str, float]:
    """Linear-probe classification: {"accuracy", "macro_f1"} on a held-out stratified split
    of the given items (:func:`stratified_split`); items with an empty label are not used.
    The evaluation protocol fits the probe on the train split instead (:func:`linear_probe`)."""
    x = np.asarray(vectors, dtype=np.float32)
    y_all = np.asarray(list(labels), dtype=object)
    if x.shape[0] != len(y_all):
        raise ValueError(f"{x.shape[0]} vectors but {len(y_all)} labels")
    keep = y_all != ""
    x, y = x[keep], y_all[keep].astype(str)
    train, test = stratified_split(y.tolist(), test_size, seed)
    return linear_probe(x[train], y[train], x[test], y[test], seed=seed, C=C, max_iter=max_iter)


def _record_correct(per_item: dict[str, np.ndarray] | None, kept: np.ndarray, right: np.ndarray) -> None:
    """``per_item["correct"]``: float per test item, 1.0 / 0.0 where the probe was right / wrong, NaN
    where the item was not scored (empty label)."""
    if per_item is not None:
        c = np.full(len(kept), np.nan)
        c[kept] = np.asarray(right, dtype=np.float64)
        per_item["correct"] = c


def linear_probe(train_x: np.ndarray, train_y: Sequence[str], test_x: np.ndarray, test_y: Sequence[str], *,
                 seed: int = 0, C: float = 1.0, max_iter: int = 1000,
                 per_item: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Fit scikit-learn's standardization + LogisticRegression on the train items, score it on
    the test items: {"accuracy", "macro_f1"}. Items with an empty label are left out.
    ``per_item`` (a dict, filled when given): ``"correct"``, see :func:`_record_correct`."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ytr, yte = np.asarray(list(train_y), dtype=object), np.asarray(list(test_y), dtype=object)
    if len(ytr) != len(train_x) or len(yte) != len(test_x):
        raise ValueError("vectors and labels differ in length")
    ktr, kte = ytr != "", yte != ""
    xtr, ytr = np.asarray(train_x, np.float32)[ktr], ytr[ktr].astype(str)
    xte, yte = np.asarray(test_x, np.float32)[kte], yte[kte].astype(str)
    if len(yte) == 0 or len(ytr) == 0:
        log.warning("classification: no labelled %s item; reporting 0.0", "test" if len(yte) == 0 else "train")
        _record_correct(per_item, kte, np.zeros(int(kte.sum())))
        return {"accuracy": 0.0, "macro_f1": 0.0}
    classes = np.unique(ytr)
    if len(classes) < 2:
        pred = np.full(len(yte), classes[0], dtype=object).astype(str)
    else:
        probe = make_pipeline(StandardScaler(),
                              LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            probe.fit(xtr, ytr)
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            log.warning("classification: the linear probe did not converge in %d iterations",
                        max_iter)
        pred = probe.predict(xte)
    _record_correct(per_item, kte, np.asarray(pred) == yte)
    return {"accuracy": float(accuracy_score(yte, pred)),
            "macro_f1": float(f1_score(yte, pred, average="macro", zero_division=0))}


def linear_probe_minibatch(train_x: np.ndarray, train_y: Sequence[str], test_x: np.ndarray,
                           test_y: Sequence[str], *, seed: int = 0, epochs: int = 20, batch: int = 1024,
                           lr: float = 1e-2, C: float = 1.0,
                           per_item: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """The linear probe for samples too big for :func:`linear_probe`'s full-batch solver: the same
    model (standardization, then multinomial logistic regression with the L2 penalty of
    scikit-learn's ``C``) fitted by Adam on minibatches of ``batch`` for ``epochs`` passes, from
    zero weights, in a seeded order. {"accuracy", "macro_f1"}; items with an empty label are
    left out."""
    import torch
    from sklearn.metrics import accuracy_score, f1_score

    from scalemm.device import torch_threads

    ytr, yte = np.asarray(list(train_y), dtype=object), np.asarray(list(test_y), dtype=object)
    if len(ytr) != len(train_x) or len(yte) != len(test_x):
        raise ValueError("vectors and labels differ in length")
    ktr, kte = ytr != "", yte != ""
    xtr, xte = np.asarray(train_x, np.float32)[ktr], np.asarray(test_x, np.float32)[kte]
    classes, ytr_i = np.unique(ytr[ktr].astype(str), return_inverse=True)
    yte_s = yte[kte].astype(str)
    if len(yte_s) == 0 or len(ytr_i) == 0:
        log.warning("classification: no labelled %s item; reporting 0.0", "test" if len(yte_s) == 0 else "train")
        _record_correct(per_item, kte, np.zeros(int(kte.sum())))
        return {"accuracy": 0.0, "macro_f1": 0.0}
    mean, std = xtr.mean(0), xtr.std(0)
    std[std == 0] = 1.0
    X, Y = torch.from_numpy((xtr - mean) / std), torch.from_numpy(ytr_i.astype(np.int64))
    n, d = X.shape
    W = torch.zeros(d, len(classes), requires_grad=True)
    b = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=lr)
    g = torch.Generator().manual_seed(int(seed))
    l2 = 1.0 / (2.0 * C * n)  # scikit-learn: C * sum(loss) + ||W||^2 / 2, per sample
    # Once the probe fits (after about 8 of 20 epochs at 100k products x 384 floats x 500
    # classes), the softmax of the wrong classes and Adam's moments underflow into denormal
    # floats, on which the CPU is up to 40 times slower: epochs went from 0.5 s to 21 s. Flushing
    # them to zero is a per-thread flag, and torch's worker threads, started earlier, keep the
    # default; so the fit runs flushed on the calling thread alone (23 s, against 93 s on two
    # threads with one flushed and 168 s unflushed; the same accuracy), then both are reset.
    with torch_threads(1):
        torch.set_flush_denormal(True)
        try:
            for _ in tqdm(range(epochs), desc="probe", leave=False, disable=n < 200_000):
                for idx in torch.randperm(n, generator=g).split(batch):
                    loss = torch.nn.functional.cross_entropy(X[idx] @ W + b, Y[idx]) + l2 * (W * W).sum()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        finally:
            torch.set_flush_denormal(False)
    with torch.no_grad():
        pred = classes[(torch.from_numpy((xte - mean) / std) @ W + b).argmax(1).numpy()]
    _record_correct(per_item, kte, pred == yte_s)
    return {"accuracy": float(accuracy_score(yte_s, pred)),
            "macro_f1": float(f1_score(yte_s, pred, average="macro", zero_division=0))}


# ----------------------------------------------------------------------------- clustering

def purity_score(labels_true: Sequence[str], labels_pred: Sequence[int]) -> float:
    """Purity: the fraction of items in their cluster's majority class."""
    from sklearn.metrics.cluster import contingency_matrix

    if len(labels_true) == 0:
        return 0.0
    cm = contingency_matrix(np.asarray(list(labels_true)), np.asarray(list(labels_pred)))
    return float(np.asarray(cm.max(axis=0)).sum() / np.asarray(cm).sum())


def clustering(vectors: np.ndarray, labels: Sequence[str], *, seed: int = 0, niter: int = 25,
               spherical: bool = True) -> dict[str, float]:
    """k-means with k = number of distinct labels (``faiss.Kmeans``): {"nmi", "purity"}.

    NMI is scikit-learn's ``normalized_mutual_info_score``; purity comes from its
    contingency matrix. Items with an empty label are not clustered.
    """
    import faiss
    from sklearn.metrics import normalized_mutual_info_score

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    y = np.asarray(list(labels), dtype=object)
    if x.shape[0] != len(y):
        raise ValueError(f"{x.shape[0]} vectors but {len(y)} labels")
    keep = y != ""
    x, y = np.ascontiguousarray(x[keep]), y[keep].astype(str)
    if len(y) == 0:
        log.warning("clustering: no labelled items; reporting 0.0")
        return {"nmi": 0.0, "purity": 0.0}
    k = len(np.unique(y))
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=spherical, verbose=False,
                      min_points_per_centroid=1)
    km.train(x)
    _, assign = km.index.search(x, 1)
    pred = assign[:, 0]
    return {"nmi": float(normalized_mutual_info_score(y, pred)),
            "purity": purity_score(y.tolist(), pred.tolist())}


# ----------------------------------------------------------------------------- cross-modal

def cross_modal_recall(query_vecs: np.ndarray, gallery_vecs: np.ndarray,
                       k: Sequence[int] = (1, 5, 10), *, batch: int = 4096,
                       query_rows: np.ndarray | None = None) -> dict[str, float]:
    """Text-to-image style recall: query i's correct answer is gallery item i.

    Rows where the query or the gallery vector is all zero (a missing modality) are left out
    of both sides. The gallery is ranked by inner product; R@K is the fraction of queries
    whose correct item is in the top K (ties with the correct item count against it).
    ``query_rows``: only these rows are queries (a sample), against the whole gallery. The
    similarity block is at most ``batch`` queries by 16M / gallery-size rows, whichever is fewer.
    """
    q = np.asarray(query_vecs, dtype=np.float32)
    g = np.asarray(gallery_vecs, dtype=np.float32)
    if q.shape[0] != g.shape[0]:
        raise ValueError(f"{q.shape[0]} queries but {g.shape[0]} gallery items; row i of each "
                         f"must be the same product")
    valid = (np.abs(q).sum(axis=1) > 0) & (np.abs(g).sum(axis=1) > 0)
    answer = np.arange(int(valid.sum()))  # query j's correct gallery row, among the valid ones
    if query_rows is not None:
        rows = np.asarray(query_rows, dtype=np.int64)
        answer = np.searchsorted(np.flatnonzero(valid), rows[valid[rows]])
    q, g = q[valid][answer], g[valid]
    n = q.shape[0]
    if n == 0:
        log.warning("cross_modal_recall: no row has both vectors; reporting 0.0")
        return {f"R@{kk}": 0.0 for kk in k}
    batch = max(1, min(batch, (1 << 24) // max(len(g), 1)))
    ranks = np.empty(n, dtype=np.int64)
    for s in tqdm(range(0, n, batch), desc="cross-modal", leave=False, disable=n <= 4 * batch):
        sims = q[s:s + batch] @ g.T
        rows = np.arange(sims.shape[0])
        correct = sims[rows, answer[s:s + batch]]
        ranks[s:s + batch] = (sims > correct[:, None]).sum(axis=1) + (
            (sims == correct[:, None]).sum(axis=1) - 1)
    return {f"R@{kk}": float((ranks < kk).mean()) for kk in k}
