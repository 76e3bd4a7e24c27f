"""The evaluation run: every method's embeddings -> the split protocol -> metrics.json + report.

Methods compared in one run (``metrics.json`` keys, each figure ``{"mean", "std"}`` over the
training seeds; see :mod:`evaluate.protocol` for the split and the seeds):
    scale           the trained SCALE model, all modalities (its configured product embedding)
    scale_fused     the same model, sum of the fused first tokens (the paper's pooled outputs)
    scale_uniform   the same model trained with uniform pair weights (when its runs are given)
    <NAME>          any other trained model given as ``--model NAME=RUN`` (e.g. scale_paper)
    scale_untrained the scale runs' architecture, config and seed at initialisation, never trained
    concat_frozen   training-free concatenation of the frozen vectors (each store's pooled vector,
                    L2-normalized: :func:`evaluate.embeddings.frozen_vectors`)
    concat_text_image, concat_weighted, concat_pca
                    the fair training-free baselines of :mod:`evaluate.baselines` (title + image;
                    every modality weighted on validation; PCA fitted on train to the embedding's width)
    frozen_<m>      each modality's frozen vector alone
Every model is scored in the same pass over the evaluated split (:mod:`evaluate.models`).
``metrics.json`` also has ``embedding_dim`` (the width of the default ``scale`` embedding),
``dims`` (every method's width), ``baselines`` (how each fair baseline was built: the chosen
weights, the PCA's fit) and ``paired`` / ``paired_bootstrap``: the paired bootstrap 95 %
interval of scale minus each other method on coarse mAP@1, fine mAP@1 and accuracy
(:mod:`evaluate.paired`). The diagnostics below are the ``scale`` model's:
the modality ablation (text; +image; +table; +video;
+audio), robustness to dropped query modalities, the learned importances (their rank
correlation with the coarse mAP@1 of each modality's frozen vectors, and on products planted with a
wrong title when the corpus records them), text-to-image recall and the recall lost to the
approximate index. Each model runs over the store once (:meth:`fuse.embedder.Embedder.embed`).

At a million products (:mod:`evaluate.budget`): queries, the probe's and k-means' products are
recorded samples (``metrics.json`` ``samples``, ``EVAL/samples.npz``), only the products scored
are kept in memory, the frozen baselines read the stores' frozen vectors only, and the first
seed's ``scale`` embedding of every product is written in chunks to ``EVAL/catalogue/`` and
indexed by size and memory budget into ``EVAL/index/catalogue/`` (:mod:`evaluate.catalogue`):
its recall@10 against exact search is ``index.ann_recall@10``, and new products can be added
to it (``--add-products``). ``metrics.json`` ``timings`` has the embedding, catalogue-index and
scoring seconds.

``--checkpoint`` is one run directory (one seed) or a folder of ``seed-<s>/`` run directories
(``pipelines/train.py --seeds``).

:func:`run_evaluation` reads top to bottom: load (:mod:`evaluate.loading`: the models, the store
read once, the training-free baselines) -> embed per seed (:func:`embed_seed`) -> score per
method (:func:`score_seed`) -> aggregate (:func:`aggregate`) -> report (:func:`report`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from tqdm.auto import tqdm

from scalemm.modalities import ABLATION_NAMES, ABLATION_ORDER
from scalemm.runs import RunFolder

from .baselines import UNTRAINED, fair_baselines
from .budget import SAMPLES_FILE, EvalBudget, Samples
from .catalogue import (CATALOGUE_DIR, CATALOGUE_INDEX, INDEX_DIR, VECTORS_FILE, build_catalogue_index,
                        catalogue_record, check_added, record_added_store, write_vectors)
from .diagnostics import cross_modal_figures, importance_figures
from .embeddings import EmbeddingSet, frozen_baselines, l2_normalize
from .index import load_index, rebuild_index, search
from .loading import Models, Store, Trained, load_models, planted_wrong_titles, product_info, read_store
from .metrics import retrieval_scores
from .models import DEFAULT, UNIFORM
from .paired import N_BOOT, paired_bootstrap, paired_steps
from .paired import describe as describe_paired
from .protocol import evaluate_on_split, hits_per_product, mean_over_draws, mean_std, robustness
from .report import write_report
from .tasks import K, evaluate_retrieval

log = logging.getLogger(__name__)

EMB_DIR = "embeddings"
DROP_PROB = 0.3
# robustness: independent draws of the dropped modalities per seed, averaged; one draw over a
# few hundred queries moves the figure by several points (0.85 to 0.94 on the development
# corpus's validation split, by draw alone)
DROP_DRAWS = 5

__all__ = ["DROP_DRAWS", "DROP_PROB", "EvalJob", "add_products", "drop_seeds", "planted_wrong_titles",
           "product_info", "rebuild_and_check", "run_evaluation"]


def drop_seeds(seed: int, draws: int) -> list[int]:
    """The ``drop_mask`` seeds of a training seed's draws: the seed itself first, then seed + 1000 j."""
    return [seed + 1000 * j for j in range(draws)]


