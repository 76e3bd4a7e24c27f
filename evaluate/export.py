"""Parquet out: every catalogue product's embedding as one Parquet file, for pandas, Ray Data,
Hugging Face ``datasets`` or DuckDB (``pipelines/export.py``).

The catalogue is an evaluation's output folder ``EVAL`` (:mod:`evaluate.catalogue`): the
first seed's ``scale`` embedding of every product of the store in ``EVAL/catalogue/vectors.npy``
(rows in the order of ``EVAL/index/catalogue/ids.json``), products added later with
``--add-products`` only in the index (their vectors are read back from it), and the run, seed
and width in ``EVAL/metrics.json``. One row per product::

    id         string
    label      string (null where unknown)
    instance   string (null where unknown)
    title      string (null where unknown)
    vector     fixed_size_list<float32, d>: the product embedding (L2-normalized)
    pooled_<m> fixed_size_list<float32, d_m>: with ``pooled``, each store's pooled frozen
               vector as stored (not normalized); null where the product lacks the modality

Labels, instances and pooled vectors come from the feature stores the catalogue was embedded
from (``features``); titles from the corpus their manifest names (:func:`scalemm.corpus.store_corpus`,
streamed), when it is still there. The file's key-value metadata ``scalemm`` holds the
provenance as JSON: the run, its checkpoint and config, the seed, ``embedding_dim``, the
evaluation and the store. The file is written in row batches of about ``BATCH_BYTES``
(``pq.ParquetWriter``: no second copy of the catalogue in memory) and atomically.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from scalemm.atomic import replace_atomic
from scalemm.errors import UserError

from .catalogue import CATALOGUE_DIR, CATALOGUE_INDEX, VECTORS_FILE

log = logging.getLogger(__name__)

META_KEY = b"scalemm"
BATCH_BYTES = 64 << 20  # vector bytes per row batch (and row group)
EXPORT_VERSION = 1


class ExportError(UserError, ValueError):
    """An evaluation folder, a store or a file the export cannot use."""


def catalogue_ids(eval_dir: Path) -> list[str]:
    """The catalogue index's ids (the vectors file's rows, then any products added later)."""
    path = eval_dir / "index" / CATALOGUE_INDEX / "ids.json"
    if not path.is_file():
        raise ExportError(f"{eval_dir} has no catalogue index ({path} missing); pass the --out folder of a "
                          f"finished pipelines/evaluate.py run")
    try:
        ids = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{path} is unreadable ({e}); rebuild the catalogue with pipelines/evaluate.py") from e
    if not isinstance(ids, list) or len(set(map(str, ids))) != len(ids):
        raise ExportError(f"{path} is not a list of distinct product ids; rebuild the catalogue")
    return [str(i) for i in ids]


def catalogue_vectors(eval_dir: Path, n_ids: int) -> np.ndarray:
    """``EVAL/catalogue/vectors.npy`` as a read-only memory map, checked against the ids."""
    path = eval_dir / CATALOGUE_DIR / VECTORS_FILE
    if not path.is_file():
        raise ExportError(f"{eval_dir} has no catalogue vectors ({path} missing); pass the --out folder of a "
                          f"finished pipelines/evaluate.py run")
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ExportError(f"{path} is unreadable ({e}); rerun pipelines/evaluate.py") from e
    if x.ndim != 2 or x.dtype != np.float32 or x.shape[0] > n_ids:
        raise ExportError(f"{path} holds {x.dtype} {x.shape}, not float32 vectors of the index's {n_ids} products; "
                          f"rerun pipelines/evaluate.py")
    return x


def read_rows(vectors: np.memmap, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of the memory-mapped catalogue read with a plain file read, so the
    pages read do not stay in this process's memory (a million products are never held whole)."""
    width = vectors.shape[1] * vectors.dtype.itemsize
    with open(vectors.filename, "rb") as f:
        f.seek(vectors.offset + start * width)
        raw = f.read((stop - start) * width)
    return np.frombuffer(raw, dtype=vectors.dtype).reshape(stop - start, vectors.shape[1])


