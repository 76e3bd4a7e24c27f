"""A few products featurized in this process, as the extraction job would: no Ray, no store.

The same pieces as the job, called in order: :func:`scalemm.extract.decoding.decode_product`
(the decoders, native ones in their child process), :class:`scalemm.extract.encode.Backbones`
(the frozen backbones, fixed-shape batches, so a product's features do not depend on what
else is encoded with it) and :func:`scalemm.extract.shard.shard_contents` (the rows exactly as
a shard holds them). What comes back is per modality a :class:`scalemm.store.ShardData`:
float16 ``tokens [N, max_tokens, dim]``, ``counts`` (0: absent or failed), ``pooled`` and the
table's ``entities``, and the products' failures (id, modality, error), as the store keeps them.

Media are files anywhere (a query's upload, a supplier's photo): each path is resolved as it
is given, through the same checks as a corpus path (a file, not empty, not too large).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from scalemm import store
from scalemm.corpus import Product
from scalemm.extract.config import ExtractConfig
from scalemm.extract.decoding import decode_product
from scalemm.extract.encode import Backbones
from scalemm.extract.job import provenances
from scalemm.extract.shard import shard_contents
from scalemm.extract.version import feature_code_version

FILE_ROOT = "/"  # media paths of a single product are absolute (or relative to the working folder)


def product(pid: str = "query", title: str | None = None, table: Sequence[tuple[str, str]] | None = None,
            image: str | Path | None = None, video: str | Path | None = None,
            audio: str | Path | None = None, label: str = "") -> Product:
    """A corpus :class:`~scalemm.corpus.Product` from loose media files (any may be None)."""
    def path(p: str | Path | None) -> str | None:
        return None if p is None else str(Path(p).expanduser().resolve())

    return Product(id=pid, label=label, title=title or None, table=[tuple(kv) for kv in table] if table else None,
                   image=path(image), video=path(video), audio=path(audio))


class SingleExtractor:
    """The backbones of an extraction config, loaded once, for products given one by one."""

    def __init__(self, cfg: ExtractConfig, device: str | None = None) -> None:
        self.cfg = cfg
        self.backbones = Backbones(cfg, device)
        self.infos = self.backbones.infos()
        # the provenance a store extracted now would record (no corpus: an empty fingerprint)
        self.provenance: dict[str, store.Provenance] = provenances(self.infos, "", feature_code_version())

    def rows(self, products: Sequence[Product],
             media_root: str | Path = FILE_ROOT) -> tuple[dict[str, store.ShardData], list[dict[str, Any]]]:
        """Per modality the products' rows (in order) and their failures (one per product x
        failed modality, as ``failures.jsonl`` has them)."""
        items = [decode_product(p, str(media_root), self.cfg) for p in products]
        results = self.backbones.encode_rows(items)
        data, failures = shard_contents(0, items, results, [""] * len(items), self.provenance)
        for f in failures:
            f.pop("shard", None)
        return data, failures
