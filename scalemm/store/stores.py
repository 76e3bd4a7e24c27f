"""Whole modality stores: the shards of one modality opened together, and the join check."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import h5py

from scalemm.errors import StoreError
from scalemm.modalities import MODALITIES
from scalemm.store.format import ShardData, concat_shards, list_shards, read_shard
from scalemm.store.provenance import JOIN_FIELDS, Provenance


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
