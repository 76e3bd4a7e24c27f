"""One shard of the store from its products' features: five modality files, then the failure
part that commits it (see :mod:`scalemm.store.failures`).

Called where the features were computed (the model actor), so feature tensors are written
next to the model and never travel to the driver.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scalemm import store


def shard_contents(shard: int, items: list[dict[str, Any]],
                   results: list[tuple[dict[str, np.ndarray], dict[str, str]]], fingerprints: list[str],
                   provs: dict[str, store.Provenance]) -> tuple[dict[str, store.ShardData], list[dict[str, Any]]]:
    """Per modality the shard's rows (``items`` from the decoder, ``results`` from the encoder,
    in row order), and its failure records (one per item x modality)."""
    ids = [it["id"] for it in items]
    labels, insts = [it["label"] for it in items], [it["instance"] for it in items]
    data: dict[str, store.ShardData] = {}
    for m in store.MODALITIES:
        d = store.ShardData.empty(ids, labels, insts, provs[m], with_entities=(m == "table"),
                                  fingerprints=fingerprints)
        for r, (feats, _) in enumerate(results):
            cnt = int(feats.get(f"{m}.count", 0))
            if cnt <= 0:
                continue
            d.tokens[r] = feats[f"{m}.tokens"]
            d.counts[r] = cnt
            d.pooled[r] = feats[f"{m}.pooled"]
            if d.entities is not None and f"{m}.entities" in feats:
                d.entities[r] = feats[f"{m}.entities"]
        data[m] = d
    failures = [{"id": pid, "modality": m, "error": err, "shard": shard}
                for pid, (_, errs) in zip(ids, results) for m, err in sorted(errs.items())]
    return data, failures


def write_modalities(out: str | Path, shard: int, data: dict[str, store.ShardData],
                     provs: dict[str, store.Provenance]) -> int:
    """Write the shard's modality files, each atomically (not yet committed). Returns bytes."""
    return sum(store.write_shard(store.shard_path(out, m, shard), data[m], provs[m], shard) for m in store.MODALITIES)


def commit(out: str | Path, shard: int, failures: list[dict[str, Any]]) -> None:
    """Write the shard's failure part, atomically: from now on the shard counts as done."""
    store.write_failure_part(out, shard, failures)
