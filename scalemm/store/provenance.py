"""Provenance: what produced a modality store. Equal provenance means interchangeable features."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from scalemm.errors import StoreError

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Provenance:
    """What produced a modality store; equal provenance means interchangeable features.

    ``corpus_fingerprint`` is the sha256 of the corpus file the shard was extracted from. A
    catalogue that grows is extracted into the same store generation after generation, so the
    shards of one store may come from several corpus files: that field is compared between
    the modalities of one shard (:data:`JOIN_FIELDS`), never between shards. Every other
    field is the same in every shard of a store (:data:`STORE_FIELDS`).
    """

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

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Provenance":
        return cls(**d)

    def mismatches(self, other: "Provenance", fields: Iterable[str] | None = None) -> list[str]:
        """Names of the fields (default: all) on which the two differ."""
        fields = list(fields) if fields is not None else [f.name for f in dataclasses.fields(self)]
        return [f for f in fields if getattr(self, f) != getattr(other, f)]


# Fields that must agree between the stores of different modalities to be joined (shard by shard).
JOIN_FIELDS = ("corpus_fingerprint", "code_version", "schema_version")
# Fields that every shard of one modality store shares: all but the corpus the shard came from.
STORE_FIELDS = tuple(f.name for f in dataclasses.fields(Provenance) if f.name != "corpus_fingerprint")


def file_fingerprint(path: str | Path, extra: str = "") -> str:
    """sha256 of a file's bytes (plus an optional string), hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    h.update(extra.encode())
    return h.hexdigest()


def sources_version(files: Iterable[str | Path], package: str = "scale-pipeline") -> str:
    """A code version for provenance: the package version plus a hash of the given source
    files (the ones whose code decides feature values; tooling is left out)."""
    h = hashlib.sha256()
    for p in sorted(map(Path, files), key=lambda p: p.name):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    try:
        from importlib.metadata import version
        v = version(package)
    except Exception:  # not installed: running from a checkout
        v = "0+local"
    return f"{v}+{h.hexdigest()[:12]}"
