"""Reading the per-modality feature stores as one joined, batched torch Dataset.

:class:`FeatureDataset` opens the stores of any subset of modalities through
:func:`scalemm.store.open_stores` (which refuses stores whose provenance does not fit;
its :class:`~scalemm.store.StoreError` reaches the caller unchanged), joins them by item
id, and yields per modality the float32 token features, a boolean token mask, a presence
flag (``count > 0``) and, for the table, the entity index of every token. Only the live
rows of a grown catalogue's store are read (``ModalityStore.read``, see
:mod:`scalemm.store.live`).

Two paths, chosen by the size of the stores against a memory budget:

* in memory: every shard is read once into arrays allocated for the whole store (peak
  memory: the store once, plus one shard) and a batch is a numpy fancy-index of the arrays
  (``__getitems__``), so the reader is never the bottleneck;
* streaming: only the ids/labels/counts are read up front (in the parent, files closed
  again); the token shards are read lazily with ``ModalityStore.read`` inside
  the process that needs them (a DataLoader worker), one or two shards cached per worker.
  :func:`epoch_batches` then orders the items shard by shard so that each shard is read
  once per epoch and worker.

The data order of an epoch is a pure function of ``(seed, epoch)``, which is what makes
training resumable to the exact same losses.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from scalemm.splits import split_key
from scalemm.store import (MODALITIES, ModalityStore, Provenance, ShardData, StoreError,
                           list_shards, open_stores)

log = logging.getLogger(__name__)

TABLE = "table"
Batch = dict[str, Any]


@dataclass(frozen=True)
class ModalityShape:
    """Token layout of one modality's store."""

    max_tokens: int
    dim: int


def store_nbytes(stores: dict[str, ModalityStore]) -> int:
    """Bytes the token features (float16) and entities (int32) take once loaded."""
    total = 0
    for m, s in stores.items():
        p = s.provenance
        total += s.n_items * p.max_tokens * p.dim * 2
        if m == TABLE:
            total += s.n_items * p.max_tokens * 4
    return total


def _join_permutation(base_ids: list[str], ids: list[str], where: str) -> np.ndarray | None:
    """Row permutation putting ``ids`` into ``base_ids``' order (None: already equal)."""
    if ids == base_ids:
        return None
    pos = {i: k for k, i in enumerate(ids)}
    if len(pos) != len(ids) or len(pos) != len(base_ids) or any(i not in pos for i in base_ids):
        missing = [i for i in base_ids if i not in pos][:3]
        extra = sorted(set(ids) - set(base_ids))[:3]
        raise StoreError(f"cannot join {where}: the stores hold different items (missing {missing}, "
                         f"extra {extra}); re-extract them together into one feature directory")
    return np.fromiter((pos[i] for i in base_ids), dtype=np.int64, count=len(base_ids))


