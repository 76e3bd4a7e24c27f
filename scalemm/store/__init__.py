"""The feature-store contract, shared by every stage: the writer in ``extract/`` and the
readers in ``fuse/`` and ``evaluate/`` all go through this package; nothing else knows
dataset names, dtypes or file layout.

    format      one shard of one modality: datasets, dtypes, paths, read / write
    provenance  what produced a store; the fields that must agree to join stores
    stores      the shards of a modality opened together; the join check
    manifest    the job-level manifest.json
    live        the live index: which rows of which shards a growing catalogue's readers see
    failures    per-shard failure parts (they commit shards) and failures.jsonl

``from scalemm import store`` gives the whole public API under one name.
"""

from scalemm.errors import StoreError
from scalemm.modalities import MODALITIES
from scalemm.store.failures import (FAILURE_PARTS, FAILURES, committed_shards, failure_part_path,
                                    merge_failures, read_failures, write_failure_part)
from scalemm.store.format import (ShardData, concat_shards, list_shards, read_provenance, read_shard,
                                  read_shard_index, shard_name, shard_path, write_shard)
from scalemm.store.live import (LIVE_KEY, LiveIndex, live_index_path, live_rows, make_live_table,
                                read_live_index, write_live_index)
from scalemm.store.manifest import MANIFEST, read_manifest, write_manifest
from scalemm.store.provenance import (JOIN_FIELDS, SCHEMA_VERSION, STORE_FIELDS, Provenance, file_fingerprint,
                                      sources_version)
from scalemm.store.stores import ModalityStore, check_join, open_modality, open_stores

__all__ = [
    "FAILURES", "FAILURE_PARTS", "JOIN_FIELDS", "LIVE_KEY", "MANIFEST", "MODALITIES", "SCHEMA_VERSION",
    "STORE_FIELDS", "LiveIndex", "ModalityStore", "Provenance", "ShardData", "StoreError", "check_join",
    "committed_shards", "concat_shards", "failure_part_path", "file_fingerprint", "list_shards",
    "live_index_path", "live_rows", "make_live_table", "merge_failures", "open_modality", "open_stores",
    "read_failures", "read_live_index", "read_manifest", "read_provenance", "read_shard", "read_shard_index",
    "shard_name", "shard_path", "sources_version", "write_failure_part", "write_live_index",
    "write_manifest", "write_shard",
]
