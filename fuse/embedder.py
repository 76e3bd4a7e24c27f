"""The one way to embed products with a trained SCALE model.

An :class:`Embedder` is built from a run (:meth:`Embedder.from_run`: its latest checkpoint, or a
``.safetensors`` file). It holds the model in eval mode, its training config, the training
stores' provenance and the embedding settings (the checkpoint's, or others given). It embeds:

* a loader over feature stores into any named variants (:meth:`embed`: every modality, a subset,
  dropped modalities, the fused source; :class:`Variant`, :func:`ablation_variants`,
  :func:`drop_mask`, re-exported from :mod:`fuse.variants`), which evaluation uses;
* a whole feature directory (:meth:`embed_features`), which ``pipelines/embed.py`` uses;
* a collated batch of products in memory (:meth:`embed_batch`), which search uses for a product
  that is in no store.

Stores are checked against the model's provenance (backbone, weights, preprocessing, token
layout: :data:`fuse.checkpoint.EMBED_FIELDS`) before any feature is read. Several models that
embed the same stores share one reading of them: :func:`open_features` and :func:`store_loader`
(what :meth:`Embedder.open` does for one model).
"""

from __future__ import annotations

import dataclasses
import logging
import random
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from scalemm.device import resolve_device, to_device
from scalemm.store import Provenance, StoreError

