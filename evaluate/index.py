"""FAISS indexing of product embeddings (inner product on L2-normalized vectors).

The index kind is chosen from the gallery size and an optional memory budget
(:func:`choose_index`, returning a testable :class:`IndexSpec`):

* fewer than ``exact_threshold`` vectors (default 20,000): exact ``IndexFlatIP``;
* above it: HNSW when its graph fits the budget (or there is no budget), else IVF-Flat
  when the full vectors fit, else IVF-PQ with as many sub-quantizers as fit.

:func:`build_index` trains and fills it (through faiss's GPU API when a GPU is visible,
except HNSW which faiss only has on CPU; the result is cloned back to CPU for saving) and
tunes ``efSearch`` / ``nprobe`` on a sample of the gallery until recall@10 against exact
search reaches a target (0.95). A catalogue of millions is never copied whole: the gallery
may be a memory-mapped file, an IVF index trains on a sample of it, the vectors are added in
batches and exact search (the reference for the recall) runs over chunks of it.
:func:`save_index` writes the index (``faiss.write_index``), its id map (JSON) and its spec
(JSON); :func:`load_index` reads them back, :func:`add_to_index` adds new products to a saved
index without rebuilding it, and :func:`rebuild_index` rebuilds everything from a saved
embeddings ``.npz`` alone.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from scalemm.atomic import replace_atomic, write_json_atomic, write_text_atomic
from scalemm.errors import UserError


class MissingFaiss(UserError, ImportError):
    """No FAISS wheel is installed."""


try:
    import faiss
except ImportError as e:  # neither extra was installed
    raise MissingFaiss("FAISS is not installed: pip install 'scale-pipeline[cpu]' (faiss-cpu) or "
                       "'scale-pipeline[gpu]' (faiss-gpu-cu12), one of the two") from e

log = logging.getLogger(__name__)

EXACT_THRESHOLD = 20_000
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
TARGET_RECALL = 0.95
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.json"
SPEC_FILE = "spec.json"
KINDS = ("flat", "hnsw", "ivf_flat", "ivf_pq")
_SEARCH_BATCH = 8192
_EF_GRID = (16, 32, 64, 128, 256, 512, 1024, 2048)
_ID_BYTES = 8  # faiss idx_t stored per vector by IVF lists
_PQ_M_MAX = 64
_EXACT_CHUNK = 1 << 18  # gallery rows per chunk of a chunked exact search
TRAIN_POINTS_PER_LIST = 64  # IVF training sample: at most this many vectors per inverted list


class IndexFileError(UserError, RuntimeError):
    """An index directory is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class IndexSpec:
    """Which FAISS index to build: kind, factory string and build / search parameters."""

    kind: str  # one of KINDS
    factory_string: str  # argument of faiss.index_factory (metric: inner product)
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "factory_string": self.factory_string,
                "params": dict(self.params), "metric": "inner_product"}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "IndexSpec":
        if d.get("kind") not in KINDS or "factory_string" not in d:
            raise ValueError(f"not an index spec: {d!r}")
        return cls(kind=d["kind"], factory_string=d["factory_string"],
                   params=dict(d.get("params", {})))

    @property
    def approximate(self) -> bool:
        return self.kind != "flat"

    def search_params(self) -> dict[str, int]:
        """The run-time search parameters (``efSearch`` or ``nprobe``) this spec sets."""
        return {k: int(self.params[k]) for k in ("efSearch", "nprobe") if k in self.params}


# ----------------------------------------------------------------------------- choice

def estimate_bytes(kind: str, n: int, dim: int, *, hnsw_m: int = HNSW_M, nlist: int = 1,
                   pq_m: int = 8, pq_nbits: int = 8) -> int:
    """Approximate resident size of an index of ``n`` vectors of dimension ``dim``."""
    vec = 4 * n * dim
    if kind == "flat":
        return vec
    if kind == "hnsw":
        # level-0 links (2M per node) plus upper levels (~1/M of nodes, M links), int32 each
        return vec + int(n * 4 * (2 * hnsw_m) * 1.1) + 16 * n
    if kind == "ivf_flat":
        return vec + n * _ID_BYTES + 4 * nlist * dim
    if kind == "ivf_pq":
        codes = math.ceil(pq_m * pq_nbits / 8)
        return n * (codes + _ID_BYTES) + 4 * nlist * dim + 4 * (2 ** pq_nbits) * dim
    raise ValueError(f"unknown index kind {kind!r}; expected one of {KINDS}")