class FeatureDataset(Dataset):
    """The joined feature stores of ``modalities`` under ``features_dir``.

    ``stream``: None decides by ``memory_budget_gb``; True/False forces a path.
    ``len(ds)`` is the number of items; ``ds[i]`` one item; ``ds.__getitems__(idx)`` a
    whole batch (what a DataLoader calls), already collated.
    """

    def __init__(self, features_dir: str | Path, modalities: Sequence[str] | None = None,
                 memory_budget_gb: float = 4.0, stream: bool | None = None,
                 progress: bool = False) -> None:
        self.root = Path(features_dir)
        mods = list(modalities) if modalities is not None else list(MODALITIES)
        self.modalities: list[str] = [m for m in MODALITIES if m in mods]
        unknown = [m for m in mods if m not in MODALITIES]
        if unknown:
            raise StoreError(f"unknown modalities {unknown}; choose from {list(MODALITIES)}")
        if not self.modalities:
            raise StoreError("no modality requested")
        if self.root.is_dir():
            have = [m for m in self.modalities if list_shards(self.root, m)]
            lacking = [m for m in self.modalities if m not in have]
            if have and lacking:
                raise StoreError(f"no {lacking[0]} shards under {self.root / lacking[0]} (found stores for "
                                 f"{have}); extract that modality, or leave '{lacking[0]}' out of the "
                                 f"modalities (config key 'modalities')")
        self.stores: dict[str, ModalityStore] = open_stores(self.root, self.modalities)
        self.provenance: dict[str, Provenance] = {m: s.provenance for m, s in self.stores.items()}
        self.shapes: dict[str, ModalityShape] = {
            m: ModalityShape(p.max_tokens, p.dim) for m, p in self.provenance.items()}
        first = self.stores[self.modalities[0]]
        self.shard_paths: dict[str, list[Path]] = {m: list(s.shards) for m, s in self.stores.items()}
        self.shard_sizes: list[int] = list(first.sizes)
        self.shard_offsets = np.concatenate([[0], np.cumsum(self.shard_sizes)]).astype(np.int64)
        self.nbytes = store_nbytes(self.stores)
        budget = int(memory_budget_gb * (1 << 30))
        self.in_memory = (self.nbytes <= budget) if stream is None else not stream
        self._progress = progress
        # per-shard row permutations (None = identity) that align each modality with the first
        self._perm: dict[str, list[np.ndarray | None]] = {m: [] for m in self.modalities}
        self._tokens: dict[str, np.ndarray] = {}
        self._entities: np.ndarray | None = None
        self._cache: OrderedDict[tuple[str, int], ShardData] = OrderedDict()
        if self.in_memory:
            self._load_all()
        else:
            self._index_all()
        self.counts_t = {m: torch.from_numpy(c.astype(np.int64)) for m, c in self.counts.items()}
        log.info("feature stores %s: %d items, modalities %s, %.1f MB of tokens, %s",
                 self.root, len(self), self.modalities, self.nbytes / 1e6,
                 "in memory" if self.in_memory else f"streaming {len(self.shard_sizes)} shards")

    # ------------------------------------------------------------------ set-up
    def _shard_iter(self, what: str) -> Iterator[int]:
        n = len(self.shard_sizes)
        if self._progress and n > 1:
            from tqdm.auto import tqdm
            return iter(tqdm(range(n), desc=what, unit="shard", leave=False))
        return iter(range(n))

    def _joined_shards(self, read: Callable[[ModalityStore, int], ShardData], what: str
                       ) -> Iterator[tuple[ShardData, dict[str, tuple[ShardData, np.ndarray | None]]]]:
        """Per shard: the first modality's data (its row order is the items' order) and, per
        modality, the data ``read`` returns (``ModalityStore.read`` / ``read_index``: the shard's
        live rows) with the permutation that puts its rows in that order (None: they are in it
        already). Raises StoreError when the modalities' items differ."""
        for k in self._shard_iter(what):
            joined: dict[str, tuple[ShardData, np.ndarray | None]] = {}
            for m in self.modalities:
                data = read(self.stores[m], k)
                if not joined:
                    base, perm = data, None
                else:
                    perm = _join_permutation(base.ids, data.ids,
                                             f"{self.shard_paths[self.modalities[0]][k]} and "
                                             f"{self.shard_paths[m][k]}")
                joined[m] = (data, perm)
            yield base, joined

    def _load_all(self) -> None:
        """Every shard's rows copied into arrays allocated once for the whole store, so loading
        holds the store once (not the per-shard copies and their concatenation as well)."""
        n = int(self.shard_offsets[-1])
        self._tokens = {m: np.empty((n, s.max_tokens, s.dim), np.float16) for m, s in self.shapes.items()}
        if TABLE in self.shapes:
            self._entities = np.full((n, self.shapes[TABLE].max_tokens), -1, np.int32)
        self.counts: dict[str, np.ndarray] = {m: np.empty(n, np.int32) for m in self.modalities}
        self.ids, self.labels, self.instances = [], [], []
        for k, (base, joined) in enumerate(self._joined_shards(ModalityStore.read, "loading features")):
            rows = slice(int(self.shard_offsets[k]), int(self.shard_offsets[k + 1]))
            self.ids += base.ids
            self.labels += base.labels
            self.instances += base.instances
            for m, (data, perm) in joined.items():
                pick = slice(None) if perm is None else perm
                self._tokens[m][rows] = data.tokens[pick]
                self.counts[m][rows] = data.counts[pick]
                if m == TABLE and data.entities is not None:
                    self._entities[rows] = data.entities[pick]

    def _index_all(self) -> None:
        ids: list[str] = []
        labels: list[str] = []
        instances: list[str] = []
        counts: dict[str, list[np.ndarray]] = {m: [] for m in self.modalities}
        for base, joined in self._joined_shards(ModalityStore.read_index, "indexing features"):
            ids += base.ids
            labels += base.labels
            instances += base.instances
            for m, (data, perm) in joined.items():
                self._perm[m].append(perm)
                counts[m].append(data.counts if perm is None else data.counts[perm])
        self.ids, self.labels, self.instances = ids, labels, instances
        self.counts = {m: np.concatenate(c).astype(np.int32) for m, c in counts.items()}

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()  # a worker starts with no shard open or cached
        return state

    def _stream_rows(self, m: str, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Token rows (and table entities) of global item indices ``idx`` from shard files."""
        shape = self.shapes[m]
        tok = np.empty((len(idx), shape.max_tokens, shape.dim), np.float16)
        ent = np.empty((len(idx), shape.max_tokens), np.int32) if m == TABLE else None
        shard_of = np.searchsorted(self.shard_offsets, idx, side="right") - 1
        for k in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == k)
            data = self._shard(m, int(k))
            rows = idx[sel] - self.shard_offsets[k]
            tok[sel] = data.tokens[rows]
            if ent is not None:
                ent[sel] = data.entities[rows] if data.entities is not None else -1
        return tok, ent

    def _shard(self, m: str, k: int) -> ShardData:
        key = (m, k)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        data = self.stores[m].read(k)  # opened here, in the worker, and closed
        perm = self._perm[m][k]
        if perm is not None:
            data = ShardData(ids=[data.ids[i] for i in perm], labels=[data.labels[i] for i in perm],
                             instances=[data.instances[i] for i in perm], tokens=data.tokens[perm],
                             counts=data.counts[perm], pooled=data.pooled[perm],
                             entities=None if data.entities is None else data.entities[perm])
        self._cache[key] = data
        while len(self._cache) > 2 * len(self.modalities):  # two shards per modality
            self._cache.popitem(last=False)
        return data

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> Batch:
        """The collated batch of items ``indices`` (see :func:`collate`)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        out: Batch = {
            "index": torch.from_numpy(idx.copy()),
            "ids": [self.ids[i] for i in idx],
            "labels": [self.labels[i] for i in idx],
            "instances": [self.instances[i] for i in idx],
            "tokens": {}, "mask": {}, "present": {}, "entities": {},
        }
        it = torch.from_numpy(idx)
        for m in self.modalities:
            if self.in_memory:
                tok = self._tokens[m][idx]
                ent = self._entities[idx] if m == TABLE else None
            else:
                tok, ent = self._stream_rows(m, idx)
            cnt = self.counts_t[m][it]
            T = self.shapes[m].max_tokens
            out["tokens"][m] = torch.from_numpy(tok).float()
            out["mask"][m] = torch.arange(T)[None, :] < cnt[:, None]
            out["present"][m] = cnt > 0
            if ent is not None:
                out["entities"][m] = torch.from_numpy(ent.astype(np.int64))
        return out

    def __getitems__(self, indices: list[int]) -> Batch:
        return self.get_batch(indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """One item: per-modality tensors without the batch dimension."""
        b = self.get_batch([int(i)])
        return {
            "index": int(b["index"][0]), "id": b["ids"][0], "label": b["labels"][0],
            "instance": b["instances"][0],
            "tokens": {m: t[0] for m, t in b["tokens"].items()},
            "mask": {m: t[0] for m, t in b["mask"].items()},
            "present": {m: t[0] for m, t in b["present"].items()},
            "entities": {m: t[0] for m, t in b["entities"].items()},
        }


def collate(items: list[dict[str, Any]] | Batch) -> Batch:
    """Stack items from ``FeatureDataset.__getitem__`` into a batch dict.

    A batch already built by ``FeatureDataset.__getitems__`` passes through unchanged.
    Batch keys: ``index`` Long[B]; ``ids``, ``labels``, ``instances`` lists of str;
    ``tokens`` {m: Float[B, T_m, D_m]}; ``mask`` {m: Bool[B, T_m]} (valid tokens);
    ``present`` {m: Bool[B]}; ``entities`` {"table": Long[B, T]} (-1 = no entity).
    """
    if isinstance(items, dict):
        return items
    if not items:
        raise ValueError("cannot collate an empty list of items")
    out: Batch = {
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        "ids": [it["id"] for it in items],
        "labels": [it["label"] for it in items],
        "instances": [it["instance"] for it in items],
    }
    for key in ("tokens", "mask", "present", "entities"):
        out[key] = {m: torch.stack([it[key][m] for it in items]) for m in items[0][key]}
    return out


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True,
                  drop_last: bool = True, shard_sizes: Sequence[int] | None = None,
                  groups: np.ndarray | None = None) -> list[np.ndarray]:
    """The batches of one epoch: a pure function of ``(seed, epoch)``.

    With ``shard_sizes`` (streaming) the shard order and the order inside each shard are
    shuffled, but items of one shard stay together. ``groups`` (in memory; an integer per
    item, e.g. its instance) keeps the items of one group next to each other in the shuffled
    order, so listings of one instance meet in a batch (the instance-positive loss needs
    them there). ``drop_last`` drops a final short batch unless it would leave no batch at all.
    """
    if shuffle:
        rng = np.random.default_rng([int(seed), int(epoch), 0x5CA1E])
        if shard_sizes is not None and len(shard_sizes) > 1:
            offs = np.concatenate([[0], np.cumsum(shard_sizes)]).astype(np.int64)
            order = np.concatenate([offs[k] + rng.permutation(int(shard_sizes[k]))
                                    for k in rng.permutation(len(shard_sizes))])
        elif groups is not None:
            _, code = np.unique(np.asarray(groups), return_inverse=True)
            rank = rng.permutation(int(code.max()) + 1 if len(code) else 0)[code]
            order = np.lexsort((rng.random(n), rank))  # groups in random order, shuffled inside
        else:
            order = rng.permutation(n)
    else:
        order = np.arange(n)
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if drop_last and len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


class EpochBatchSampler(Sampler[list[int]]):
    """Yields the batches of :func:`epoch_batches` for the epoch set by :meth:`set_epoch`.

    ``skip`` batches at the start are left out (resuming in the middle of an epoch);
    ``rank``/``world`` take every ``world``-th batch (data-parallel workers).
    """

    def __init__(self, dataset: FeatureDataset, batch_size: int, seed: int, shuffle: bool = True,
                 drop_last: bool = True, rank: int = 0, world: int = 1,
                 subset: np.ndarray | None = None, group_instances: bool = False) -> None:
        # ``subset``: the sorted item indices to draw from (a split), default every item;
        # ``group_instances``: listings of one instance in one batch (in memory, see epoch_batches)
        self.subset = None if subset is None else np.asarray(subset, dtype=np.int64)
        self.n = len(dataset) if self.subset is None else len(self.subset)
        self.groups = None
        if group_instances and dataset.in_memory:
            rows = range(len(dataset)) if self.subset is None else self.subset
            self.groups = np.array([split_key(dataset.instances[i], dataset.ids[i]) for i in rows], dtype=object)
        self.shard_sizes = None
        if not dataset.in_memory:  # items of one shard stay together (positions in the subset)
            sizes = np.asarray(dataset.shard_sizes, dtype=np.int64)
            if self.subset is not None:
                sizes = np.bincount(np.searchsorted(dataset.shard_offsets, self.subset, side="right") - 1,
                                    minlength=len(sizes))
            self.shard_sizes = [int(x) for x in sizes]
        self.batch_size, self.seed, self.shuffle, self.drop_last = batch_size, seed, shuffle, drop_last
        self.rank, self.world = rank, world
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def batches(self) -> list[np.ndarray]:
        b = epoch_batches(self.n, self.batch_size, self.seed, self.epoch, self.shuffle,
                          self.drop_last, self.shard_sizes, self.groups)
        if self.subset is not None:
            b = [self.subset[x] for x in b]
        if self.world > 1:
            per = len(b) // self.world  # equal step counts on every rank
            b = b[self.rank: per * self.world: self.world]
        return b[self.skip:]

    def __iter__(self) -> Iterator[list[int]]:
        for b in self.batches():
            yield b.tolist()

    def __len__(self) -> int:
        return len(self.batches())


def make_loader(dataset: FeatureDataset, sampler: Sampler, workers: int = 0) -> DataLoader:
    """A DataLoader over ``dataset`` with a batch sampler; streaming gets at least one worker,
    so that shard files are only ever opened in worker processes."""
    if not dataset.in_memory:
        workers = max(1, workers)
    workers = min(workers, os.cpu_count() or 1)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                      persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())
