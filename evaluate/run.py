"""The evaluation run: every method's embeddings -> the split protocol -> metrics.json + report.

Methods compared in one run (``metrics.json`` keys, each figure ``{"mean", "std"}`` over the
training seeds; see :mod:`evaluate.protocol` for the split and the seeds):
    scale           the trained SCALE model, all modalities (its configured product embedding)
    scale_fused     the same model, sum of the fused first tokens (the paper's pooled outputs)
    scale_uniform   the same model trained with uniform pair weights (when its runs are given)
    <NAME>          any other trained model given as ``--model NAME=RUN`` (e.g. scale_paper)
    scale_untrained the scale runs' architecture, config and seed at initialisation, never trained
    concat_frozen   training-free concatenation of the L2-normalized frozen pooled features
    concat_text_image, concat_weighted, concat_pca
                    the fair training-free baselines of :mod:`evaluate.baselines` (title + image;
                    every modality weighted on validation; PCA fitted on train to the embedding's width)
    frozen_<m>      each modality's frozen pooled feature alone
Every model is scored in the same pass over the evaluated split (:mod:`evaluate.models`).
``metrics.json`` also has ``embedding_dim`` (the width of the default ``scale`` embedding),
``dims`` (every method's width), ``baselines`` (how each fair baseline was built: the chosen
weights, the PCA's fit) and ``paired`` / ``paired_bootstrap``: the paired bootstrap 95 %
interval of scale minus each other method on coarse mAP@1, fine mAP@1 and accuracy
(:mod:`evaluate.paired`). The diagnostics below are the ``scale`` model's:
the modality ablation (text; +image; +table; +video;
+audio), robustness to dropped query modalities, the learned importances (their rank
correlation with the frozen modalities' own coarse mAP@1, and on products planted with a
wrong title when the corpus records them), text-to-image recall and the recall lost to the
approximate index. Each model runs over the store once (:mod:`fuse.variants`).

At a million products (:mod:`evaluate.budget`): queries, the probe's and k-means' products are
recorded samples (``metrics.json`` ``samples``, ``EVAL/samples.npz``), only the products scored
are kept in memory, the frozen baselines read the stores' pooled vectors only, and the first
seed's ``scale`` embedding of every product is written in chunks to ``EVAL/catalogue/`` and
indexed by size and memory budget into ``EVAL/index/catalogue/`` (:mod:`evaluate.catalogue`):
its recall@10 against exact search is ``index.ann_recall@10``, and new products can be added
to it (``--add-products``). ``metrics.json`` ``timings`` has the embedding, catalogue-index and
scoring seconds.

``--checkpoint`` is one run directory (one seed) or a folder of ``seed-<s>/`` run directories
(``pipelines/train.py --seeds``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from scalemm.errors import ConfigError, StoreError
from scalemm.modalities import ABLATION_ORDER, canonical
from scalemm.store import open_stores
from scalemm.runs import RunFolder

from scalemm.splits import rows_of

from .baselines import (PCA_NAME, TEXT_IMAGE, UNTRAINED, WEIGHTED, choose_weights, concat_pca, concat_text_image,
                        concat_weighted, untrained_model, validation_sample)
from .budget import SAMPLES_FILE, EvalBudget, Samples
from .catalogue import CATALOGUE_DIR, CATALOGUE_INDEX, VECTORS_FILE, build_catalogue_index, write_vectors
from .embeddings import EmbeddingSet, frozen_baselines, l2_normalize
from .index import load_index, rebuild_index, search
from .metrics import cross_modal_recall, retrieval_scores
from .models import DEFAULT, UNIFORM, model_runs
from .paired import N_BOOT, paired_bootstrap
from .paired import describe as describe_paired
from .protocol import SplitView, evaluate_on_split, mean_over_draws, mean_std, robustness, spearman
from .report import write_report
from .tasks import K, evaluate_retrieval

log = logging.getLogger(__name__)

EMB_DIR, INDEX_DIR = "embeddings", "index"
DROP_PROB = 0.3
# robustness: independent draws of the dropped modalities per seed, averaged; one draw over a
# few hundred queries moves the figure by several points (0.85 to 0.94 on the development
# corpus's validation split, by draw alone)
DROP_DRAWS = 5


def drop_seeds(seed: int, draws: int) -> list[int]:
    """The ``drop_mask`` seeds of a training seed's draws: the seed itself first, then seed + 1000 j."""
    return [seed + 1000 * j for j in range(draws)]


