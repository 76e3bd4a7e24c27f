"""An evaluation's inputs, read once: the trained models and the evaluated store.

:func:`load_models` loads every model of an evaluation (:class:`Trained`: a run and its
:class:`fuse.embedder.Embedder`) and refuses runs that cannot be compared (another split, or
trained on the split reported). :func:`read_store` opens the stores for all of them after checking
each model's provenance against them, and draws the evaluation's samples (:mod:`evaluate.budget`).
What the gallery shows of each product (:func:`product_info`) and the products planted with a
wrong title (:func:`planted_wrong_titles`) come from the corpus the store was extracted from.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from scalemm.errors import ConfigError, StoreError
from scalemm.modalities import canonical
from scalemm.runs import seed_runs
from scalemm.splits import SplitSpec
from scalemm.store import open_stores

from .budget import EvalBudget, Samples
from .embeddings import EmbeddingSet
from .models import DEFAULT, UNIFORM
from .protocol import SplitView

log = logging.getLogger(__name__)


def resolve_runs(path: str | Path) -> list[Path]:
    """A run directory (it has checkpoints), or a folder of ``seed-*`` run directories."""
    p = Path(path)
    if (p / "checkpoints").is_dir() or p.is_file():
        return [p]
    runs = seed_runs(p)
    if not runs:
        from scalemm.fuse.checkpoint import CheckpointError
        raise CheckpointError(f"{p} is neither a training run (no checkpoints/) nor a folder of seed-*/ runs; "
                              f"pass the --out of pipelines/train.py")
    return runs


@dataclass
class Trained:
    """A trained run, loaded once: its embedder (model, config, provenance)."""

    run: Path
    embedder: Any  # fuse.embedder.Embedder

    @property
    def cfg(self) -> Any:
        return self.embedder.config

    def check(self, view_split: str) -> None:
        """Refuse a run trained on the split this evaluation reports on."""
        trained_on = set(self.cfg.train_split.split("+")) if self.cfg.train_split != "all" else {"train", "val", "test"}
        if view_split in trained_on:
            raise ConfigError(f"{self.run} was trained on split '{self.cfg.train_split}', which includes the "
                              f"'{view_split}' split this evaluation reports on; retrain with train_split: train "
                              f"or evaluate on another --split")


@dataclass
class Models:
    """Every trained model of one evaluation, ``{name: [one Trained per seed]}``, ``scale`` first."""

    loaded: dict[str, list[Trained]]

    @property
    def scale(self) -> list[Trained]:
        return self.loaded[DEFAULT]

    @property
    def others(self) -> dict[str, list[Trained]]:
        return {n: v for n, v in self.loaded.items() if n != DEFAULT}

    @property
    def every(self) -> list[Trained]:
        return [m for ms in self.loaded.values() for m in ms]

    @property
    def seeds(self) -> list[int]:
        return [m.cfg.seed for m in self.scale]

    @property
    def spec(self) -> SplitSpec:
        return self.scale[0].cfg.split_spec()

    @property
    def modalities(self) -> list[str]:
        return canonical({x for m in self.every for x in m.embedder.modalities})


def load_models(named: Mapping[str, str | Path], split: str,
                embedding: Mapping[str, Mapping[str, Any]] | None = None) -> Models:
    """The models ``{name: run}`` (:func:`evaluate.models.model_runs`) on the default device,
    refused when they do not share the split, or when one was trained on ``split``.
    ``embedding`` ``{name: {key: value}}`` (:func:`evaluate.models.embedding_changes`) changes a
    model's embedding settings from its checkpoint's."""
    from scalemm.device import resolve_device
    from scalemm.fuse.embedder import Embedder

    dev = resolve_device("auto")

    def load(name: str, run: Path) -> Trained:
        emb = Embedder.from_run(run, dev)
        changes = dict((embedding or {}).get(name) or {})
        if changes:
            emb.change_embedding(changes, f"--embedding {name}")
            log.info("%s (%s) embeds with %s", name, run, changes)
        return Trained(run, emb)

    models = Models({name: [load(name, r) for r in resolve_runs(run)] for name, run in named.items()})
    if UNIFORM not in models.others:
        log.info("no --uniform-checkpoint: scale_uniform is left out of the comparison")
    spec, first = models.spec, models.scale[0]
    for m in models.every:
        if m.cfg.split_spec() != spec:
            raise ConfigError(f"{m.run} was trained with split {m.cfg.split_spec()}, {first.run} with {spec}; "
                              f"runs compared in one evaluation must share the split")
        m.check(split)
    for n, ms in models.others.items():
        if len(ms) != len(models.scale):
            log.warning("%d scale runs but %d %s runs: seeds are paired in order", len(models.scale), len(ms), n)
    return models


@dataclass
class Store:
    """The evaluated stores, read once for every method: the split, the samples, and a loader
    over every product (only the sampled products' outputs are kept: ``work``)."""

    features: Path
    ds: Any  # fuse.reader.FeatureDataset
    view: SplitView
    drawn: Samples
    work: np.ndarray | None  # the rows kept (None: every product)
    local: Samples  # the samples as rows of the kept products
    loader: Any
    ids: list[str]
    labels: list[str]
    instances: list[str]

    def embeddings(self, vectors: np.ndarray) -> EmbeddingSet:
        """The kept products' ``vectors`` with their ids, labels and instances."""
        return EmbeddingSet(self.ids, vectors, self.labels, self.instances)

    def evaluated(self, vectors: np.ndarray) -> EmbeddingSet:
        """The evaluated split's ``vectors`` (one per ``local.eval_rows``) with their ids, labels
        and instances."""
        rows = self.local.eval_rows
        return EmbeddingSet([self.ids[i] for i in rows], vectors, [self.labels[i] for i in rows],
                            [self.instances[i] for i in rows])

    @property
    def query_positions(self) -> np.ndarray:
        """The retrieval queries as positions in the evaluated split (every product of it when
        no queries are sampled)."""
        q = self.local.queries
        return np.arange(len(self.local.eval_rows)) if q is None else np.asarray(q, np.int64)

    def loader_rows(self, of: str) -> np.ndarray:
        """Positions in the loader's order of the evaluated split (``of="eval"``) or of its
        retrieval queries (``of="queries"``): what a variant scored on those products alone keeps
        (:func:`fuse.variants.embed_variants`'s ``subsets``)."""
        rows = np.asarray(self.drawn.eval_rows, np.int64)
        if of == "eval":
            return rows
        if of == "queries":
            return rows[self.query_positions]
        raise ValueError(f"of must be 'eval' or 'queries', got {of!r}")


def read_store(features: Path, models: Models, split: str, budget: EvalBudget, progress: bool) -> Store:
    """The stores under ``features`` of every model's modalities, checked against each model
    before any feature is loaded, split and sampled (see :class:`Store`)."""
    from scalemm.fuse.embedder import open_features, store_loader

    provenance = {k: s.provenance for k, s in open_stores(features, models.modalities).items()}  # metadata only
    for m in models.every:
        m.embedder.check_stores(features, provenance)
    cfg, spec = models.scale[0].cfg, models.spec
    ds = open_features(features, models.modalities, cfg, progress=progress)
    view = SplitView.of(ds.instances, ds.ids, spec, split)
    log.info("split %s: %s; evaluating on %d %s products with seeds %s", spec, view.to_json()["sizes"],
             len(view.eval_rows), split, models.seeds)
    if len(view.eval_rows) < 2:
        raise StoreError(f"the {split} split holds {len(view.eval_rows)} product(s); the store is too small")
    # at scale: samples of queries / probe / k-means products, and only the products scored kept
    drawn = Samples.draw(view.eval_rows, view.train_rows, budget, spec.seed)
    work = drawn.workset
    if work is not None:
        log.info("sampled: %s; %d of %d products kept in memory", drawn.to_json(), len(work), len(ds))
    kept = (lambda xs: list(xs)) if work is None else (lambda xs: [xs[i] for i in work])
    loader = store_loader(ds, 256 if work is None else 2048, cfg)
    return Store(features, ds, view, drawn, work, drawn.within(work), loader, kept(ds.ids), kept(ds.labels),
                 kept(ds.instances))


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