@dataclass
class EvalJob:
    """What one evaluation is asked (``pipelines/evaluate.py``'s arguments)."""

    features: Path
    models: Mapping[str, str | Path]  # {name: run}, ``scale`` first: :func:`evaluate.models.model_runs`
    out: Path
    media_root: str | Path | None = None  # the gallery's images (default: the store manifest's)
    split: str = "test"
    drop_prob: float = DROP_PROB
    drop_draws: int = DROP_DRAWS
    budget: EvalBudget = field(default_factory=EvalBudget)
    # {name: {key: value}}: a model's embedding settings changed from its checkpoint's (not scale's)
    embedding: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    n_boot: int = N_BOOT
    progress: bool = True

    def __post_init__(self) -> None:
        self.features, self.out = Path(self.features), Path(self.out)
        if int(self.drop_draws) < 1:
            raise ValueError(f"drop_draws must be >= 1, got {self.drop_draws}")


@dataclass
class Tally:
    """What the seeds add up to, and what the first seed leaves for the report."""

    per_seed: dict[str, Any] = field(default_factory=lambda: {
        "methods": {}, "ablation": {}, "robustness": {}, "robustness_draws": {}, "importance": [],
        "cross_modal": []})
    per_product: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)  # method -> seed -> task
    ablation_per_product: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)  # subset -> seed -> task
    dims: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=lambda: {"embedding_s": 0.0, "scoring_s": 0.0})
    peak: dict[str, float] = field(default_factory=dict)  # this process's peak RSS (GB) after each stage
    catalogue: dict[str, Any] = field(default_factory=dict)
    importance: np.ndarray | None = None  # the first seed's importances of the evaluated split (NaN: absent)
    gallery: EmbeddingSet | None = None  # the first seed's scale embeddings of the evaluated split


@dataclass
class Baselines:
    """The training-free methods: ``frozen_<m>``, ``concat_frozen`` and the fair ones."""

    frozen: dict[str, EmbeddingSet]
    fair: dict[str, EmbeddingSet]
    info: dict[str, Any]  # metrics.json ``baselines``

    @property
    def frozen_modalities(self) -> list[str]:
        return [n.removeprefix("frozen_") for n in self.frozen if n.startswith("frozen_")]


@dataclass
class SeedEmbeddings:
    """One seed's embeddings: every method's set, the queries with modalities dropped, and the
    ``scale`` model's full result (its ablation variants, presence, importances).

    ``sets`` hold every kept product; ``dropped`` and the result's ablation vectors fewer (the
    retrieval queries, :attr:`Store.query_positions`; the evaluated split)."""

    seed: int
    drop_seeds: list[int]
    trained: list[str]  # the scale model's modalities
    ablation: list[Any]  # fuse.embedder.Variant
    result: dict[str, Any]
    sets: dict[str, EmbeddingSet]
    dropped: dict[str, list[np.ndarray]]


def run_evaluation(job: EvalJob) -> dict[str, Any]:
    """Evaluate the models of ``job`` and the baselines on one split, read once for all of them;
    write ``job.out`` (see the module doc). Returns metrics.json's content."""
    t0 = time.time()
    models = load_models(job.models, job.split, job.embedding)
    store = read_store(job.features, models, job.split, job.budget, job.progress)
    tally = Tally()
    baselines = training_free(store, int(models.scale[0].embedder.dim), tally)
    planted = planted_wrong_titles(job.features)
    for k, (seed, m) in enumerate(zip(models.seeds, models.scale)):
        log.info("seed %d (%d of %d): %s", seed, k + 1, len(models.scale), m.run)
        emb = embed_seed(job, models, store, k, tally)
        score_seed(job, store, emb, baselines, planted, k, tally)
        del emb
    index_catalogue(job, models, store, tally)
    metrics = aggregate(job, models, store, baselines, tally)
    metrics["seconds"] = round(time.time() - t0, 1)
    report(job, models, store, tally, metrics, t0)
    return metrics


