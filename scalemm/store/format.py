"""The on-disk format of one shard of one modality: names, datasets, dtypes, reading, writing.

Layout of a feature directory ``FEATS``::

    FEATS/manifest.json                 job-level provenance (config, backbones, code) and the
                                        current generation's live index
    FEATS/<modality>/shard-00000.h5     one HDF5 file per modality per shard of items
    FEATS/failures/shard-00000.jsonl    failures of that shard; its presence commits the shard
    FEATS/failures.jsonl                the live items' failures, merged (id, modality, error)
    FEATS/index/live-00001.parquet      which rows of which shards are read (see live.py)

Every shard of every modality holds the same items in the same order (the order of the
corpus they were extracted from), so the per-modality stores join by position inside a
shard and by id across shards. A missing or failed modality is a row with ``counts == 0``
and zero tokens. A catalogue that grows adds shards; rows of older shards whose product
changed or left the corpus stay on disk but are no longer live.

Datasets of one shard (N items, T = max_tokens, D = dim, P = pooled_dim):

    ids        vlen utf-8 [N]      product id
    labels     vlen utf-8 [N]      category ('' if unknown)
    instances  vlen utf-8 [N]      physical product instance ('' if unknown)
    tokens     float16 [N, T, D]   token features, zero beyond counts
    counts     int32 [N]           valid tokens (0: modality absent or failed)
    pooled     float32 [N, P]      the backbone's global vector (zeros when counts == 0)
    entities   int32 [N, T]        table only: entity index of each token, -1 for none;
                                   entity 2k is the k-th key, 2k+1 its value
    fingerprints vlen utf-8 [N]    the content fingerprint of each product when it was
                                   extracted (media bytes, title, table, label); absent in
                                   stores written before catalogues could grow

Attributes of every shard file: the fields of :class:`Provenance` plus ``shard_index``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from scalemm.atomic import replace_atomic
from scalemm.errors import StoreError
from scalemm.store.provenance import Provenance

_SHARD_RE = re.compile(r"^shard-(\d{5})\.h5$")
_STR = h5py.string_dtype("utf-8")


@dataclass
class ShardData:
    """The rows of one shard of one modality."""

    ids: list[str]
    labels: list[str]
    instances: list[str]
    tokens: np.ndarray  # float16 [N, T, D]
    counts: np.ndarray  # int32 [N]
    pooled: np.ndarray  # float32 [N, P]
    entities: np.ndarray | None = None  # int32 [N, T] (table)
    fingerprints: list[str] | None = None  # per row: the product's content fingerprint

    def __post_init__(self) -> None:
        n = len(self.ids)
        if not (len(self.labels) == len(self.instances) == n):
            raise ValueError("ids, labels and instances differ in length")
        if self.tokens.ndim != 3 or self.tokens.shape[0] != n:
            raise ValueError(f"tokens must be [N, T, D] with N={n}, got {self.tokens.shape}")
        if self.counts.shape != (n,) or self.pooled.shape[0] != n:
            raise ValueError("counts/pooled do not match the number of ids")
        if self.entities is not None and self.entities.shape != self.tokens.shape[:2]:
            raise ValueError("entities must be [N, T]")
        if self.fingerprints is not None and len(self.fingerprints) != n:
            raise ValueError("fingerprints do not match the number of ids")

    @classmethod
    def empty(cls, ids: list[str], labels: list[str], instances: list[str], prov: Provenance,
              with_entities: bool = False, fingerprints: list[str] | None = None) -> "ShardData":
        n = len(ids)
        return cls(
            ids=list(ids), labels=list(labels), instances=list(instances),
            tokens=np.zeros((n, prov.max_tokens, prov.dim), np.float16),
            counts=np.zeros(n, np.int32),
            pooled=np.zeros((n, prov.pooled_dim), np.float32),
            entities=np.full((n, prov.max_tokens), -1, np.int32) if with_entities else None,
            fingerprints=None if fingerprints is None else list(fingerprints),
        )

    def take(self, rows: np.ndarray) -> "ShardData":
        """The rows ``rows`` (row indices, in that order)."""
        pick = [int(i) for i in rows]
        return ShardData(
            ids=[self.ids[i] for i in pick], labels=[self.labels[i] for i in pick],
            instances=[self.instances[i] for i in pick], tokens=self.tokens[rows], counts=self.counts[rows],
            pooled=self.pooled[rows], entities=None if self.entities is None else self.entities[rows],
            fingerprints=None if self.fingerprints is None else [self.fingerprints[i] for i in pick],
        )


def concat_shards(parts: list[ShardData]) -> ShardData:
    if not parts:
        raise StoreError("no shards to concatenate")
    ent = [p.entities for p in parts]
    fps = [p.fingerprints for p in parts]
    return ShardData(
        ids=[i for p in parts for i in p.ids],
        labels=[i for p in parts for i in p.labels],
        instances=[i for p in parts for i in p.instances],
        tokens=np.concatenate([p.tokens for p in parts]),
        counts=np.concatenate([p.counts for p in parts]),
        pooled=np.concatenate([p.pooled for p in parts]),
        entities=None if any(e is None for e in ent) else np.concatenate(ent),
        fingerprints=None if any(f is None for f in fps) else [i for f in fps for i in f],
    )


# ----------------------------------------------------------------------------- paths

def shard_name(index: int) -> str:
    return f"shard-{index:05d}.h5"


def shard_path(root: str | Path, modality: str, index: int) -> Path:
    return Path(root) / modality / shard_name(index)


def list_shards(root: str | Path, modality: str) -> list[Path]:
    d = Path(root) / modality
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _SHARD_RE.match(p.name))


# ----------------------------------------------------------------------------- write / read

def write_shard(path: str | Path, data: ShardData, prov: Provenance, shard_index: int) -> int:
    """Write one shard atomically (see :func:`scalemm.atomic.replace_atomic`). Returns bytes written."""
    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("ids", data=np.array(data.ids, dtype=object), dtype=_STR)
            f.create_dataset("labels", data=np.array(data.labels, dtype=object), dtype=_STR)
            f.create_dataset("instances", data=np.array(data.instances, dtype=object), dtype=_STR)
            f.create_dataset("tokens", data=np.ascontiguousarray(data.tokens, dtype=np.float16))
            f.create_dataset("counts", data=np.asarray(data.counts, dtype=np.int32))
            f.create_dataset("pooled", data=np.asarray(data.pooled, dtype=np.float32))
            if data.entities is not None:
                f.create_dataset("entities", data=np.asarray(data.entities, dtype=np.int32))
            if data.fingerprints is not None:
                f.create_dataset("fingerprints", data=np.array(data.fingerprints, dtype=object), dtype=_STR)
            for k, v in prov.to_attrs().items():
                f.attrs[k] = v
            f.attrs["shard_index"] = shard_index

    path = replace_atomic(path, write)
    return path.stat().st_size


def _strs(ds: h5py.Dataset) -> list[str]:
    return [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in ds[()]]


def _unreadable(path: str | Path, e: Exception) -> StoreError:
    return StoreError(f"cannot read shard {path}: {e}. The file is truncated or not a "
                      f"feature shard; delete it and rerun extraction to rewrite it.")


def read_provenance(path: str | Path) -> Provenance:
    try:
        with h5py.File(path, "r") as f:
            return Provenance.from_attrs(f.attrs)
    except (OSError, KeyError) as e:
        raise StoreError(f"cannot read shard {path}: {e}. Delete it and rerun extraction "
                         f"to rewrite it.") from e


def read_shard(path: str | Path, rows: slice | np.ndarray | None = None) -> tuple[ShardData, Provenance]:
    """Read a shard (optionally a subset of rows: a slice, or increasing row indices).
    Raises StoreError naming the file."""
    sel = slice(None) if rows is None else rows
    try:
        with h5py.File(path, "r") as f:
            prov = Provenance.from_attrs(f.attrs)
            ids = _strs(f["ids"])
            labels = _strs(f["labels"])
            instances = _strs(f["instances"])
            fps = _strs(f["fingerprints"]) if "fingerprints" in f else None
            if rows is not None:
                idx = np.arange(len(ids))[sel]
                ids = [ids[i] for i in idx]
                labels = [labels[i] for i in idx]
                instances = [instances[i] for i in idx]
                fps = None if fps is None else [fps[i] for i in idx]
            data = ShardData(
                ids=ids, labels=labels, instances=instances,
                tokens=f["tokens"][sel], counts=f["counts"][sel], pooled=f["pooled"][sel],
                entities=f["entities"][sel] if "entities" in f else None, fingerprints=fps,
            )
    except StoreError as e:
        raise StoreError(f"{path}: {e}") from e
    except (OSError, KeyError, ValueError) as e:
        raise _unreadable(path, e) from e
    return data, prov


def read_shard_index(path: str | Path, rows: np.ndarray | None = None,
                     pooled: bool = False) -> tuple[ShardData, Provenance]:
    """Read a shard's ids, labels, instances, counts and fingerprints only (no token features),
    optionally of the rows ``rows`` (row indices).

    The returned ShardData has zero-size ``tokens`` [N, 0, 0] and no entities, and ``pooled``
    [N, 0] unless ``pooled`` asks for the pooled vectors: it indexes a shard cheaply (streaming
    readers join and count items with it; the frozen baselines read the pooled vectors so).
    Raises StoreError naming the file, like :func:`read_shard`.
    """
    try:
        with h5py.File(path, "r") as f:
            prov = Provenance.from_attrs(f.attrs)
            ids = _strs(f["ids"])
            data = ShardData(
                ids=ids, labels=_strs(f["labels"]), instances=_strs(f["instances"]),
                tokens=np.zeros((len(ids), 0, 0), np.float16), counts=f["counts"][()],
                pooled=f["pooled"][()] if pooled else np.zeros((len(ids), 0), np.float32), entities=None,
                fingerprints=_strs(f["fingerprints"]) if "fingerprints" in f else None,
            )
    except StoreError as e:
        raise StoreError(f"{path}: {e}") from e
    except (OSError, KeyError, ValueError) as e:
        raise _unreadable(path, e) from e
    return (data if rows is None else data.take(rows)), prov
