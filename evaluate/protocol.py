"""The evaluation protocol: an instance split, several training seeds, mean and std.

Products are split by instance into train / validation / test (:mod:`scalemm.splits`, with the
spec the model was trained with). A method is evaluated on one split (the test split for the
headline; validation while choosing settings):

* retrieval: queries and gallery are that split's products (the query itself left out);
* classification: a linear probe fitted on the train split's embeddings, scored on the
  evaluated split's;
* clustering: k-means (k = the number of categories present) over the evaluated split;
* robustness: every query product loses each modality with probability ``p`` (the gallery
  keeps them all); coarse and fine mAP@1 with those queries, and as a fraction of the full
  figures.

At scale the queries, the probe's products and the k-means products are samples, drawn once
per evaluation (:mod:`evaluate.budget`); the retrieval gallery is always the whole split.

Each figure is measured once per seed (the training seed of a SCALE run; the probe, the
k-means initialisation and the dropped modalities follow the same seed for every method) and
reported as ``{"mean": ..., "std": ...}`` over the seeds (population std, ``n`` seeds).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from scalemm.splits import SPLITS, SplitSpec, assign, rows_of

from .budget import Samples
from .embeddings import EmbeddingSet
from .metrics import clustering, linear_probe, linear_probe_minibatch
from .tasks import K, evaluate_retrieval

log = logging.getLogger(__name__)


@dataclass
class SplitView:
    """The split of every item and the rows a protocol uses."""

    spec: SplitSpec
    names: np.ndarray  # split name per item
    on: str  # the evaluated split
    train_rows: np.ndarray
    eval_rows: np.ndarray

    @classmethod
    def of(cls, instances: Sequence[str], ids: Sequence[str], spec: SplitSpec, on: str = "test") -> "SplitView":
        names = assign(instances, ids, spec)
        return cls(spec, names, on, rows_of(names, "train"), rows_of(names, on))

    def to_json(self) -> dict[str, Any]:
        return {**self.spec.to_json(), "evaluated_on": self.on,
                "sizes": {s: int((self.names == s).sum()) for s in SPLITS}}


def evaluate_on_split(es: EmbeddingSet, view: SplitView, seed: int, *, queries: np.ndarray | None = None,
                      index_dir: str | Path | None = None, samples: Samples | None = None,
                      per_product: dict[str, np.ndarray] | None = None) -> dict[str, dict[str, float]]:
    """Retrieval, classification and clustering of one method on the evaluated split (see the
    module doc). ``es`` holds every item; ``queries`` (optional) are other query vectors for the
    retrieval (e.g. with modalities dropped), one per retrieval query in order: ``samples``'
    queries of the evaluated split, or every evaluated product. ``samples`` (at scale, see
    :mod:`evaluate.budget`): the rows of ``es`` to score and the samples of them each task uses,
    instead of ``view``'s rows in full.

    ``per_product`` (a dict, filled when given, and when ``queries`` is None): per evaluated product
    (float [len(eval rows)], NaN where the product is not scored by that task) ``"coarse"`` and
    ``"fine"``, 1.0 where its nearest neighbour is a hit (what mAP@1 averages), and
    ``"classification"``, 1.0 where the probe labels it right: what the paired bootstrap
    (:mod:`evaluate.paired`) resamples."""
    eval_rows = view.eval_rows if samples is None else samples.eval_rows
    train_rows = view.train_rows if samples is None else samples.train_rows
    test = es.subset(eval_rows)
    query_rows = None if samples is None else samples.queries
    q = None if queries is None else _gallery_aligned(queries, len(eval_rows), query_rows)
    hits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    out: dict[str, dict[str, float]] = dict(evaluate_retrieval(
        test, K, seed=seed, queries=q, index_dir=index_dir, query_rows=query_rows, per_query=hits))
    if queries is None:
        train = es.subset(train_rows if samples is None or samples.probe_train is None
                          else train_rows[samples.probe_train])
        probe_test = test if samples is None or samples.probe_test is None else test.subset(samples.probe_test)
        probe = linear_probe_minibatch if samples is not None and samples.minibatch_probe else linear_probe
        correct: dict[str, np.ndarray] = {}
        out["classification"] = probe(train.vectors, train.labels, probe_test.vectors, probe_test.labels, seed=seed,
                                      per_item=correct)
        if per_product is not None:
            per_product.update(hits_per_product(hits, len(test)))
            per_product["classification"] = np.full(len(test), np.nan)
            at = np.arange(len(test)) if samples is None or samples.probe_test is None else samples.probe_test
            per_product["classification"][at] = correct["correct"]
        cl = test if samples is None or samples.cluster is None else test.subset(samples.cluster)
        out["clustering"] = clustering(cl.vectors, cl.labels, seed=seed)
    return out


def hits_per_product(hits: dict[str, tuple[np.ndarray, np.ndarray]], n: int) -> dict[str, np.ndarray]:
    """Retrieval's ``per_query`` (task -> (query rows, hit at rank 1)) as float [n] per task over
    the evaluated products, NaN where a product is not that task's query: what the paired
    bootstrap (:mod:`evaluate.paired`) resamples."""
    out = {}
    for task, (rows, hit) in hits.items():
        out[task] = np.full(n, np.nan)
        out[task][rows] = hit
    return out


def _gallery_aligned(queries: np.ndarray, n: int, query_rows: np.ndarray | None) -> np.ndarray:
    """The query vectors (one per query row, or per evaluated product) placed at their rows of
    the evaluated split's [n, d] (zero elsewhere: rows no query reads)."""
    q = np.asarray(queries, np.float32)
    want = n if query_rows is None else len(query_rows)
    if q.ndim != 2 or len(q) != want:
        raise ValueError(f"{len(q)} query vectors for {want} retrieval queries")
    if query_rows is None:
        return q
    out = np.zeros((n, q.shape[1]), np.float32)
    out[np.asarray(query_rows, np.int64)] = q
    return out