# ----------------------------------------------------------------------------- load

def training_free(store: Store, width: int, tally: Tally) -> Baselines:
    """The stores' frozen vectors of the kept products and the fair baselines built from them."""
    from scalemm.errors import StoreError

    frozen = frozen_baselines(store.features, rows=store.work)
    if [*frozen.values()][0].ids != store.ids:
        raise StoreError(f"the frozen vectors of {store.features} are not in the order of its joined stores")
    t = time.perf_counter()
    fair, info = fair_baselines(store.features, frozen, store.view, store.work, store.local, width,
                                store.view.spec.seed)
    tally.timings["baselines_s"] = time.perf_counter() - t
    return Baselines(frozen, fair, info)


# ----------------------------------------------------------------------------- embed per seed

def embed_seed(job: EvalJob, models: Models, store: Store, k: int, tally: Tally) -> SeedEmbeddings:
    """Seed ``k``'s embeddings of every model (the first seed also writes every product's
    ``scale`` vector: the catalogue, indexed by :func:`index_catalogue`)."""
    from scalemm.fuse.embedder import Variant, ablation_variants

    m, seed = models.scale[k], models.seeds[k]
    trained, dseeds = m.embedder.modalities, drop_seeds(seed, job.drop_draws)
    abl = ablation_variants(trained, ABLATION_ORDER)
    drops = [Variant(f"scale@drop{j}", drop=job.drop_prob, drop_seed=d) for j, d in enumerate(dseeds)]
    variants = [Variant("scale"), Variant("scale_fused", source="fusion"), *abl, *drops]
    t = time.perf_counter()
    cat_path = job.out / CATALOGUE_DIR / VECTORS_FILE
    pooled = ("text", "image")  # the encoders' outputs the diagnostics read (cross-modal recall)
    # the ablation is scored on the evaluated split, dropped modalities on its queries: only those kept
    subsets = {**{v.name: store.loader_rows("eval") for v in abl},
               **{v.name: store.loader_rows("queries") for v in drops}}
    if k == 0:  # every product's scale embedding, written in chunks: the catalogue
        res = write_vectors(cat_path, len(store.ds), m.embedder.dim, lambda w: m.embedder.embed(
            store.loader, variants, progress=job.progress, rows=store.work, writers={"scale": w}, pooled=pooled,
            subsets=subsets))
    else:
        res = m.embedder.embed(store.loader, variants, progress=job.progress, rows=store.work, pooled=pooled,
                               subsets=subsets)
    emb = SeedEmbeddings(seed, dseeds, trained, abl, res,
                         {"scale": store.embeddings(res["vectors"]["scale"]),
                          "scale_fused": store.embeddings(res["vectors"]["scale_fused"])},
                         {"scale": [res["vectors"][v.name] for v in drops]})
    _embed_others(job, models, store, k, emb)
    _embed_untrained(job, m, store, emb)
    tally.timings["embedding_s"] += time.perf_counter() - t
    tally.peak["embedding"] = peak_rss_gb()
    return emb


def index_catalogue(job: EvalJob, models: Models, store: Store, tally: Tally) -> None:
    """The catalogue index over every product's ``scale`` vector (the first seed's, written by
    :func:`embed_seed`), built once the seeds' embeddings are let go."""
    t = time.perf_counter()
    m, seed = models.scale[0], models.seeds[0]
    record = catalogue_record(m.run, m.embedder.weights, seed, job.features, job.media_root)
    tally.catalogue = build_catalogue_index(job.out / CATALOGUE_DIR / VECTORS_FILE, list(store.ds.ids),
                                            job.out / INDEX_DIR / CATALOGUE_INDEX,
                                            memory_budget_bytes=job.budget.memory_budget_bytes, seed=seed,
                                            record=record)
    tally.timings["catalogue_index_s"] = time.perf_counter() - t
    tally.peak["catalogue_index"] = peak_rss_gb()


