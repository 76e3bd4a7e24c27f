"""Product embeddings of every variant a model is evaluated with, from one pass over a store.

A variant is the product embedding under one choice: all the modalities the model was trained
on, a subset of them (the modality ablation), each modality of each product dropped with some
probability (robustness to missing modalities), or the other embedding source (the paper's
fused first tokens). The modality encoders do not see each other, so each batch is encoded
once (:meth:`ScaleModel.encode`) and only the joint part (:meth:`ScaleModel.fuse`) runs once
per variant: switching a modality off there is exactly the model on a batch without it.

Dropped modalities are drawn per (seed, product id, modality) from a hash, so every method
and every model loses the same modalities of the same products.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from scalemm.modalities import MODALITIES

from .model import ScaleModel, product_embedding


@dataclass(frozen=True)
class Variant:
    """One way of embedding the products (see the module doc)."""

    name: str
    modalities: tuple[str, ...] | None = None  # keep only these (None: every trained modality)
    drop: float = 0.0  # each present modality of each product is dropped with this probability
    drop_seed: int = 0
    source: str | None = None  # "encoder" | "fusion"; None: the run's configured embed_from


def drop_mask(ids: Sequence[str], modalities: Sequence[str], prob: float, seed: int) -> np.ndarray:
    """Bool [N, M]: True where product i keeps modality m, each dropped with probability ``prob``,
    independently, as a pure function of (seed, id, modality)."""
    keep = np.ones((len(ids), len(modalities)), dtype=bool)
    if prob <= 0:
        return keep
    for i, pid in enumerate(ids):
        for j, m in enumerate(modalities):
            h = hashlib.blake2b(f"{seed}\x00{pid}\x00{m}".encode(), digest_size=8).digest()
            keep[i, j] = int.from_bytes(h, "big") / 2.0 ** 64 >= prob
    return keep


def variant_presence(v: Variant, model_mods: Sequence[str], ids: Sequence[str]) -> np.ndarray:
    """Bool [N, M] of the modalities variant ``v`` lets the model see (before the batch's own)."""
    keep = np.ones((len(ids), len(model_mods)), dtype=bool)
    if v.modalities is not None:
        keep &= np.isin(np.asarray(model_mods), list(v.modalities))[None, :]
    if v.drop > 0:
        keep &= drop_mask(ids, model_mods, v.drop, v.drop_seed)
    return keep


@torch.no_grad()
def embed_variants(model: ScaleModel, loader: Any, variants: Sequence[Variant], device: torch.device,
                   embed_from: str, progress: bool = False, weighting: str | None = None) -> dict[str, Any]:
    """Every variant's product embeddings for the items of ``loader`` (in its order).

    Returns ``ids``, ``labels``, ``instances``, ``modalities`` (the model's), and per variant
    name a float32 [N, d] array under ``vectors[name]``; plus, for the whole model (no
    modality switched off), ``presence`` Bool [N, M], ``importances`` float32 [N, M] and the
    encoders' pooled outputs ``enc_pooled`` float32 [N, M, d].
    """
    from tqdm.auto import tqdm

    from .device import to_device

    mods = list(model.modalities)
    weighting = weighting or model.cfg.embed_weighting
    out: dict[str, Any] = {"ids": [], "labels": [], "instances": [], "modalities": mods,
                           "vectors": {v.name: [] for v in variants}, "presence": [], "importances": [],
                           "enc_pooled": []}
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with autocast:
        for batch in tqdm(loader, desc="embed", unit="batch", disable=not progress):
            batch = to_device(batch, device)
            enc = model.encode(batch)
            full = model.fuse(enc)
            out["presence"].append(full.present.cpu())
            out["importances"].append(full.importances.float().cpu())
            out["enc_pooled"].append(full.enc_pooled.float().cpu())
            for k in ("ids", "labels", "instances"):
                out[k] += list(batch[k])
            for v in variants:
                keep = torch.from_numpy(variant_presence(v, mods, batch["ids"])).to(device)
                o = full if bool(keep.all()) else model.fuse(enc, keep)
                out["vectors"][v.name].append(product_embedding(o, v.source or embed_from, weighting).float().cpu())
    out["vectors"] = {k: torch.cat(x).numpy().astype(np.float32) for k, x in out["vectors"].items()}
    for k in ("presence", "importances", "enc_pooled"):
        out[k] = torch.cat(out[k]).numpy()
    out["presence"] = out["presence"].astype(bool)
    return out


def ablation_variants(trained: Sequence[str], order: Sequence[Sequence[str]]) -> list[Variant]:
    """The ablation subsets of ``order`` whose modalities the model was trained on."""
    from scalemm.modalities import ablation_name

    return [Variant(ablation_name(tuple(s)), tuple(s)) for s in order if all(m in trained for m in s)]


__all__ = ["MODALITIES", "Variant", "ablation_variants", "drop_mask", "embed_variants", "variant_presence"]