def added_vectors(eval_dir: Path, start: int, stop: int) -> np.ndarray:
    """The vectors of the products added to the index after the evaluation (rows ``start`` to
    ``stop``), read back from the FAISS index (exact for flat, HNSW and IVF-Flat indexes)."""
    from .index import load_index

    built = load_index(eval_dir / "index" / CATALOGUE_INDEX, use_gpu=False)
    index = built.index
    if built.spec.kind in ("ivf_flat", "ivf_pq"):
        import faiss

        faiss.extract_index_ivf(index).make_direct_map()
        if built.spec.kind == "ivf_pq":
            log.warning("the %d added products' vectors are read back from an IVF-PQ index: approximate",
                        stop - start)
    return np.asarray(index.reconstruct_n(start, stop - start), dtype=np.float32)


def run_provenance(eval_dir: Path) -> dict[str, Any]:
    """Which run, checkpoint, config and seed built the catalogue (from ``EVAL/metrics.json``)."""
    path = eval_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
        run, seed, dim = metrics["runs"]["scale"][0], metrics["seeds"][0], int(metrics["embedding_dim"])
    except FileNotFoundError:
        raise ExportError(f"{path} is missing: the evaluation in {eval_dir} did not finish; rerun "
                          f"pipelines/evaluate.py") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, IndexError, TypeError) as e:
        raise ExportError(f"{path} is unreadable or lacks runs/seeds/embedding_dim ({type(e).__name__}: {e}); "
                          f"rerun pipelines/evaluate.py") from e
    out: dict[str, Any] = {"run": run, "seed": seed, "embedding_dim": dim, "checkpoint": None, "step": None,
                           "config": None, "evaluation": str(eval_dir.resolve()), "index": metrics.get("index")}
    try:
        from safetensors import safe_open

        from scalemm.fuse.embedder import resolve_weights

        weights = resolve_weights(run)
        with safe_open(str(weights), framework="np") as f:
            meta = f.metadata() or {}
        out.update(checkpoint=str(weights), step=int(meta.get("step", -1)), config=json.loads(meta["config"]))
    except Exception as e:  # noqa: BLE001 - a run moved or pruned since: the export goes on without it
        log.warning("the checkpoint of run %s cannot be read (%s); its path and config are left out", run, e)
    return out


def store_rows(features: Path, ids: list[str], pooled: bool) -> Iterator[dict[str, Any]]:
    """Per store shard, in the catalogue's order: ``label``, ``instance`` and, with ``pooled``,
    ``pooled_<m>`` (float32 rows, None where absent) of the next products of ``ids``."""
    from scalemm.store import open_stores

    stores = open_stores(features)
    if not stores:
        raise ExportError(f"no feature store under {features}; pass the --features the catalogue was embedded from")
    first = next(iter(stores.values()))
    if first.n_items != len(ids):
        raise ExportError(f"the stores under {features} hold {first.n_items} products, the catalogue {len(ids)}: "
                          f"pass the --features the evaluation used (a store grown since needs a new evaluation)")
    at = 0
    for k in range(len(first.shards)):
        parts = {m: s.read_index(k, pooled=pooled) for m, s in stores.items()}
        n = len(parts[first.modality].ids)
        want = ids[at:at + n]
        row: dict[str, Any] = {}
        for m, data in parts.items():
            pos = {i: j for j, i in enumerate(data.ids)}
            if len(want) != n or any(i not in pos for i in want):
                raise ExportError(f"the stores under {features} do not hold the catalogue's products in its order "
                                  f"(shard {k} of {m}); pass the --features the evaluation used")
            perm = np.fromiter((pos[i] for i in want), np.int64, n)
            if not row:
                row = {"label": [data.labels[j] or None for j in perm],
                       "instance": [data.instances[j] or None for j in perm]}
            if pooled:
                vec = np.asarray(data.pooled[perm], np.float32)
                row[f"pooled_{m}"] = [v if c > 0 else None for v, c in zip(vec, np.asarray(data.counts)[perm])]
        at += n
        yield row