def _embed_others(job: EvalJob, models: Models, store: Store, k: int, emb: SeedEmbeddings) -> None:
    """Every other trained model's embedding of seed ``k``, and its queries with modalities dropped."""
    from scalemm.fuse.embedder import Variant

    for name, runs_of in models.others.items():
        if k >= len(runs_of):
            continue
        udrops = [Variant(f"u@drop{j}", drop=job.drop_prob, drop_seed=d) for j, d in enumerate(emb.drop_seeds)]
        ures = runs_of[k].embedder.embed(store.loader, [Variant("u"), *udrops], progress=job.progress,
                                         rows=store.work, pooled=(),  # its vectors alone are read
                                         subsets={v.name: store.loader_rows("queries") for v in udrops})
        emb.sets[name] = store.embeddings(ures["vectors"]["u"])
        emb.dropped[name] = [ures["vectors"][v.name] for v in udrops]


def _embed_untrained(job: EvalJob, m: Trained, store: Store, emb: SeedEmbeddings) -> None:
    """``scale_untrained``: the same architecture, config and seed, never trained."""
    from scalemm.fuse.embedder import Embedder, Variant

    blank = Embedder.untrained(m.embedder)
    # its vectors alone are read: no encoder outputs kept (at 1M, 5 x 384 floats of 300k products: 2.3 GB)
    res = blank.embed(store.loader, [Variant("u")], progress=job.progress, rows=store.work, pooled=())
    emb.sets[UNTRAINED] = store.embeddings(res["vectors"]["u"])


# ----------------------------------------------------------------------------- score per method

def score_seed(job: EvalJob, store: Store, emb: SeedEmbeddings, baselines: Baselines,
               planted: set[str] | None, k: int, tally: Tally) -> None:
    """Every method's figures for one seed, the robustness of those with dropped queries, and the
    scale model's diagnostics (ablation, importances, cross-modal recall), into ``tally``."""
    t = time.perf_counter()
    if tally.importance is None:  # the result itself is let go with the seed
        rows = store.local.eval_rows
        tally.importance = np.where(emb.result["presence"][rows], emb.result["importances"][rows], np.nan)
    emb.sets.update(baselines.frozen)
    emb.sets.update(baselines.fair)
    emb.dropped["concat_frozen"] = _frozen_dropped(job, store, emb, baselines)
    results = _score_methods(job, store, emb, k, tally)
    if k == 0:
        tally.gallery = emb.sets["scale"].subset(store.local.eval_rows)
    _score_robustness(store, emb, results, tally)
    _score_diagnostics(job, store, emb, results, planted, tally)
    tally.timings["scoring_s"] += time.perf_counter() - t
    tally.peak["scoring"] = peak_rss_gb()


def _frozen_dropped(job: EvalJob, store: Store, emb: SeedEmbeddings, baselines: Baselines) -> list[np.ndarray]:
    """``concat_frozen``'s queries with the same modalities dropped as the models' (one per draw;
    the retrieval queries only)."""
    from scalemm.fuse.embedder import drop_mask

    mods, frozen, out = baselines.frozen_modalities, baselines.frozen, []
    rows = store.local.eval_rows[store.query_positions]
    ids = [store.ids[i] for i in rows]
    for d in emb.drop_seeds:
        keep = drop_mask(ids, mods, job.drop_prob, d)
        out.append(l2_normalize(np.concatenate(
            [frozen["frozen_" + x].vectors[rows] * keep[:, [j]] for j, x in enumerate(mods)], axis=1)))
    return out


def _score_methods(job: EvalJob, store: Store, emb: SeedEmbeddings, k: int, tally: Tally) -> dict[str, Any]:
    """Each method's retrieval, classification and clustering (the first seed also indexes each
    and saves its embeddings of the evaluated split)."""
    results: dict[str, Any] = {}
    for name, e in tqdm(emb.sets.items(), desc="methods", unit="method", disable=not job.progress, leave=False):
        outcome: dict[str, np.ndarray] = {}
        results[name] = evaluate_on_split(e, store.view, emb.seed,
                                          index_dir=job.out / INDEX_DIR / name if k == 0 else None,
                                          samples=store.local, per_product=outcome)
        tally.per_seed["methods"].setdefault(name, []).append(results[name])
        tally.per_product.setdefault(name, []).append(outcome)
        tally.dims.setdefault(name, e.dim)
        if k == 0:  # each method's embeddings of the evaluated split, written now and let go
            e.subset(store.local.eval_rows).save(job.out / EMB_DIR / f"{name}.npz")
    return results


