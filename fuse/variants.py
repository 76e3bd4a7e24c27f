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
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from scalemm.modalities import MODALITIES

from .model import Encoded, ScaleModel


@dataclass(frozen=True)
class Variant:
    """One way of embedding the products (see the module doc)."""

    name: str
    modalities: tuple[str, ...] | None = None  # keep only these (None: every trained modality)
    drop: float = 0.0  # each present modality of each product is dropped with this probability
    drop_seed: int = 0
    source: str | None = None  # "encoder" | "fusion"; None: the model's embedding source


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


def _encoder_pooled(model: ScaleModel, enc: Encoded) -> torch.Tensor:
    """The encoders' pooled outputs [B, M, d] in float32, zero where a modality is absent: what
    :meth:`ScaleModel.fuse` returns as ``enc_pooled``, without running the joint transformer."""
    first = enc.seqs[enc.modalities[0]]
    zeros = torch.zeros(first.shape[0], first.shape[2], dtype=torch.float32, device=first.device)
    z = torch.stack([enc.seqs[m][:, 0].float() if m in enc.seqs else zeros for m in model.modalities], 1)
    return torch.where(enc.present[..., None], z, torch.zeros((), dtype=z.dtype, device=z.device))


def _rows_of(enc: Encoded, sel: torch.Tensor) -> Encoded:
    """The samples ``sel`` of an encoded batch."""
    return Encoded(enc.modalities, enc.present[sel], {m: s[sel] for m, s in enc.seqs.items()},
                   {m: k[sel] for m, k in enc.keys.items()}, first_only=enc.first_only)