def corpus_titles(features: Path, ids: list[str]) -> dict[str, str]:
    """id -> title of the catalogue's products, streamed from the corpus of the store (empty
    when that corpus is gone)."""
    from scalemm.corpus import Product, iter_jsonl, store_corpus

    corpus = store_corpus(features)
    if corpus is None:
        log.warning("the corpus of %s is not there any more; titles are left null", features)
        return {}
    wanted, titles = set(ids), {}
    for p in iter_jsonl(corpus):
        if isinstance(p, Product) and p.title and p.id in wanted and p.id not in titles:
            titles[p.id] = p.title
    return titles


def rebatch(parts: Iterator[dict[str, list]], rows: int) -> Iterator[dict[str, list]]:
    """The column pieces of ``parts`` regrouped into batches of ``rows`` rows (the last smaller)."""
    buf: dict[str, list] = {}
    for part in parts:
        for k, v in part.items():
            buf.setdefault(k, []).extend(v)
        while buf and len(next(iter(buf.values()))) >= rows:
            yield {k: v[:rows] for k, v in buf.items()}
            buf = {k: v[rows:] for k, v in buf.items()}
    if buf and len(next(iter(buf.values()))):
        yield buf


def vector_array(rows: np.ndarray | list, width: int) -> "pa.FixedSizeListArray":  # noqa: F821
    """float32 rows (a [n, width] array, or a list of rows and None) as a fixed-size-list array."""
    import pyarrow as pa

    if isinstance(rows, np.ndarray):
        flat = pa.array(np.ascontiguousarray(rows, np.float32).reshape(-1))
        return pa.FixedSizeListArray.from_arrays(flat, width)
    mask = np.array([r is None for r in rows], dtype=bool)
    dense = np.zeros((len(rows), width), np.float32)
    for j, r in enumerate(rows):
        if r is not None:
            dense[j] = r
    flat = pa.array(dense.reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, width, mask=pa.array(mask))


def export_schema(dim: int, pooled_dims: dict[str, int], meta: dict[str, Any]) -> "pa.Schema":  # noqa: F821
    import pyarrow as pa

    fields = [pa.field("id", pa.string(), nullable=False), pa.field("label", pa.string()),
              pa.field("instance", pa.string()), pa.field("title", pa.string()),
              pa.field("vector", pa.list_(pa.float32(), dim), nullable=False)]
    fields += [pa.field(f"pooled_{m}", pa.list_(pa.float32(), d)) for m, d in pooled_dims.items()]
    return pa.schema(fields, metadata={META_KEY: json.dumps(meta, sort_keys=True, default=str).encode()})


def pooled_widths(features: Path) -> dict[str, int]:
    from scalemm.store import open_stores

    return {m: int(s.provenance.pooled_dim) for m, s in open_stores(features).items()}


