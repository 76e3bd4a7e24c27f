"""A small searchable catalogue for the search and search-page tests, built once per session.

A demo corpus (real media files) is extracted by the real job (local Ray, the offline
backbones: EfficientNet-Lite0 and MiniLM) with a few products held out: one of each category
that has at least ``HELD_FROM`` products, so the catalogue keeps at least ``HELD_FROM - 1`` of it. SCALE trains on the store, and the
catalogue index is built and recorded as an evaluation builds it (``evaluate.catalogue``):
the vectors file, the index, and the run's record.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
N_ITEMS, CORPUS_SEED, HELD_FROM = 64, 7, 6


def catalogue_layout(eval_dir: Path, feats: Path, run: Path) -> None:
    """``eval_dir``'s catalogue (vectors, index, record) as pipelines/evaluate.py and
    pipelines/embed.py --index write it, from the store ``feats`` embedded by ``run``."""
    from scalemm.evaluate.catalogue import catalogue_from_run
    from scalemm.fuse.embedder import Embedder

    catalogue_from_run(Embedder.from_run(run, "cpu"), run, feats, eval_dir)


def train_run(feats: Path, run: Path) -> Path:
    """SCALE with its default settings (the frozen skip, subset consistency), a few epochs."""
    from scalemm.fuse.config import ScaleConfig
    from scalemm.fuse.train import train

    cfg = ScaleConfig().replace(epochs=2, batch_size=16, train_split="all", seed=0)
    cfg = cfg.replace(runtime=dataclasses.replace(cfg.runtime, tensorboard=False, threads=1))
    train(feats, run, cfg, seed=0, progress=False)
    return run


def build(base: Path) -> dict[str, Any]:
    """Build (or reuse, within a session) the catalogue under ``base``; returns its paths and
    the corpus's products: ``held`` (not in the catalogue), ``kept`` and ``label_counts``."""
    base.mkdir(parents=True, exist_ok=True)
    done = base / "done.json"
    if done.is_file():
        return {k: (Path(v) if k in ("corpus", "feats", "run", "eval") else v)
                for k, v in json.loads(done.read_text()).items()}
    import ray
    import torch

    from scalemm.corpora.demo import make_corpus
    from scalemm.corpus import read_corpus
    from scalemm.extract.config import load_config
    from scalemm.extract.job import run_extraction

    torch.set_num_threads(1)
    corpus = base / "corpus"
    make_corpus(corpus, N_ITEMS, seed=CORPUS_SEED)
    products = read_corpus(corpus / "corpus.jsonl").products
    sizes = Counter(p.label for p in products)
    held: list[str] = []
    for label, n in sorted(sizes.items()):
        if n >= HELD_FROM:
            held.append(next(p.id for p in products if p.label == label and p.image and p.title))
    lines = (corpus / "corpus.jsonl").read_text().splitlines()
    kept_lines = [ln for ln in lines if json.loads(ln)["id"] not in set(held)]
    (corpus / "catalogue.jsonl").write_text("\n".join(kept_lines) + "\n")
    feats = base / "feats"
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        run_extraction(corpus / "catalogue.jsonl", corpus, feats, load_config(ROOT / "configs" / "offline.yaml"))
    finally:
        ray.shutdown()
    eval_dir = base / "eval"
    run = train_run(feats, base / "run")
    catalogue_layout(eval_dir, feats, run)
    info = {"corpus": str(corpus), "feats": str(feats), "run": str(run), "eval": str(eval_dir), "held": held,
            "label_counts": dict(Counter(json.loads(ln)["label"] for ln in kept_lines))}
    done.write_text(json.dumps(info))
    return build(base)


def queryable(info: dict[str, Any]) -> list[Any]:
    """The catalogue's products with a picture and a title whose media all decoded (no failure
    record in the store)."""
    from scalemm.corpus import read_corpus
    from scalemm.store import read_failures

    failed = {f["id"] for f in read_failures(info["feats"])}
    return [p for p in read_corpus(info["corpus"] / "catalogue.jsonl").products
            if p.image and p.title and p.id not in failed]
