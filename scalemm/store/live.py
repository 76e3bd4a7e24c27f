"""The live index: which rows of a feature directory's shards are read.

A catalogue grows: every extraction into an existing store adds shards for the products it
has not seen (by id) and for the products whose content changed (same id, another
fingerprint), and leaves the older shards as they are. The old copy of a changed product,
and every product that left the corpus, then stays on disk but is no longer *live*.

At the end of every job that changes what is live, the driver writes one index for the new
generation, ``FEATS/index/live-GGGGG.parquet``: one row per live product (``id``,
``fingerprint``, ``shard``, ``row``), sorted by shard and row, written atomically; then it
replaces the manifest (atomically too), whose ``live_index`` names that file. A reader opens
the manifest once, so it sees one generation whole, never a mix: the shards a running job
is adding are not in the index it reads. Shards no index names are never read.

Why a file per generation rather than a flag in every shard: a reader at millions of
products learns which rows are live from one columnar file (about 60 bytes per product,
read in well under a second for a million) instead of opening every shard, and old shards
are never rewritten, so a reader that has them open is never disturbed. A store without an
index (stores written by hand, as the tests' synthetic ones) has every row of every shard live.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scalemm.atomic import replace_atomic
from scalemm.errors import StoreError
from scalemm.store.manifest import read_manifest

LIVE_DIR = "index"
LIVE_KEY = "live_index"  # the manifest key naming the current index (relative to the store)
COLUMNS = ("id", "fingerprint", "shard", "row")


def live_index_path(root: str | Path, generation: int) -> Path:
    return Path(root) / LIVE_DIR / f"live-{generation:05d}.parquet"


@dataclass
class LiveIndex:
    """The live products of one generation: a pyarrow Table with :data:`COLUMNS`, sorted by
    (shard, row)."""

    generation: int
    table: "pa.Table"  # noqa: F821

    def __len__(self) -> int:
        return self.table.num_rows

    def rows_by_shard(self) -> dict[int, np.ndarray]:
        """shard -> its live row indices (increasing)."""
        shards = self.table.column("shard").to_numpy()
        rows = self.table.column("row").to_numpy().astype(np.int64)
        if not len(shards):
            return {}
        keys, starts = np.unique(shards, return_index=True)
        ends = np.append(starts[1:], len(shards))
        return {int(k): rows[a:b] for k, a, b in zip(keys, starts, ends)}


def make_live_table(ids, fingerprints, shards, rows) -> "pa.Table":  # noqa: F821
    """A live-index table from four columns (any array-likes), sorted by (shard, row)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = pa.table({"id": pa.array(ids, pa.string()), "fingerprint": pa.array(fingerprints, pa.string()),
                  "shard": pa.array(shards, pa.int32()), "row": pa.array(rows, pa.int32())})
    return t.take(pc.sort_indices(t, [("shard", "ascending"), ("row", "ascending")]))


def write_live_index(root: str | Path, generation: int, table: "pa.Table") -> Path:  # noqa: F821
    """Write generation ``generation``'s index atomically; returns its path (the caller then
    names it in the manifest under :data:`LIVE_KEY`)."""
    import pyarrow.parquet as pq

    path = live_index_path(root, generation)
    return replace_atomic(path, lambda tmp: pq.write_table(table.select(list(COLUMNS)), tmp))


def read_live_index(root: str | Path, manifest: dict | None = None) -> LiveIndex | None:
    """The index the manifest names, or None when the store has none (every row live)."""
    import pyarrow.parquet as pq

    root = Path(root)
    manifest = read_manifest(root) if manifest is None else manifest
    rel = (manifest or {}).get(LIVE_KEY)
    if not rel:
        return None
    path = root / rel
    try:
        table = pq.read_table(path, columns=list(COLUMNS))
    except (OSError, ValueError) as e:  # pyarrow's errors derive from these
        raise StoreError(f"cannot read the live index {path}: {e}. Rerun pipelines/extract.py with the "
                         f"same --out to write it again.") from e
    return LiveIndex(int(manifest.get("generation", 0)), table)


def live_rows(root: str | Path) -> dict[int, np.ndarray] | None:
    """shard -> live row indices for the store under ``root``; None: every row is live."""
    index = read_live_index(root)
    return None if index is None else index.rows_by_shard()
