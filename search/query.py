"""The one place a search embeds: store-shaped rows of query products -> their product embeddings.

The rows are what :class:`scalemm.extract.single.SingleExtractor` returns (per modality a
:class:`scalemm.store.ShardData`, as a store shard holds them); they are batched as the
store reader batches a store's rows (float32 tokens, the valid-token mask from the counts, the
presence flag, the table's entities) and go through :class:`fuse.embedder.Embedder`, the one
way to embed (the checkpoint's embedding settings, as the catalogue's vectors were embedded).
Every other module of the search calls :class:`QueryModel` only.
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
        from scalemm.fuse.embedder import Embedder

        self.embedder = Embedder.from_run(weights, device)
        self.model = self.embedder.model
        self.device = self.embedder.device
        self.provenance: dict[str, Provenance] = self.embedder.provenance
        self.weights: Path = Path(self.embedder.weights)
        self.modalities: list[str] = self.embedder.modalities
        self.dim = self.embedder.dim

    def check_rows(self, provenance: Mapping[str, Provenance], where: str) -> None:
        """Refuse features of other backbones than the model's stores (as embedding a store does):
        ``where`` names what the features are."""
        self.embedder.check_stores(where, provenance)

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

    def embed(self, rows: Mapping[str, ShardData]) -> np.ndarray:
        """float32 [N, dim]: the products' embeddings (L2-normalized; zero for a product with
        no modality present)."""
        return np.asarray(self.embedder.embed_batch(self.batch(rows)), dtype=np.float32)
