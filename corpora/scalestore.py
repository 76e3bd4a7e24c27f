"""A synthetic feature store of any size, written directly, for scale tests and benchmarks.

Extraction with real backbones runs at a few products per second on this machine, so a store
of a million products cannot come from it. :func:`write_scale_store` writes one through the
store contract (:mod:`scalemm.store`: ``write_shard`` per modality and shard, a failure part
that commits each shard, the merged ``failures.jsonl`` and ``manifest.json``) without any
backbone, shard by shard with a progress bar, so memory stays at one shard's arrays whatever
the size. Every reader (training, evaluation, ``store_info``) takes it as it takes an extracted
store; its provenance says what it is: ``pretrained: false``, backbone
``synthetic:scale-<modality>``, ``preprocessing.synthetic: true`` and the generator's
parameters, and the manifest has ``"synthetic": true``.

Planted structure (what a model can learn and the evaluation can score). Products belong to
``n_categories`` categories and to instances of ``listings_per_instance`` listings each (the
listings of one instance are spread over the whole store by a seeded permutation, so they
are not neighbours in a shard). A product's latent vector is its category's prototype plus
its instance's offset plus a little listing noise. Each modality sees that latent through
its own random projection, plus a nuisance vector of its own (so the modalities agree on the
product only after modality-specific maps), plus a learned-position pattern and token noise.
So category and instance are recoverable from every modality's tokens, and an untrained
model cannot match modalities while a trained one can. ``missing`` of each modality's
entries are absent (count 0, zero tokens and pooled vector); ``failed`` of those are
recorded as failures, as a decoder error would be. Table tokens carry entities: key/value
spans of two tokens.

Scale: the default token shapes (:data:`SCALE_SHAPES`, 8 or 4 tokens of dimension 32 per
modality, against up to 64 tokens of dimension 1280 from the real backbones) put about
3.2 KB per product on disk, so a million products take about 3.2 GB and are written in a
few minutes on one core. Everything random is drawn per (seed, shard, modality), so a store
is a pure function of its parameters and the shard size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scalemm.errors import UserError
from scalemm.modalities import MODALITIES
from scalemm.store import (SCHEMA_VERSION, Provenance, ShardData, merge_failures, shard_path,
                           sources_version, write_failure_part, write_manifest, write_shard)

log = logging.getLogger(__name__)

# (max_tokens, dim) per modality: short sequences of small vectors (see the module doc)
SCALE_SHAPES: dict[str, tuple[int, int]] = {
    "image": (8, 32), "text": (8, 32), "table": (8, 32), "video": (4, 32), "audio": (4, 32)}
GENERATOR = "scalemm.corpora.scalestore"


class StoreExists(UserError, FileExistsError):
    """The output folder already holds files."""


@dataclass(frozen=True)
class ScaleStoreSpec:
    """Everything a scale store is a function of (recorded in its provenance and manifest)."""

    n_items: int
    seed: int = 0
    shard_size: int = 4096
    n_categories: int = 0  # 0: one category per 2,000 products, at least 8 and at most 1,000
    listings_per_instance: int = 2
    latent_dim: int = 16
    missing: float = 0.1  # share of each modality's entries that are absent
    failed: float = 0.1  # share of the absent entries recorded as extraction failures
    instance_spread: float = 0.7  # std of an instance's offset from its category prototype
    listing_noise: float = 0.15  # std of a listing's offset from its instance
    nuisance: float = 0.8  # std of each modality's own nuisance vector (before projection)
    token_noise: float = 0.3  # std of the per-token noise
    modalities: tuple[str, ...] = MODALITIES
    shapes: dict[str, tuple[int, int]] = field(default_factory=lambda: dict(SCALE_SHAPES))

    def __post_init__(self) -> None:
        if self.n_items < 1 or self.shard_size < 1 or self.listings_per_instance < 1 or self.latent_dim < 1:
            raise UserError("n_items, shard_size, listings_per_instance and latent_dim must be >= 1")
        if not (0 <= self.missing < 1 and 0 <= self.failed <= 1):
            raise UserError(f"missing must be in [0, 1) and failed in [0, 1], got {self.missing}, {self.failed}")
        bad = [m for m in self.modalities if m not in MODALITIES or m not in self.shapes]
        if bad or not self.modalities:
            raise UserError(f"modalities {list(self.modalities)}: unknown or without a shape: {bad}")
        if self.n_categories < 0:
            raise UserError(f"n_categories must be >= 0, got {self.n_categories}")

    @property
    def categories(self) -> int:
        return self.n_categories or int(min(1000, max(8, self.n_items // 2000)))

    @property
    def n_instances(self) -> int:
        return -(-self.n_items // self.listings_per_instance)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        d["shapes"] = {m: list(self.shapes[m]) for m in self.modalities}
        d["categories"] = self.categories
        return d

    def fingerprint(self) -> str:
        """What stands for the corpus fingerprint: a hash of the parameters."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()