def resolve_runs(path: str | Path) -> list[Path]:
    """A run directory (it has checkpoints), or a folder of ``seed-*`` run directories."""
    p = Path(path)
    if (p / "checkpoints").is_dir() or p.is_file():
        return [p]
    runs = sorted((d for d in p.glob("seed-*") if (d / "checkpoints").is_dir()),
                  key=lambda d: int(d.name.split("-", 1)[1]) if d.name.split("-", 1)[1].isdigit() else 0)
    if not runs:
        from scalemm.fuse.checkpoint import CheckpointError
        raise CheckpointError(f"{p} is neither a training run (no checkpoints/) nor a folder of seed-*/ runs; "
                              f"pass the --out of pipelines/train.py")
    return runs


def product_info(features: Path, media_root: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """id -> {title, image (absolute path or None)} from the corpus the store was extracted from
    (the JSONL named in the manifest, or the store's own JSONL copy of an M5Product release or a
    CSV / Parquet catalogue: :func:`scalemm.corpus.store_corpus`)."""
    from scalemm.corpus import read_corpus, store_corpus
    from scalemm.store import read_manifest

    man = read_manifest(features) or {}
    corpus = store_corpus(features)
    if corpus is None:
        log.warning("corpus %s not found; the gallery shows ids only", man.get("corpus"))
        return {}
    root = Path(media_root or man.get("media_root") or Path(man.get("corpus") or corpus).parent)
    info = {}
    for p in read_corpus(corpus, "jsonl").products:
        img = (root / p.image) if p.image else None
        info[p.id] = {"title": p.title or "", "image": str(img) if img and img.is_file() else None,
                      "label": p.label}
    return info


def planted_wrong_titles(features: Path) -> set[str] | None:
    """Ids of products whose title was planted from another category, when the corpus maker
    recorded them (``corpus_stats.json`` beside the corpus: ``wrong_title_ids``, or the demo
    corpus's ``title_noise_ids.mismatched``)."""
    from scalemm.store import read_manifest

    corpus = (read_manifest(features) or {}).get("corpus")
    stats = Path(corpus).with_name("corpus_stats.json") if corpus else None
    if stats is None or not stats.is_file():
        return None
    try:
        data = json.loads(stats.read_text())
        ids = data.get("wrong_title_ids", data.get("title_noise_ids", {}).get("mismatched"))
    except (json.JSONDecodeError, AttributeError):
        return None
    return set(ids) if isinstance(ids, list) else None


class _Model:
    """A trained run, loaded once: its model, config and provenance."""

    def __init__(self, run: Path, device: Any) -> None:
        from scalemm.fuse.embed import load_model

        self.run = run
        self.model, info = load_model(run, device)
        self.cfg, self.provenance, self.weights = info["config"], info["provenance"], info["weights"]

    def check(self, view_split: str) -> None:
        trained_on = set(self.cfg.train_split.split("+")) if self.cfg.train_split != "all" else {"train", "val", "test"}
        if view_split in trained_on:
            raise ConfigError(f"{self.run} was trained on split '{self.cfg.train_split}', which includes the "
                              f"'{view_split}' split this evaluation reports on; retrain with train_split: train "
                              f"or evaluate on another --split")


def _load_models(runs: Sequence[Path], device: Any) -> list[_Model]:
    return [_Model(r, device) for r in runs]


def run_evaluation(features: str | Path, checkpoint: str | Path | None, out: str | Path,
                   uniform_checkpoint: str | Path | None = None, media_root: str | Path | None = None,
                   split: str = "test", drop_prob: float = DROP_PROB, progress: bool = True,
                   budget: EvalBudget | None = None, drop_draws: int = DROP_DRAWS,
                   models: Sequence[str] | Mapping[str, str | Path] | None = None,
                   n_boot: int = N_BOOT) -> dict[str, Any]:
    """Evaluate the models ``{name: run}`` of :func:`evaluate.models.model_runs` (``checkpoint`` is
    ``scale``, ``uniform_checkpoint`` ``scale_uniform``, ``models`` any others as ``NAME=RUN``)
    and the baselines on one split, read once for all of them; write ``out`` (see the module doc)."""
    from scalemm.fuse.checkpoint import EMBED_FIELDS, check_provenance
    from scalemm.fuse.reader import EpochBatchSampler, FeatureDataset, make_loader
    from scalemm.fuse.train import resolve_device
    from scalemm.fuse.variants import Variant, ablation_variants, drop_mask, embed_variants

    if int(drop_draws) < 1:
        raise ValueError(f"drop_draws must be >= 1, got {drop_draws}")
    t0 = time.time()
    timings: dict[str, float] = {"embedding_s": 0.0, "scoring_s": 0.0}
    peak: dict[str, float] = {}  # this process's peak RSS (GB) at the end of each stage
    features, out = Path(features), Path(out)
    budget = budget or EvalBudget()
    dev = resolve_device("auto")
    named = model_runs(checkpoint, uniform_checkpoint, models)
    loaded = {name: _load_models(resolve_runs(run), dev) for name, run in named.items()}
    scale = loaded[DEFAULT]
    others = {n: v for n, v in loaded.items() if n != DEFAULT}
    if UNIFORM not in others:
        log.info("no --uniform-checkpoint: scale_uniform is left out of the comparison")
    every = [m for ms in loaded.values() for m in ms]
    spec = scale[0].cfg.split_spec()
    for m in every:
        if m.cfg.split_spec() != spec:
            raise ConfigError(f"{m.run} was trained with split {m.cfg.split_spec()}, {scale[0].run} with {spec}; "
                              f"runs compared in one evaluation must share the split")
        m.check(split)
    seeds = [m.cfg.seed for m in scale]
    for n, ms in others.items():
        if len(ms) != len(scale):
            log.warning("%d scale runs but %d %s runs: seeds are paired in order", len(scale), len(ms), n)

    mods = canonical({x for m in every for x in m.model.modalities})
    provenance = {k: s.provenance for k, s in open_stores(features, mods).items()}  # metadata only
    for m in every:  # before any feature is loaded
        check_provenance(m.provenance, {k: v for k, v in provenance.items() if k in m.model.modalities},
                         EMBED_FIELDS, where=f"embedding {features} with {m.weights}")
    ds = FeatureDataset(features, mods, scale[0].cfg.runtime.memory_budget_gb, progress=progress)
    view = SplitView.of(ds.instances, ds.ids, spec, split)
    log.info("split %s: %s; evaluating on %d %s products with seeds %s", spec, view.to_json()["sizes"],
             len(view.eval_rows), split, seeds)
    if len(view.eval_rows) < 2:
        raise StoreError(f"the {split} split holds {len(view.eval_rows)} product(s); the store is too small")
    # at scale: samples of queries / probe / k-means products, and only the products scored kept
    drawn = Samples.draw(view.eval_rows, view.train_rows, budget, spec.seed)
    work = drawn.workset
    local = drawn.within(work)
    if work is not None:
        log.info("sampled: %s; %d of %d products kept in memory", drawn.to_json(), len(work), len(ds))
    kept = (lambda xs: list(xs)) if work is None else (lambda xs: [xs[i] for i in work])
    ids, labels, instances = kept(ds.ids), kept(ds.labels), kept(ds.instances)
    loader = make_loader(ds, EpochBatchSampler(ds, 256 if work is None else 2048, seed=0, shuffle=False,
                                               drop_last=False), scale[0].cfg.runtime.loader_workers)

    frozen = frozen_baselines(features, rows=work)
    if [*frozen.values()][0].ids != ids:
        raise StoreError(f"the frozen features of {features} are not in the order of its joined stores")
    frozen_mods = [n.removeprefix("frozen_") for n in frozen if n.startswith("frozen_")]
    t = time.perf_counter()
    embedding_dim = int(scale[0].model.embedding_dim)
    fair, fair_info = _fair_baselines(features, frozen, view, work, local, embedding_dim, spec.seed)
    timings["baselines_s"] = time.perf_counter() - t

    def es(vectors: np.ndarray) -> EmbeddingSet:
        return EmbeddingSet(ids, vectors, labels, instances)

    planted = planted_wrong_titles(features)
    per_seed: dict[str, Any] = {"methods": {}, "ablation": {}, "robustness": {}, "robustness_draws": {},
                                "importance": [], "cross_modal": []}
    per_product: dict[str, list[dict[str, np.ndarray]]] = {}  # method -> per seed -> task -> outcome per product
    dims: dict[str, int] = {}
    gallery_set: EmbeddingSet | None = None
    first_full: dict[str, Any] | None = None
    catalogue: dict[str, Any] = {}
    for k, (s, m) in enumerate(zip(seeds, scale)):
        log.info("seed %d (%d of %d): %s", s, k + 1, len(scale), m.run)
        trained = list(m.model.modalities)
        abl = ablation_variants(trained, ABLATION_ORDER)
        dseeds = drop_seeds(s, drop_draws)
        drops = [Variant(f"scale@drop{j}", drop=drop_prob, drop_seed=d) for j, d in enumerate(dseeds)]
        variants = [Variant("scale"), Variant("scale_fused", source="fusion"), *abl, *drops]
        t = time.perf_counter()
        if k == 0:  # every product's scale embedding, written in chunks: the catalogue
            cat_path = out / CATALOGUE_DIR / VECTORS_FILE
            res = write_vectors(cat_path, len(ds), m.model.embedding_dim, lambda w: embed_variants(
                m.model, loader, variants, dev, progress=progress, rows=work,
                writers={"scale": w}))
        else:
            res = embed_variants(m.model, loader, variants, dev, progress=progress, rows=work)
        sets = {"scale": es(res["vectors"]["scale"]), "scale_fused": es(res["vectors"]["scale_fused"])}
        dropped = {"scale": [res["vectors"][v.name] for v in drops]}
        for name, runs_of in others.items():  # every other trained model: its embedding, and its robustness
            if k >= len(runs_of):
                continue
            u = runs_of[k]
            udrops = [Variant(f"u@drop{j}", drop=drop_prob, drop_seed=d) for j, d in enumerate(dseeds)]
            ures = embed_variants(u.model, loader, [Variant("u"), *udrops],
                                  dev, progress=progress, rows=work)
            sets[name] = es(ures["vectors"]["u"])
            dropped[name] = [ures["vectors"][v.name] for v in udrops]
        # the same architecture, config and seed, never trained
        blank = untrained_model(m.cfg, m.model.shapes, dev)
        sets[UNTRAINED] = es(embed_variants(blank, loader, [Variant("u")], dev,
                                            progress=progress, rows=work)["vectors"]["u"])
        del blank
        timings["embedding_s"] += time.perf_counter() - t
        peak["embedding"] = peak_rss_gb()
        if k == 0:
            t = time.perf_counter()
            catalogue = build_catalogue_index(cat_path, list(ds.ids), out / INDEX_DIR / CATALOGUE_INDEX,
                                              memory_budget_bytes=budget.memory_budget_bytes, seed=s)
            timings["catalogue_index_s"] = time.perf_counter() - t
            peak["catalogue_index"] = peak_rss_gb()
        t = time.perf_counter()
        first_full = first_full or res
        sets.update(frozen)
        sets.update(fair)
        dropped["concat_frozen"] = []
        for d in dseeds:
            keep = drop_mask(ids, frozen_mods, drop_prob, d)
            dropped["concat_frozen"].append(l2_normalize(np.concatenate(
                [frozen["frozen_" + x].vectors * keep[:, [j]] for j, x in enumerate(frozen_mods)], axis=1)))
        results = {}
        for name, e in tqdm(sets.items(), desc="methods", unit="method", disable=not progress, leave=False):
            outcome: dict[str, np.ndarray] = {}
            results[name] = evaluate_on_split(e, view, s, index_dir=out / INDEX_DIR / name if k == 0 else None,
                                              samples=local, per_product=outcome)
            per_seed["methods"].setdefault(name, []).append(results[name])
            per_product.setdefault(name, []).append(outcome)
            dims.setdefault(name, e.dim)
            if k == 0:  # each method's embeddings of the evaluated split, written now and let go
                e.subset(local.eval_rows).save(out / EMB_DIR / f"{name}.npz")
        if k == 0:
            gallery_set = sets["scale"].subset(local.eval_rows)
        for name, qs in dropped.items():
            draws = [robustness(results[name], evaluate_on_split(sets[name], view, s, queries=q, samples=local))
                     for q in qs]
            per_seed["robustness"].setdefault(name, []).append(mean_over_draws(draws))
            per_seed["robustness_draws"].setdefault(name, []).append(draws)
        for v in abl:
            per_seed["ablation"].setdefault(v.name, []).append(
                evaluate_retrieval(es(res["vectors"][v.name]).subset(local.eval_rows), K, seed=s,
                                   query_rows=local.queries))
        per_seed["importance"].append(_importance(res, local, results, planted))
        if "text" in trained and "image" in trained:
            per_seed["cross_modal"].append(_cross_modal(res, local, trained, budget.max_queries, spec.seed))
        timings["scoring_s"] += time.perf_counter() - t
        peak["scoring"] = peak_rss_gb()
        del sets, dropped, res

    assert first_full is not None and gallery_set is not None
    t = time.perf_counter()
    paired = paired_bootstrap(per_product, DEFAULT, [n for n in per_product if n != DEFAULT], n_boot=n_boot,
                              seed=spec.seed)
    scored = np.zeros(len(local.eval_rows), dtype=bool)
    for outcome in per_product[DEFAULT]:
        for v in outcome.values():
            scored |= ~np.isnan(v)
    timings["paired_bootstrap_s"] = time.perf_counter() - t
    drawn.save(out / SAMPLES_FILE)
    metrics: dict[str, Any] = {
        "methods": {n: mean_std(v) for n, v in per_seed["methods"].items()},
        "ablation": {n: mean_std(v) for n, v in per_seed["ablation"].items()},
        "robustness": {"drop_prob": drop_prob, "draws": int(drop_draws),
                       "queries": "each modality of each query product dropped with drop_prob; gallery intact; "
                       "per seed the mean over `draws` independent drops (per_seed.robustness_draws has each)",
                       "methods": {n: mean_std(v) for n, v in per_seed["robustness"].items()}},
        "importance": mean_std(per_seed["importance"]),
        "index": {"type": catalogue["type"], "ann_recall@10": catalogue["ann_recall@10"]},
        "catalogue": catalogue,
        "samples": drawn.to_json(),
        "split": view.to_json(), "seeds": seeds,
        "per_seed": per_seed,
        "runs": {n: [str(m.run) for m in ms] for n, ms in loaded.items()},
        "models": list(loaded),
        "items": len(ds), "evaluated_items": int(len(view.eval_rows)),
        "embedding_dim": embedding_dim,
        "dims": dims,
        "baselines": fair_info,
        "paired": paired,
        "paired_bootstrap": describe_paired(int(scored.sum()), n_boot, seeds),
    }
    metrics["runs"].setdefault(UNIFORM, [])
    if per_seed["cross_modal"]:
        metrics["cross_modal"] = mean_std(per_seed["cross_modal"])
    imp = np.where(first_full["presence"], first_full["importances"], np.nan)[local.eval_rows]
    t = time.perf_counter()
    metrics["seconds"] = round(time.time() - t0, 1)
    metrics["timings"] = {k: round(v, 1) for k, v in timings.items()}
    metrics["peak_rss_gb_after"] = peak
    write_report(out, metrics, training_log=RunFolder(scale[0].run).log, importance=imp,
                 importance_labels=[labels[i] for i in local.eval_rows], gallery_set=gallery_set,
                 product_info=product_info(features, media_root), seed=seeds[0])
    log.info("evaluated in %.1f s (report %.1f s): %s", time.time() - t0, time.perf_counter() - t, metrics["timings"])
    return metrics


def _fair_baselines(features: Path, frozen: Mapping[str, EmbeddingSet], view: SplitView, work: np.ndarray | None,
                    local: Samples, width: int, seed: int) -> tuple[dict[str, EmbeddingSet], dict[str, Any]]:
    """``concat_text_image``, ``concat_weighted`` (weights chosen on the validation split) and
    ``concat_pca`` (fitted on the train split's products) from the frozen sets (:mod:`evaluate.baselines`),
    and what each was built from (``metrics.json`` ``baselines``)."""
    sets: dict[str, EmbeddingSet] = {}
    info: dict[str, Any] = {}
    ti = concat_text_image(frozen)
    if ti is not None:
        sets[TEXT_IMAGE] = ti
        info[TEXT_IMAGE] = {"modalities": {"text": 1.0, "image": 1.0},
                            "rule": "L2-normalised frozen text and image vectors at equal weight, L2-normalised"}
    else:
        log.warning("no text or no image store: concat_text_image is left out")
    val_rows = rows_of(view.names, "val")
    if len(val_rows) >= 2:
        pick = validation_sample(val_rows, seed)
        if work is None:
            val = {n: e.subset(pick) for n, e in frozen.items() if n.startswith("frozen_")}
        else:  # at scale only the scored products are in memory: the validation sample's pooled vectors read apart
            val = {n: e for n, e in frozen_baselines(features, rows=pick).items() if n.startswith("frozen_")}
        chosen = choose_weights(val)
        sets[WEIGHTED] = concat_weighted(frozen, chosen["weights"])
        info[WEIGHTED] = {**chosen, "chosen_on": "val", "chosen_on_reported_split": view.on == "val",
                          "val_products_of": int(len(val_rows))}
        if view.on == "val":
            log.warning("concat_weighted: its weights were chosen on the val split, which this evaluation reports on "
                        "(metrics.json baselines.concat_weighted.chosen_on_reported_split)")
    else:
        log.warning("the val split holds %d product(s): concat_weighted (weights chosen on val) is left out",
                    len(val_rows))
    try:
        sets[PCA_NAME], pinfo = concat_pca(frozen, local.train_rows, width, seed=seed)
        info[PCA_NAME] = {**pinfo, "fitted_on": "train"}
    except ValueError as e:
        log.warning("concat_pca is left out: %s", e)
    info[UNTRAINED] = {"rule": "the scale runs' architecture and config, built with their seeds, never trained"}
    return sets, info


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, GB (``ru_maxrss``)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20), 3)


