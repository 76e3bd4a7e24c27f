"""Product embeddings as the evaluation sees them, and the training-free frozen baselines.

An :class:`EmbeddingSet` is N product vectors with their ids, category labels and
instance ids (``''`` when unknown). It is saved as the embeddings file of
:mod:`scalemm.embedfile` (a plain ``.npz``, no pickle) so that an index can be rebuilt from
it alone.

A product's **frozen vector** of a modality is the pooled vector its feature store holds (what
the backbone gave, before any training), L2-normalized, zero where the product lacks the
modality: :func:`frozen_vectors`, the one function that reads it. :func:`frozen_baselines`
returns the baselines that need no training: each modality's frozen vectors (``frozen_<m>``),
and their concatenation (``concat_frozen``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scalemm.embedfile import load_embeddings, save_embeddings

log = logging.getLogger(__name__)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float32; all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        return l2_normalize(x[None, :], eps)[0]
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norms > eps, x / np.maximum(norms, eps), 0.0).astype(np.float32)


@dataclass
class EmbeddingSet:
    """N product embeddings with their ids, category labels and instance ids."""

    ids: list[str]
    vectors: np.ndarray  # float32 [N, D]
    labels: list[str]
    instances: list[str]

    def __post_init__(self) -> None:
        self.ids = [str(i) for i in self.ids]
        self.labels = [str(s) for s in self.labels]
        self.instances = [str(s) for s in self.instances]
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        n = len(self.ids)
        if self.vectors.ndim != 2 or self.vectors.shape[0] != n:
            raise ValueError(f"vectors must be [N, D] with N={n} (the number of ids), "
                             f"got shape {self.vectors.shape}")
        if len(self.labels) != n or len(self.instances) != n:
            raise ValueError(f"ids ({n}), labels ({len(self.labels)}) and instances "
                             f"({len(self.instances)}) differ in length")
        if len(set(self.ids)) != n:
            raise ValueError("ids are not unique")
        if not np.isfinite(self.vectors).all():
            raise ValueError("vectors contain NaN or infinite values")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def normalized(self) -> "EmbeddingSet":
        """A copy with L2-normalized vectors (zero rows stay zero)."""
        return EmbeddingSet(list(self.ids), l2_normalize(self.vectors), list(self.labels),
                            list(self.instances))

    def subset(self, rows: np.ndarray | list[int]) -> "EmbeddingSet":
        """The items at the given row positions (or boolean mask), in that order."""
        sel = np.asarray(rows)
        idx = np.flatnonzero(sel) if sel.dtype == bool else sel.astype(np.int64).reshape(-1)
        return EmbeddingSet([self.ids[i] for i in idx], self.vectors[idx],
                            [self.labels[i] for i in idx], [self.instances[i] for i in idx])

    def save(self, path: str | Path) -> Path:
        """Write to ``path`` (the embeddings file of :mod:`scalemm.embedfile`) atomically."""
        return save_embeddings(path, self.ids, self.vectors, self.labels, self.instances)

    @classmethod
    def load(cls, path: str | Path) -> "EmbeddingSet":
        """Read an embeddings file (:meth:`save`'s, or ``pipelines/embed.py``'s: its extras are
        ignored). Raises FileNotFoundError, or ValueError naming the file if unreadable."""
        return cls.from_arrays(load_embeddings(path), path)

    @classmethod
    def from_arrays(cls, z: Any, path: str | Path) -> "EmbeddingSet":
        """The set held by the arrays of an embeddings file already read (``path`` names it in errors)."""
        vectors = z["vectors"]
        if vectors.ndim == 1 and vectors.size == 0:
            vectors = vectors.reshape(0, 0)
        try:
            return cls(ids=z["ids"].tolist(), vectors=vectors, labels=z["labels"].tolist(),
                       instances=z["instances"].tolist())
        except ValueError as e:
            raise ValueError(f"embeddings file {path} is inconsistent: {e}") from e


# ----------------------------------------------------------------------------- frozen baselines

FROZEN_PREFIX = "frozen_"
CONCAT_NAME = "concat_frozen"


def frozen_baselines(features_dir: str | Path, modalities: tuple[str, ...] | None = None,
                     rows: np.ndarray | None = None) -> dict[str, EmbeddingSet]:
    """Training-free baselines from the frozen vectors of the feature stores under ``features_dir``
    (the token features are not read); ``rows``: only these items (positions in the stores'
    order), e.g. the ones an evaluation at scale uses.

    Returns ``frozen_<modality>`` for every modality whose store exists (its frozen vectors; an
    item whose modality is absent, ``counts == 0``, gets a zero vector) and ``concat_frozen``
    (the frozen vectors of all present modalities concatenated, then L2-normalized as a whole).
    Modalities without a store are skipped with a warning. Raises ``StoreError`` if no store
    exists or the stores do not join (different corpus, code, or item order).
    """
    from scalemm.store import MODALITIES, StoreError, list_shards, open_stores

    root = Path(features_dir)
    if not root.is_dir():
        raise StoreError(f"feature directory {root} does not exist; run pipelines/extract.py first")
    wanted = tuple(modalities) if modalities is not None else MODALITIES
    present = []
    for m in wanted:
        if list_shards(root, m):
            present.append(m)
        else:
            log.warning("no %s store under %s; skipping the frozen_%s baseline", m, root / m, m)
    if not present:
        raise StoreError(f"no feature stores under {root} (looked for {list(wanted)}); "
                         f"run pipelines/extract.py first")
    stores = open_stores(root, present)
    out: dict[str, EmbeddingSet] = {}
    for m in present:
        es = frozen_vectors(stores[m], rows)
        first = out.get(FROZEN_PREFIX + present[0], es)
        if es.ids != first.ids:
            raise StoreError(f"cannot join stores {root / present[0]} and {root / m}: their items "
                             f"differ in id or order; re-extract both into a fresh directory")
        out[FROZEN_PREFIX + m] = es if es is first else EmbeddingSet(first.ids, es.vectors, first.labels,
                                                                      first.instances)
    ref = out[FROZEN_PREFIX + present[0]]
    out[CONCAT_NAME] = EmbeddingSet(list(ref.ids), l2_normalize(np.concatenate([e.vectors for e in out.values()],
                                                                               axis=1)),
                                    list(ref.labels), list(ref.instances))
    return out


def frozen_vectors(store: Any, rows: np.ndarray | None = None) -> EmbeddingSet:
    """One store's frozen vectors: each item's pooled vector as the backbone wrote it, L2-normalized,
    zero where the item lacks the modality (``counts == 0``); ``rows``: only these items. Only the
    pooled vectors are read, never the token features."""
    from scalemm.store import ShardData, concat_shards

    data = concat_shards([store.read_index(k, pooled=True) for k in range(len(store.shards))])
    if rows is not None:
        pick = [int(i) for i in rows]
        data = ShardData(ids=[data.ids[i] for i in pick], labels=[data.labels[i] for i in pick],
                         instances=[data.instances[i] for i in pick], tokens=data.tokens[rows],
                         counts=data.counts[rows], pooled=data.pooled[rows])
    pooled = np.asarray(data.pooled, dtype=np.float32).copy()
    absent = np.asarray(data.counts) <= 0
    pooled[absent] = 0.0
    if absent.any():
        log.info("frozen_%s: %d of %d items lack the modality (zero vectors)", store.modality, int(absent.sum()),
                 len(data.ids))
    return EmbeddingSet(data.ids, l2_normalize(pooled), data.labels, data.instances)
