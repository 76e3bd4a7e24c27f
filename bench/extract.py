"""Side-by-side throughput of the extraction job and of its parts (for ``pipelines/bench.py``).

:func:`extraction_benchmark` makes a demo corpus of ``scale * n`` items, then in one run:

* runs the full Ray job (:func:`extract.job.run_extraction`) on a few items (warm-up: Ray
  starts its worker processes; timed and reported apart as the cold start), then on the first
  ``n`` items and on all ``scale * n`` items (same Ray session);
* with Ray shut down, runs the same work without Ray (:func:`bare_pipeline`): the same
  ``scale * n`` items, the same config (backbones, decoding, batch size), decoded and encoded
  by one plain process per core, one torch thread each, models loaded and warmed up before
  the clock starts, nothing written. That is the best this machine does with this work, the
  bound of the job's rate;
* per-stage rates on the first ``n`` items (:func:`bare_rates`), per core, the unit the bare
  pipeline and the 2-CPU actor pool work in: decoding in one process (decode items/s), and
  the backbones alone on those pre-decoded items with one torch thread (model items/s). One
  thread also keeps the figure steady on a busy machine, where a multi-threaded forward
  stalls at every parallel region;
* rewrites the shards the big job produced with :func:`extract.store.write_shard` (write MB/s).

Ratios, each against a reference that does the same work on the same items, or ``None``
with the reason (in ``not_measured``) where the sizes cannot support it:

* ``extract_efficiency`` = job items/s (the ``scale * n`` job, start-up included) / bare
  pipeline items/s; ``extract_efficiency_n`` the same for the ``n`` job. At most 1.
* ``extract_scaling`` = time(scale * n) / time(n): measured only when time(scale * n) > time(n).
* the steady rate ``(scale * n - n) / (time(scale * n) - time(n))`` and the fixed start-up
  cost, the intercept ``(scale * t(n) - t(scale * n)) / (scale - 1)`` (per job: the backbones
  loaded for the provenance, the model actors started, Ray Data planning): measured only when
  the ``scale * n - n`` extra items took clearly longer than the noise of a job's start-up
  (at least a quarter of t(n) and 1 s); the start-up must lie in [0, t(n)] and the steady
  rate may not exceed the bare pipeline's.

It is for benchmark scripts, not for tests.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from scalemm import store
from scalemm.ray_head import private_token
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


def _decode_rows(rows: list[dict[str, Any]], root: str, cfg: ExtractConfig) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Decode ``rows`` as the job's decode tasks do; the rows as the model actors get them,
    and the failures per modality."""
    from scalemm.extract.decoding import decode_product

    decoded, failed = [], {}
    for r in rows:
        decoded.append(decode_product(r, root, cfg))
        for m in decoded[-1]["errors"]:
            failed[m] = failed.get(m, 0) + 1
    return decoded, failed


def _rows(corpus: Path, n: int | None = None) -> list[Any]:
    """The corpus's products (the first ``n``), as the job's decode tasks read them."""
    prods = read_corpus(corpus).products
    return prods[:n] if n else prods


