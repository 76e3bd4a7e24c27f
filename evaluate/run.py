"""The evaluation run: every method's embeddings -> the split protocol -> metrics.json + report.

Methods compared in one run (``metrics.json`` keys, each figure ``{"mean", "std"}`` over the
training seeds; see :mod:`evaluate.protocol` for the split and the seeds):
    scale           the trained SCALE model, all modalities (its configured product embedding)
    scale_fused     the same model, sum of the fused first tokens (the paper's pooled outputs)
    scale_uniform   the same model trained with uniform pair weights (when its runs are given)
    concat_frozen   training-free concatenation of the L2-normalized frozen pooled features
    frozen_<m>      each modality's frozen pooled feature alone
and, from the same SCALE models: the modality ablation (text; +image; +table; +video;
+audio), robustness to dropped query modalities, the learned importances (their rank
correlation with the frozen modalities' own coarse mAP@1, and on products planted with a
wrong title when the corpus records them), text-to-image recall and the recall lost to the
approximate index. Each model runs over the store once (:mod:`fuse.variants`).

``--checkpoint`` is one run directory (one seed) or a folder of ``seed-<s>/`` run directories
(``pipelines/train.py --seeds``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from scalemm.errors import ConfigError, StoreError
from scalemm.modalities import ABLATION_ORDER, canonical
from scalemm.store import open_stores
from scalemm.runs import RunFolder

from .embeddings import EmbeddingSet, frozen_baselines, l2_normalize
from .index import load_index, rebuild_index, search
from .metrics import cross_modal_recall, retrieval_scores
from .protocol import SplitView, evaluate_on_split, mean_std, robustness, spearman
from .report import write_report
from .tasks import K, evaluate_retrieval, index_report

log = logging.getLogger(__name__)

EMB_DIR, INDEX_DIR = "embeddings", "index"
DROP_PROB = 0.3


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
    """id -> {title, image (absolute path or None)} from the corpus named in the manifest."""
    from scalemm.corpus import read_corpus
    from scalemm.store import read_manifest

    man = read_manifest(features) or {}
    corpus = man.get("corpus")
    if not corpus or not Path(corpus).is_file():
        log.warning("corpus %s not found; the gallery shows ids only", corpus)
        return {}
    root = Path(media_root or man.get("media_root") or Path(corpus).parent)
    info = {}
    for p in read_corpus(corpus).products:
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


def run_evaluation(features: str | Path, checkpoint: str | Path, out: str | Path,
                   uniform_checkpoint: str | Path | None = None, media_root: str | Path | None = None,
                   split: str = "test", drop_prob: float = DROP_PROB, progress: bool = True) -> dict[str, Any]:
    from scalemm.fuse.checkpoint import EMBED_FIELDS, check_provenance
    from scalemm.fuse.reader import EpochBatchSampler, FeatureDataset, make_loader
    from scalemm.fuse.train import resolve_device
    from scalemm.fuse.variants import Variant, ablation_variants, drop_mask, embed_variants

    t0 = time.time()
    features, out = Path(features), Path(out)
    dev = resolve_device("auto")
    scale = _load_models(resolve_runs(checkpoint), dev)
    uniform = _load_models(resolve_runs(uniform_checkpoint), dev) if uniform_checkpoint else []
    if not uniform:
        log.warning("no --uniform-checkpoint: scale_uniform is left out of the comparison")
    spec = scale[0].cfg.split_spec()
    for m in scale + uniform:
        if m.cfg.split_spec() != spec:
            raise ConfigError(f"{m.run} was trained with split {m.cfg.split_spec()}, {scale[0].run} with {spec}; "
                              f"runs compared in one evaluation must share the split")
        m.check(split)
    seeds = [m.cfg.seed for m in scale]
    if uniform and len(uniform) != len(scale):
        log.warning("%d scale runs but %d scale_uniform runs: seeds are paired in order", len(scale), len(uniform))

    mods = canonical({x for m in scale + uniform for x in m.model.modalities})
    provenance = {k: s.provenance for k, s in open_stores(features, mods).items()}  # metadata only
    for m in scale + uniform:  # before any feature is loaded
        check_provenance(m.provenance, {k: v for k, v in provenance.items() if k in m.model.modalities},
                         EMBED_FIELDS, where=f"embedding {features} with {m.weights}")
    ds = FeatureDataset(features, mods, scale[0].cfg.memory_budget_gb, progress=progress)
    loader = make_loader(ds, EpochBatchSampler(ds, 256, seed=0, shuffle=False, drop_last=False),
                         scale[0].cfg.loader_workers)
    view = SplitView.of(ds.instances, ds.ids, spec, split)
    log.info("split %s: %s; evaluating on %d %s products with seeds %s", spec, view.to_json()["sizes"],
             len(view.eval_rows), split, seeds)
    if len(view.eval_rows) < 2:
        raise StoreError(f"the {split} split holds {len(view.eval_rows)} product(s); the store is too small")

    frozen = frozen_baselines(features)
    if [*frozen.values()][0].ids != list(ds.ids):
        raise StoreError(f"the frozen features of {features} are not in the order of its joined stores")
    frozen_mods = [n.removeprefix("frozen_") for n in frozen if n.startswith("frozen_")]

    def es(vectors: np.ndarray) -> EmbeddingSet:
        return EmbeddingSet(list(ds.ids), vectors, list(ds.labels), list(ds.instances))

    planted = planted_wrong_titles(features)
    per_seed: dict[str, Any] = {"methods": {}, "ablation": {}, "robustness": {}, "importance": [],
                                "cross_modal": []}
    saved: dict[str, EmbeddingSet] = {}
    first_full: dict[str, Any] | None = None
    for k, (s, m) in enumerate(zip(seeds, scale)):
        log.info("seed %d (%d of %d): %s", s, k + 1, len(scale), m.run)
        trained = list(m.model.modalities)
        abl = ablation_variants(trained, ABLATION_ORDER)
        variants = [Variant("scale"), Variant("scale_fused", source="fusion"), *abl,
                    Variant("scale@drop", drop=drop_prob, drop_seed=s)]
        res = embed_variants(m.model, loader, variants, dev, m.cfg.embed_from, progress=progress)
        first_full = first_full or res
        sets = {"scale": es(res["vectors"]["scale"]), "scale_fused": es(res["vectors"]["scale_fused"])}
        dropped = {"scale": res["vectors"]["scale@drop"]}
        if k < len(uniform):
            u = uniform[k]
            ures = embed_variants(u.model, loader, [Variant("u"), Variant("u@drop", drop=drop_prob, drop_seed=s)],
                                  dev, u.cfg.embed_from, progress=progress)
            sets["scale_uniform"] = es(ures["vectors"]["u"])
            dropped["scale_uniform"] = ures["vectors"]["u@drop"]
        sets.update(frozen)
        keep = drop_mask(ds.ids, frozen_mods, drop_prob, s)
        dropped["concat_frozen"] = l2_normalize(np.concatenate(
            [frozen["frozen_" + x].vectors * keep[:, [j]] for j, x in enumerate(frozen_mods)], axis=1))
        results = {}
        for name, e in sets.items():
            results[name] = evaluate_on_split(e, view, s, index_dir=out / INDEX_DIR / name if k == 0 else None)
            per_seed["methods"].setdefault(name, []).append(results[name])
            if k == 0:
                saved[name] = e.subset(view.eval_rows)
        for name, q in dropped.items():
            rob = robustness(results[name], evaluate_on_split(sets[name], view, s, queries=q))
            per_seed["robustness"].setdefault(name, []).append(rob)
        for v in abl:
            per_seed["ablation"].setdefault(v.name, []).append(
                evaluate_retrieval(es(res["vectors"][v.name]).subset(view.eval_rows), K, seed=s))
        per_seed["importance"].append(_importance(res, view, results, planted))
        if "text" in trained and "image" in trained:
            t, i = trained.index("text"), trained.index("image")
            rows = view.eval_rows[res["presence"][view.eval_rows][:, t] & res["presence"][view.eval_rows][:, i]]
            per_seed["cross_modal"].append({"text_to_image": cross_modal_recall(
                l2_normalize(res["enc_pooled"][rows, t]), l2_normalize(res["enc_pooled"][rows, i])),
                "items": int(len(rows))})

    (out / EMB_DIR).mkdir(parents=True, exist_ok=True)
    for name, e in saved.items():
        e.save(out / EMB_DIR / f"{name}.npz")
    metrics: dict[str, Any] = {
        "methods": {n: mean_std(v) for n, v in per_seed["methods"].items()},
        "ablation": {n: mean_std(v) for n, v in per_seed["ablation"].items()},
        "robustness": {"drop_prob": drop_prob, "queries": "each modality of each query product dropped with "
                       "drop_prob; gallery intact", "methods": {n: mean_std(v) for n, v in per_seed["robustness"].items()}},
        "importance": mean_std(per_seed["importance"]),
        "index": index_report(es(first_full["vectors"]["scale"]), seed=seeds[0]),
        "split": view.to_json(), "seeds": seeds,
        "per_seed": per_seed,
        "runs": {"scale": [str(m.run) for m in scale], "scale_uniform": [str(m.run) for m in uniform]},
        "items": len(ds), "evaluated_items": int(len(view.eval_rows)),
    }
    if per_seed["cross_modal"]:
        metrics["cross_modal"] = mean_std(per_seed["cross_modal"])
    metrics["seconds"] = round(time.time() - t0, 1)
    imp = np.where(first_full["presence"], first_full["importances"], np.nan)[view.eval_rows]
    write_report(out, metrics, training_log=RunFolder(scale[0].run).log, importance=imp,
                 importance_labels=[ds.labels[i] for i in view.eval_rows], gallery_set=saved["scale"],
                 product_info=product_info(features, media_root), seed=seeds[0])
    return metrics


def _importance(res: dict[str, Any], view: SplitView, results: dict[str, Any],
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
    the rebuilt index and compare its retrieval metrics with those of the first seed in
    ``metrics.json``."""
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
    _, rows = search(built, es.vectors, min(K + 1, len(es)))
    got = retrieval_scores(rows, es.labels, es.instances, K)
    result: dict[str, Any] = {"method": method, "index": built.spec.kind, "vectors": len(es),
                              "seconds": round(time.time() - t0, 2), "coarse": got["coarse"], "fine": got["fine"]}
    mpath = out / "metrics.json"
    if mpath.is_file():
        runs = json.loads(mpath.read_text()).get("per_seed", {}).get("methods", {}).get(method, [{}])
        old = runs[0] if runs else {}
        result["same_as_metrics_json"] = all(
            abs(old.get(t, {}).get(k, -1) - v) < 1e-9 for t in ("coarse", "fine") for k, v in got[t].items())
    return result
