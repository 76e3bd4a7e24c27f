"""The feature-store contract: the one module that defines the on-disk format.

The writer in ``extract/`` and the readers in ``fuse/`` and ``evaluate/`` all go through
this module; nothing else knows dataset names, dtypes or file layout.

Layout of a feature directory ``FEATS``::

    FEATS/manifest.json                 job-level provenance (config, corpus fingerprint, ...)
    FEATS/<modality>/shard-00000.h5     one HDF5 file per modality per shard of items
    FEATS/failures/shard-00000.jsonl    failures of that shard; its presence commits the shard
    FEATS/failures.jsonl                all failures, merged (id, modality, error)

Every shard of every modality holds the same items in the same order (the corpus order),
so the per-modality stores join by position inside a shard and by id across shards.
A missing or failed modality is a row with ``counts == 0`` and zero tokens.

Datasets of one shard (N items, T = max_tokens, D = dim, P = pooled_dim):

    ids        vlen utf-8 [N]      product id
    labels     vlen utf-8 [N]      category ('' if unknown)
    instances  vlen utf-8 [N]      physical product instance ('' if unknown)
    tokens     float16 [N, T, D]   token features, zero beyond counts
    counts     int32 [N]           valid tokens (0: modality absent or failed)
    pooled     float32 [N, P]      the backbone's global vector (zeros when counts == 0)
    entities   int32 [N, T]        table only: entity index of each token, -1 for none;
                                   entity 2k is the k-th key, 2k+1 its value

Attributes of every shard file: the fields of :class:`Provenance` plus ``shard_index``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import h5py
import numpy as np

SCHEMA_VERSION = 1
MODALITIES: tuple[str, ...] = ("image", "text", "table", "video", "audio")
MANIFEST = "manifest.json"
FAILURES = "failures.jsonl"
FAILURE_PARTS = "failures"
_SHARD_RE = re.compile(r"^shard-(\d{5})\.h5$")
_STR = h5py.string_dtype("utf-8")


class StoreError(RuntimeError):
    """A feature store is missing, unreadable or does not fit the others."""


@dataclass(frozen=True)
class Provenance:
    """What produced a modality store; equal provenance means interchangeable features."""

    modality: str
    backbone: str
    weights_hash: str
    pretrained: bool
    preprocessing: dict[str, Any]
    code_version: str
    corpus_fingerprint: str
    dim: int
    pooled_dim: int
    max_tokens: int
    schema_version: int = SCHEMA_VERSION

    def to_attrs(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["preprocessing"] = json.dumps(self.preprocessing, sort_keys=True)
        d["pretrained"] = int(self.pretrained)
        return d

    @classmethod
    def from_attrs(cls, attrs: Any) -> "Provenance":
        names = {f.name for f in dataclasses.fields(cls)}
        missing = names - set(attrs.keys())
        if missing:
            raise StoreError(f"missing provenance attributes {sorted(missing)}")
        kw = {k: attrs[k] for k in names}
        kw["preprocessing"] = json.loads(kw["preprocessing"])
        kw["pretrained"] = bool(kw["pretrained"])
        for k in ("dim", "pooled_dim", "max_tokens", "schema_version"):
            kw[k] = int(kw[k])
        for k in ("modality", "backbone", "weights_hash", "code_version", "corpus_fingerprint"):
            kw[k] = str(kw[k])
        return cls(**kw)

    def mismatches(self, other: "Provenance", fields: Iterable[str] | None = None) -> list[str]:
        """Names of the fields (default: all) on which the two differ."""
        fields = list(fields) if fields is not None else [f.name for f in dataclasses.fields(self)]
        return [f for f in fields if getattr(self, f) != getattr(other, f)]


# Fields that must agree between the stores of different modalities to be joined.
JOIN_FIELDS = ("corpus_fingerprint", "code_version", "schema_version")


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

    @classmethod
    def empty(cls, ids: list[str], labels: list[str], instances: list[str], prov: Provenance,
              with_entities: bool = False) -> "ShardData":
        n = len(ids)
        return cls(
            ids=list(ids), labels=list(labels), instances=list(instances),
            tokens=np.zeros((n, prov.max_tokens, prov.dim), np.float16),
            counts=np.zeros(n, np.int32),
            pooled=np.zeros((n, prov.pooled_dim), np.float32),
            entities=np.full((n, prov.max_tokens), -1, np.int32) if with_entities else None,
        )


# ----------------------------------------------------------------------------- paths

def shard_name(index: int) -> str:
    return f"shard-{index:05d}.h5"


def shard_path(root: str | Path, modality: str, index: int) -> Path:
    return Path(root) / modality / shard_name(index)


def failure_part_path(root: str | Path, index: int) -> Path:
    return Path(root) / FAILURE_PARTS / f"shard-{index:05d}.jsonl"


def list_shards(root: str | Path, modality: str) -> list[Path]:
    d = Path(root) / modality
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _SHARD_RE.match(p.name))


def committed_shards(root: str | Path) -> set[int]:
    """Shard indices whose failure part exists (written last, so the shard is complete)."""
    d = Path(root) / FAILURE_PARTS
    if not d.is_dir():
        return set()
    return {int(p.stem.split("-")[1]) for p in d.glob("shard-*.jsonl")}


# ----------------------------------------------------------------------------- write / read

def replace_atomic(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Make ``path`` appear whole or not at all: ``write(tmp)`` fills ``<name>.tmp<pid>`` (parent
    folders made), which is fsynced and renamed over ``path``; on any error the temporary file
    is removed and ``path`` keeps what it held. Every atomic write of the pipeline (shards,
    failure parts, manifests, checkpoints) goes through here. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


_TEMP_RE = re.compile(r"\.tmp(\d+)$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(dirs: Iterable[str | Path]) -> list[Path]:
    """Delete the temporary files (``<name>.tmp<pid>``, see :func:`replace_atomic`) that a killed
    writer left in ``dirs``; those of a process still alive are kept. Returns the files removed."""
    removed = []
    for d in map(Path, dirs):
        for p in sorted(d.iterdir()) if d.is_dir() else []:
            m = _TEMP_RE.search(p.name)
            if not m or not p.is_file():
                continue
            pid = int(m.group(1))
            if pid != os.getpid() and _alive(pid):
                continue  # its writer is still running
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def write_shard(path: str | Path, data: ShardData, prov: Provenance, shard_index: int) -> int:
    """Write one shard atomically (see :func:`replace_atomic`). Returns bytes written."""
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
            for k, v in prov.to_attrs().items():
                f.attrs[k] = v
            f.attrs["shard_index"] = shard_index

    path = replace_atomic(path, write)
    return path.stat().st_size


def _strs(ds: h5py.Dataset) -> list[str]:
    return [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in ds[()]]


def read_provenance(path: str | Path) -> Provenance:
    try:
        with h5py.File(path, "r") as f:
            return Provenance.from_attrs(f.attrs)
    except (OSError, KeyError) as e:
        raise StoreError(f"cannot read shard {path}: {e}. Delete it and rerun extraction "
                         f"to rewrite it.") from e


def read_shard(path: str | Path, rows: slice | np.ndarray | None = None) -> tuple[ShardData, Provenance]:
    """Read a shard (optionally a subset of rows). Raises StoreError naming the file."""
    sel = slice(None) if rows is None else rows
    try:
        with h5py.File(path, "r") as f:
            prov = Provenance.from_attrs(f.attrs)
            ids = _strs(f["ids"])
            labels = _strs(f["labels"])
            instances = _strs(f["instances"])
            if rows is not None:
                idx = np.arange(len(ids))[sel]
                ids = [ids[i] for i in idx]
                labels = [labels[i] for i in idx]
                instances = [instances[i] for i in idx]
            data = ShardData(
                ids=ids, labels=labels, instances=instances,
                tokens=f["tokens"][sel], counts=f["counts"][sel], pooled=f["pooled"][sel],
                entities=f["entities"][sel] if "entities" in f else None,
            )
    except StoreError as e:
        raise StoreError(f"{path}: {e}") from e
    except (OSError, KeyError, ValueError) as e:
        raise StoreError(f"cannot read shard {path}: {e}. The file is truncated or not a "
                         f"feature shard; delete it and rerun extraction to rewrite it.") from e
    return data, prov


def read_shard_index(path: str | Path) -> tuple[ShardData, Provenance]:
    """Read a shard's ids, labels, instances and counts only (no token features).

    The returned ShardData has zero-size ``tokens`` [N, 0, 0] and ``pooled`` [N, 0], and no
    entities: it indexes a shard cheaply (streaming readers join and count items with it).
    Raises StoreError naming the file, like :func:`read_shard`.
    """
    try:
        with h5py.File(path, "r") as f:
            prov = Provenance.from_attrs(f.attrs)
            ids = _strs(f["ids"])
            data = ShardData(
                ids=ids, labels=_strs(f["labels"]), instances=_strs(f["instances"]),
                tokens=np.zeros((len(ids), 0, 0), np.float16), counts=f["counts"][()],
                pooled=np.zeros((len(ids), 0), np.float32), entities=None,
            )
    except StoreError as e:
        raise StoreError(f"{path}: {e}") from e
    except (OSError, KeyError, ValueError) as e:
        raise StoreError(f"cannot read shard {path}: {e}. The file is truncated or not a "
                         f"feature shard; delete it and rerun extraction to rewrite it.") from e
    return data, prov


# ----------------------------------------------------------------------------- whole stores

@dataclass
class ModalityStore:
    """The shards of one modality in a feature directory, with their provenance."""

    root: Path
    modality: str
    shards: list[Path]
    provenance: Provenance
    sizes: list[int] = field(default_factory=list)

    @property
    def n_items(self) -> int:
        return sum(self.sizes)

    @property
    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.shards)

    def load(self) -> ShardData:
        """All shards concatenated in memory."""
        parts = [read_shard(p)[0] for p in self.shards]
        return concat_shards(parts)


def concat_shards(parts: list[ShardData]) -> ShardData:
    if not parts:
        raise StoreError("no shards to concatenate")
    ent = [p.entities for p in parts]
    return ShardData(
        ids=[i for p in parts for i in p.ids],
        labels=[i for p in parts for i in p.labels],
        instances=[i for p in parts for i in p.instances],
        tokens=np.concatenate([p.tokens for p in parts]),
        counts=np.concatenate([p.counts for p in parts]),
        pooled=np.concatenate([p.pooled for p in parts]),
        entities=None if any(e is None for e in ent) else np.concatenate(ent),
    )


def open_modality(root: str | Path, modality: str) -> ModalityStore:
    """Open one modality store; every shard must carry the same provenance."""
    root = Path(root)
    if not root.is_dir():
        raise StoreError(f"feature directory {root} does not exist; run pipelines/extract.py first")
    shards = list_shards(root, modality)
    if not shards:
        raise StoreError(f"no {modality} shards under {root / modality}; run pipelines/extract.py first")
    provs: list[Provenance] = []
    sizes: list[int] = []
    for p in shards:
        try:
            with h5py.File(p, "r") as f:
                provs.append(Provenance.from_attrs(f.attrs))
                sizes.append(int(f["ids"].shape[0]))
        except (OSError, KeyError) as e:
            raise StoreError(f"cannot read shard {p}: {e}. Delete it and rerun extraction.") from e
    first = provs[0]
    for p, prov in zip(shards[1:], provs[1:]):
        bad = first.mismatches(prov)
        if bad:
            raise StoreError(f"shards {shards[0]} and {p} differ in provenance field(s) {bad}; "
                             f"they come from different extraction runs. Re-extract into a fresh directory.")
    return ModalityStore(root=root, modality=modality, shards=shards, provenance=first, sizes=sizes)


def open_stores(root: str | Path, modalities: Iterable[str] = MODALITIES) -> dict[str, ModalityStore]:
    """Open several modality stores and check they can be joined (same corpus and code)."""
    stores = {m: open_modality(root, m) for m in modalities}
    check_join(stores)
    return stores


def check_join(stores: dict[str, ModalityStore]) -> None:
    """Refuse stores whose provenance or shard layout does not fit, naming stores and field."""
    items = list(stores.items())
    if not items:
        return
    m0, s0 = items[0]
    for m, s in items[1:]:
        bad = s0.provenance.mismatches(s.provenance, JOIN_FIELDS)
        if bad:
            f = bad[0]
            raise StoreError(
                f"cannot join stores {s0.root / m0} and {s.root / m}: provenance field '{f}' differs "
                f"({getattr(s0.provenance, f)!r} vs {getattr(s.provenance, f)!r}). "
                f"Re-extract both from the same corpus with the same code.")
        if [p.name for p in s.shards] != [p.name for p in s0.shards] or s.sizes != s0.sizes:
            raise StoreError(f"cannot join stores {s0.root / m0} and {s.root / m}: their shards differ "
                             f"({len(s0.shards)} vs {len(s.shards)} shards); the extraction did not finish. "
                             f"Rerun pipelines/extract.py with the same --out to complete it.")


# ----------------------------------------------------------------------------- provenance helpers

def file_fingerprint(path: str | Path, extra: str = "") -> str:
    """sha256 of a file's bytes (plus an optional string), hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    h.update(extra.encode())
    return h.hexdigest()


