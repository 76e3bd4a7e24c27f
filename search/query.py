"""The one place a search embeds: store-shaped rows of query products -> their product embeddings.

The rows are what :class:`scalemm.extract.single.SingleExtractor` returns (per modality a
:class:`scalemm.store.ShardData`, as a store shard holds them); they are batched as the
store reader batches a store's rows (float32 tokens, the valid-token mask from the counts, the
presence flag, the table's entities) and go through the trained model's configured product
embedding, as the catalogue's vectors did. Every other module of the search calls
:class:`QueryModel` only, so that the embedding seam can change here alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from scalemm.store import Provenance, ShardData


class QueryModel:
    """A trained checkpoint (a ``.safetensors`` file or a run directory), loaded once."""

    def __init__(self, weights: str | Path, device: str = "cpu") -> None:
        from scalemm.device import resolve_device
        from scalemm.fuse.embed import load_model

        self.device = resolve_device(device)
        self.model, info = load_model(weights, self.device)
        self.provenance: dict[str, Provenance] = info["provenance"]
        self.weights: Path = Path(info["weights"])
        self.modalities: list[str] = list(self.model.modalities)
        self.dim = int(self.model.embedding_dim)

    def check_rows(self, provenance: Mapping[str, Provenance], where: str) -> None:
        """Refuse features of other backbones than the model's stores (as embedding a store does)."""
        from scalemm.fuse.checkpoint import EMBED_FIELDS, check_provenance

        check_provenance(self.provenance, {m: p for m, p in provenance.items() if m in self.modalities},
                         EMBED_FIELDS, where=where)

    def batch(self, rows: Mapping[str, ShardData]) -> dict[str, Any]:
        """The model's input batch of ``rows`` (every row set holds the same products in order)."""
        first = next(iter(rows.values()))
        n = len(first.ids)
        out: dict[str, Any] = {"index": torch.arange(n), "ids": list(first.ids), "labels": list(first.labels),
                               "instances": list(first.instances), "tokens": {}, "mask": {}, "present": {},
                               "entities": {}}
        for m in self.modalities:
            T, D = self.model.shapes[m]
            d = rows.get(m)
            tok = torch.zeros(n, T, D) if d is None else torch.from_numpy(np.asarray(d.tokens)).float()
            cnt = torch.zeros(n, dtype=torch.int32) if d is None else torch.from_numpy(np.asarray(d.counts))
            out["tokens"][m] = tok
            out["mask"][m] = torch.arange(T)[None, :] < cnt[:, None]
            out["present"][m] = cnt > 0
            if m == "table":
                ent = np.full((n, T), -1) if d is None or d.entities is None else d.entities
                out["entities"][m] = torch.from_numpy(np.asarray(ent, dtype=np.int64))
        return out

    @torch.no_grad()
    def embed(self, rows: Mapping[str, ShardData]) -> np.ndarray:
        """float32 [N, dim]: the products' embeddings (L2-normalized; zero for a product with
        no modality present)."""
        from scalemm.device import to_device
        from scalemm.fuse.model import product_embedding

        dev = self.device
        batch = to_device(self.batch(rows), dev)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            out = self.model(batch)
            vec = product_embedding(out, self.model.embedding)
        return vec.float().cpu().numpy().astype(np.float32)
