"""The catalogue: every product's SCALE embedding, written in chunks, and its FAISS index.

The evaluation scores methods on a split; the catalogue is what a search service would serve:
the ``scale`` embedding of every product of the store (all splits), written to
``EVAL/catalogue/vectors.npy`` batch by batch while the model embeds the store
(:class:`VectorFileWriter`: plain writes into a ``.npy`` whose header is written first, so no
memory holds the whole catalogue and a killed run leaves no half file), and indexed into
``EVAL/index/catalogue/`` (:func:`build_catalogue_index`): the index kind chosen by size and
memory budget (:func:`evaluate.index.choose_index`, approximate: HNSW, or IVF-Flat / IVF-PQ
when HNSW does not fit), trained on a sample, filled from the memory-mapped file in batches,
tuned, and its recall@10 against exact search measured on queries it was not tuned on. That
recall is ``metrics.json``'s ``index.ann_recall@10``. New products are added to it later with
:func:`evaluate.index.add_to_index` (``pipelines/evaluate.py --out EVAL --add-products EMB``).

Beside the index, ``provenance.json`` records what built its vectors (:func:`catalogue_record`):
the run, its seed, the checkpoint's step and the sha256 of its weights file, the store (its
folder, media root, extraction config and backbones). Search embeds queries only with that
checkpoint (:func:`check_checkpoint`), and a query's media through those backbones.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import numpy as np

from scalemm.atomic import replace_atomic, write_json_atomic

from .index import IndexFileError, ann_recall_at_k, build_index, exact_search, save_index, search

log = logging.getLogger(__name__)

CATALOGUE_DIR, VECTORS_FILE, CATALOGUE_INDEX = "catalogue", "vectors.npy", "catalogue"
INDEX_DIR = "index"  # OUT/index/<method>: the FAISS indexes of an evaluation (OUT/index/catalogue: every product)
RECORD_FILE, RECORD_FORMAT = "provenance.json", "scale-catalogue-1"
T = TypeVar("T")


class VectorFileWriter:
    """A float32 [n, d] ``.npy`` file filled by successive row chunks (``writer(chunk)``)."""

    def __init__(self, fh: Any, n: int, d: int) -> None:
        self.fh, self.n, self.d, self.rows = fh, int(n), int(d), 0
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (self.n, self.d)})

    def __call__(self, chunk: np.ndarray) -> None:
        x = np.ascontiguousarray(chunk, dtype="<f4")
        if x.ndim != 2 or x.shape[1] != self.d or self.rows + x.shape[0] > self.n:
            raise ValueError(f"chunk of shape {x.shape} does not fit a [{self.n}, {self.d}] file at row {self.rows}")
        self.fh.write(x.tobytes())
        self.rows += x.shape[0]


def write_vectors(path: str | Path, n: int, d: int, fill: Callable[[VectorFileWriter], T]) -> T:
    """Write ``path`` atomically by ``fill(writer)`` (which must write all ``n`` rows); returns
    what ``fill`` returns."""
    result: list[T] = []

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            w = VectorFileWriter(fh, n, d)
            result.append(fill(w))
            if w.rows != n:
                raise ValueError(f"{w.rows} rows written to {path}, expected {n}")

    replace_atomic(path, write)
    return result[0]


def index_catalogue(vectors: np.ndarray, ids: list[str], out_dir: str | Path | None = None, *,
                    memory_budget_bytes: int | None = None, seed: int = 0, k: int = 10,
                    n_queries: int = 1000) -> dict[str, Any]:
    """Build and tune the approximate index :func:`~evaluate.index.choose_index` picks for these
    vectors (approximate even when they are few enough for exact search; ``vectors`` may be a
    memory map, read in batches), save it into ``out_dir`` (when given), and measure its
    recall@``k`` against exact search on ``n_queries`` of the vectors drawn with ``seed + 1``
    (not those it was tuned on).

    Returns ``{"type", "ann_recall@10", ...}`` with the factory string, the search parameters,
    the vectors, the build seconds and the number of recall queries."""
    n = vectors.shape[0]
    t0 = time.perf_counter()
    built = build_index(vectors, ids, memory_budget_bytes=memory_budget_bytes, force_approximate=True, seed=seed)
    build_s = time.perf_counter() - t0
    if out_dir is not None:
        save_index(built, out_dir)
    rng = np.random.default_rng(seed + 1)  # other queries than the ones used for tuning
    q = np.asarray(vectors[rng.choice(n, size=min(n_queries, n), replace=False)], dtype=np.float32)
    kk = min(k, n)
    ex_s, ex_i = exact_search(vectors, q, kk)
    ap_s, ap_i = search(built, q, kk)
    recall = ann_recall_at_k(ap_i, ex_i, kk, approx_scores=ap_s, exact_scores=ex_s)
    log.info("index %s (%s) over %d vectors: recall@%d vs exact %.4f, built in %.1f s",
             built.spec.kind, built.spec.factory_string, n, k, recall, build_s)
    params = {p: v for p, v in built.spec.params.items() if p != "estimated_bytes"}
    return {"type": built.spec.kind, f"ann_recall@{k}": recall, "factory": built.spec.factory_string,
            "params": params, "estimated_gb": round(built.spec.params.get("estimated_bytes", 0) / (1 << 30), 3),
            "vectors": int(n), "recall_queries": int(len(q)), "build_s": round(build_s, 1)}


def build_catalogue_index(vectors_path: str | Path, ids: list[str], out_dir: str | Path, *,
                          memory_budget_bytes: int | None = None, seed: int = 0,
                          record: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`index_catalogue` of the catalogue file ``vectors_path`` (a ``.npy`` read through a
    memory map), saved into ``out_dir``, with ``record`` (:func:`catalogue_record`) beside it."""
    res = index_catalogue(np.load(vectors_path, mmap_mode="r", allow_pickle=False), ids, out_dir,
                          memory_budget_bytes=memory_budget_bytes, seed=seed)
    if record is not None:
        write_json_atomic(Path(out_dir) / RECORD_FILE, record)
    return {**res, "file_gb": round(os.path.getsize(vectors_path) / 1e9, 3), "path": str(out_dir)}


