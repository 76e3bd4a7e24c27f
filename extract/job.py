"""The extraction job: corpus -> Ray Data (decode tasks -> model actors) -> HDF5 shards.

The driver plans shards of ``shard_size`` items in corpus order, skips shards already
committed by an earlier run, streams the rest through Ray Data and writes each shard as soon
as all its items have come back. A shard is five modality files plus a failure part,
written last; a killed job loses at most the shards in flight.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from scalemm import store
from scalemm.atomic import remove_stale_temps as remove_stale_temps_in
from scalemm.corpus import Corpus, Product, read_corpus
from scalemm.extract.config import ExtractConfig
from scalemm.extract.version import feature_code_version
from scalemm.ray_address import resolve_ray_address

log = logging.getLogger(__name__)


@dataclass
class JobStats:
    items: int = 0
    shards_written: int = 0
    shards_skipped: int = 0
    failures: int = 0
    seconds: float = 0.0
    bytes_written: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"items": self.items, "shards_written": self.shards_written, "shards_skipped": self.shards_skipped,
                "failures": self.failures, "seconds": round(self.seconds, 2),
                "items_per_s": round(self.extra.get("items_processed", 0) / self.seconds, 2) if self.seconds else 0.0,
                "mb_written": round(self.bytes_written / 1e6, 2)}


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise store.StoreError(f"output directory {out} cannot be written ({e.strerror or e}); "
                               f"choose another --out") from e


def product_row(p: Product, index: int, shard: int) -> dict[str, Any]:
    return {"idx": index, "shard": shard, "id": p.id, "label": p.label, "instance": p.instance,
            "title": p.title or "", "table": json.dumps(p.table) if p.table else "",
            "image": p.image or "", "video": p.video or "", "audio_src": p.audio_source or ""}


def plan_shards(n_items: int, shard_size: int) -> list[range]:
    return [range(s, min(s + shard_size, n_items)) for s in range(0, n_items, shard_size)]


def committed(out: Path, n_shards: int) -> set[int]:
    """Shards whose failure part and every modality file exist and open; an unreadable one
    (truncated, damaged) is extracted again."""
    done = set()
    for k in store.committed_shards(out):
        if k < n_shards and all(store.shard_path(out, m, k).exists() for m in store.MODALITIES):
            try:
                for m in store.MODALITIES:
                    store.read_provenance(store.shard_path(out, m, k))
            except store.StoreError as e:
                log.warning("%s; extracting shard %d again", str(e).split(". ")[0], k)
                continue
            done.add(k)
    return done


def remove_stale_temps(out: Path) -> list[Path]:
    """Delete temporary files (``<name>.tmp<pid>``) that a killed run left behind; files of a
    process that is still alive are kept. They never count as shards (see store.list_shards)."""
    removed = remove_stale_temps_in([out, out / store.FAILURE_PARTS, *(out / m for m in store.MODALITIES)])
    if removed:
        log.info("removed %d temporary file(s) of an interrupted run under %s", len(removed), out)
    return removed


def check_manifest(out: Path, manifest: dict[str, Any]) -> None:
    old = store.read_manifest(out)
    if old is None:
        return
    for key in ("corpus_fingerprint", "code_version", "config", "backbones", "n_items"):
        if old.get(key) != manifest.get(key):
            raise store.StoreError(
                f"{out} holds features from another run: manifest field '{key}' differs "
                f"({json.dumps(old.get(key))[:120]} vs {json.dumps(manifest.get(key))[:120]}). "
                f"Use a fresh --out, or delete {out} to re-extract.")


def provenances(infos: dict[str, dict[str, Any]], fingerprint: str, code: str) -> dict[str, store.Provenance]:
    return {m: store.Provenance(modality=m, backbone=i["spec"], weights_hash=i["weights_hash"],
                                pretrained=bool(i["pretrained"]), preprocessing=i["preprocessing"],
                                code_version=code, corpus_fingerprint=fingerprint, dim=int(i["dim"]),
                                pooled_dim=int(i["pooled_dim"]), max_tokens=int(i["max_tokens"]))
            for m, i in infos.items()}


class ShardWriter:
    """Collects encoded rows per shard and writes a shard once all its rows are in."""

    def __init__(self, out: Path, corpus: Corpus, plan: list[range], provs: dict[str, store.Provenance]) -> None:
        self.out, self.corpus, self.plan, self.provs = out, corpus, plan, provs
        self.pending: dict[int, dict[int, tuple[dict[str, np.ndarray], dict[str, str]]]] = {}
        self.written = 0
        self.bytes = 0
        self.failures = 0

    def add(self, shard: int, idx: int, feats: dict[str, np.ndarray], errors: dict[str, str]) -> None:
        self.pending.setdefault(shard, {})[idx] = (feats, errors)
        if len(self.pending[shard]) == len(self.plan[shard]):
            self._write(shard, self.pending.pop(shard))

    def _write(self, shard: int, rows: dict[int, tuple[dict[str, np.ndarray], dict[str, str]]]) -> None:
        prods = [self.corpus.products[i] for i in self.plan[shard]]
        ids, labels, insts = [p.id for p in prods], [p.label for p in prods], [p.instance for p in prods]
        failures: list[dict[str, Any]] = []
        for m in store.MODALITIES:
            prov = self.provs[m]
            data = store.ShardData.empty(ids, labels, insts, prov, with_entities=(m == "table"))
            for r, i in enumerate(self.plan[shard]):
                feats, _ = rows[i]
                cnt = int(feats.get(f"{m}.count", 0))
                if cnt <= 0:
                    continue
                data.tokens[r] = feats[f"{m}.tokens"]
                data.counts[r] = cnt
                data.pooled[r] = feats[f"{m}.pooled"]
                if data.entities is not None and f"{m}.entities" in feats:
                    data.entities[r] = feats[f"{m}.entities"]
            self.bytes += store.write_shard(store.shard_path(self.out, m, shard), data, prov, shard)
        for r, i in enumerate(self.plan[shard]):
            errs = {**prods[r].errors, **rows[i][1]}  # the corpus' own (e.g. a malformed table), then decode/encode
            for m, err in sorted(errs.items()):
                failures.append({"id": ids[r], "modality": m, "error": err, "shard": shard})
        store.write_failure_part(self.out, shard, failures)
        self.written += 1
        self.failures += len(failures)


def cluster_plan(cfg: ExtractConfig) -> dict[str, Any]:
    """Actor pool size, CPUs and GPUs per actor, from the cluster's resources (see :func:`pool_plan`)."""
    import ray

    res = ray.cluster_resources()
    return pool_plan(float(res.get("CPU", 1)), float(res.get("GPU", 0)), cfg)


