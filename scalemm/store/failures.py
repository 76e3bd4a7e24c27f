"""Failure records of a feature directory: one part per shard (its presence commits the
shard) and the merged ``FEATS/failures.jsonl`` (id, modality, error)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from scalemm.atomic import write_jsonl_atomic

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
    """All failure records of committed shards, in shard order."""
    out: list[dict[str, Any]] = []
    for _, p in _parts(root):
        out.extend(json.loads(line) for line in p.read_text().splitlines() if line.strip())
    return out


def merge_failures(root: str | Path, extra: list[dict[str, Any]] | None = None) -> int:
    """Rewrite FEATS/failures.jsonl from the shard parts (plus job-level records). Returns count."""
    recs = list(extra or []) + read_failures(root)
    write_jsonl_atomic(Path(root) / FAILURES, recs)
    return len(recs)