def _nlist_for(n: int) -> int:
    """About 4 sqrt(n) inverted lists, but at least 39 training points per list."""
    return int(max(1, min(round(4 * math.sqrt(max(n, 1))), n // 39)))


def _pq_nbits_for(n: int) -> int:
    """8 bits per code when there are enough points to train 256 centroids, fewer otherwise."""
    return int(max(1, min(8, math.floor(math.log2(max(n, 2) / 39)) if n >= 78 else 1)))


def choose_index(n: int, dim: int, memory_budget_bytes: int | None = None, *,
                 exact_threshold: int = EXACT_THRESHOLD, force_approximate: bool = False,
                 hnsw_m: int = HNSW_M) -> IndexSpec:
    """Pick the index for a gallery of ``n`` vectors of dimension ``dim``.

    Exact ``Flat`` below ``exact_threshold`` (unless ``force_approximate`` or the full
    vectors exceed the budget); otherwise HNSW if it fits ``memory_budget_bytes`` (``None``:
    no limit), else IVF-Flat if the full vectors fit, else IVF-PQ with the largest number of
    sub-quantizers (a divisor of ``dim``) that fits. Raises ValueError when nothing fits.
    """
    if n <= 0 or dim <= 0:
        raise ValueError(f"cannot index an empty gallery (n={n}, dim={dim})")
    budget = memory_budget_bytes

    def fits(b: int) -> bool:
        return budget is None or b <= budget

    flat_b = estimate_bytes("flat", n, dim)
    if not force_approximate and n < exact_threshold and fits(flat_b):
        return IndexSpec("flat", "Flat", {"estimated_bytes": flat_b})
    hnsw_b = estimate_bytes("hnsw", n, dim, hnsw_m=hnsw_m)
    if fits(hnsw_b):
        return IndexSpec("hnsw", f"HNSW{hnsw_m}",
                         {"M": hnsw_m, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": 64,
                          "estimated_bytes": hnsw_b})
    nlist = _nlist_for(n)
    ivf_b = estimate_bytes("ivf_flat", n, dim, nlist=nlist)
    if fits(ivf_b):
        return IndexSpec("ivf_flat", f"IVF{nlist},Flat",
                         {"nlist": nlist, "nprobe": min(nlist, 8), "estimated_bytes": ivf_b})
    nbits = _pq_nbits_for(n)
    for m in sorted((m for m in range(1, min(dim, _PQ_M_MAX) + 1) if dim % m == 0), reverse=True):
        pq_b = estimate_bytes("ivf_pq", n, dim, nlist=nlist, pq_m=m, pq_nbits=nbits)
        if fits(pq_b):
            return IndexSpec("ivf_pq", f"IVF{nlist},PQ{m}x{nbits}",
                             {"nlist": nlist, "nprobe": min(nlist, 8), "pq_m": m,
                              "pq_nbits": nbits, "estimated_bytes": pq_b})
    need = estimate_bytes("ivf_pq", n, dim, nlist=nlist, pq_m=1, pq_nbits=nbits)
    raise ValueError(f"memory budget of {budget} bytes is too small for {n} vectors of "
                     f"dimension {dim}; even IVF-PQ needs about {need} bytes. Raise the budget.")


# ----------------------------------------------------------------------------- build / search

@dataclass
class IdIndex:
    """A FAISS index over gallery rows 0..N-1, the ids of those rows and its spec.

    ``index`` is always a CPU index (what is saved); ``gpu_index``, when set, is the GPU
    copy that :func:`search` uses.
    """

    index: faiss.Index
    ids: list[str]
    spec: IndexSpec
    gpu_index: Any = None
    _gpu_res: Any = field(default=None, repr=False)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def searcher(self) -> faiss.Index:
        return self.gpu_index if self.gpu_index is not None else self.index

    def set_search_params(self, params: dict[str, int]) -> None:
        """Apply ``efSearch`` / ``nprobe`` to the CPU index and its GPU copy."""
        for name, value in params.items():
            faiss.ParameterSpace().set_index_parameter(self.index, name, int(value))
            if self.gpu_index is not None:
                faiss.GpuParameterSpace().set_index_parameter(self.gpu_index, name, int(value))
        self.spec = replace(self.spec, params={**self.spec.params,
                                               **{k: int(v) for k, v in params.items()}})


def _as_f32(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array of vectors, got shape {x.shape}")
    return x


def _use_gpu(requested: bool | None) -> bool:
    n = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if requested is None:
        return n > 0
    if requested and n == 0:
        log.warning("GPU index requested but faiss sees no GPU; building on CPU")
    return bool(requested) and n > 0


def _to_gpu(cpu_index: faiss.Index) -> tuple[Any, Any]:
    res = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(res, 0, cpu_index), res


def build_index(vectors: np.ndarray, ids: list[str] | None = None, spec: IndexSpec | None = None,
                *, memory_budget_bytes: int | None = None, exact_threshold: int = EXACT_THRESHOLD,
                force_approximate: bool = False, tune: bool = True,
                target_recall: float = TARGET_RECALL, seed: int = 0,
                use_gpu: bool | None = None) -> IdIndex:
    """Build (train, add, tune) an inner-product index over ``vectors`` (rows = gallery; a
    memory-mapped array is read in batches: an IVF index trains on a sample, :func:`training_rows`,
    and the gallery is added batch by batch).

    ``spec`` defaults to :func:`choose_index`'s choice. Approximate indexes have their
    search parameter raised until recall@10 against exact search on a sample of gallery
    queries reaches ``target_recall`` (``tune=False`` keeps the spec's values).
    """
    x = _as_f32(vectors)
    n, d = x.shape
    ids = [str(i) for i in (ids if ids is not None else range(n))]
    if len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} vectors")
    if spec is None:
        spec = choose_index(n, d, memory_budget_bytes, exact_threshold=exact_threshold,
                            force_approximate=force_approximate)
    cpu = faiss.index_factory(d, spec.factory_string, faiss.METRIC_INNER_PRODUCT)
    if spec.kind == "hnsw":
        cpu.hnsw.efConstruction = int(spec.params.get("efConstruction", HNSW_EF_CONSTRUCTION))
    if spec.kind in ("ivf_flat", "ivf_pq"):
        ivf = faiss.extract_index_ivf(cpu)
        ivf.cp.seed = int(seed)
        if spec.kind == "ivf_pq":
            ivfpq = faiss.downcast_index(ivf)
            ivfpq.pq.cp.seed = int(seed)
            # polysemous codes only serve Hamming filtering under L2; training them is slow
            ivfpq.do_polysemous_training = False
    def train_and_add(index: Any) -> None:
        """Train on a sample (IVF), then add the gallery in batches (x may be a memory map)."""
        if not index.is_trained:
            t = training_rows(n, spec, seed)
            log.info("training %s on %d of %d vectors", spec.factory_string, n if t is None else len(t), n)
            index.train(x if t is None else _as_f32(x[t]))
        for start in tqdm(range(0, n, _SEARCH_BATCH * 8), desc=f"add {spec.kind}", leave=False,
                          disable=n < 200_000):
            index.add(x[start:start + _SEARCH_BATCH * 8])

    gpu_index, res = None, None
    if _use_gpu(use_gpu) and spec.kind != "hnsw":
        try:
            gpu_index, res = _to_gpu(cpu)
            train_and_add(gpu_index)
            cpu = faiss.index_gpu_to_cpu(gpu_index)
        except RuntimeError as e:  # e.g. a PQ size the GPU kernels do not support
            log.warning("GPU build of %s failed (%s); building on CPU", spec.factory_string, e)
            gpu_index, res = None, None
    if gpu_index is None:
        train_and_add(cpu)
    built = IdIndex(index=cpu, ids=ids, spec=spec, gpu_index=gpu_index, _gpu_res=res)
    if spec.search_params():
        built.set_search_params(spec.search_params())
    if spec.approximate and tune:
        tune_search_params(built, x, target_recall=target_recall, seed=seed)
    # an exact index is built at once, and the evaluation builds one per method and seed: those
    # lines would bury the approximate builds' (the catalogue's), which take minutes
    log.log(_level(spec), "built %s index over %d vectors (dim %d): %s", spec.kind, n, d, built.spec.params)
    return built


def _level(spec: IndexSpec) -> int:
    """The log level of an index's build and save lines: INFO for an approximate index, DEBUG
    for an exact one."""
    return logging.INFO if spec.approximate else logging.DEBUG


def training_rows(n: int, spec: IndexSpec, seed: int = 0) -> np.ndarray | None:
    """The sorted gallery rows an IVF index trains its coarse quantizer (and PQ codebooks) on:
    ``TRAIN_POINTS_PER_LIST`` per inverted list at most, drawn with ``seed``; None: every row.
    (FAISS would subsample to 256 per list itself, but only after being handed every vector.)"""
    cap = TRAIN_POINTS_PER_LIST * int(spec.params.get("nlist", 1))
    if spec.kind not in ("ivf_flat", "ivf_pq") or n <= cap:
        return None
    return np.sort(np.random.default_rng([int(seed), 0x7A1]).choice(n, size=cap, replace=False))


def add_to_index(index_dir: str | Path, vectors: np.ndarray, ids: list[str]) -> IdIndex:
    """Add new products' vectors to the saved index in ``index_dir`` and save it again: no
    retraining and no rebuild (HNSW links the new nodes into its graph; IVF assigns them to the
    lists trained before; a flat index appends them). Ids already in the index are refused."""
    built = load_index(index_dir, use_gpu=False)
    x = _as_f32(vectors)
    ids = [str(i) for i in ids]
    if x.shape[0] != len(ids):
        raise ValueError(f"{len(ids)} ids for {x.shape[0]} vectors")
    if x.shape[1] != built.index.d:
        raise IndexFileError(f"the new vectors have dimension {x.shape[1]}, the index in {index_dir} "
                             f"{built.index.d}; embed them with the model the index was built from")
    known = set(built.ids)
    dup = [i for i in ids if i in known][:3] + ([] if len(set(ids)) == len(ids) else ["(repeated ids)"])
    if dup:
        raise IndexFileError(f"products {dup} are already in the index in {index_dir}; "
                             f"give only new products")
    for start in tqdm(range(0, len(ids), _SEARCH_BATCH * 8), desc="add", leave=False,
                      disable=len(ids) < 200_000):
        built.index.add(x[start:start + _SEARCH_BATCH * 8])
    built.ids += ids
    save_index(built, index_dir)
    log.info("added %d products to %s (%d in all)", len(ids), index_dir, built.ntotal)
    return built


def search(index: IdIndex | faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` gallery rows by inner product: (scores float32 [Q, k], rows int64 [Q, k]).

    Rows are gallery positions (``IdIndex.ids[row]`` is the id); ``-1`` pads missing results.
    """
    q = _as_f32(queries)
    idx = index.searcher() if isinstance(index, IdIndex) else index
    if q.shape[1] != idx.d:
        raise ValueError(f"queries have dimension {q.shape[1]}, the index {idx.d}")
    if k <= 0:
        raise ValueError("k must be positive")
    scores = np.empty((q.shape[0], k), np.float32)
    rows = np.empty((q.shape[0], k), np.int64)
    for start in tqdm(range(0, q.shape[0], _SEARCH_BATCH), desc="search", leave=False,
                      disable=q.shape[0] <= 4 * _SEARCH_BATCH):
        s, r = idx.search(q[start:start + _SEARCH_BATCH], k)
        scores[start:start + _SEARCH_BATCH] = s
        rows[start:start + _SEARCH_BATCH] = r
    return scores, rows


def exact_search(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference brute-force inner-product search (``IndexFlatIP``): (scores, rows).

    A gallery of more than ``_EXACT_CHUNK`` rows (e.g. a memory-mapped catalogue) is searched
    chunk by chunk and the top ``k`` merged, so it is never copied whole."""
    n = gallery.shape[0]
    if n <= _EXACT_CHUNK:
        g = _as_f32(gallery)
        flat = faiss.IndexFlatIP(g.shape[1])
        flat.add(g)
        return search(flat, queries, k)
    best_s = best_r = None
    for start in tqdm(range(0, n, _EXACT_CHUNK), desc="exact search", leave=False):
        s, r = exact_search(gallery[start:start + _EXACT_CHUNK], queries, min(k, n - start))
        r = np.where(r >= 0, r + start, -1)
        if best_s is not None:
            s, r = np.concatenate([best_s, s], 1), np.concatenate([best_r, r], 1)
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        best_s, best_r = np.take_along_axis(s, top, 1), np.take_along_axis(r, top, 1)
    return best_s, best_r


def ann_recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int = 10, *,
                    approx_scores: np.ndarray | None = None,
                    exact_scores: np.ndarray | None = None, tol: float = 1e-5) -> float:
    """Mean over queries of |approx top-k ∩ exact top-k| / k (``-1`` entries never count).

    With both score arrays given, an approximate result whose score ties the exact k-th
    score (within ``tol``) also counts, so that duplicate vectors do not read as misses.
    """
    a = np.asarray(approx_ids)[:, :k]
    e = np.asarray(exact_ids)[:, :k]
    if a.shape[0] != e.shape[0]:
        raise ValueError(f"{a.shape[0]} approximate vs {e.shape[0]} exact result rows")
    if a.shape[0] == 0:
        return 0.0
    found = np.zeros(a.shape, dtype=bool)
    for j in range(a.shape[1]):
        found[:, j] = (a[:, j:j + 1] == e).any(axis=1) & (a[:, j] >= 0)
    if approx_scores is not None and exact_scores is not None:
        kth = np.asarray(exact_scores)[:, min(k, e.shape[1]) - 1]
        found |= (np.asarray(approx_scores)[:, :k] >= kth[:, None] - tol) & (a >= 0)
    return float(found.sum() / (a.shape[0] * k))


def tune_search_params(built: IdIndex, vectors: np.ndarray, *, target_recall: float = TARGET_RECALL,
                       k: int = 10, n_queries: int = 500, seed: int = 0) -> float:
    """Raise ``efSearch`` / ``nprobe`` until recall@k on gallery-sampled queries >= target.

    Sets the smallest value that reaches the target (or the largest tried, with a warning)
    on ``built`` and records it and the recall reached in ``built.spec.params``. Returns
    the recall reached.
    """
    spec = built.spec
    if not spec.approximate:
        return 1.0
    x = _as_f32(vectors)
    n = x.shape[0]
    k = min(k, n)
    rng = np.random.default_rng(seed)
    q = x[rng.choice(n, size=min(n_queries, n), replace=False)]
    ex_s, ex_i = exact_search(x, q, k)
    if spec.kind == "hnsw":
        name, grid = "efSearch", [v for v in _EF_GRID if v >= k]
    else:
        nlist = int(spec.params.get("nlist", faiss.extract_index_ivf(built.index).nlist))
        name = "nprobe"
        grid = sorted({min(nlist, 2 ** i) for i in range(int(math.log2(max(nlist, 1))) + 2)})
    recall = 0.0
    for value in grid:
        built.set_search_params({name: value})
        ap_s, ap_i = search(built, q, k)
        recall = ann_recall_at_k(ap_i, ex_i, k, approx_scores=ap_s, exact_scores=ex_s)
        log.debug("%s=%d: recall@%d %.4f", name, value, k, recall)
        if recall >= target_recall:
            break
    else:
        log.warning("%s reaches recall@%d %.3f < %.2f even at %s=%d", spec.factory_string, k,
                    recall, target_recall, name, grid[-1])
    built.spec = replace(built.spec, params={**built.spec.params, f"tuned_recall@{k}": recall})
    return recall


# ----------------------------------------------------------------------------- persistence

def save_index(built: IdIndex, out_dir: str | Path) -> Path:
    """Write ``index.faiss``, ``ids.json`` and ``spec.json`` into ``out_dir``."""
    out = Path(out_dir)
    replace_atomic(out / INDEX_FILE, lambda tmp: faiss.write_index(built.index, str(tmp)))
    write_text_atomic(out / IDS_FILE, json.dumps(built.ids))
    write_json_atomic(out / SPEC_FILE, built.spec.to_json())
    log.log(_level(built.spec), "saved %s index (%d vectors) to %s", built.spec.kind, built.ntotal, out)
    return out


def load_index(index_dir: str | Path, use_gpu: bool | None = None) -> IdIndex:
    """Read an index saved by :func:`save_index`, with its ids and search parameters."""
    d = Path(index_dir)
    paths = [d / INDEX_FILE, d / IDS_FILE, d / SPEC_FILE]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise IndexFileError(f"index directory {d} lacks {missing}; rebuild it with "
                          f"`python pipelines/evaluate.py --out EVAL --rebuild-index` from the saved embeddings")
    try:
        cpu = faiss.read_index(str(paths[0]))
        ids = json.loads(paths[1].read_text())
        spec = IndexSpec.from_json(json.loads(paths[2].read_text()))
    except (RuntimeError, ValueError) as e:
        raise IndexFileError(f"cannot read index in {d}: {e}; rebuild it with "
                          f"`python pipelines/evaluate.py --out EVAL --rebuild-index`") from e
    if not isinstance(ids, list) or len(ids) != cpu.ntotal:
        raise IndexFileError(f"{paths[1]} holds {len(ids) if isinstance(ids, list) else '?'} ids but "
                          f"the index {cpu.ntotal} vectors; rebuild the index")
    gpu_index, res = None, None
    if _use_gpu(use_gpu) and spec.kind != "hnsw":
        gpu_index, res = _to_gpu(cpu)
    built = IdIndex(index=cpu, ids=[str(i) for i in ids], spec=spec, gpu_index=gpu_index,
                    _gpu_res=res)
    if spec.search_params():
        built.set_search_params(spec.search_params())
    return built


def rebuild_index(embeddings_npz: str | Path, out_dir: str | Path, spec: IndexSpec | None = None,
                  **build_kwargs: Any) -> IdIndex:
    """Rebuild and save an index from a saved :class:`EmbeddingSet` ``.npz`` alone."""
    from scalemm.evaluate.embeddings import EmbeddingSet

    es = EmbeddingSet.load(embeddings_npz)
    built = build_index(es.vectors, es.ids, spec, **build_kwargs)
    save_index(built, out_dir)
    return built
