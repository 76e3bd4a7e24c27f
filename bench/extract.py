"""Side-by-side throughput of the extraction job and of its parts (for ``pipelines/bench.py``).

:func:`extraction_benchmark` makes a demo corpus of ``scale * n`` items, then in one run:

* runs the full Ray job (:func:`extract.job.run_extraction`) on a few items (warm-up: Ray
  starts its worker processes; timed and reported apart as the cold start), then on the first
  ``n`` items and on all ``scale * n`` items (same Ray session);
* decodes the first ``n`` items in this process with :func:`extract.decoding.decode_product`
  (decode items/s), then times only :meth:`extract.encode.Backbones.encode_rows` on those
  pre-decoded rows in batches of ``cfg.batch_size``, one torch thread per core of the machine
  (the bare model items/s: the backbones with the whole machine to themselves);
* rewrites the shards the big job produced with :func:`extract.store.write_shard` (write MB/s).

``extract_efficiency`` = job items/s (the ``scale * n`` job, start-up included) / bare model
items/s (``extract_efficiency_n``: the same for the ``n`` job); ``extract_scaling`` = time(scale * n) / time(n). The fixed start-up cost is the
intercept of the line through the two job times, ``(scale * t(n) - t(scale * n)) / (scale - 1)``
(per job: the backbones loaded for the provenance, the model actor started, Ray Data planning).
It is for benchmark scripts, not for tests.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from scalemm import store
from scalemm.extract.config import ExtractConfig
from scalemm.corpus import read_corpus

log = logging.getLogger(__name__)


def _subset_corpus(src: Path, dst: Path, n: int) -> Path:
    lines = [ln for ln in src.read_text().splitlines() if ln.strip()]
    dst.write_text("\n".join(lines[:n]) + "\n")
    return dst


def _run_job(corpus: Path, media_root: Path, out: Path, cfg: ExtractConfig) -> dict[str, Any]:
    from scalemm.extract.job import run_extraction

    if out.exists():
        shutil.rmtree(out)
    t = time.perf_counter()
    stats = run_extraction(corpus, media_root, out, cfg)
    sec = time.perf_counter() - t
    n = int(stats.extra.get("items_processed", stats.items))
    return {"items": n, "seconds": sec, "items_per_s": n / sec, "shards": stats.shards_written,
            "failures": stats.failures, "mb_written": stats.bytes_written / 1e6}


def bare_rates(corpus: Path, media_root: Path, cfg: ExtractConfig, n: int, threads: int) -> dict[str, Any]:
    """Decode ``n`` items (one process) and time only the backbones' ``encode_rows`` on them."""
    import torch

    from scalemm.extract.decoding import decode_product
    from scalemm.extract.encode import Backbones

    rows = read_corpus(corpus).products[:n]
    root = str(media_root.resolve())
    decode_product(rows[0], root, cfg)  # start the isolated decoder process outside the timing
    t = time.perf_counter()
    decoded = []
    failed: dict[str, int] = {}
    for r in rows:
        decoded.append(decode_product(r, root, cfg))
        for m in decoded[-1]["errors"]:
            failed[m] = failed.get(m, 0) + 1
    decode_s = time.perf_counter() - t
    if sum(failed.values()) > max(2, len(rows) // 10):
        log.warning("decoding failed for %s of %d items: %s", failed, len(rows),
                    "; ".join(sorted({e for d in decoded for e in d["errors"].values()}))[:300])

    prev = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        bb = Backbones(cfg, device=None)
        bs = cfg.batch_size
        bb.encode_rows(decoded[:bs])  # warm-up (first-call allocations, lazy init)
        t = time.perf_counter()
        for s in range(0, len(decoded), bs):
            bb.encode_rows(decoded[s:s + bs])
        if bb.device.startswith("cuda"):
            torch.cuda.synchronize()
        model_s = time.perf_counter() - t
        device = bb.device
    finally:
        torch.set_num_threads(prev)
    return {"items": len(rows), "decode_failures": failed, "decode_s": decode_s,
            "decode_items_per_s": len(rows) / decode_s,
            "model_s": model_s, "model_items_per_s": len(rows) / model_s, "torch_threads": threads,
            "batch_size": cfg.batch_size, "device": device}


def write_rate(feats: Path, tmp: Path, repeats: int = 2) -> dict[str, Any]:
    """Rewrite every shard of ``feats`` with ``store.write_shard`` (fsync included); best of ``repeats``."""
    shards = [(m, p) for m in store.MODALITIES for p in store.list_shards(feats, m)]
    loaded = [(m, p, *store.read_shard(p)) for m, p in shards]
    best = float("inf")
    nbytes = 0
    for _ in range(repeats):
        if tmp.exists():
            shutil.rmtree(tmp)
        t = time.perf_counter()
        nbytes = 0
        for m, p, data, prov in loaded:
            k = int(p.stem.split("-")[1])
            nbytes += store.write_shard(store.shard_path(tmp, m, k), data, prov, k)
        best = min(best, time.perf_counter() - t)
    shutil.rmtree(tmp, ignore_errors=True)
    return {"shards": len(shards), "mb": nbytes / 1e6, "seconds": best, "mb_per_s": nbytes / 1e6 / best}


def extraction_benchmark(cfg: ExtractConfig, n: int, work: str | Path, scale: int = 4, seed: int = 0,
                         num_cpus: int | None = None, warmup_items: int = 4) -> dict[str, Any]:
    """Job vs bare-model throughput, per-stage rates and scaling (see the module docstring).

    Starts (and shuts down) a local Ray with ``num_cpus`` CPUs unless Ray is initialised.
    Leaves the corpus and the ``scale * n`` store under ``work`` (``work/feats_big``).
    """
    import ray

    from scalemm.corpora.demo import make_corpus
    from scalemm.extract.job import cluster_plan
    from scalemm.extract.device import cpu_threads

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    corpus_dir = work / "corpus"
    t = time.perf_counter()
    make_corpus(corpus_dir, scale * n, seed=seed)
    corpus_s = time.perf_counter() - t
    big = corpus_dir / "corpus.jsonl"
    small = _subset_corpus(big, work / f"corpus_{n}.jsonl", n)

    cores = int(num_cpus or cpu_threads())
    started = False
    if not ray.is_initialized():
        t = time.perf_counter()
        ray.init(address="local", num_cpus=cores, include_dashboard=False,
                 logging_level=logging.ERROR, log_to_driver=False)
        ray_init_s = time.perf_counter() - t
        started = True
    else:
        ray_init_s = 0.0
    try:
        plan = cluster_plan(cfg)
        # a first job on a few items starts Ray's worker processes (imports of torch & co.);
        # the timed jobs after it pay only the per-job start-up (backbone loads, actor start)
        warm = _subset_corpus(big, work / "corpus_warm.jsonl", min(n, warmup_items))
        job_warm = _run_job(warm, corpus_dir, work / "feats_warm", cfg)
        shutil.rmtree(work / "feats_warm", ignore_errors=True)
        job_n = _run_job(small, corpus_dir, work / "feats_small", cfg)
        job_big = _run_job(big, corpus_dir, work / "feats_big", cfg)
    finally:
        if started:
            ray.shutdown()
    bare = bare_rates(small, corpus_dir, cfg, n, cores)
    write = write_rate(work / "feats_big", work / "rewrite")

    t_n, t_big = job_n["seconds"], job_big["seconds"]
    startup = max(0.0, (scale * t_n - t_big) / (scale - 1))
    steady = (job_big["items"] - job_n["items"]) / max(t_big - t_n, 1e-9)
    manifest = store.read_manifest(work / "feats_big") or {}
    return {
        "config": {k: getattr(cfg, k) for k in ("image", "text", "audio", "batch_size", "decode_batch_size",
                                                 "shard_size", "isolate_decoders")},
        "n": n, "scale": scale, "corpus_seconds": corpus_s, "ray_init_s": ray_init_s, "actor_pool": plan,
        "job_warmup": job_warm, "job_n": job_n, "job_scaled": job_big,
        "job_items_per_s": job_big["items_per_s"],
        "job_steady_items_per_s": steady,
        "startup_s": startup,
        "bare": bare,
        "decode_items_per_s": bare["decode_items_per_s"],
        "model_items_per_s": bare["model_items_per_s"],
        "write": write,
        "write_mb_per_s": write["mb_per_s"],
        "extract_efficiency": job_big["items_per_s"] / bare["model_items_per_s"],
        "extract_efficiency_steady": steady / bare["model_items_per_s"],
        "extract_efficiency_n": job_n["items_per_s"] / bare["model_items_per_s"],
        "extract_scaling": t_big / t_n,
        "max_tokens": {m: int(i.get("max_tokens", 0)) for m, i in manifest.get("backbones", {}).items()},
        "features_dir": str(work / "feats_big"),
    }


def vit_b32_throughput(batch: int = 256, steps: int = 10, warmup: int = 3) -> dict[str, Any]:
    """Images/s of open_clip ViT-B-32 (random weights) image encoding in bf16 autocast on CUDA."""
    import open_clip
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    dev = torch.device("cuda")
    model = open_clip.create_model("ViT-B-32").to(dev).eval()
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    x = torch.randn(batch, 3, size, size, device=dev)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(warmup):
            model.encode_image(x)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            model.encode_image(x)
        torch.cuda.synchronize()
        sec = time.perf_counter() - t
    return {"model": "open_clip ViT-B-32 (random weights)", "batch": batch, "dtype": "bfloat16 autocast",
            "image_size": size, "steps": steps, "images_per_s": batch * steps / sec,
            "device": torch.cuda.get_device_name(0)}


