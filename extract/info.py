"""A JSON summary of a feature directory (what ``pipelines/store_info.py`` prints)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scalemm import store


def present_count(modality: store.ModalityStore) -> int:
    """Live items whose modality was extracted (count > 0)."""
    return sum(int(np.count_nonzero(modality.read_index(k).counts)) for k in range(len(modality.shards)))


def store_info(root: str | Path) -> dict[str, Any]:
    root = Path(root)
    manifest = store.read_manifest(root)
    if manifest is None:
        raise store.StoreError(f"{root} is not a feature directory (no {store.MANIFEST}); run pipelines/extract.py")
    stores = store.open_stores(root)
    failures = store.read_failures(root)
    fail_path = root / store.FAILURES
    n_fail = sum(1 for line in fail_path.read_text().splitlines() if line.strip()) if fail_path.exists() \
        else len(failures)
    first = next(iter(stores.values()))
    mods: dict[str, Any] = {}
    for m, s in stores.items():
        prov = s.provenance
        mods[m] = {"present": present_count(s), "failed": sum(1 for f in failures if f["modality"] == m),
                   "dim": prov.dim, "pooled_dim": prov.pooled_dim, "max_tokens": prov.max_tokens,
                   "backbone": prov.backbone, "pretrained": prov.pretrained, "weights_hash": prov.weights_hash,
                   "shards": len(s.shards), "mb": round(s.nbytes / 1e6, 2)}
    last = manifest.get("last_job", {})
    return {"items": first.n_items, "expected_items": manifest.get("n_items"), "failures": n_fail,
            "shards": len(first.shards), "generation": manifest.get("generation", 0),
            # what the latest extraction changed: products added, extracted again (their older
            # copy superseded) and removed from the corpus (no longer read)
            "added": last.get("new"), "changed": last.get("changed"), "removed": last.get("removed"),
            "corpus_fingerprint": str(manifest.get("corpus_fingerprint", first.provenance.corpus_fingerprint))[:16],
            "code_version": first.provenance.code_version, "modalities": mods}
