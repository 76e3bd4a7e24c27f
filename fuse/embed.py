"""Product embeddings from a trained SCALE checkpoint.

:func:`embed_store` loads a checkpoint (safetensors, with the training config and the
training stores' provenance in its metadata), refuses feature stores whose provenance
does not fit the model (backbone, weights, preprocessing, token layout: see
:data:`fuse.checkpoint.EMBED_FIELDS`; the corpus may differ, that is the point), and
returns per item the model's configured product embedding of the chosen modalities
(:func:`fuse.model.product_embedding` under the checkpoint's embedding settings;
L2-normalized, :attr:`ScaleModel.embedding_dim` wide). Modalities left out are treated as absent in the
fusion transformer, so modality ablations come from one trained model.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from scalemm import embedfile
from scalemm.store import StoreError

from .checkpoint import EMBED_FIELDS, check_provenance, load_weights, resolve_weights
from .model import ScaleModel, product_embedding
from .reader import EpochBatchSampler, FeatureDataset, make_loader
from scalemm.device import resolve_device, to_device

log = logging.getLogger(__name__)


def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[ScaleModel, dict[str, Any]]:
    """The trained model (eval mode) and ``{"config", "provenance", "step", "weights"}``."""
    tensors, cfg, prov, step = load_weights(run_dir)
    model = ScaleModel(cfg, {m: (p.max_tokens, p.dim) for m, p in prov.items()})
    model.load_trained(tensors)
    model.to(device).eval()
    return model, {"config": cfg, "provenance": prov, "step": step, "weights": resolve_weights(run_dir)}


def embed_store(run_dir: str | Path, features_dir: str | Path, modalities: Sequence[str] | None = None,
                batch_size: int = 256, device: str = "auto", progress: bool = False,
                source: str | None = None) -> dict[str, Any]:
    """Embed every item of the stores under ``features_dir`` with the model of ``run_dir``.

    ``modalities``: the subset to use (default: all the model was trained on).
    Returns ``ids``, ``labels``, ``instances`` (lists), ``modalities`` (list, order of M),
    ``vectors`` float32 [N, d] (the product embedding, L2-normalized; zero if nothing present),
    ``pooled`` float32 [N, M, d], ``presence`` bool [N, M], ``importances`` float32 [N, M].
    """
    dev = resolve_device(device)
    model, info = load_model(run_dir, dev)
    trained = model.modalities
    mods = list(trained) if modalities is None else [m for m in trained if m in set(modalities)]
    extra = [m for m in (modalities or []) if m not in trained]
    if extra:
        raise StoreError(f"the model in {run_dir} was trained on {trained}, not on {extra}; "
                         f"choose modalities among those")
    if not mods:
        raise StoreError("no modality to embed; name at least one the model was trained on")
    root = Path(features_dir)
    if root.is_dir():
        missing = [m for m in mods if not (root / m).is_dir()]
        if missing and modalities is None:
            raise StoreError(f"no {missing[0]} store under {root / missing[0]}; extract it, or pass the "
                             f"modalities to embed (e.g. --modalities {','.join(x for x in mods if x not in missing)})")
    ds = FeatureDataset(root, mods, info["config"].runtime.memory_budget_gb, progress=progress)
    check_provenance(info["provenance"], ds.provenance, EMBED_FIELDS,
                     where=f"embedding {root} with {info['weights']}")
    sampler = EpochBatchSampler(ds, batch_size, seed=0, shuffle=False, drop_last=False)
    loader = make_loader(ds, sampler, info["config"].runtime.loader_workers)
    cols = [trained.index(m) for m in mods]
    settings = model.embedding if source is None else dataclasses.replace(model.embedding, source=source)
    vecs, pooled, enc_pooled, pres, imps = [], [], [], [], []
    from tqdm.auto import tqdm
    with torch.no_grad(), torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        for batch in tqdm(loader, desc="embed", unit="batch", disable=not progress):
            batch = to_device(batch, dev)
            out = model(batch)
            vecs.append(product_embedding(out, settings).cpu())
            pooled.append(out.pooled[:, cols].float().cpu())
            enc_pooled.append(out.enc_pooled[:, cols].float().cpu())
            pres.append(out.present[:, cols].cpu())
            imps.append(torch.stack([out.importances[:, j] for j in cols], 1).float().cpu())
    return {
        "ids": list(ds.ids), "labels": list(ds.labels), "instances": list(ds.instances),
        "modalities": mods,
        "vectors": torch.cat(vecs).numpy().astype(np.float32),
        "pooled": torch.cat(pooled).numpy().astype(np.float32),
        "enc_pooled": torch.cat(enc_pooled).numpy().astype(np.float32),
        "presence": torch.cat(pres).numpy().astype(bool),
        "importances": torch.cat(imps).numpy().astype(np.float32),
    }


def save_embeddings(result: dict[str, Any], path: str | Path, with_pooled: bool = True) -> Path:
    """Write an ``embed_store`` result as an embeddings file (:mod:`scalemm.embedfile`) with
    its extras (modalities, presence, importances, and ``pooled`` unless ``with_pooled`` is
    False), atomically."""
    extras = {"modalities": result["modalities"], "presence": result["presence"],
              "importances": result["importances"]}
    if with_pooled:
        extras["pooled"] = result["pooled"]
    return embedfile.save_embeddings(path, result["ids"], result["vectors"], result["labels"],
                                     result["instances"], **extras)
