"""The evaluation run: embeddings of every method -> tasks -> metrics.json + report.

Methods compared in one run (``metrics.json`` keys):
    scale           the trained SCALE model, all modalities (sum of pooled outputs, as configured)
    scale_fused     the same model, sum of the fused first tokens (the paper's pooled outputs)
    scale_uniform   the same model trained with uniform pair weights (when its run is given)
    concat_frozen   training-free concatenation of the L2-normalized frozen pooled features
    frozen_<m>      each modality's frozen pooled feature alone
and the SCALE modality ablation (text; +image; +table; +video; +audio) from the one model.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from scalemm.evaluate.embeddings import EmbeddingSet, frozen_baselines
from scalemm.evaluate.index import load_index, rebuild_index, search
from scalemm.evaluate.metrics import cross_modal_recall, retrieval_scores
from scalemm.evaluate.report import write_report
from scalemm.evaluate.tasks import ABLATION_NAMES, ABLATION_ORDER, K, evaluate_ablation, evaluate_methods, index_report

log = logging.getLogger(__name__)

EMB_DIR, INDEX_DIR = "embeddings", "index"


def _embedding_set(res: dict[str, Any]) -> EmbeddingSet:
    return EmbeddingSet(list(res["ids"]), np.asarray(res["vectors"], np.float32), list(res["labels"]),
                        list(res["instances"]))


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


def run_evaluation(features: str | Path, checkpoint: str | Path, out: str | Path,
                   uniform_checkpoint: str | Path | None = None, media_root: str | Path | None = None,
                   seed: int = 0) -> dict[str, Any]:
    from scalemm.fuse.embed import embed_store

    t0 = time.time()
    features, out = Path(features), Path(out)
    (out / EMB_DIR).mkdir(parents=True, exist_ok=True)
    full = embed_store(checkpoint, features)
    methods: dict[str, EmbeddingSet] = {"scale": _embedding_set(full)}
    # the paper's variant: the sum of the fused first tokens (when "scale" sums the encoders')
    methods["scale_fused"] = _embedding_set(embed_store(checkpoint, features, source="fusion"))
    if uniform_checkpoint:
        methods["scale_uniform"] = _embedding_set(embed_store(uniform_checkpoint, features))
    else:
        log.warning("no --uniform-checkpoint: scale_uniform is left out of the comparison")
    methods.update(frozen_baselines(features))
    for name, es in methods.items():
        es.save(out / EMB_DIR / f"{name}.npz")

    log.info("evaluating %d methods on %d items", len(methods), len(methods["scale"]))
    results = evaluate_methods(methods, index_root=out / INDEX_DIR, seed=seed)

    trained = list(full["modalities"])
    subsets = {}
    for mods, name in zip(ABLATION_ORDER, ABLATION_NAMES):
        if all(m in trained for m in mods):
            subsets[name] = full if len(mods) == len(trained) else None
            if subsets[name] is None:
                subsets[name] = embed_store(checkpoint, features, modalities=list(mods))
    ablation = evaluate_ablation({n: _embedding_set(r) for n, r in subsets.items()}, seed=seed)

    idx = index_report(methods["scale"], seed=seed)
    extra: dict[str, Any] = {}
    if "text" in trained and "image" in trained:
        t, i = trained.index("text"), trained.index("image")
        pres = full["presence"]
        both = pres[:, t] & pres[:, i]
        q, g = full["enc_pooled"][both, t], full["enc_pooled"][both, i]  # the SIMCL-aligned space
        extra["cross_modal"] = {"text_to_image": cross_modal_recall(_l2(q), _l2(g)), "items": int(both.sum())}
    extra["importance"] = {m: float(np.nanmean(np.where(full["presence"][:, j], full["importances"][:, j], np.nan)))
                           for j, m in enumerate(trained)}
    metrics = {"methods": results["methods"], "ablation": ablation, "index": idx, **extra,
               "items": len(methods["scale"]), "seconds": round(time.time() - t0, 1)}
    imp = np.where(full["presence"], full["importances"], np.nan)
    write_report(out, metrics, training_log=Path(checkpoint) / "log.jsonl", importance=imp,
                 importance_labels=list(full["labels"]), gallery_set=methods["scale"],
                 product_info=product_info(features, media_root), seed=seed)
    return metrics


def _l2(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


def rebuild_and_check(out: str | Path, method: str = "scale") -> dict[str, Any]:
    """Rebuild ``out/index/<method>`` from ``out/embeddings/<method>.npz`` alone, search with
    the rebuilt index and compare its retrieval metrics with those in ``metrics.json``."""
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
        old = json.loads(mpath.read_text())["methods"].get(method, {})
        result["same_as_metrics_json"] = all(
            abs(old.get(t, {}).get(k, -1) - v) < 1e-9 for t in ("coarse", "fine") for k, v in got[t].items())
    return result
