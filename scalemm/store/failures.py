"""Failure records of a feature directory: one part per shard (its presence commits the
shard) and the merged ``FEATS/failures.jsonl`` (id, modality, error) of the live items."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from scalemm.atomic import write_jsonl_atomic
from scalemm.store.live import read_live_index

FAILURES = "failures.jsonl"
FAILURE_PARTS = "failures"
_PART_RE = re.compile(r"^shard-(\d{5})\.jsonl$")


def failure_part_path(root: str | Path, index: int) -> Path:
    return Path(root) / FAILURE_PARTS / f"shard-{index:05d}.jsonl"


def _parts(root: str | Path) -> list[tuple[int, Path]]:
    d = Path(root) / FAILURE_PARTS
    if not d.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in d.iterdir() if (m := _PART_RE.match(p.name)))


def committed_shards(root: str | Path) -> set[int]:
    """Shard indices whose failure part exists (written last, so the shard is complete)."""
    return {k for k, _ in _parts(root)}


def write_failure_part(root: str | Path, index: int, records: list[dict[str, Any]]) -> None:
    """Write a shard's failure records atomically; this commits the shard."""
    write_jsonl_atomic(failure_part_path(root, index), records)


def read_failures(root: str | Path) -> list[dict[str, Any]]:
    """The failure records of the live rows (see :mod:`scalemm.store.live`), in shard order:
    a record of a product's older copy, or of a product that left the corpus, is not one.
    Without a live index, every committed shard's records."""
    index = read_live_index(root)
    live = None if index is None else index.rows_by_shard()
    out: list[dict[str, Any]] = []
    for k, p in _parts(root):
        if live is not None and k not in live:
            continue
        out.extend(json.loads(line) for line in p.read_text().splitlines() if line.strip())
    if index is None or not out:
        return out
    import pyarrow as pa
    import pyarrow.compute as pc

    # a record is live when its id's live row is in the record's shard
    at = pc.index_in(pa.array([r["id"] for r in out], pa.string()), value_set=index.table.column("id"))
    shard_of = index.table.column("shard").to_numpy()
    return [r for r, i in zip(out, at.to_pylist()) if i is not None and int(shard_of[i]) == r["shard"]]


def merge_failures(root: str | Path, extra: list[dict[str, Any]] | None = None) -> int:
    """Rewrite FEATS/failures.jsonl from the shard parts (plus job-level records). Returns count."""
    recs = list(extra or []) + read_failures(root)
    write_jsonl_atomic(Path(root) / FAILURES, recs)
    return len(recs)