def _score_robustness(store: Store, emb: SeedEmbeddings, results: Mapping[str, Any], tally: Tally) -> None:
    """The figures with dropped query modalities, per draw and their mean, of every method that has them."""
    for name, qs in emb.dropped.items():
        draws = [robustness(results[name], evaluate_on_split(emb.sets[name], store.view, emb.seed, queries=q,
                                                             samples=store.local)) for q in qs]
        tally.per_seed["robustness"].setdefault(name, []).append(mean_over_draws(draws))
        tally.per_seed["robustness_draws"].setdefault(name, []).append(draws)


def _score_diagnostics(job: EvalJob, store: Store, emb: SeedEmbeddings, results: Mapping[str, Any],
                       planted: set[str] | None, tally: Tally) -> None:
    """The scale model's modality ablation, importances and (with text and image) cross-modal recall."""
    local, res = store.local, emb.result
    for v in emb.ablation:
        hits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        tally.per_seed["ablation"].setdefault(v.name, []).append(evaluate_retrieval(
            store.evaluated(res["vectors"][v.name]), K, seed=emb.seed, query_rows=local.queries, per_query=hits))
        tally.ablation_per_product.setdefault(v.name, []).append(hits_per_product(hits, len(local.eval_rows)))
    tally.per_seed["importance"].append(importance_figures(res, local, dict(results), planted))
    if "text" in emb.trained and "image" in emb.trained:
        tally.per_seed["cross_modal"].append(cross_modal_figures(res, local, emb.trained, job.budget.max_queries,
                                                                 store.view.spec.seed))


# ----------------------------------------------------------------------------- aggregate, report

def aggregate(job: EvalJob, models: Models, store: Store, baselines: Baselines, tally: Tally) -> dict[str, Any]:
    """metrics.json: every figure's mean and std over the seeds, the paired bootstrap, and what
    the evaluation was (split, samples, runs, widths, baselines, catalogue index)."""
    t = time.perf_counter()
    per_seed, spec, seeds = tally.per_seed, models.spec, models.seeds
    paired = paired_bootstrap(tally.per_product, DEFAULT, [n for n in tally.per_product if n != DEFAULT],
                              n_boot=job.n_boot, seed=spec.seed)
    scored = np.zeros(len(store.local.eval_rows), dtype=bool)
    for outcome in tally.per_product[DEFAULT]:
        for v in outcome.values():
            scored |= ~np.isnan(v)
    # each modality added minus the subset before it (the ablation's rows), paired the same way
    ablation_paired = paired_steps(tally.ablation_per_product, ABLATION_NAMES, n_boot=job.n_boot, seed=spec.seed)
    tally.timings["paired_bootstrap_s"] = time.perf_counter() - t
    store.drawn.save(job.out / SAMPLES_FILE)
    metrics: dict[str, Any] = {
        "methods": {n: mean_std(v) for n, v in per_seed["methods"].items()},
        "ablation": {n: mean_std(v) for n, v in per_seed["ablation"].items()},
        "ablation_paired": ablation_paired,
        "robustness": {"drop_prob": job.drop_prob, "draws": int(job.drop_draws),
                       "queries": "each modality of each query product dropped with drop_prob; gallery intact; "
                       "per seed the mean over `draws` independent drops (per_seed.robustness_draws has each)",
                       "methods": {n: mean_std(v) for n, v in per_seed["robustness"].items()}},
        "importance": mean_std(per_seed["importance"]),
        "index": {"type": tally.catalogue["type"], "ann_recall@10": tally.catalogue["ann_recall@10"]},
        "catalogue": tally.catalogue, "samples": store.drawn.to_json(),
        "split": store.view.to_json(), "seeds": seeds, "per_seed": per_seed,
        "runs": {n: [str(m.run) for m in ms] for n, ms in models.loaded.items()},
        "models": list(models.loaded), "items": len(store.ds), "evaluated_items": int(len(store.view.eval_rows)),
        "embedding_dim": int(models.scale[0].embedder.dim), "dims": tally.dims, "baselines": baselines.info,
        "paired": paired, "paired_bootstrap": describe_paired(int(scored.sum()), job.n_boot, seeds),
    }
    metrics["runs"].setdefault(UNIFORM, [])
    if any(job.embedding.values()):
        metrics["embedding_changes"] = {n: dict(c) for n, c in job.embedding.items() if c}
    if per_seed["cross_modal"]:
        metrics["cross_modal"] = mean_std(per_seed["cross_modal"])
    return metrics