@torch.no_grad()
def embed_variants(model: ScaleModel, loader: Any, variants: Sequence[Variant], device: torch.device,
                   progress: bool = False, rows: np.ndarray | None = None,
                   writers: Mapping[str, Callable[[np.ndarray], Any]] | None = None,
                   pooled: Sequence[str] | None = None,
                   subsets: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Every variant's product embeddings for the items of ``loader`` (in its order).

    Returns ``ids``, ``labels``, ``instances``, ``modalities`` (the model's), and per variant
    name a float32 [N, d] array under ``vectors[name]``; plus, for the whole model (no
    modality switched off), ``presence`` Bool [N, M], ``importances`` float32 [N, M] and the
    encoders' pooled outputs ``enc_pooled`` float32 [N, M, d].

    At scale: ``rows`` (sorted positions in the loader's order) keeps only those items' outputs
    (N = len(rows)); ``writers`` {variant name: callable} receive that variant's vectors of
    every item, batch by batch (e.g. a chunked file writer), whatever ``rows`` keeps.
    ``pooled`` keeps the encoders' outputs of those modalities only (``enc_pooled`` [N, M', d],
    ``pooled_modalities`` says which; None: every modality's). ``subsets`` {variant name: sorted
    positions in the loader's order, among ``rows``} keeps only those items of that variant
    (``vectors[name]`` [len(subsets[name]), d]): the variants scored on the evaluated split
    alone (the ablation) or on its queries alone (dropped modalities) need not hold the probe's
    training products.

    The encoders run once per batch; without a joint transformer they compute each modality's
    first token alone (:attr:`ScaleModel.first_tokens_suffice`), the only output then read.
    Variants embedded from the encoders' pooled outputs (the default source) need no joint
    transformer: their embedding depends on the fusion side only through the harmonizer, which
    sees the encoders' outputs (the same numbers as :meth:`ScaleModel.fuse` would give). The
    joint transformer runs once per batch for the variants embedded from the fused tokens, on
    the kept rows only.
    """
    from tqdm.auto import tqdm

    from scalemm.device import to_device

    writers = writers or {}
    pcols = list(range(len(model.modalities))) if pooled is None else \
        [model.modalities.index(m) for m in pooled if m in model.modalities]
    subsets = {n: np.asarray(r, np.int64) for n, r in (subsets or {}).items()}
    unknown = set(subsets) - {v.name for v in variants}
    if unknown:
        raise ValueError(f"subsets of variants that are not embedded: {sorted(unknown)}")
    for n, r in subsets.items():
        if len(r) and (np.any(np.diff(r) <= 0) or (rows is not None and not np.isin(r, rows).all())):
            raise ValueError(f"the subset of {n!r} is not sorted positions among the rows kept")
    out = _Collected([v.name for v in variants], None if rows is None else len(rows),
                     {"vectors/" + n: len(r) for n, r in subsets.items()})
    start = 0
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with autocast:
        for batch in tqdm(loader, desc="embed", unit="batch", disable=not progress):
            B = len(batch["ids"])
            if rows is None:
                keep = np.arange(B)
            else:
                lo, hi = np.searchsorted(rows, [start, start + B])
                keep = rows[lo:hi] - start
            masks = {}  # per variant with a subset: which of the kept rows it keeps
            for n, r in subsets.items():
                lo, hi = np.searchsorted(r, [start, start + B])
                masks[n] = np.isin(keep, r[lo:hi] - start)
            start += B
            if writers:  # every row goes to a writer: the encoders see the whole batch
                _embed_batch(model, to_device(batch, device), keep, variants, device, writers, out, pcols, masks)
            elif len(keep):  # only the kept rows are encoded
                sub = batch if len(keep) == B else _batch_rows(batch, keep)
                _embed_batch(model, to_device(sub, device), np.arange(len(keep)), variants, device, {}, out, pcols,
                             masks)
    return {"modalities": list(model.modalities), "pooled_modalities": [model.modalities[j] for j in pcols],
            **out.result()}


class _Collected:
    """The outputs of :func:`embed_variants`, row blocks appended in order. With the number of
    rows known beforehand (``n``; ``sizes`` for the keys that keep fewer) every array is
    allocated once and filled in place: at a million products a list of per-batch blocks,
    concatenated at the end, held two copies at the peak and fragmented the heap."""

    def __init__(self, names: Sequence[str], n: int | None, sizes: Mapping[str, int]) -> None:
        self.names, self.n, self.pos, self.sizes = list(names), n, 0, dict(sizes)
        self.meta: dict[str, list[str]] = {"ids": [], "labels": [], "instances": []}
        self.arrays: dict[str, Any] = {}
        self.at: dict[str, int] = {}  # rows written so far, per key

    def add(self, batch: Mapping[str, Any], keep: np.ndarray, blocks: Mapping[str, torch.Tensor]) -> None:
        """Rows ``keep`` of ``batch`` (ids, labels, instances) with their ``blocks`` {key: [K, ...]}
        (keys: ``vectors/<variant>``, ``presence``, ``importances``, ``enc_pooled``; a variant
        with a subset has fewer rows: those of its subset)."""
        for k in self.meta:
            self.meta[k] += [batch[k][i] for i in keep]
        for key, t in blocks.items():
            a = t.detach().cpu().numpy()
            at = self.at.get(key, 0)
            self.at[key] = at + len(a)
            if self.n is None:
                self.arrays.setdefault(key, []).append(a)
                continue
            if key not in self.arrays:
                self.arrays[key] = np.empty((self.sizes.get(key, self.n), *a.shape[1:]), dtype=a.dtype)
            self.arrays[key][at:at + len(a)] = a
        self.pos += len(keep)

    def result(self) -> dict[str, Any]:
        if self.n is not None and self.pos != self.n:
            raise ValueError(f"the loader yielded {self.pos} of the {self.n} rows asked for")
        short = {k: (self.at.get(k, 0), n) for k, n in self.sizes.items() if self.at.get(k, 0) != n}
        if short:
            raise ValueError(f"the loader yielded fewer rows than a subset asks for: {short}")
        if self.n is None:
            arrays = {k: np.concatenate(v) for k, v in self.arrays.items()}
        else:
            arrays = self.arrays
        dims = {k.split("/", 1)[1]: a.shape[1] for k, a in arrays.items() if k.startswith("vectors/")}
        empty = {"vectors/" + n: np.zeros((0, dims.get(n, 0)), np.float32) for n in self.names}
        arrays = {**empty, **arrays}
        return {**self.meta,
                "vectors": {n: arrays["vectors/" + n].astype(np.float32, copy=False) for n in self.names},
                "presence": arrays.get("presence", np.zeros((0, 0), bool)).astype(bool, copy=False),
                "importances": arrays.get("importances", np.zeros((0, 0), np.float32)),
                "enc_pooled": arrays.get("enc_pooled", np.zeros((0, 0, 0), np.float32))}


def _batch_rows(batch: Mapping[str, Any], keep: np.ndarray) -> dict[str, Any]:
    """The rows ``keep`` of a collated batch (:func:`fuse.reader.collate`)."""
    idx = torch.from_numpy(keep)
    out: dict[str, Any] = {k: [batch[k][i] for i in keep] for k in ("ids", "labels", "instances")}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v[idx]
        elif isinstance(v, dict):
            out[k] = {m: t[idx] for m, t in v.items()}
    return out


def _embed_batch(model: ScaleModel, batch: Mapping[str, Any], keep: np.ndarray, variants: Sequence[Variant],
                 device: torch.device, writers: Mapping[str, Callable[[np.ndarray], Any]], out: _Collected,
                 pcols: Sequence[int], masks: Mapping[str, np.ndarray]) -> None:
    """One batch of :func:`embed_variants`: the encoders once, then every variant on the rows it
    needs (every row for a writer; else the rows ``keep``, of a variant with a mask the kept
    rows marked), added to ``out``."""
    mods, B = list(model.modalities), len(batch["ids"])
    enc = model.encode(batch, first_only=model.first_tokens_suffice)  # no variant reads the other tokens
    present = enc.present
    z = _encoder_pooled(model, enc)
    with torch.autocast(device_type=device.type, enabled=False):
        _, imp = model.harmonizer(z, present, uniform=not model.cfg.harmonize)
    sel = torch.from_numpy(keep).to(device)
    blocks = {"presence": present[sel], "importances": imp[sel].float(), "enc_pooled": z[sel][:, list(pcols)]}
    fused: dict[tuple[bytes, bytes], Any] = {}
    for v in variants:
        rows = keep[masks[v.name]] if v.name in masks else keep  # what ``out`` keeps of this variant
        at = np.arange(B) if v.name in writers else rows  # what it is computed on
        if not len(at):
            blocks["vectors/" + v.name] = torch.zeros((0, model.embedding_dim))
            continue
        whole = len(at) == B  # ``at`` is sorted distinct positions: every row
        t_at = torch.from_numpy(at).to(device)
        vkeep = torch.from_numpy(variant_presence(v, mods, [batch["ids"][i] for i in at])).to(device)
        if (v.source or model.embedding.source) == "encoder":
            pv = (present if whole else present[t_at]) & vkeep
            zv = torch.where(pv[..., None], z if whole else z[t_at], torch.zeros((), dtype=z.dtype, device=z.device))
            with torch.autocast(device_type=device.type, enabled=False):
                _, iv = model.harmonizer(zv, pv, uniform=not model.cfg.harmonize)
                emb = model.product_vector(zv, pv, iv)
        else:  # the joint transformer: once per batch, rows and distinct presence
            key = (at.tobytes(), vkeep.cpu().numpy().tobytes())
            if key not in fused:
                fused[key] = model.fuse(enc if whole else _rows_of(enc, t_at), None if bool(vkeep.all()) else vkeep)
            f = fused[key]
            emb = model.product_vector(f.pooled, f.present, f.importances, enc_pooled=f.enc_pooled)
        emb = emb.float()
        if v.name in writers:
            writers[v.name](emb.cpu().numpy())
            emb = emb[torch.from_numpy(rows).to(device)]
        blocks["vectors/" + v.name] = emb
    out.add(batch, keep, blocks)


def ablation_variants(trained: Sequence[str], order: Sequence[Sequence[str]]) -> list[Variant]:
    """The ablation subsets of ``order`` whose modalities the model was trained on."""
    from scalemm.modalities import ablation_name

    return [Variant(ablation_name(tuple(s)), tuple(s)) for s in order if all(m in trained for m in s)]


__all__ = ["MODALITIES", "Variant", "ablation_variants", "drop_mask", "embed_variants", "variant_presence"]