# ----------------------------------------------------------------------------- provenance


class CatalogueRunError(IndexFileError):
    """A checkpoint that did not build the catalogue's vectors, or a catalogue that does not say which did."""


def catalogue_from_run(embedder: Any, run: str | Path, features: str | Path, out: str | Path, *,
                       media_root: str | Path | None = None, memory_budget_bytes: int | None = None,
                       batch_size: int = 256, progress: bool = False) -> dict[str, Any]:
    """Every product of the store ``features`` embedded by ``embedder`` (a
    :class:`fuse.embedder.Embedder` of ``run``) into ``out/catalogue/vectors.npy``, chunk by chunk
    (nothing held in memory), and indexed into ``out/index/catalogue`` with its record: the same
    catalogue an evaluation builds, for search (``pipelines/search.py``, ``pipelines/serve.py``)."""
    out = Path(out)
    ds, loader = embedder.open(features, batch_size=batch_size, progress=progress)
    path = out / CATALOGUE_DIR / VECTORS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_vectors(path, len(ds), embedder.dim, lambda w: embedder.embed(
        loader, progress=progress, rows=np.empty(0, dtype=np.int64), writers={"scale": w}))
    record = catalogue_record(run, embedder.weights, embedder.config.seed, features, media_root)
    return build_catalogue_index(path, list(ds.ids), out / INDEX_DIR / CATALOGUE_INDEX,
                                 memory_budget_bytes=memory_budget_bytes, seed=embedder.config.seed, record=record)


def weights_digest(path: str | Path) -> str:
    """sha256 of a checkpoint's weights file, hex."""
    from scalemm.store import file_fingerprint

    return file_fingerprint(path)


def catalogue_record(run: str | Path, weights: str | Path, seed: int, features: str | Path,
                     media_root: str | Path | None = None) -> dict[str, Any]:
    """What built a catalogue's vectors: the run (directory), its ``seed``, the checkpoint file
    ``weights`` (its step and sha256), and the store ``features`` it embedded (its folder, the
    media root, the extraction config and backbones from its manifest): the queries of a search
    go through the same backbones and the same model."""
    from safetensors import safe_open

    from scalemm.fuse.model import EMBEDDING_RULE
    from scalemm.store import read_manifest

    weights = Path(weights).resolve()
    with safe_open(str(weights), framework="np") as f:
        step = int((f.metadata() or {}).get("step", -1))
    man = read_manifest(features) or {}
    root = media_root or man.get("media_root") or (Path(man["corpus"]).parent if man.get("corpus") else None)
    return {"format": RECORD_FORMAT, "run": str(Path(run).resolve()), "seed": int(seed), "weights": str(weights),
            "step": step, "weights_sha256": weights_digest(weights), "embedding_rule": EMBEDDING_RULE,
            "features": str(Path(features).resolve()),
            "media_root": None if root is None else str(Path(root).resolve()),
            "extract_config": man.get("config"), "backbones": man.get("backbones")}