def pool_plan(cpus: float, gpus: float, cfg: ExtractConfig) -> dict[str, Any]:
    """Actor pool size, CPUs, GPUs and torch threads per actor for a cluster with ``cpus`` / ``gpus``.

    One CPU is always left to the decode tasks: an actor pool that takes every CPU starves
    them and the stream never moves. On a small node where that leaves one actor (2 CPUs),
    the pool is one single-threaded actor per core, each on a share of the CPUs left over,
    rather than one actor with a thread per core: a multi-threaded forward stalls at every
    parallel region while a decode task or Ray itself holds one of the cores (measured on
    2 cores: 7.0 items/s for one 2-thread actor, 9.7 for two 1-thread ones, the bare
    2-thread model 10). It costs one more copy of the backbones in memory. ``num_actors`` set
    in the config is kept as it is."""
    use_gpu = gpus >= 1 and cfg.use_gpu != "no"
    if cfg.use_gpu == "yes" and not use_gpu:
        raise RuntimeError("use_gpu: yes, but the Ray cluster has no GPU")
    if use_gpu:
        n = cfg.num_actors or int(gpus)
        actor_cpus = min(cfg.actor_cpus, max(1.0, (cpus - 1) / max(n, 1)))
        return {"actors": n, "cpus": actor_cpus, "gpus": 1.0, "threads": int(actor_cpus), "cluster_cpus": cpus}
    actor_cpus = min(cfg.actor_cpus, max(cpus - 1, 0.5))
    n = cfg.num_actors or max(1, int((cpus - 1) // actor_cpus))
    if n == 1 and not cfg.num_actors and 2 <= cpus < 3:
        n = int(cpus)
        return {"actors": n, "cpus": (cpus - 1) / n, "gpus": 0.0, "threads": 1, "cluster_cpus": cpus}
    # an actor the config asked to be alone may use the decode CPU too
    threads = max(1, int(cpus // n)) if n == 1 else max(1, int(actor_cpus))
    return {"actors": n, "cpus": actor_cpus, "gpus": 0.0, "threads": threads, "cluster_cpus": cpus}


def run_extraction(corpus_path: str | Path, media_root: str | Path, out: str | Path, cfg: ExtractConfig,
                   address: str | None = None, fmt: str = "auto") -> JobStats:
    import ray

    from scalemm.extract.worker import EncodeActor, describe_backbones, make_decoder, unpack

    t0 = time.time()
    out, media_root = Path(out), Path(media_root)
    corpus = read_corpus(corpus_path, fmt)
    if not media_root.is_dir():
        raise store.StoreError(f"media root {media_root} is not a directory")
    check_writable(out)
    fingerprint = store.file_fingerprint(corpus_path)
    code = feature_code_version()
    n = len(corpus)
    plan = plan_shards(n, cfg.shard_size)

    if not ray.is_initialized():
        address = resolve_ray_address(address)
        ray.init(address=address, ignore_reinit_error=True, logging_level=logging.WARNING,
                 log_to_driver=True, include_dashboard=False if address in (None, "local") else None)
    infos = ray.get(ray.remote(num_cpus=1)(describe_backbones).remote(cfg.to_dict()))
    manifest = {"schema_version": store.SCHEMA_VERSION, "corpus": str(Path(corpus_path).resolve()),
                "media_root": str(media_root.resolve()),
                "corpus_fingerprint": fingerprint, "code_version": code, "config": cfg.feature_fields(),
                "backbones": infos, "n_items": n, "n_shards": len(plan)}
    check_manifest(out, manifest)
    remove_stale_temps(out)
    store.write_manifest(out, manifest)
    provs = provenances(infos, fingerprint, code)

    done = committed(out, len(plan))
    todo = [k for k in range(len(plan)) if k not in done]
    stats = JobStats(items=n, shards_skipped=len(done))
    rows = [product_row(corpus.products[i], i, k) for k in todo for i in plan[k]]
    log.info("%d items in %d shards: %d already done, %d to extract", n, len(plan), len(done), len(todo))
    writer = ShardWriter(out, corpus, plan, provs)
    if rows:
        cp = cluster_plan(cfg)
        log.info("actor pool: %s", cp)
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ds = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / cfg.decode_batch_size)))
        ds = ds.map_batches(make_decoder(str(media_root.resolve()), cfg), batch_size=cfg.decode_batch_size,
                            batch_format="numpy", num_cpus=1, max_retries=2)
        ds = ds.map_batches(EncodeActor, fn_constructor_kwargs={"cfg_dict": cfg.to_dict(), "threads": cp["threads"]},
                            batch_size=cfg.batch_size, batch_format="numpy", concurrency=cp["actors"],
                            num_cpus=cp["cpus"], num_gpus=cp["gpus"] or None)
        with tqdm(total=len(rows), desc="extract", unit="item", mininterval=2.0) as bar:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for j in range(len(batch["id"])):
                    feats = unpack(batch["out"][j])
                    errs = json.loads(batch["errors"][j])
                    writer.add(int(batch["shard"][j]), int(batch["idx"][j]), feats, errs)
                bar.update(len(batch["id"]))
                bar.set_postfix(shards=writer.written)
        if writer.pending:
            lost = sorted(writer.pending)
            raise RuntimeError(f"the stream ended with shards {lost} incomplete; rerun to finish them")
    stats.shards_written = writer.written
    stats.bytes_written = writer.bytes
    stats.extra["items_processed"] = len(rows)
    stats.failures = store.merge_failures(out, [b.as_failure() for b in corpus.bad])
    stats.seconds = time.time() - t0
    return stats