def _cross_modal(res: dict[str, Any], local: Samples, trained: list[str], max_queries: int,
                 seed: int) -> dict[str, Any]:
    """Text-to-image recall over the evaluated products that have both (at most ``max_queries``
    text queries, drawn with ``seed``, against every image)."""
    t, i = trained.index("text"), trained.index("image")
    pres = res["presence"][local.eval_rows]
    rows = local.eval_rows[pres[:, t] & pres[:, i]]
    q = None
    if len(rows) > max_queries:
        q = np.sort(np.random.default_rng([int(seed), 0xC405]).choice(len(rows), size=max_queries, replace=False))
    return {"text_to_image": cross_modal_recall(l2_normalize(res["enc_pooled"][rows, t]),
                                                l2_normalize(res["enc_pooled"][rows, i]), query_rows=q),
            "items": int(len(rows)), "queries": int(len(rows) if q is None else len(q))}


def _importance(res: dict[str, Any], view: SplitView | Samples, results: dict[str, Any],
                planted: set[str] | None) -> dict[str, Any]:
    """Mean learned importance per modality (evaluated split, present items), its Spearman rank
    correlation with the modalities' own frozen coarse mAP@1, and the title's importance on
    products planted with a wrong title against the others."""
    mods, rows = res["modalities"], view.eval_rows
    pres, imp = res["presence"][rows], res["importances"][rows]
    mean = {m: float(imp[pres[:, j], j].mean()) if pres[:, j].any() else float("nan") for j, m in enumerate(mods)}
    ranked = [m for m in mods if f"frozen_{m}" in results]
    out: dict[str, Any] = {"mean": mean,
                           "spearman_vs_frozen_coarse": spearman([mean[m] for m in ranked],
                                                                 [results[f"frozen_{m}"]["coarse"]["mAP@1"]
                                                                  for m in ranked])}
    if planted is not None and "text" in mods:
        t = mods.index("text")
        ids = np.asarray(res["ids"], dtype=object)[rows]
        is_p = np.isin(ids, list(planted)) & pres[:, t]
        other = ~np.isin(ids, list(planted)) & pres[:, t]
        out["planted_wrong_title"] = {
            "products": int(is_p.sum()),
            "title_importance_planted": float(imp[is_p, t].mean()) if is_p.any() else float("nan"),
            "title_importance_others": float(imp[other, t].mean()) if other.any() else float("nan")}
    return out


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
    from .index import add_to_index

    es = EmbeddingSet.load(embeddings)
    t0 = time.time()
    built = add_to_index(Path(out) / INDEX_DIR / CATALOGUE_INDEX, es.vectors, es.ids)
    return {"index": str(Path(out) / INDEX_DIR / CATALOGUE_INDEX), "added": len(es), "products": built.ntotal,
            "seconds": round(time.time() - t0, 2)}