def read_catalogue_record(index_dir: str | Path) -> dict[str, Any]:
    """The record beside a catalogue index (:func:`catalogue_record`); raises
    :class:`CatalogueRunError` when there is none or it cannot be read."""
    path = Path(index_dir) / RECORD_FILE
    if not path.is_file():
        raise CatalogueRunError(f"{path} is missing: the catalogue index does not say which run built it "
                                f"(built before this version?); rerun pipelines/evaluate.py to rebuild it")
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
        if rec.get("format") != RECORD_FORMAT or not rec.get("weights_sha256"):
            raise ValueError(f"format {rec.get('format')!r}, expected {RECORD_FORMAT!r}")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as e:
        raise CatalogueRunError(f"{path} is unreadable ({e}); rerun pipelines/evaluate.py to rebuild the "
                                f"catalogue index") from None
    return rec


def check_checkpoint(record: dict[str, Any], checkpoint: str | Path) -> Path:
    """The weights file of ``checkpoint`` (a run directory, a folder of ``seed-*/`` runs, or a
    ``.safetensors``) that built the catalogue of ``record``, checked by sha256; raises
    :class:`CatalogueRunError` (one line) for another run's, another seed's or another step's.

    A run directory resumed after the evaluation is fine: its checkpoint of the recorded step is
    used while it is kept."""
    from scalemm.fuse.embedder import resolve_weights
    from scalemm.fuse.model import EMBEDDING_RULE
    from scalemm.runs import CHECKPOINTS

    check_rule(record, EMBEDDING_RULE, "this version of the code embeds")
    p = Path(checkpoint)
    seeds = p / f"seed-{record['seed']}"
    if p.is_dir() and not (p / CHECKPOINTS).is_dir() and (seeds / CHECKPOINTS).is_dir():
        p = seeds  # a folder of seed-*/ runs, as pipelines/evaluate.py takes: the catalogue's seed
    candidates = [resolve_weights(p)]
    if p.is_dir():
        candidates.append(p / CHECKPOINTS / Path(record["weights"]).name)
    for w in candidates:
        if w.is_file() and weights_digest(w) == record["weights_sha256"]:
            return w
    raise CatalogueRunError(
        f"the catalogue was built by run {record['run']} (seed {record['seed']}, step {record['step']}), not by "
        f"{candidates[0]}; pass that run's --checkpoint, or evaluate this run to build its own catalogue")


def check_added(index_dir: str | Path, embeddings: str | Path,
                arrays: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Refuse to add to the catalogue index in ``index_dir`` the products of an embeddings file
    that another checkpoint than the catalogue's embedded (its ``weights_sha256`` array, the
    sha256 of the weights file that embedded it: :func:`weights_digest`; a file without one is
    refused too). ``arrays``: the file's content when already read. Returns the catalogue's record."""
    from scalemm.embedfile import load_embeddings

    record = read_catalogue_record(index_dir)
    arrays = load_embeddings(embeddings) if arrays is None else arrays
    digest = str(arrays["weights_sha256"]) if "weights_sha256" in arrays else None
    if digest != record["weights_sha256"]:
        raise CatalogueRunError(
            f"{embeddings} was embedded by {'an unrecorded checkpoint' if not digest else 'another checkpoint'}, "
            f"not by the catalogue's (run {record['run']}, seed {record['seed']}, step {record['step']}); "
            f"embed the new products with that run")
    check_rule(record, int(arrays["embedding_rule"]) if "embedding_rule" in arrays else 1, f"{embeddings} was embedded")
    return record


def check_rule(record: Mapping[str, Any], rule: int, what: str) -> None:
    """Refuse vectors embedded under another embedding rule than the catalogue's
    (:data:`fuse.model.EMBEDDING_RULE`; a record or file without one: rule 1), with one line."""
    built = int(record.get("embedding_rule", 1))
    if rule != built:
        raise CatalogueRunError(
            f"the catalogue's vectors were embedded under embedding rule {built}, and {what} under rule {rule}: "
            f"the same checkpoint gives other vectors; rebuild the catalogue with pipelines/evaluate.py")


def record_added_store(index_dir: str | Path, embeddings: str | Path,
                       arrays: Mapping[str, np.ndarray] | None = None) -> list[str]:
    """Note in the catalogue's record the store that the added products of ``embeddings`` were
    embedded from (the file's ``features``, when it names one), so that search shows their titles
    and pictures as it does the catalogue's own. ``arrays``: the file's content when already
    read. Returns the record's ``added_features``."""
    from scalemm.embedfile import load_embeddings

    record = read_catalogue_record(index_dir)
    added = list(record.get("added_features") or [])
    arrays = load_embeddings(embeddings) if arrays is None else arrays
    store = str(arrays["features"]) if "features" in arrays else ""
    if store and store != record.get("features") and store not in added:
        added.append(store)
        write_json_atomic(Path(index_dir) / RECORD_FILE, {**record, "added_features": added})
    return added