def export_catalogue(eval_dir: str | Path, out: str | Path, features: str | Path | None = None,
                     pooled: bool = False, batch_rows: int | None = None) -> dict[str, Any]:
    """Write every catalogue product of the evaluation ``eval_dir`` to the Parquet file ``out``
    (see the module doc); ``features``: the stores it was embedded from (labels, instances,
    titles; and with ``pooled`` their pooled frozen vectors). Returns a summary."""
    t0 = time.perf_counter()
    eval_dir, out = Path(eval_dir), Path(out)
    if not eval_dir.is_dir():
        raise ExportError(f"--index {eval_dir} is not a directory; pass the --out folder of pipelines/evaluate.py")
    if eval_dir.name == CATALOGUE_INDEX and eval_dir.parent.name == "index":  # EVAL/index/catalogue given
        eval_dir = eval_dir.parent.parent
    ids = catalogue_ids(eval_dir)
    vectors = catalogue_vectors(eval_dir, len(ids))
    n, dim = vectors.shape
    meta = {"format": "scalemm-catalogue", "version": EXPORT_VERSION, **run_provenance(eval_dir),
            "features": None if features is None else str(Path(features).resolve()), "products": len(ids),
            "added_after_evaluation": len(ids) - n, "vector": "the scale embedding, L2-normalized",
            "pooled": "each store's pooled frozen vector as stored (not normalized)" if pooled else None}
    if meta["embedding_dim"] != dim:
        raise ExportError(f"{eval_dir}: metrics.json says embedding_dim {meta['embedding_dim']}, the catalogue "
                          f"vectors are {dim} wide; rerun pipelines/evaluate.py")
    if pooled and features is None:
        raise ExportError("the pooled vectors come from the feature stores: pass --features FEATS")
    widths = pooled_widths(Path(features)) if pooled else {}
    titles = corpus_titles(Path(features), ids) if features is not None else {}
    rows = batch_rows or max(1, BATCH_BYTES // (4 * (dim + sum(widths.values()))))
    schema = export_schema(dim, widths, meta)
    batches = _batches(eval_dir, ids, vectors, features, widths, titles, rows, schema)
    written = write_parquet(out, schema, batches)
    seconds = time.perf_counter() - t0
    log.info("exported %d products (%d wide) to %s in %.1f s", written, dim, out, seconds)
    return {"out": str(out), "products": written, "embedding_dim": dim, "pooled": sorted(widths),
            "titles": len(titles), "run": meta["run"], "seed": meta["seed"], "rows_per_batch": rows,
            "mb": round(out.stat().st_size / 1e6, 2), "seconds": round(seconds, 2)}


def _batches(eval_dir: Path, ids: list[str], vectors: np.ndarray, features: str | Path | None,
             widths: dict[str, int], titles: dict[str, str], rows: int,
             schema: "pa.Schema") -> Iterator["pa.RecordBatch"]:  # noqa: F821
    """The file's record batches: the stored vectors, then the products added to the index."""
    import pyarrow as pa

    n, dim = vectors.shape
    if features is not None:
        meta = rebatch(store_rows(Path(features), ids[:n], bool(widths)), rows)
    else:
        meta = ({} for _ in range(0, n, rows))
    added = added_vectors(eval_dir, n, len(ids)) if len(ids) > n else None
    for start in [*range(0, n, rows), *range(n, len(ids), rows)]:
        stop = min(start + rows, n if start < n else len(ids))
        x = read_rows(vectors, start, stop) if start < n else added[start - n:stop - n]
        m = next(meta) if start < n else {}
        cols = {"id": pa.array(ids[start:stop], pa.string()),
                "label": pa.array(m.get("label", [None] * (stop - start)), pa.string()),
                "instance": pa.array(m.get("instance", [None] * (stop - start)), pa.string()),
                "title": pa.array([titles.get(i) for i in ids[start:stop]], pa.string()),
                "vector": vector_array(np.asarray(x), dim)}
        for mod, width in widths.items():
            cols[f"pooled_{mod}"] = vector_array(m.get(f"pooled_{mod}", [None] * (stop - start)), width)
        yield pa.RecordBatch.from_pydict(cols, schema=schema)


def write_parquet(path: Path, schema: "pa.Schema", batches: Iterator["pa.RecordBatch"]) -> int:  # noqa: F821
    """The batches as one Parquet file at ``path``, each a row group, written atomically; the rows written."""
    import pyarrow.parquet as pq

    written = [0]

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(str(tmp), schema) as w:
            for b in batches:
                w.write_batch(b, row_group_size=b.num_rows)
                written[0] += b.num_rows

    replace_atomic(path, write)
    return written[0]