def robustness(full: dict[str, dict[str, float]], dropped: dict[str, dict[str, float]]) -> dict[str, float]:
    """Coarse / fine mAP@1 with dropped query modalities, and each as a fraction of the full one."""
    out = {}
    for task in ("coarse", "fine"):
        f, d = full[task]["mAP@1"], dropped[task]["mAP@1"]
        out[f"{task}_mAP@1"] = d
        out[f"{task}_fraction_of_full"] = d / f if f > 0 else float("nan")
    return out


def mean_over_draws(draws: Sequence[dict[str, float]]) -> dict[str, float]:
    """The key-wise mean of one seed's :func:`robustness` figures over independent drop draws
    (the full figure is the same for each draw, so the mean fraction is the mean mAP@1's)."""
    if not draws:
        raise ValueError("no robustness draw to average")
    return {k: float(np.mean([d[k] for d in draws])) for k in draws[0]}


def mean_std(values: Sequence[Any]) -> Any:
    """Leaves of equally shaped nested dicts -> ``{"mean", "std"}`` over the list; other leaves
    (strings, None) are kept from the first."""
    first = values[0]
    if isinstance(first, dict):
        return {k: mean_std([v[k] for v in values]) for k in first}
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        a = np.asarray(values, dtype=np.float64)
        ok = a[np.isfinite(a)]
        return {"mean": float(ok.mean()) if len(ok) else float("nan"),
                "std": float(ok.std()) if len(ok) else float("nan")}
    return first


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation of two equally long sequences (average ranks for ties); NaN
    where it is not defined: fewer than two values, or one sequence constant (a tiny evaluation
    where every modality scores alike), said so rather than warned by scipy."""
    from scipy.stats import spearmanr

    if len(a) < 2 or len(set(map(float, a))) < 2 or len(set(map(float, b))) < 2:
        return float("nan")
    return float(spearmanr(a, b).statistic)