from .checkpoint import EMBED_FIELDS, check_provenance, load_weights, resolve_weights
from .config import EmbedSettings, ScaleConfig, with_embedding_changes
from .model import EMBEDDING_RULE, ScaleModel
from .reader import EpochBatchSampler, FeatureDataset, make_loader
from .variants import Variant, ablation_variants, drop_mask, embed_variants

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Embedder:
    """A trained model ready to embed (see the module doc)."""

    model: ScaleModel
    config: ScaleConfig
    provenance: dict[str, Provenance]
    weights: Path
    step: int
    device: torch.device

    @classmethod
    def from_run(cls, run: str | Path, device: str | torch.device = "auto",
                 settings: EmbedSettings | None = None) -> "Embedder":
        """The model of ``run`` (a run directory or a checkpoint file) on ``device``, embedding with
        ``settings`` (default: those the checkpoint records)."""
        dev = device if isinstance(device, torch.device) else resolve_device(device)
        tensors, cfg, prov, step = load_weights(run)
        model = ScaleModel(cfg, {m: (p.max_tokens, p.dim) for m, p in prov.items()})
        model.load_trained(tensors)
        model.to(dev).eval()
        out = cls(model, cfg, prov, resolve_weights(run), step, dev)
        if settings is not None:
            out.model.set_embedding(settings)
        return out

    @classmethod
    def untrained(cls, like: "Embedder") -> "Embedder":
        """The same architecture, config and seed at initialisation (:func:`fuse.step.init_model`)
        with ``like``'s frozen skip maps, fixed before the first step (:mod:`fuse.skip`): what
        training started from, ``scale_untrained``. The global RNG states are left as they were."""
        from .skip import copy_skip_maps
        from .step import init_model

        state = random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                model = init_model(like.config, like.model.shapes)
        finally:
            random.setstate(state)
        copy_skip_maps(like.model, model)  # fixed from the train split before the first step
        return cls(model.to(like.device).eval(), like.config, like.provenance, like.weights, 0, like.device)

    # ------------------------------------------------------------------ what it is
    @property
    def modalities(self) -> list[str]:
        return list(self.model.modalities)

    @property
    def dim(self) -> int:
        return int(self.model.embedding_dim)

    @property
    def settings(self) -> EmbedSettings:
        return self.model.embedding

    def change_embedding(self, changes: Mapping[str, Any], source: str = "--embedding") -> None:
        """Embed with this checkpoint's settings changed by ``changes`` ({key: value}, from
        :func:`fuse.config.embedding_change`), read and validated as an ``embedding:`` section is."""
        if changes:
            self.model.set_embedding(with_embedding_changes(self.settings, dict(changes), source))

    def describe(self) -> dict[str, Any]:
        """What built a vector: the checkpoint, its step and seed, and the embedding settings."""
        return {"weights": str(self.weights), "step": self.step, "seed": self.config.seed,
                "split_seed": self.config.split_seed, "dim": self.dim,
                "embedding": dataclasses.asdict(self.settings)}

    # ------------------------------------------------------------------ stores
    def check_stores(self, features_dir: str | Path, provenance: Mapping[str, Provenance]) -> None:
        """Refuse stores that the model cannot embed (another backbone, weights, token layout)."""
        check_provenance(self.provenance, {m: p for m, p in provenance.items() if m in self.modalities},
                         EMBED_FIELDS, where=f"embedding {features_dir} with {self.weights}")

    def open(self, features_dir: str | Path, modalities: Sequence[str] | None = None, batch_size: int = 256,
             progress: bool = False) -> tuple[FeatureDataset, Any]:
        """The stores under ``features_dir`` (``modalities``: a subset of the trained ones) and a
        loader over every item in store order, after checking them against the model."""
        ds = open_features(features_dir, self._choose(features_dir, modalities), self.config, progress)
        self.check_stores(features_dir, ds.provenance)
        return ds, store_loader(ds, batch_size, self.config)

    def _choose(self, features_dir: str | Path, modalities: Sequence[str] | None) -> list[str]:
        trained = self.modalities
        extra = [m for m in (modalities or []) if m not in trained]
        if extra:
            raise StoreError(f"the model in {self.weights} was trained on {trained}, not on {extra}; "
                             f"choose modalities among those")
        mods = list(trained) if modalities is None else [m for m in trained if m in set(modalities)]
        if not mods:
            raise StoreError("no modality to embed; name at least one the model was trained on")
        root = Path(features_dir)
        missing = [m for m in mods if root.is_dir() and not (root / m).is_dir()]
        if missing and modalities is None:
            raise StoreError(f"no {missing[0]} store under {root / missing[0]}; extract it, or pass the "
                             f"modalities to embed (e.g. --modalities {','.join(x for x in mods if x not in missing)})")
        return mods

    # ------------------------------------------------------------------ embedding
    def embed(self, loader: Any, variants: Sequence[Variant] = (Variant("scale"),), progress: bool = False,
              rows: np.ndarray | None = None,
              writers: Mapping[str, Callable[[np.ndarray], Any]] | None = None,
              pooled: Sequence[str] | None = None,
              subsets: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
        """Every variant's embeddings of the loader's items (:func:`fuse.variants.embed_variants`)."""
        return embed_variants(self.model, loader, variants, self.device, progress=progress, rows=rows,
                              writers=writers, pooled=pooled, subsets=subsets)

    def embed_features(self, features_dir: str | Path, modalities: Sequence[str] | None = None,
                       batch_size: int = 256, progress: bool = False) -> dict[str, Any]:
        """Every item of the stores under ``features_dir``: ``ids``, ``labels``, ``instances``,
        ``modalities`` (the ones embedded), ``vectors`` float32 [N, d] (L2-normalized; zero where
        nothing is present), ``pooled`` float32 [N, M, d] (each modality's encoder output, the
        embedding's parts), ``presence`` bool [N, M], ``importances`` float32 [N, M]."""
        ds, loader = self.open(features_dir, modalities, batch_size, progress)
        res = self.embed(loader, progress=progress)
        cols = [self.modalities.index(m) for m in ds.modalities]
        return {"ids": res["ids"], "labels": res["labels"], "instances": res["instances"],
                "weights": str(self.weights), "modalities": list(ds.modalities), "vectors": res["vectors"]["scale"],
                "pooled": res["enc_pooled"][:, cols], "presence": res["presence"][:, cols],
                "importances": res["importances"][:, cols], "features": str(Path(features_dir).resolve())}

    def embed_batch(self, batch: Mapping[str, Any]) -> np.ndarray:
        """Float32 [B, d]: the embeddings of a collated batch (:func:`fuse.reader.collate`), e.g.
        products featurized in memory; a modality the batch lacks is absent."""
        res = embed_variants(self.model, [dict(batch)], [Variant("scale")], self.device)
        return res["vectors"]["scale"]


def open_features(features_dir: str | Path, modalities: Sequence[str], config: ScaleConfig,
                  progress: bool = False) -> FeatureDataset:
    """The joined stores of ``modalities`` under ``features_dir`` (ids, labels, instances,
    provenance and the features), read within ``config``'s memory budget; no model check: call
    :meth:`Embedder.check_stores` for each model that embeds them."""
    return FeatureDataset(features_dir, list(modalities), config.runtime.memory_budget_gb, progress=progress)


def store_loader(ds: FeatureDataset, batch_size: int, config: ScaleConfig) -> Any:
    """A loader over every item of ``ds`` in store order, in batches of ``batch_size`` (the
    input of :meth:`Embedder.embed`), with ``config``'s loader workers."""
    sampler = EpochBatchSampler(ds, batch_size, seed=0, shuffle=False, drop_last=False)
    return make_loader(ds, sampler, config.runtime.loader_workers)


def write_embeddings(result: Mapping[str, Any], path: str | Path, with_pooled: bool = True) -> Path:
    """Write an :meth:`Embedder.embed_features` result as an embeddings file
    (:mod:`scalemm.embedfile`) with its extras, atomically."""
    from scalemm import embedfile

    from scalemm.store import file_fingerprint

    extras = {"modalities": result["modalities"], "presence": result["presence"],
              "importances": result["importances"],
              # which checkpoint embedded them, under which rule: a catalogue refuses products
              # another one embedded, or the same under another rule
              "weights_sha256": np.array(file_fingerprint(result["weights"])),
              "embedding_rule": np.array(EMBEDDING_RULE, dtype=np.int64)}
    if result.get("features"):  # the store they came from: a catalogue they join shows their titles
        extras["features"] = np.array(str(result["features"]))
    if with_pooled:
        extras["pooled"] = result["pooled"]
    return embedfile.save_embeddings(path, result["ids"], result["vectors"], result["labels"],
                                     result["instances"], **extras)


__all__ = ["Embedder", "Variant", "ablation_variants", "drop_mask", "open_features", "resolve_weights",
           "store_loader", "write_embeddings", "to_device"]
