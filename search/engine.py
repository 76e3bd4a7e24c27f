"""Searching a catalogue index: the neighbours of a catalogue product, or of a new product's media.

A catalogue is an evaluation's output folder ``EVAL`` (or its ``EVAL/index/catalogue``): the
FAISS index and its ids, the vectors (``EVAL/catalogue/vectors.npy``; products added later are
read back from the index, :mod:`evaluate.export`), and the record of the run, seed, checkpoint
and store that built them (:func:`evaluate.catalogue.read_catalogue_record`). A
:class:`Searcher` takes only the checkpoint that built the vectors
(:func:`evaluate.catalogue.check_checkpoint`). A new product's media go through the store's
own extraction config and backbones in this process (:mod:`extract.single`), then the model
(:mod:`search.query`); any subset of modalities works. Titles, labels and pictures come from
the corpus the store was extracted from (``evaluate.run.product_info``).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from scalemm.corpus import Product
from scalemm.errors import UserError
from scalemm.evaluate.catalogue import CATALOGUE_INDEX, CatalogueRunError, check_checkpoint, read_catalogue_record
from scalemm.evaluate.index import IDS_FILE, INDEX_FILE

from .query import QueryModel

log = logging.getLogger(__name__)


class QueryError(UserError, ValueError):
    """A query the catalogue cannot answer: an unknown id, or media none of which could be used."""


@dataclass
class Hit:
    rank: int
    id: str
    title: str
    label: str
    score: float
    image: str | None = None  # absolute path of the product's picture, when it is there

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def locate(path: str | Path) -> tuple[Path, Path]:
    """(``EVAL``, ``EVAL/index/catalogue``) of an evaluation folder or of its catalogue index."""
    p = Path(path)
    for eval_dir, index_dir in ((p, p / "index" / CATALOGUE_INDEX), (p.parent.parent, p)):
        if (index_dir / INDEX_FILE).is_file() and (index_dir / IDS_FILE).is_file():
            return eval_dir, index_dir
    raise CatalogueRunError(f"no catalogue index under {p} ({p / 'index' / CATALOGUE_INDEX / INDEX_FILE} "
                            f"missing); pass the --out folder of a finished pipelines/evaluate.py run")


class Catalogue:
    """A catalogue index opened for search: ids, vectors, record, and each product's title,
    label and picture."""

    def __init__(self, path: str | Path) -> None:
        from scalemm.evaluate.index import load_index

        self.eval_dir, self.index_dir = locate(path)
        self.record = read_catalogue_record(self.index_dir)
        self.index = load_index(self.index_dir, use_gpu=False)
        self.ids = self.index.ids
        self.row = {pid: i for i, pid in enumerate(self.ids)}
        root = self.record.get("media_root")
        self.media_root = Path(root).resolve() if root else None
        self.info = self._product_info()

    def _product_info(self) -> dict[str, dict[str, Any]]:
        from scalemm.evaluate.run import product_info

        info: dict[str, dict[str, Any]] = {}
        stores = [self.record.get("features") or ""] + list(self.record.get("added_features") or [])
        for i, store in enumerate(stores):  # the catalogue's store, then those of products added since
            features = Path(store)
            if not features.is_dir():
                log.warning("the store %s is gone: results show ids only for its products", features)
                continue
            info.update({pid: v for pid, v in product_info(features, self.media_root if i == 0 else None).items()
                         if pid not in info})
        return info

    def vector(self, pid: str) -> np.ndarray:
        """float32 [d]: the catalogue's vector of product ``pid``."""
        from scalemm.evaluate.export import added_vectors, catalogue_vectors, read_rows

        row = self.row.get(pid)
        if row is None:
            raise QueryError(f"product {pid!r} is not in the catalogue {self.index_dir} ({len(self.ids)} products)")
        vectors = catalogue_vectors(self.eval_dir, len(self.ids))
        if row < vectors.shape[0]:
            return np.array(read_rows(vectors, row, row + 1)[0])
        return added_vectors(self.eval_dir, row, row + 1)[0]

    def hits(self, vectors: np.ndarray, k: int, exclude: Sequence[str | None] | None = None) -> list[list[Hit]]:
        """The top ``k`` of each query vector (rows of ``vectors``), without the product of the
        same row of ``exclude`` (a catalogue product is not its own neighbour)."""
        from scalemm.evaluate.index import search

        if k < 1:
            raise QueryError(f"k must be >= 1, got {k}")
        kk = min(k + (1 if exclude else 0), len(self.ids))
        scores, rows = search(self.index, np.asarray(vectors, np.float32).reshape(len(vectors), -1), kk)
        out = []
        for q in range(len(rows)):
            skip = exclude[q] if exclude else None
            found: list[Hit] = []
            for s, r in zip(scores[q], rows[q]):
                if r < 0 or self.ids[r] == skip or len(found) == k:
                    continue
                pid = self.ids[r]
                info = self.info.get(pid, {})
                found.append(Hit(len(found) + 1, pid, info.get("title") or "", info.get("label") or "", float(s),
                                 info.get("image")))
            out.append(found)
        return out