def bare_rates(corpus: Path, media_root: Path, cfg: ExtractConfig, n: int, threads: int) -> dict[str, Any]:
    """Per-stage rates on the first ``n`` items: decoding in one process, then only the
    backbones' ``encode_rows`` on the decoded items with ``threads`` torch threads."""
    import torch

    from scalemm.device import torch_threads
    from scalemm.extract.decoding import decode_product
    from scalemm.extract.encode import Backbones

    rows = _rows(corpus, n)
    root = str(media_root.resolve())
    decode_product(rows[0], root, cfg)  # start the isolated decoder process outside the timing
    t = time.perf_counter()
    decoded, failed = _decode_rows(rows, root, cfg)
    decode_s = time.perf_counter() - t
    if sum(failed.values()) > max(2, len(rows) // 10):
        log.warning("decoding failed for %s of %d items: %s", failed, len(rows),
                    "; ".join(sorted({e for d in decoded for e in d["errors"].values()}))[:300])

    with torch_threads(max(1, threads)):
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
    return {"items": len(rows), "decode_failures": failed, "decode_s": decode_s,
            "decode_items_per_s": len(rows) / decode_s,
            "model_s": model_s, "model_items_per_s": len(rows) / model_s, "torch_threads": threads,
            "batch_size": cfg.batch_size, "device": device}


def _pipeline_worker(rows: list[Any], root: str, cfg_dict: dict[str, Any], threads: int,
                     barrier: Any, results: Any) -> None:
    """One process of :func:`bare_pipeline`: load and warm up, wait for the others, then
    decode and encode ``rows`` batch by batch, the next batch decoding while this one encodes;
    puts (items, failures, start, end, error) on ``results`` (failures: item x modality records,
    as the job counts them)."""
    try:
        from concurrent.futures import ThreadPoolExecutor

        import torch

        from scalemm.extract.config import ExtractConfig
        from scalemm.extract.encode import Backbones

        torch.set_num_threads(threads)
        cfg = ExtractConfig(**cfg_dict)
        bb = Backbones(cfg, device=None)
        bs = cfg.batch_size
        bb.encode_rows(_decode_rows(rows[:min(bs, 2)], root, cfg)[0])  # models, decoder child, first calls
        barrier.wait()
        t0 = time.monotonic()
        failures = 0
        # the next batch decodes (in the isolated decoder child) while this one encodes, as the
        # job's decode tasks run ahead of its model actors: the same work with the same overlap
        batches = [rows[s:s + bs] for s in range(0, len(rows), bs)]
        with ThreadPoolExecutor(1) as ahead:
            nxt = ahead.submit(_decode_rows, batches[0], root, cfg) if batches else None
            for k in range(len(batches)):
                decoded = nxt.result()[0]
                nxt = ahead.submit(_decode_rows, batches[k + 1], root, cfg) if k + 1 < len(batches) else None
                out = bb.encode_rows(decoded)
                failures += sum(len(errs) for _, errs in out)
        if bb.device.startswith("cuda"):
            torch.cuda.synchronize()
        results.put((len(rows), failures, t0, time.monotonic(), None))
    except BaseException as e:  # reported by the parent
        barrier.abort()
        results.put((0, 0, 0.0, 0.0, f"{type(e).__name__}: {e}"))
    finally:
        # the isolated decoder child outlives a multiprocessing child that just returns
        from scalemm.extract.isolated import reset
        reset()


def bare_pipeline(corpus: Path, media_root: Path, cfg: ExtractConfig, processes: int,
                  timeout: float = 1800.0) -> dict[str, Any]:
    """The job's work without Ray: every item of ``corpus`` decoded and encoded with ``cfg`` by
    ``processes`` plain processes (spawned, one torch thread each, items dealt out in turn),
    all started together once their models are loaded; items/s over the wall time from the
    first start to the last end. Nothing is written. (Not daemonic: each process starts its
    own isolated decoder child, as the job's decode tasks do.)"""
    import multiprocessing as mp

    rows = _rows(corpus)
    root = str(media_root.resolve())
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    cfg_dict = cfg.to_dict()
    procs = [ctx.Process(target=_pipeline_worker, args=(rows[i::processes], root, cfg_dict, 1, barrier, results))
             for i in range(processes)]
    for p in procs:
        p.start()
    try:
        got = [results.get(timeout=timeout) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    errors = [e for *_, e in got if e]
    if errors:
        raise RuntimeError(f"bare pipeline process failed: {errors[0]}")
    items = sum(g[0] for g in got)
    wall = max(g[3] for g in got) - min(g[2] for g in got)
    return {"items": items, "failures": sum(g[1] for g in got), "processes": processes, "torch_threads": 1,
            "seconds": wall, "items_per_s": items / wall, "batch_size": cfg.batch_size}


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
    """The job against the same work without Ray, per-stage rates and scaling (see the module docstring).

    Starts (and shuts down) a local Ray with ``num_cpus`` CPUs unless Ray is initialised.
    Leaves the corpus and the ``scale * n`` store under ``work`` (``work/feats_big``).
    """
    from scalemm.device import cpu_threads
    from scalemm.extract.job import cluster_plan

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    corpus_dir, corpus_s = _demo_corpus(work / "corpus", scale * n, seed)
    big = corpus_dir / "corpus.jsonl"
    small = _subset_corpus(big, work / f"corpus_{n}.jsonl", n)
    cores = int(num_cpus or cpu_threads())
    with _local_ray(work, cores) as ray_init_s:
        plan = cluster_plan(cfg)
        # a first job on a few items starts Ray's worker processes (imports of torch & co.);
        # the timed jobs after it pay only the per-job start-up (backbone loads, actor start)
        warm = _subset_corpus(big, work / "corpus_warm.jsonl", min(n, warmup_items))
        job_warm = _run_job(warm, corpus_dir, work / "feats_warm", cfg)
        shutil.rmtree(work / "feats_warm", ignore_errors=True)
        job_n = _run_job(small, corpus_dir, work / "feats_small", cfg)
        job_big = _run_job(big, corpus_dir, work / "feats_big", cfg)
    log.info("bare pipeline: the same %d items decoded and encoded by %d plain processes", job_big["items"], cores)
    pipe = bare_pipeline(big, corpus_dir, cfg, processes=cores)
    bare = bare_rates(small, corpus_dir, cfg, n, threads=1)
    write = write_rate(work / "feats_big", work / "rewrite")
    ratios, not_measured = job_ratios(job_n, job_big, pipe["items_per_s"], scale)
    _drop_efficiency_unless_same_work(ratios, not_measured, pipe, job_big)
    manifest = store.read_manifest(work / "feats_big") or {}
    return {
        "config": {k: getattr(cfg, k) for k in ("image", "text", "audio", "batch_size", "decode_batch_size",
                                                 "shard_size", "isolate_decoders")},
        "n": n, "scale": scale, "corpus_seconds": corpus_s, "ray_init_s": ray_init_s, "actor_pool": plan,
        "job_warmup": job_warm, "job_n": job_n, "job_scaled": job_big,
        "job_items_per_s": job_big["items_per_s"],
        "bare_pipeline": pipe,
        "bare_pipeline_items_per_s": pipe["items_per_s"],
        "bare": bare,
        "decode_items_per_s": bare["decode_items_per_s"],
        "model_items_per_s": bare["model_items_per_s"],
        "write": write,
        "write_mb_per_s": write["mb_per_s"],
        **ratios,
        "not_measured": not_measured,
        "max_tokens": {m: int(i.get("max_tokens", 0)) for m, i in manifest.get("backbones", {}).items()},
        "features_dir": str(work / "feats_big"),
    }


def _demo_corpus(out: Path, n_items: int, seed: int) -> tuple[Path, float]:
    """A demo corpus of ``n_items`` products in ``out``, and the seconds it took."""
    from scalemm.corpora.demo import make_corpus

    t = time.perf_counter()
    make_corpus(out, n_items, seed=seed)
    return out, time.perf_counter() - t


@contextlib.contextmanager
def _local_ray(work: Path, cores: int) -> Iterator[float]:
    """A local Ray with ``cores`` CPUs and its own token for the block (nothing written to
    ~/.ray), unless Ray is initialised; yields the seconds ``ray.init`` took (0 when it was not
    called)."""
    import ray

    if ray.is_initialized():
        yield 0.0
        return
    with private_token(work):
        t = time.perf_counter()
        ray.init(address="local", num_cpus=cores, include_dashboard=False,
                 logging_level=logging.ERROR, log_to_driver=False)
        try:
            yield time.perf_counter() - t
        finally:
            ray.shutdown()


def _drop_efficiency_unless_same_work(ratios: dict[str, float | None], not_measured: dict[str, str],
                                      pipe: dict[str, Any], job_big: dict[str, Any]) -> None:
    """The efficiencies compare the job with the bare pipeline: not measured when the two
    recorded different failures (then they did not do the same work)."""
    if pipe["failures"] == job_big["failures"]:
        return
    for key in ("extract_efficiency", "extract_efficiency_n", "extract_efficiency_steady"):
        ratios[key] = None
        not_measured[key] = (f"the bare pipeline recorded {pipe['failures']} failed item x modality, the job "
                             f"{job_big['failures']}: not the same work")


def job_ratios(job_n: dict[str, Any], job_big: dict[str, Any], bare_items_per_s: float,
               scale: int) -> tuple[dict[str, float | None], dict[str, str]]:
    """The job's ratios and derived figures (see the module docstring): each a number within
    its physical bound, or None with the reason in the second dict."""
    t_n, t_big = job_n["seconds"], job_big["seconds"]
    extra = job_big["items"] - job_n["items"]
    out: dict[str, float | None] = {}
    why: dict[str, str] = {}

    def efficiency(key: str, rate: float | None, what: str) -> None:
        if rate is None:
            out[key] = None
            return
        r = rate / bare_items_per_s
        if r > 1.0:  # faster than the same work without Ray: no upper bound here, or another load
            out[key] = None
            why[key] = (f"{what} ({rate:.3g} items/s) came out faster than the same work without Ray "
                        f"({bare_items_per_s:.3g} items/s): the reference does not bound the job from above here "
                        f"(on an idle machine the job's overlap of decoding and encoding beat it), or the "
                        f"machine's load changed between the two")
        else:
            out[key] = r

    efficiency("extract_efficiency", job_big["items_per_s"], f"the {job_big['items']}-item job")
    efficiency("extract_efficiency_n", job_n["items_per_s"], f"the {job_n['items']}-item job")
    if t_big > t_n:
        out["extract_scaling"] = t_big / t_n
    else:
        out["extract_scaling"] = None
        why["extract_scaling"] = (f"time({job_big['items']} items) {t_big:.1f} s <= time({job_n['items']} items) "
                                  f"{t_n:.1f} s: the sizes are too small to tell the work from the start-up noise")
    dt = t_big - t_n
    steady = startup = None
    if dt < max(1.0, 0.25 * t_n):
        reason = (f"the {extra} extra items took {dt:.1f} s more than the {job_n['items']}-item job "
                  f"({t_n:.1f} s), within the noise of a job's start-up; use a larger --items")
        why["job_steady_items_per_s"] = why["startup_s"] = why["extract_efficiency_steady"] = reason
    else:
        steady = extra / dt
        startup = (scale * t_n - t_big) / (scale - 1)
        if not 0.0 <= startup <= t_n:
            why["startup_s"] = (f"the intercept of the two job times, {startup:.1f} s, lies outside [0, t(N) = "
                                f"{t_n:.1f} s]: the per-item cost was not the same in the two jobs")
            startup = None
    out["job_steady_items_per_s"], out["startup_s"] = steady, startup
    efficiency("extract_efficiency_steady", steady, "the steady rate")
    return out, why


def image_throughput(make: Any, size: int, batch: int = 256, steps: int = 10, warmup: int = 3) -> dict[str, Any]:
    """Images/s of the image model ``make()`` (called on a batch of images) in bf16 autocast on
    CUDA, the model alone (random input: speed does not depend on it)."""
    import torch

    model = make().cuda().eval()
    x = torch.randn(batch, 3, size, size, device="cuda")
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(warmup):
            model(x)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            model(x)
        torch.cuda.synchronize()
        sec = time.perf_counter() - t
    return {"batch": batch, "dtype": "bfloat16 autocast", "image_size": size, "steps": steps,
            "images_per_s": batch * steps / sec, "device": torch.cuda.get_device_name(0)}


def vit_b32_throughput(batch: int = 256, steps: int = 10, warmup: int = 3) -> dict[str, Any]:
    """Images/s of open_clip ViT-B-32 (random weights) image encoding in bf16 autocast on CUDA."""
    import open_clip
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    visual = open_clip.create_model("ViT-B-32").visual
    size = visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    return {"model": "open_clip ViT-B-32 (random weights)",
            **image_throughput(lambda: visual, size, batch, steps, warmup)}