# the modules whose code decides the feature values (tooling such as the demo corpus is not)
FEATURE_CODE = ("backbones.py", "config.py", "corpus.py", "decode.py", "store.py", "worker.py")


def code_version() -> str:
    """Version of the extraction code: package version plus a hash of the feature-making sources."""
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for p in sorted(here / n for n in FEATURE_CODE):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    try:
        from importlib.metadata import version
        v = version("scale-pipeline")
    except Exception:  # not installed: running from a checkout
        v = "0+local"
    return f"{v}+{h.hexdigest()[:12]}"


# ----------------------------------------------------------------------------- manifest & failures

def write_json_atomic(path: str | Path, obj: Any) -> None:
    replace_atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True)))


def _write_jsonl(tmp: Path, records: list[dict[str, Any]]) -> None:
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True) + "\n")


def read_manifest(root: str | Path) -> dict[str, Any] | None:
    p = Path(root) / MANIFEST
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise StoreError(f"{p} is not valid JSON ({e}); delete the feature directory and re-extract") from e


def write_failure_part(root: str | Path, index: int, records: list[dict[str, Any]]) -> None:
    """Write a shard's failure records atomically; this commits the shard."""
    replace_atomic(failure_part_path(root, index), lambda tmp: _write_jsonl(tmp, records))


def read_failures(root: str | Path) -> list[dict[str, Any]]:
    """All failure records of committed shards, in shard order."""
    out: list[dict[str, Any]] = []
    d = Path(root) / FAILURE_PARTS
    for p in sorted(d.glob("shard-*.jsonl")) if d.is_dir() else []:
        out.extend(json.loads(line) for line in p.read_text().splitlines() if line.strip())
    return out


def merge_failures(root: str | Path, extra: list[dict[str, Any]] | None = None) -> int:
    """Rewrite FEATS/failures.jsonl from the shard parts (plus job-level records). Returns count."""
    recs = list(extra or []) + read_failures(root)
    replace_atomic(Path(root) / FAILURES, lambda tmp: _write_jsonl(tmp, recs))
    return len(recs)