class Searcher:
    """A catalogue and the checkpoint that built it; the backbones load on the first media query."""

    def __init__(self, index: str | Path, checkpoint: str | Path, device: str = "cpu") -> None:
        self.catalogue = Catalogue(index)
        weights = check_checkpoint(self.catalogue.record, checkpoint)
        self.model = QueryModel(weights, device)
        self.device = device
        self._extractor: Any = None

    @property
    def extractor(self) -> Any:
        """The store's backbones (:class:`extract.single.SingleExtractor`), checked against the model's."""
        if self._extractor is None:
            from scalemm.extract.config import ExtractConfig
            from scalemm.extract.single import SingleExtractor
            from scalemm.store import read_manifest

            rec = self.catalogue.record
            cfg = rec.get("extract_config") or (read_manifest(rec.get("features") or ".") or {}).get("config")
            if not cfg:
                raise CatalogueRunError(f"the catalogue {self.catalogue.index_dir} does not record the extraction "
                                        f"config of its store, and the store {rec.get('features')} is gone; "
                                        f"rerun pipelines/evaluate.py on the store")
            fields = {f.name for f in dataclasses.fields(ExtractConfig)}
            extractor = SingleExtractor(ExtractConfig(**{k: v for k, v in cfg.items() if k in fields}).validate(),
                                        str(self.model.device))
            self.model.check_rows(extractor.provenance, where="the query's features (the store's backbones, "
                                                              "loaded now)")
            self._extractor = extractor
        return self._extractor

    def by_id(self, pid: str, k: int = 10) -> list[Hit]:
        """The ``k`` nearest other products of catalogue product ``pid``."""
        return self.catalogue.hits(self.catalogue.vector(pid)[None], k, exclude=[pid])[0]

    def embed_products(self, products: Sequence[Product]) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """The embeddings of new products' media (float32 [N, d]) and their failures (id,
        modality, error). A product none of whose media could be used is a :class:`QueryError`."""
        rows, failures = self.extractor.rows(products)
        counts = np.stack([rows[m].counts for m in self.model.modalities if m in rows], 1)
        for i, p in enumerate(products):
            if not (counts[i] > 0).any():
                why = "; ".join(f"{f['modality']}: {f['error']}" for f in failures if f["id"] == p.id)
                raise QueryError(f"nothing of the query {p.id!r} could be used ({why or 'no media, no title'}); "
                                 f"give a decodable picture, a title, or other media")
        return self.model.embed(rows), failures

    def by_media(self, products: Sequence[Product], k: int = 10) -> tuple[list[list[Hit]], list[dict[str, Any]]]:
        """The ``k`` nearest catalogue products of each new product (any subset of modalities),
        and the media that could not be used."""
        vectors, failures = self.embed_products(products)
        return self.catalogue.hits(vectors, k), failures


def parse_table_args(pairs: Sequence[str]) -> list[tuple[str, str]]:
    """``["brand=Acme", "colour=red"]`` -> ``[("brand", "Acme"), ("colour", "red")]``."""
    out = []
    for kv in pairs:
        k, sep, v = kv.partition("=")
        if not sep or not k.strip():
            raise QueryError(f"--table takes key=value, not {kv!r}")
        out.append((k.strip(), v.strip()))
    return out


def format_table(hits: Sequence[Hit], width: int = 48) -> str:
    """The hits as a plain text table: rank, id, title, label, score."""
    def cut(s: str, n: int) -> str:
        s = " ".join(s.split())
        return s if len(s) <= n else s[:n - 1] + "…"

    idw = max([2, *(len(h.id) for h in hits)])
    lw = max([5, *(len(cut(h.label, 24)) for h in hits)])
    lines = [f"{'rank':>4}  {'id':<{idw}}  {'title':<{width}}  {'label':<{lw}}  score"]
    for h in hits:
        lines.append(f"{h.rank:>4}  {h.id:<{idw}}  {cut(h.title, width):<{width}}  {cut(h.label, 24):<{lw}}  "
                     f"{h.score:.4f}")
    return "\n".join(lines)
