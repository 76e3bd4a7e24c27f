"""What an evaluation computes in full and what it samples, by the size of the catalogue.

At demo sizes every figure comes from every product: every item of the evaluated split is a
retrieval query against all the others, the linear probe is scikit-learn's on the whole train
split, k-means runs over the whole evaluated split. At a million products that is all-against-all
search over hundreds of thousands of vectors, a probe over 600k examples and hundreds of classes,
and every method's embeddings of every product held at once. :class:`EvalBudget` says where the
evaluation switches to samples, and :class:`Samples` draws and records them (``metrics.json``
``samples`` holds every size; ``EVAL/samples.npz`` the rows themselves, so that
``--rebuild-index`` searches with the same queries):

* retrieval: at most ``max_queries`` queries (a seeded sample of the evaluated split), each
  searched against the **whole** evaluated split (the gallery is never sampled);
* the linear probe: fitted on at most ``max_sample`` products of the train split, scored on at
  most ``max_sample`` of the evaluated split; above that size it is a minibatched softmax
  regression instead of scikit-learn's full-batch one (:func:`evaluate.metrics.linear_probe_minibatch`);
* k-means: on at most ``max_sample`` products of the evaluated split;
* cross-modal recall: at most ``max_queries`` text queries against every image;
* embeddings: the models embed every product (the catalogue index needs them all, and the
  catalogue's vectors are written to disk in chunks); in memory the evaluation keeps only the
  products it scores (:attr:`Samples.workset`).

The samples are drawn once per evaluation from the split seed, so every method and every
training seed is scored on the same products. Below the limits nothing is sampled and the
figures are exactly those of the full protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scalemm.atomic import save_npz_atomic
from scalemm.errors import ConfigError

SAMPLES_FILE = "samples.npz"


@dataclass(frozen=True)
class EvalBudget:
    """Limits above which an evaluation samples (see the module doc)."""

    max_queries: int = 10_000
    max_sample: int = 100_000
    memory_budget_gb: float = 4.0  # the catalogue index is chosen to fit this (evaluate.index.choose_index)

    def __post_init__(self) -> None:
        if self.max_queries < 1 or self.max_sample < 2:
            raise ConfigError(f"max_queries must be >= 1 and max_sample >= 2, got {self.max_queries}, "
                              f"{self.max_sample}")
        if self.memory_budget_gb <= 0:
            raise ConfigError(f"the memory budget must be > 0 GB, got {self.memory_budget_gb}")

    @property
    def memory_budget_bytes(self) -> int:
        return int(self.memory_budget_gb * (1 << 30))


def _sample(rows: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray | None:
    """A sorted random subset of ``size`` of ``rows``, or None when ``rows`` has no more."""
    if len(rows) <= size:
        return None
    return np.sort(rng.choice(rows, size=size, replace=False))


@dataclass
class Samples:
    """The products an evaluation scores. Rows are positions in the store's order; None = all
    of the set they sample (nothing sampled)."""

    eval_rows: np.ndarray  # the evaluated split
    train_rows: np.ndarray  # the train split
    queries: np.ndarray | None  # retrieval queries (positions in eval_rows)
    probe_train: np.ndarray | None  # the probe's training products (positions in train_rows)
    probe_test: np.ndarray | None  # the products it is scored on (positions in eval_rows)
    cluster: np.ndarray | None  # k-means products (positions in eval_rows)
    minibatch_probe: bool = False  # the probe's sets are samples: a minibatched probe fits them

    @classmethod
    def draw(cls, eval_rows: np.ndarray, train_rows: np.ndarray, budget: EvalBudget, seed: int) -> "Samples":
        rng = np.random.default_rng([int(seed), 0x5A3])
        n_eval = np.arange(len(eval_rows))
        out = cls(np.asarray(eval_rows, np.int64), np.asarray(train_rows, np.int64),
                  queries=_sample(n_eval, budget.max_queries, rng),
                  probe_train=_sample(np.arange(len(train_rows)), budget.max_sample, rng),
                  probe_test=_sample(n_eval, budget.max_sample, rng),
                  cluster=_sample(n_eval, budget.max_sample, rng))
        out.minibatch_probe = out.probe_train is not None or out.probe_test is not None
        return out

    def within(self, workset: np.ndarray | None) -> "Samples":
        """The same samples with rows as positions in ``workset`` (the rows an evaluation keeps:
        the evaluated split and the probe's train sample, which becomes the train rows)."""
        if workset is None:
            return self
        train = self.train_rows if self.probe_train is None else self.train_rows[self.probe_train]
        return Samples(np.searchsorted(workset, self.eval_rows), np.searchsorted(workset, train), self.queries,
                       None, self.probe_test, self.cluster, self.minibatch_probe)

    @property
    def sampled(self) -> bool:
        return any(x is not None for x in (self.queries, self.probe_train, self.probe_test, self.cluster))

    @property
    def workset(self) -> np.ndarray | None:
        """The store rows the evaluation reads (evaluated split + the probe's train products);
        None when nothing is sampled (then every product is kept, as the full protocol does)."""
        if not self.sampled:
            return None
        train = self.train_rows if self.probe_train is None else self.train_rows[self.probe_train]
        return np.union1d(self.eval_rows, train)

    def to_json(self) -> dict[str, Any]:
        """Every size (and of how many), for metrics.json."""
        def size(x: np.ndarray | None, of: int) -> dict[str, Any]:
            return {"used": of if x is None else int(len(x)), "of": of, "sampled": x is not None}

        n_eval, n_train = len(self.eval_rows), len(self.train_rows)
        return {"retrieval_queries": size(self.queries, n_eval), "gallery": {"used": n_eval, "of": n_eval,
                                                                            "sampled": False},
                "probe_train": size(self.probe_train, n_train), "probe_test": size(self.probe_test, n_eval),
                "kmeans": size(self.cluster, n_eval),
                "probe": "minibatch softmax regression (evaluate.metrics.linear_probe_minibatch)"
                if self.minibatch_probe else "scikit-learn LogisticRegression (full batch)"}

    def save(self, path: str | Path) -> Path:
        arrays = {k: np.asarray(v, np.int64) for k, v in
                  (("eval_rows", self.eval_rows), ("train_rows", self.train_rows), ("queries", self.queries),
                   ("probe_train", self.probe_train), ("probe_test", self.probe_test), ("cluster", self.cluster))
                  if v is not None}
        return save_npz_atomic(path, arrays)

    @classmethod
    def load(cls, path: str | Path) -> "Samples":
        with np.load(path, allow_pickle=False) as z:
            get = {k: (z[k] if k in z.files else None) for k in
                   ("eval_rows", "train_rows", "queries", "probe_train", "probe_test", "cluster")}
        out = cls(**get)  # type: ignore[arg-type]
        out.minibatch_probe = out.probe_train is not None or out.probe_test is not None
        return out
