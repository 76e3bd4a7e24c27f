"""The plan of one extraction job: which products go into which new shards, which rows of
the store stay live, and the live index that results (see :mod:`scalemm.store.live`).

Given the scanned corpus and the store's current live index:

* a product whose id is live with the same fingerprint, in a shard that is intact, is kept
  where it is (its shard is skipped);
* a product new to the store (by id), or whose content changed (same id, another
  fingerprint), is extracted into new shards, numbered on from the store's ``next_shard``, in
  corpus order, ``shard_size`` per shard; its older copy stops being live (superseded);
* a product that left the corpus stops being live (removed);
* a live shard that is damaged or no longer committed is extracted again in place, with its
  rows that are still wanted, in their order.

The plan is a pure function of (corpus, live index, intact shards, shard size): a job killed
half-way leaves the live index as it was, so its rerun makes the same plan and finds the
shards the killed job committed already done. Everything here works on Arrow and NumPy
columns; no per-product Python object is made, except for duplicate ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import numpy as np

from scalemm.corpus import BadRecord, duplicate
from scalemm.extract.scan import ScanResult
from scalemm.store import LiveIndex, make_live_table


@dataclass
class ShardTask:
    """One shard to write: its products' byte ranges in the corpus (offset, length, line),
    ids and fingerprints, in row order."""

    shard: int
    spans: np.ndarray  # int64 [n, 3]
    ids: list[str]
    fingerprints: list[str]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Plan:
    tasks: list[ShardTask]
    index: "pa.Table"  # noqa: F821  the live index after the job (id, fingerprint, shard, row)
    next_shard: int
    bad: list[BadRecord] = field(default_factory=list)  # the corpus' bad records, in corpus order
    counts: dict[str, int] = field(default_factory=dict)  # new, changed, kept, removed, repaired
    changes: bool = True  # whether the live rows differ from the current index

    @property
    def kept_shards(self) -> set[int]:
        todo = {t.shard for t in self.tasks}
        return {int(k) for k in np.unique(self.index.column("shard").to_numpy())} - todo


def make_plan(scan: ScanResult, old: LiveIndex | None, intact: set[int], shard_size: int,
              next_shard: int) -> Plan:
    """The plan for ``scan`` against the live index ``old`` (None: an empty store) whose shards
    ``intact`` are committed and readable (see the module docstring)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = scan.products
    n = t.num_rows
    # duplicate ids: the first record is kept
    first = pc.index_in(t.column("id"), value_set=t.column("id").combine_chunks()).to_numpy()
    dup = first != np.arange(n)
    lines = t.column("line").to_numpy()
    dups = [(int(lines[i]), duplicate(t.column("id")[i].as_py(), int(lines[i]), int(lines[first[i]])))
            for i in np.flatnonzero(dup)]
    bad = [b for _, b in sorted(scan.bad + dups, key=lambda x: x[0])]
    if dup.any():
        t = t.filter(pa.array(~dup))
        n = t.num_rows
    ids, fps = t.column("id"), t.column("fingerprint")
    spans = np.stack([t.column(c).to_numpy() for c in ("offset", "length", "line")], axis=1).astype(np.int64)

    if old is None or len(old) == 0:
        has = np.zeros(n, bool)
        same = keep = repair = has
        old_shard = old_row = np.zeros(n, np.int64)
        n_old = 0
    else:
        pos = pc.index_in(ids, value_set=old.table.column("id").combine_chunks())
        has = np.asarray(pos.is_valid(), bool)
        at = np.asarray(pos.fill_null(0), np.int64)
        same = has & np.asarray(pc.equal(fps, old.table.column("fingerprint").take(at)), bool)
        old_shard = old.table.column("shard").to_numpy()[at].astype(np.int64)
        old_row = old.table.column("row").to_numpy()[at].astype(np.int64)
        ok = np.isin(old_shard, np.fromiter(intact, np.int64, len(intact)))
        keep, repair = same & ok, same & ~ok
        n_old = len(old)

    tasks: list[ShardTask] = []
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = [(np.flatnonzero(keep), old_shard[keep], old_row[keep])]

    def task(shard: int, sel: np.ndarray) -> None:
        tasks.append(ShardTask(shard, spans[sel], ids.take(sel).to_pylist(), fps.take(sel).to_pylist()))
        parts.append((sel, np.full(len(sel), shard, np.int64), np.arange(len(sel), dtype=np.int64)))

    for k in np.unique(old_shard[repair]):  # damaged live shards: again, in place, in row order
        sel = np.flatnonzero(repair & (old_shard == k))
        task(int(k), sel[np.argsort(old_row[sel], kind="stable")])
    todo = np.flatnonzero(~same)  # new and changed products, in corpus order
    for j, s in enumerate(range(0, len(todo), shard_size)):
        task(next_shard + j, todo[s:s + shard_size])
    next_after = next_shard + -(-len(todo) // shard_size)

    sel, shard, row = (np.concatenate(x) for x in zip(*parts))
    index = make_live_table(ids.take(sel), fps.take(sel), shard, row)
    counts = {"new": int((~has).sum()), "changed": int((has & ~same).sum()), "kept": int(keep.sum()),
              "removed": int(n_old - has.sum()), "repaired_shards": len(np.unique(old_shard[repair]))}
    changes = old is None or bool(tasks) or counts["removed"] > 0
    return Plan(tasks, index, next_after, bad, counts, changes)