def report(job: EvalJob, models: Models, store: Store, tally: Tally, metrics: dict[str, Any], t0: float) -> None:
    """Add the timings to ``metrics`` and write metrics.json, report.md, the plots and the gallery."""
    assert tally.importance is not None and tally.gallery is not None
    rows = store.local.eval_rows
    t = time.perf_counter()
    metrics["timings"] = {k: round(v, 1) for k, v in tally.timings.items()}
    metrics["peak_rss_gb_after"] = tally.peak
    write_report(job.out, metrics, training_log=RunFolder(models.scale[0].run).log, importance=tally.importance,
                 importance_labels=[store.labels[i] for i in rows], gallery_set=tally.gallery,
                 product_info=product_info(job.features, job.media_root), seed=models.seeds[0])
    log.info("evaluated in %.1f s (report %.1f s): %s", time.time() - t0, time.perf_counter() - t, metrics["timings"])


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, GB (``ru_maxrss``)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20), 3)


def rebuild_and_check(out: str | Path, method: str = "scale") -> dict[str, Any]:
    """Rebuild ``out/index/<method>`` from ``out/embeddings/<method>.npz`` alone, search with
    the rebuilt index (the evaluation's sampled queries, ``out/samples.npz``, if it sampled)
    and compare its retrieval metrics with those of the first seed in ``metrics.json``."""
    out = Path(out)
    npz, idx_dir = out / EMB_DIR / f"{method}.npz", out / INDEX_DIR / method
    if not npz.is_file():
        raise FileNotFoundError(f"{npz} does not exist; run pipelines/evaluate.py without --rebuild-index first")
    t0 = time.time()
    spec = None
    if (idx_dir / "spec.json").is_file():
        spec = load_index(idx_dir).spec
    rebuild_index(npz, idx_dir, spec)
    built = load_index(idx_dir)
    es = EmbeddingSet.load(npz)
    queries = Samples.load(out / SAMPLES_FILE).queries if (out / SAMPLES_FILE).is_file() else None
    _, rows = search(built, es.vectors if queries is None else es.vectors[queries], min(K + 1, len(es)))
    got = retrieval_scores(rows, es.labels, es.instances, K, query_rows=queries)
    result: dict[str, Any] = {"method": method, "index": built.spec.kind, "vectors": len(es),
                              "seconds": round(time.time() - t0, 2), "coarse": got["coarse"], "fine": got["fine"]}
    mpath = out / "metrics.json"
    if mpath.is_file():
        runs = json.loads(mpath.read_text()).get("per_seed", {}).get("methods", {}).get(method, [{}])
        old = runs[0] if runs else {}
        result["same_as_metrics_json"] = all(
            abs(old.get(t, {}).get(k, -1) - v) < 1e-9 for t in ("coarse", "fine") for k, v in got[t].items())
    return result


def add_products(out: str | Path, embeddings: str | Path) -> dict[str, Any]:
    """Add the products of an embeddings file (``pipelines/embed.py`` of the new products with
    the catalogue's model) to the catalogue index ``out/index/catalogue``, without rebuilding it."""
    from scalemm.embedfile import load_embeddings

    from .index import add_to_index

    index_dir, arrays = Path(out) / INDEX_DIR / CATALOGUE_INDEX, load_embeddings(embeddings)  # read once
    check_added(index_dir, embeddings, arrays)  # embedded by the catalogue's checkpoint
    es = EmbeddingSet.from_arrays(arrays, embeddings)
    t0 = time.time()
    built = add_to_index(index_dir, es.vectors, es.ids)
    record_added_store(index_dir, embeddings, arrays)
    return {"index": str(index_dir), "added": len(es), "products": built.ntotal,
            "seconds": round(time.time() - t0, 2)}