def bytes_per_item(spec: ScaleStoreSpec) -> int:
    """Approximate bytes on disk per product (tokens, pooled vectors, entities, counts, strings)."""
    total = 0
    for m in spec.modalities:
        T, D = spec.shapes[m]
        total += T * D * 2 + D * 4 + 4 + 3 * 32 + (T * 4 if m == "table" else 0)
    return total


class _Plan:
    """The product-level structure shared by every shard: categories, instances, latents."""

    def __init__(self, spec: ScaleStoreSpec) -> None:
        rng = np.random.default_rng([spec.seed, 0x5CA1E])
        C, n_inst, L = spec.categories, spec.n_instances, spec.latent_dim
        self.protos = (rng.standard_normal((C, L)) * 2.0).astype(np.float32)
        self.inst_class = rng.integers(0, C, size=n_inst).astype(np.int32)
        self.inst_latent = (self.protos[self.inst_class]
                            + rng.standard_normal((n_inst, L)).astype(np.float32) * spec.instance_spread)
        # product j is listing (perm[j] mod L) of instance perm[j] // L: listings spread out
        self.instance_of = (rng.permutation(spec.n_items) // spec.listings_per_instance).astype(np.int64)
        self.maps: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for m in spec.modalities:
            T, D = spec.shapes[m]
            mrng = np.random.default_rng([spec.seed, MODALITIES.index(m), 0xFEA7])
            P = (mrng.standard_normal((L, D)) / np.sqrt(L)).astype(np.float32)
            Q = (mrng.standard_normal((L, D)) / np.sqrt(L)).astype(np.float32)
            pos = (mrng.standard_normal((T, D)) * 0.5).astype(np.float32)
            self.maps[m] = (P, Q, pos)


def _shard(spec: ScaleStoreSpec, plan: _Plan, k: int, a: int, b: int
           ) -> tuple[list[str], list[str], list[str], dict[str, ShardData], list[dict[str, Any]]]:
    """Products ``a..b-1`` as shard ``k`` of every modality, and the shard's failure records."""
    n, L = b - a, spec.latent_dim
    inst = plan.instance_of[a:b]
    ids = [f"p{j:07d}" for j in range(a, b)]
    labels = [f"c{c:04d}" for c in plan.inst_class[inst]]
    instances = [f"i{i:07d}" for i in inst]
    lrng = np.random.default_rng([spec.seed, k, 0x11])
    latent = plan.inst_latent[inst] + lrng.standard_normal((n, L), dtype=np.float32) * spec.listing_noise
    out: dict[str, ShardData] = {}
    failures: list[dict[str, Any]] = []
    for m in spec.modalities:
        T, D = spec.shapes[m]
        P, Q, pos = plan.maps[m]
        rng = np.random.default_rng([spec.seed, k, MODALITIES.index(m)])
        item = latent @ P + (rng.standard_normal((n, L), dtype=np.float32) * spec.nuisance) @ Q  # [n, D]
        counts = rng.integers(max(1, T // 2), T + 1, size=n).astype(np.int32)
        absent = rng.random(n) < spec.missing
        counts[absent] = 0
        tokens = rng.standard_normal((n, T, D), dtype=np.float32)
        tokens *= spec.token_noise
        tokens += item[:, None, :]
        tokens += pos[None]
        valid = np.arange(T)[None, :] < counts[:, None]
        tokens *= valid[..., None]
        entities = np.where(valid, np.arange(T)[None, :] // 2, -1).astype(np.int32) if m == "table" else None
        pooled = np.where(absent[:, None], 0.0, item).astype(np.float32)
        out[m] = ShardData(ids=ids, labels=labels, instances=instances, tokens=tokens.astype(np.float16),
                           counts=counts, pooled=pooled, entities=entities)
        for r in np.flatnonzero(absent & (rng.random(n) < spec.failed)):
            failures.append({"id": ids[r], "modality": m, "error": "synthetic failure (scale store)", "shard": k})
    return ids, labels, instances, out, failures


def synthetic_provenances(spec: ScaleStoreSpec) -> dict[str, Provenance]:
    code = sources_version([Path(__file__)])
    fp = spec.fingerprint()
    return {m: Provenance(modality=m, backbone=f"synthetic:scale-{m}", weights_hash="0" * 16, pretrained=False,
                          preprocessing={"synthetic": True, "generator": GENERATOR, **spec.to_json()},
                          code_version=code, corpus_fingerprint=fp, dim=spec.shapes[m][1],
                          pooled_dim=spec.shapes[m][1], max_tokens=spec.shapes[m][0])
            for m in spec.modalities}


def write_scale_store(out: str | Path, spec: ScaleStoreSpec, progress: bool = True) -> dict[str, Any]:
    """Write the store of ``spec`` into the empty (or new) folder ``out``; returns a summary
    (items, shards, failures, bytes, seconds). Refuses a folder that already holds files."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StoreExists(f"{out} already exists and is not an empty folder; choose another --out or remove it")
    t0 = time.perf_counter()
    plan = _Plan(spec)
    provs = synthetic_provenances(spec)
    first = provs[spec.modalities[0]]
    bounds = list(range(0, spec.n_items, spec.shard_size)) + [spec.n_items]
    n_shards = len(bounds) - 1
    write_manifest(out, {
        "schema_version": SCHEMA_VERSION, "synthetic": True, "generator": GENERATOR, "corpus": None,
        "corpus_fingerprint": first.corpus_fingerprint, "code_version": first.code_version,
        "spec": spec.to_json(), "n_items": spec.n_items, "n_shards": n_shards,
        "backbones": {m: {"backbone": p.backbone, "pretrained": False, "dim": p.dim, "max_tokens": p.max_tokens}
                      for m, p in provs.items()}})
    from tqdm.auto import tqdm

    nbytes = n_fail = 0
    for k in tqdm(range(n_shards), desc="scale store", unit="shard", disable=not progress, mininterval=2.0):
        _, _, _, data, failures = _shard(spec, plan, k, bounds[k], bounds[k + 1])
        for m, d in data.items():
            nbytes += write_shard(shard_path(out, m, k), d, provs[m], k)
        write_failure_part(out, k, failures)  # commits the shard
        n_fail += len(failures)
    merge_failures(out)
    seconds = time.perf_counter() - t0
    log.info("wrote %d synthetic products in %d shards to %s: %.2f GB in %.1f s", spec.n_items, n_shards, out,
             nbytes / 1e9, seconds)
    return {"out": str(out), "items": spec.n_items, "shards": n_shards, "categories": spec.categories,
            "instances": spec.n_instances, "failures": n_fail, "gb": round(nbytes / 1e9, 3),
            "seconds": round(seconds, 2), "items_per_s": round(spec.n_items / max(seconds, 1e-9), 1)}
