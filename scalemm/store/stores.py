"""Whole modality stores: the live rows of one modality's shards opened together, and the
join check."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import h5py
import numpy as np

from scalemm.errors import StoreError
from scalemm.modalities import MODALITIES
from scalemm.store.format import ShardData, concat_shards, list_shards, read_shard, read_shard_index, shard_path
from scalemm.store.live import live_rows
from scalemm.store.provenance import JOIN_FIELDS, STORE_FIELDS, Provenance


@dataclass
class ModalityStore:
    """The shards of one modality in a feature directory that hold live rows, with their
    provenance. ``rows[k]`` are the live row indices of ``shards[k]`` (None: all of them);
    ``sizes[k]`` their number. Read a shard's live rows with :meth:`read` / :meth:`read_index`."""

    root: Path
    modality: str
    shards: list[Path]
    provenance: Provenance
    sizes: list[int] = field(default_factory=list)
    rows: list[np.ndarray | None] = field(default_factory=list)
    corpus_fingerprints: list[str] = field(default_factory=list)  # per shard

    @property
    def n_items(self) -> int:
        return sum(self.sizes)

    @property
    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.shards)

    def _rows(self, k: int) -> np.ndarray | None:
        return self.rows[k] if self.rows else None

    def read(self, k: int) -> ShardData:
        """The live rows of shard ``k`` (features included)."""
        return read_shard(self.shards[k], self._rows(k))[0]

    def read_index(self, k: int, pooled: bool = False) -> ShardData:
        """The live rows of shard ``k``: ids, labels, instances and counts only (and the pooled
        vectors if ``pooled``)."""
        return read_shard_index(self.shards[k], self._rows(k), pooled)[0]

    def load(self) -> ShardData:
        """All live rows concatenated in memory, shard by shard."""
        return concat_shards([self.read(k) for k in range(len(self.shards))])


def _shard_index(p: Path) -> int:
    return int(p.stem.split("-")[1])


def open_modality(root: str | Path, modality: str,
                  live: dict[int, np.ndarray] | None | bool = True) -> ModalityStore:
    """Open one modality store; every shard must carry the same provenance (but for the corpus
    it came from). ``live``: shard -> live rows (None: every row of every shard; True: read
    the store's live index, see :mod:`scalemm.store.live`)."""
    root = Path(root)
    if not root.is_dir():
        raise StoreError(f"feature directory {root} does not exist; run pipelines/extract.py first")
    if live is True:
        live = live_rows(root)
    if live is None:
        shards = list_shards(root, modality)
        rows: list[np.ndarray | None] = [None] * len(shards)
    else:
        shards = [shard_path(root, modality, k) for k in sorted(live)]
        rows = [live[k] for k in sorted(live)]
        lost = [p for p in shards if not p.exists()]
        if lost:
            raise StoreError(f"shard {lost[0]} is in the live index but missing; rerun pipelines/extract.py "
                             f"with the same --out to extract it again")
    if not shards:
        raise StoreError(f"no {modality} shards under {root / modality}; run pipelines/extract.py first")
    provs: list[Provenance] = []
    sizes: list[int] = []
    for p, r in zip(shards, rows):
        try:
            with h5py.File(p, "r") as f:
                provs.append(Provenance.from_attrs(f.attrs))
                n = int(f["ids"].shape[0])
        except (OSError, KeyError) as e:
            raise StoreError(f"cannot read shard {p}: {e}. Delete it and rerun extraction.") from e
        if r is not None and len(r) and int(r[-1]) >= n:
            raise StoreError(f"the live index names row {int(r[-1])} of {p}, which has {n} rows; rerun "
                             f"pipelines/extract.py with the same --out to extract it again")
        sizes.append(n if r is None else len(r))
    first = provs[0]
    for p, prov in zip(shards[1:], provs[1:]):
        bad = first.mismatches(prov, STORE_FIELDS)
        if bad:
            raise StoreError(f"shards {shards[0]} and {p} differ in provenance field(s) {bad}; "
                             f"they come from different extraction runs. Re-extract into a fresh directory.")
    return ModalityStore(root=root, modality=modality, shards=shards, provenance=first, sizes=sizes, rows=rows,
                         corpus_fingerprints=[p.corpus_fingerprint for p in provs])


def open_stores(root: str | Path, modalities: Iterable[str] = MODALITIES) -> dict[str, ModalityStore]:
    """Open several modality stores (their live rows) and check they can be joined."""
    live = live_rows(root) if Path(root).is_dir() else None
    stores = {m: open_modality(root, m, live) for m in modalities}
    check_join(stores)
    return stores


def check_join(stores: dict[str, ModalityStore]) -> None:
    """Refuse stores whose provenance or shard layout does not fit, naming stores and field.

    :data:`JOIN_FIELDS` must agree shard by shard: the same shard of two modalities comes from
    one corpus file, while different shards may come from successive versions of a growing
    catalogue."""
    items = list(stores.items())
    if not items:
        return
    m0, s0 = items[0]
    for m, s in items[1:]:
        for k in range(min(len(s0.shards), len(s.shards))):
            a, b = (Provenance(**{**x.provenance.to_json(), "corpus_fingerprint": x.corpus_fingerprints[k]})
                    for x in (s0, s))
            bad = a.mismatches(b, JOIN_FIELDS)
            if bad:
                f = bad[0]
                raise StoreError(
                    f"cannot join stores {s0.root / m0} and {s.root / m}: provenance field '{f}' differs "
                    f"({getattr(a, f)!r} vs {getattr(b, f)!r}). "
                    f"Re-extract both from the same corpus with the same code.")
        if [p.name for p in s.shards] != [p.name for p in s0.shards] or s.sizes != s0.sizes:
            raise StoreError(f"cannot join stores {s0.root / m0} and {s.root / m}: their shards differ "
                             f"({len(s0.shards)} vs {len(s.shards)} shards); the extraction did not finish. "
                             f"Rerun pipelines/extract.py with the same --out to complete it.")
