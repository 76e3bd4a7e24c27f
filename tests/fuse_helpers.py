"""Synthetic feature stores for the fuse/ tests and benchmarks (written with extract.store).

Planted structure: items belong to ``n_classes`` latent classes and to instances (two
listings per instance by default). Every modality of an item is the same latent vector
(class prototype + instance offset + small listing noise) plus a modality-specific
nuisance, each sent through a random projection of that modality, plus per-token position
patterns and noise. So the modalities agree on class and instance, but only after
modality-specific maps: an untrained model cannot retrieve across modalities, a trained
one can.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from scalemm.store import MODALITIES, Provenance, ShardData, write_failure_part, write_shard

# the real stores' token layout (max_tokens, dim)
REAL_SHAPES: dict[str, tuple[int, int]] = {
    "image": (49, 1280), "text": (36, 384), "table": (64, 384), "video": (12, 1280), "audio": (47, 80)}
# a tiny layout for unit tests
SMALL_SHAPES: dict[str, tuple[int, int]] = {
    "image": (6, 24), "text": (5, 16), "table": (8, 16), "video": (4, 24), "audio": (5, 8)}


def make_provenance(modality: str, max_tokens: int, dim: int, **overrides: Any) -> Provenance:
    p = Provenance(modality=modality, backbone=f"synthetic:{modality}", weights_hash="0" * 16,
                   pretrained=False, preprocessing={"synthetic": True}, code_version="test+0",
                   corpus_fingerprint="synthetic-corpus", dim=dim, pooled_dim=dim, max_tokens=max_tokens)
    return replace(p, **overrides)


def table_entities(count: int, max_tokens: int, rng: np.random.Generator) -> np.ndarray:
    """Entity index per token: spans of 1-3 tokens alternating key/value, some tokens -1."""
    ent = np.full(max_tokens, -1, np.int32)
    t, e = 0, 0
    while t < count:
        if rng.random() < 0.15:  # a separator token outside any entity
            t += 1
            continue
        span = int(rng.integers(1, 4))
        ent[t: min(count, t + span)] = e
        t += span
        e += 1
    return ent


def write_synthetic_store(root: str | Path, n_items: int = 64, shapes: dict[str, tuple[int, int]] | None = None,
                          modalities: tuple[str, ...] | list[str] = MODALITIES, n_classes: int = 8,
                          listings_per_instance: int = 2, missing: float = 0.1, shards: int = 2,
                          seed: int = 0, latent_dim: int = 8, nuisance: float = 0.5, noise: float = 0.3,
                          prov_overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write one store per modality under ``root``. Returns ids, labels, instances, latents."""
    shapes = shapes or SMALL_SHAPES
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(n_classes, latent_dim)) * 2.0
    n_inst = -(-n_items // listings_per_instance)
    inst_class = rng.integers(0, n_classes, size=n_inst)
    inst_lat = protos[inst_class] + rng.normal(size=(n_inst, latent_dim)) * 0.7
    inst_of = np.repeat(np.arange(n_inst), listings_per_instance)[:n_items]
    lat = inst_lat[inst_of] + rng.normal(size=(n_items, latent_dim)) * 0.1
    ids = [f"p{i:05d}" for i in range(n_items)]
    labels = [f"c{inst_class[k]}" for k in inst_of]
    instances = [f"i{k:04d}" for k in inst_of]
    bounds = np.linspace(0, n_items, shards + 1).astype(int)
    presence: dict[str, np.ndarray] = {}
    for m in modalities:
        T, D = shapes[m]
        mrng = np.random.default_rng([seed, MODALITIES.index(m), 7])
        P = mrng.normal(size=(latent_dim, D)) / np.sqrt(latent_dim)
        Q = mrng.normal(size=(latent_dim, D)) / np.sqrt(latent_dim)
        pos = mrng.normal(size=(T, D)) * 0.5
        nuis = mrng.normal(size=(n_items, latent_dim)) * nuisance
        item = lat @ P + nuis @ Q  # [N, D]
        counts = mrng.integers(max(1, T // 2), T + 1, size=n_items).astype(np.int32)
        present = mrng.random(n_items) >= missing
        counts[~present] = 0
        tokens = item[:, None, :] + pos[None] + mrng.normal(size=(n_items, T, D)) * noise
        tokens[np.arange(T)[None, :] >= counts[:, None]] = 0.0
        entities = None
        if m == "table":
            entities = np.stack([table_entities(int(c), T, mrng) for c in counts])
        pooled = np.where(present[:, None], item, 0.0).astype(np.float32)
        prov = make_provenance(m, T, D, **(prov_overrides or {}).get(m, {}))
        presence[m] = present
        for k in range(shards):
            a, b = bounds[k], bounds[k + 1]
            data = ShardData(ids=ids[a:b], labels=labels[a:b], instances=instances[a:b],
                             tokens=tokens[a:b].astype(np.float16), counts=counts[a:b], pooled=pooled[a:b],
                             entities=None if entities is None else entities[a:b])
            write_shard(Path(root) / m / f"shard-{k:05d}.h5", data, prov, k)
    for k in range(shards):
        write_failure_part(root, k, [])
    return {"ids": ids, "labels": labels, "instances": instances, "latents": lat, "presence": presence}


def tiny_config(**kw: Any):
    """A ScaleConfig small enough for unit tests. Keys of the ``embedding`` and ``runtime``
    sections may be given flat here (a test's shorthand; config files nest them)."""
    import dataclasses

    from scalemm.fuse.config import EmbedSettings, RunSettings, ScaleConfig
    base = dict(d_model=32, heads=4, encoder_layers=1, fusion_layers=1, dropout=0.1, batch_size=16,
                epochs=2, lr=2e-3, warmup_steps=2, seed=0,
                train_split="all",  # the mechanics tests train on every item; splits: test_splits.py
                # every loss term on (SIMCL, masked modelling), from the tokens alone (no frozen skip):
                # the mechanics the tests exercise; the default mix is the demo's (CI) and configs/scale.yaml's
                masked_losses=True, simcl_weight=1.0, subset_weight=0.0, frozen_skip=0.0)
    runtime = dict(tensorboard=False, threads=2, checkpoint_every=1, checkpoint_unit="epoch")
    # the sum alone: the mechanics tests check it against the model's outputs; the modality heads
    # beside it (the default, fuse/heads.py) are tested where a test names them
    embedding: dict[str, Any] = {"modality_heads": []}
    for k, v in kw.items():
        if k in {f.name for f in dataclasses.fields(RunSettings)}:
            runtime[k] = v
        elif k in {f.name for f in dataclasses.fields(EmbedSettings)}:
            embedding[k] = v
        else:
            base[k] = v
    return ScaleConfig(**base, runtime=RunSettings(**runtime), embedding=EmbedSettings(**embedding))


def random_batch(B: int = 4, shapes: dict[str, tuple[int, int]] | None = None,
                 present: dict[str, list[bool]] | None = None, seed: int = 0) -> dict[str, Any]:
    """A collated batch (as fuse.reader.collate makes) of random features, no store needed.

    Absent modalities get zero tokens and count 0, like the store writes them.
    """
    import torch
    shapes = shapes or SMALL_SHAPES
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    batch: dict[str, Any] = {"index": torch.arange(B), "ids": [f"p{i}" for i in range(B)],
                             "labels": ["c0"] * B, "instances": [""] * B,
                             "tokens": {}, "mask": {}, "present": {}, "entities": {}}
    for m, (T, D) in shapes.items():
        pres = torch.tensor(present[m] if present and m in present else [True] * B)
        counts = torch.randint(1, T + 1, (B,), generator=g) * pres
        mask = torch.arange(T)[None, :] < counts[:, None]
        tok = torch.randn(B, T, D, generator=g) * mask[..., None]
        batch["tokens"][m], batch["mask"][m], batch["present"][m] = tok, mask, pres
        if m == "table":
            batch["entities"][m] = torch.from_numpy(
                np.stack([table_entities(int(c), T, rng) for c in counts])).long()
    return batch
