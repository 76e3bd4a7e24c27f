"""Benchmarks of the three stages, measured side by side in one run; prints a table (each
target next to its measured value, PASS/MISS) and writes every figure to a JSON file.

  extract   the Ray job's items/s against the same work without Ray (the same items and config
            decoded and encoded by one plain process per core: extract_efficiency), decode
            items/s, model items/s, shard write MB/s, and extract_scaling = time(4N) / time(N)
            with the fixed start-up cost apart; at catalogue scale (bench/extract_scale.py, a
            private Ray cluster, the driver as its own process): the driver's peak RSS and CPU
            per 1,000 items at 4N over N, a store grown by 20% against a from-scratch
            extraction (time, equality), a head plus a worker node against one node
  store     training-loader samples/s against train-step samples/s (loader_headroom), HDF5
            read MB/s against raw reads of the same files (store_read_efficiency)
  fusion    fused SDPA against naive softmax(QK^T)V at the fusion model's sequence length and
            batch 64 (sdpa_speedup, peak memory), training samples/s
  index     the chosen FAISS index against NumPy brute force at 100k and 1M clustered vectors
            (faiss_speedup, ann_recall@10; build time apart)
  gpu       (when CUDA is there) open_clip ViT-B-32 image encoding images/s in bf16, SDPA on GPU

--quick: tiny backbones, N=32 and 4N=128, 100k vectors only (about 3 min on 2 cores); default:
the offline backbones (configs/offline.yaml), N=256 and 4N=1024, 100k and 1M vectors (about 13 min).

Every ratio compares two sides that did the same work on the same inputs, and lies within its
physical bound; where the sizes of a run cannot support one (the 4N job not clearly longer than
the N job, a job faster than the same work without Ray), it is null in the JSON with the reason
under "not_measured", and "not measured" in the table, never a number.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("bench")

# (key, comparison, threshold, description)
HEADLINE_TARGETS = [
    ("extract_efficiency", ">=", 0.8, "job items/s (4N items, start-up incl.) / the same work without Ray"),
    ("driver_rss_ratio", "<=", 1.2, "extraction driver's peak RSS, 4N items / N items"),
    ("driver_cpu_ratio", "<=", 1.2, "extraction driver's CPU s per 1,000 items, 4N / N"),
    ("append_time_ratio", "<=", 0.35, "a store grown by 20%: append time / from-scratch time"),
    ("extract_scaling", "<=", 4.4, "time(4N)/time(N) of the extraction job"),
    ("loader_headroom", ">=", 5.0, "loader samples/s / train-step samples/s"),
    ("sdpa_speedup", ">=", 1.3, "naive / SDPA attention-op time, fusion length, batch 64, fwd+bwd"),
    ("faiss_speedup", ">=", 20.0, "NumPy brute force / FAISS query time at the largest n"),
    ("ann_recall@10", ">=", 0.95, "recall@10 of the chosen index vs exact at the largest n"),
]


def machine_info() -> dict[str, Any]:
    import faiss
    import h5py
    import numpy as np
    import ray
    import torch

    from scalemm.device import cpu_threads

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    cores = cpu_threads()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": cores, "ram_gb": round(ram, 1), "gpu": gpu,
            "gpu_count": torch.cuda.device_count() if gpu else 0, "python": platform.python_version(),
            "torch": torch.__version__, "faiss": faiss.__version__, "ray": ray.__version__,
            "numpy": np.__version__, "h5py": h5py.__version__, "torch_threads": torch.get_num_threads(),
            "os": platform.platform()}


def cpu_busy(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over ``seconds`` (from /proc/stat; NaN elsewhere): what other
    processes take while this one sleeps."""
    def sample() -> tuple[int, int]:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = f[3] + (f[4] if len(f) > 4 else 0)
        return sum(f) - idle, sum(f)
    try:
        b0, t0 = sample()
        time.sleep(seconds)
        b1, t1 = sample()
        return (b1 - b0) / max(t1 - t0, 1)
    except (OSError, ValueError, IndexError):
        return float("nan")


# the physical bounds of the ratios: the job cannot beat the same work without Ray, HDF5 cannot
# read a file faster than its raw bytes, 4N items cannot take less time than N, recall is a share
BOUNDS = {"extract_efficiency": (0.0, 1.0), "extract_efficiency_steady": (0.0, 1.0), "extract_scaling": (1.0, math.inf),
          "store_read_efficiency": (0.0, 1.0), "ann_recall@10": (0.0, 1.0), "loader_headroom": (0.0, math.inf),
          "sdpa_speedup": (0.0, math.inf), "faiss_speedup": (0.0, math.inf),
          "attention_peak_memory_ratio": (0.0, math.inf)}


def within_bounds(headline: dict[str, Any], not_measured: dict[str, str]) -> None:
    """Replace every ratio of ``headline`` outside its physical bound (or not finite) by None,
    with the reason in ``not_measured``: a benchmark never prints an impossible number."""
    for key, (lo, hi) in BOUNDS.items():
        v = headline.get(key)
        if v is None:
            continue
        if not math.isfinite(v) or not lo <= v <= hi or (lo == 0.0 and v == 0.0):
            headline[key] = None
            not_measured.setdefault(key, f"{v:.4g} is outside its physical bound ({lo:g}, {hi:g}]: the two sides "
                                         f"were not measured alike (machine load?); rerun idle")


def check(value: float | None, op: str, threshold: float) -> str:
    if value is None:
        return "NOT MEASURED"
    if not math.isfinite(value):
        return "MISS"
    return "PASS" if (value <= threshold if op == "<=" else value >= threshold) else "MISS"


def fmt(v: Any) -> str:
    if v is None:
        return "not measured"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def markdown_table(r: dict[str, Any]) -> str:
    """The Markdown table of the headline figures with their targets, then what was not
    measured and the machine."""
    targets = {t["key"]: t for t in r["targets"]}
    out = ["| stage | metric | measured | target |", "|---|---|---|---|"]
    for section, rows in (("extract", _extract_rows(r)), ("store", _store_rows(r)), ("fusion", _fusion_rows(r)),
                          ("index", _index_rows(r)), ("gpu", _gpu_rows(r))):
        for label, value, *key in rows:
            t = targets.get(key[0] if key and key[0] else "")
            target = f"{t['op']} {fmt(t['threshold'])} {t['status']}" if t else ""
            out.append(f"| {section} | {label} | {fmt(value)} | {target} |")
    return "\n".join(out + [""] + _footer(r))


Row = tuple  # (label, value) or (label, value, target key or None)


def _extract_rows(r: dict[str, Any]) -> list[Row]:
    from scalemm.bench.extract_scale import scale_rows

    h, ex = r["headline"], r["extract"]
    n, big = ex["n"], ex["n"] * ex["scale"]
    bp, pool = ex["bare_pipeline"], ex["actor_pool"]
    return [
        (f"job items/s ({big} items, start-up incl.)", ex["job_items_per_s"]),
        ("job items/s, steady (4N-N)/(t4N-tN)", ex["job_steady_items_per_s"]),
        (f"bare pipeline items/s (the same {bp['items']} items decoded + encoded, no Ray: "
         f"{bp['processes']} processes x {bp['torch_threads']} thread)", ex["bare_pipeline_items_per_s"]),
        ("extract_efficiency (job / bare pipeline)", h["extract_efficiency"], "extract_efficiency"),
        (f"extract_efficiency of the N={n} job (start-up weighs more)", ex["extract_efficiency_n"]),
        ("extract_efficiency, steady (steady job / bare pipeline)", ex["extract_efficiency_steady"]),
        ("model actor pool (actors x torch threads, CPUs each)", f"{pool['actors']} x {pool['threads']}, {pool['cpus']:g}"),
        (f"decode items/s per core (1 process, {n} items)", ex["decode_items_per_s"]),
        (f"model items/s per core (backbones alone, {n} pre-decoded, batch {ex['bare']['batch_size']}, "
         f"{ex['bare']['torch_threads']} thread)", ex["model_items_per_s"]),
        ("shard write MB/s (write_shard, fsync)", ex["write_mb_per_s"]),
        (f"job seconds N={n} / 4N={big}", f"{ex['job_n']['seconds']:.1f} / {ex['job_scaled']['seconds']:.1f}"),
        ("extract_scaling time(4N)/time(N)", h["extract_scaling"], "extract_scaling"),
        ("per-job start-up s (intercept of the two jobs)", ex["startup_s"]),
        (f"cold start s: ray.init + first job ({ex['job_warmup']['items']} items)",
         f"{ex['ray_init_s']:.1f} + {ex['job_warmup']['seconds']:.1f}"),
        *scale_rows(r["extract_scale"]),
    ]


def _store_rows(r: dict[str, Any]) -> list[Row]:
    h, st = r["headline"], r["store"]
    rd = st["read"]
    return [
        ("loader samples/s (batch 64)", st["loader"]["samples_per_s"]),
        ("train-step samples/s (fwd+bwd+AdamW)", st["train"]["samples_per_s"]),
        _train_pass_row(st.get("train_pass", {})),
        ("loader_headroom", h["loader_headroom"], "loader_headroom"),
        (f"HDF5 read MB/s (read_shard, warm; {rd['shards']} files, {rd['mean_file_kb']:,.0f} KB each)",
         rd["hdf5_mb_per_s"]),
        ("raw read MB/s of the same files (warm)", rd["raw_mb_per_s"]),
        ("store_read_efficiency (HDF5 / raw)", h["store_read_efficiency"]),
    ]


def _train_pass_row(tp: dict[str, Any]) -> Row:
    what = "train-step speedup from encoding the first tokens alone"
    if "every_over_first" not in tp:
        return (what, f"not measured: {tp.get('not_measured', 'not run')}")
    return (f"{what} (s per step, every token / first tokens: {tp['every_token_step_s']:.2f} / "
            f"{tp['first_tokens_step_s']:.2f})", tp["every_over_first"])


def _fusion_rows(r: dict[str, Any]) -> list[Row]:
    h, fu = r["headline"], r["fusion"]
    a = fu["attention_op"]
    rows: list[Row] = [
        (f"attention op fwd+bwd ms, SDPA / naive (B={a['batch']}, L={a['length']}, H={a['heads']}, "
         f"dh={a['head_dim']}, padding mask, malloc {a['regime']}, after the train steps)",
         f"{a['sdpa_s'] * 1e3:.0f} / {a['naive_s'] * 1e3:.0f}"),
        ("sdpa_speedup (attention op, fwd+bwd)", h["sdpa_speedup"], "sdpa_speedup"),
    ]
    if "naive_faults_mb_per_call" in a:
        rows.append(("page faults per call MB, SDPA / naive (score matrices > glibc's 32 MiB mmap cap)",
                     f"{a['sdpa_faults_mb_per_call']:.0f} / {a['naive_faults_mb_per_call']:.0f}"))
    if "forward_naive_over_sdpa" in a:
        rows.append(("sdpa speedup, forward only (inference)", a["forward_naive_over_sdpa"]))
    if "naive_over_sdpa_warm_heap" in a:
        rows.append(("sdpa speedup fwd+bwd, warm heap (malloc tuned: the naive path's best case)",
                     a["naive_over_sdpa_warm_heap"]))
    if fu.get("attention_op_attn_dropout"):
        ad = fu["attention_op_attn_dropout"]
        rows.append((f"sdpa speedup fwd+bwd with attention dropout {ad['dropout']} (CPU: math kernel)",
                     ad["naive_over_sdpa"]))
    rows += [("peak MB SDPA / naive (op, fwd+bwd, profiler)", f"{a['sdpa_peak_mb']:.0f} / {a['naive_peak_mb']:.0f}"),
             ("peak-memory ratio naive/SDPA (op)", a["peak_naive_over_sdpa"])]
    if fu.get("attention_model"):
        am, amt, mm = fu["attention_model"], fu["attention_model_train"], fu["memory_model"]
        rows += [(f"fusion transformer ({am['layers']} layers) fwd+bwd speedup, eval / train mode",
                  f"{am['naive_over_sdpa']:.2f} / {amt['naive_over_sdpa']:.2f}"),
                 ("fusion transformer peak MB SDPA / naive", f"{mm['sdpa_peak_mb']:.0f} / {mm['naive_peak_mb']:.0f}")]
    if fu.get("train_step"):
        ts = fu["train_step"]
        rows += [("train step s, SDPA / naive attention (ScaleModel, batch 64)",
                  f"{ts['sdpa']['step_s']:.2f} / {ts['naive']['step_s']:.2f}"),
                 ("train-step speedup from SDPA", ts["naive_over_sdpa"])]
    ep = fu.get("embedding_pass")
    if ep and "not_measured" not in ep:
        rows += [("embedding forward s per 1,000 products, every token / first tokens alone (default model)",
                  f"{ep['every_token_s_per_1k']:.2f} / {ep['first_tokens_s_per_1k']:.2f}"),
                 ("embedding speedup from encoding the first tokens alone (same vectors: max difference "
                  f"{ep['max_abs_vector_difference']:.1e})", ep["every_over_first"])]
    elif ep:
        rows.append(("embedding speedup from encoding the first tokens alone", f"not measured: {ep['not_measured']}"))
    return rows + [("training samples/s (ScaleModel, batch 64)", h["train_samples_per_s"])]


def _index_rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for ix in r["index"]:
        last = ix is r["index"][-1]
        tag = f"{ix['n']:,}"
        rows += [(f"{tag}: {ix['index']} build s", ix["build_s"]),
                 (f"{tag}: NumPy / FAISS query s (1k q)", f"{ix['numpy_query_s']:.3f} / {ix['faiss_query_s']:.4f}"),
                 (f"{tag}: faiss_speedup", ix["faiss_speedup"], "faiss_speedup" if last else None),
                 (f"{tag}: ann_recall@10", ix["ann_recall@10"], "ann_recall@10" if last else None)]
    return rows


def _gpu_rows(r: dict[str, Any]) -> list[Row]:
    g = r.get("gpu") or {}
    rows: list[Row] = []
    if g.get("vit_b32", {}).get("images_per_s"):
        rows.append(("ViT-B-32 images/s (bf16, batch 256)", g["vit_b32"]["images_per_s"]))
    if g.get("attention_op"):
        rows.append(("sdpa_speedup on GPU (bf16, op / fusion transformer)",
                     f"{g['attention_op']['naive_over_sdpa']:.2f} / {g['attention_model']['naive_over_sdpa']:.2f}"))
    return rows


def _footer(r: dict[str, Any]) -> list[str]:
    mi = r["machine"]
    out = [f"- {key} not measured: {reason}" for key, reason in r.get("not_measured", {}).items()]
    out.append(f"Machine: {mi['cpu']}, {mi['cores']} cores, {mi['ram_gb']} GB RAM, GPU: {mi['gpu'] or 'none'}; "
               f"torch {mi['torch']}, faiss {mi['faiss']}, ray {mi['ray']}, python {mi['python']}. "
               f"Mode: {r['mode']}, total {r['seconds']:.0f} s; CPUs busy with other processes just before / "
               f"after the run: {100 * mi['cpu_busy_by_others_start_end'][0]:.0f}% / "
               f"{100 * mi['cpu_busy_by_others_start_end'][1]:.0f}%.")
    return out


def run_bench(a: argparse.Namespace, configs: Path) -> dict[str, Any]:
    """The whole benchmark for the parsed command line ``a`` (see pipelines/bench.py);
    ``configs`` is the folder of the extraction configs: measure each stage, put the headline
    figures against their targets, print the table and write the JSON (and Markdown)."""
    for noisy in ("ray", "scalemm", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not a.verbose else logging.INFO)
    _import_benchmarks()
    t_all = time.perf_counter()
    busy0 = cpu_busy()
    if busy0 > 0.25:
        log.warning("%.0f%% of the CPUs are busy before the run: other processes share them, timings will "
                    "suffer", 100 * busy0)
    r = measure(a, configs)
    add_headline(r)
    r["seconds"] = time.perf_counter() - t_all
    r["machine"]["cpu_busy_by_others_start_end"] = [busy0, cpu_busy()]
    return write_results(r, a)


def _import_benchmarks() -> None:
    """torch and the benchmark modules, loaded before the clock of the run starts."""
    import torch  # noqa: F401

    import scalemm.bench.evaluate  # noqa: F401
    import scalemm.bench.extract  # noqa: F401
    import scalemm.bench.extract_scale  # noqa: F401
    import scalemm.bench.fuse  # noqa: F401
    import scalemm.extract.config  # noqa: F401


def measure(a: argparse.Namespace, configs: Path) -> dict[str, Any]:
    """Every benchmark of the run, in a work folder (a temporary one is removed afterwards)."""
    import torch

    from scalemm.bench.evaluate import index_benchmark
    from scalemm.bench.extract import extraction_benchmark, vit_b32_throughput
    from scalemm.bench.extract_scale import scale_benchmark
    from scalemm.bench.fuse import attention_benchmark, attention_op_benchmark
    from scalemm.extract.config import load_config

    quick = a.quick
    n = a.items or (32 if quick else 256)
    cfg = load_config(a.config or configs / ("tiny.yaml" if quick else "offline.yaml"))
    sizes = [int(s) for s in a.sizes.split(",")] if a.sizes else ([100_000] if quick else [100_000, 1_000_000])
    work = a.work or Path(tempfile.mkdtemp(prefix="scale-bench-"))
    r: dict[str, Any] = {"mode": "quick" if quick else "full", "machine": machine_info()}
    try:
        log.info("extract: N=%d and 4N=%d items with %s", n, 4 * n, a.config or cfg.image)
        r["extract"] = extraction_benchmark(cfg, n, work / "extract", scale=4, num_cpus=a.cpus,
                                          warmup_items=2 if quick else 4)
        feats = Path(r["extract"]["features_dir"])
        log.info("extract at scale: the driver at N and 4N, a store grown by 20%, two nodes")
        r["extract_scale"] = scale_benchmark(configs.parent, a.config or configs / ("tiny.yaml" if quick else "offline.yaml"),
                                             16 if quick else 150, work / "extract_scale", cpus=a.cpus)
        r["store"] = store_benchmarks(feats, quick)
        r["fusion"] = fusion_benchmarks(r, feats, configs, quick)
        r["index"] = []
        for size in sizes:
            log.info("index: %d clustered vectors", size)
            r["index"].append(index_benchmark(size))
        if torch.cuda.is_available():
            log.info("gpu: ViT-B-32 bf16 and SDPA on CUDA")
            L = r["fusion"]["length"]
            r["gpu"] = {"vit_b32": vit_b32_throughput(),
                        "attention_op": attention_op_benchmark(64, L, 4, 64, repeats=10, device="cuda"),
                        "attention_model": attention_benchmark(64, L, 256, 4, 2, repeats=10, device="cuda")}
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return r


def store_benchmarks(feats: Path, quick: bool) -> dict[str, Any]:
    """The training loader, the train step and the HDF5 reads on the extracted store."""
    from scalemm.bench.fuse import loader_benchmark, store_read_benchmark, train_step_benchmark

    log.info("store: loader, train step, reads on %s", feats)
    steps = 2 if quick else 8
    train = train_step_benchmark(feats, steps=steps, batch_size=64)
    # the same step with every token encoded, right after: what training gains from encoding the
    # first tokens alone (no joint transformer, no masked modelling: fuse.model.ScaleModel.forward)
    if train["first_tokens_alone"]:
        every = train_step_benchmark(feats, steps=steps, batch_size=64, every_token=True)
        train_pass = {"every_token_step_s": every["step_s"], "first_tokens_step_s": train["step_s"],
                      "every_over_first": every["step_s"] / train["step_s"]}
    else:
        train_pass = {"not_measured": "the default config encodes every token (a joint transformer or masked modelling)"}
    return {"features_dir": str(feats), "loader": loader_benchmark(feats, 64, 1.0 if quick else 3.0),
            "train": train, "train_pass": train_pass, "read": store_read_benchmark(feats)}


def fusion_benchmarks(r: dict[str, Any], feats: Path, configs: Path, quick: bool) -> dict[str, Any]:
    """SDPA against naive attention at the fusion length of the real (offline) backbones,
    whatever store the quick run made; the full run adds the whole model and the train step."""
    from scalemm.bench.fuse import (attention_benchmark, attention_memory, attention_op_benchmark,
                                    embedding_pass_benchmark, fusion_length, sdpa_kernels, train_step_benchmark)
    from scalemm.extract.config import load_config

    if quick:
        from scalemm.extract.encode import Backbones
        offline = load_config(configs / "offline.yaml")
        mt = {m: i["max_tokens"] for m, i in Backbones(offline, device="cpu").infos().items()}
        src = "configs/offline.yaml backbones"
    else:
        mt, src = r["extract"]["max_tokens"], "the extracted store"
    L = fusion_length(mt)
    log.info("fusion: SDPA vs naive at L=%d (%s), batch 64", L, src)
    drop, attn_drop = r["store"]["train"]["dropout"], r["store"]["train"]["attn_dropout"]
    rep = 3 if quick else 7
    fu = {
        "length": L, "length_from": src, "max_tokens": mt, "train_dropout": drop, "train_attn_dropout": attn_drop,
        # the attention op alone (q, k, v -> o), the model's boolean padding mask, fwd+bwd, with
        # malloc as this process has it after the train steps; also forward only, warm heap
        "attention_op": attention_op_benchmark(64, L, 4, 64, repeats=rep),
        # which aten kernels SDPA runs: eval, training as configured, with attention dropout
        "kernels_eval": sdpa_kernels(length=L),
        "kernels_train": sdpa_kernels(length=L, attn_dropout=attn_drop, train=True),
        "kernels_attn_dropout": sdpa_kernels(length=L, attn_dropout=0.1),
        "train_samples_per_s": r["store"]["train"]["samples_per_s"],
    }
    if quick:
        return fu
    # what attention dropout would cost: on CPU it sends SDPA to the math kernel
    fu["attention_op_attn_dropout"] = attention_op_benchmark(64, L, 4, 64, repeats=5, dropout=0.1, memory=False,
                                                             regimes=False)
    # the whole 2-layer fusion transformer (MLPs, projections, norms included)
    fu["attention_model"] = attention_benchmark(64, L, 256, 4, 2, repeats=5)
    fu["attention_model_train"] = attention_benchmark(64, L, 256, 4, 2, repeats=3, dropout=drop,
                                                      attn_dropout=attn_drop)
    fu["memory_model"] = attention_memory(64, L, 256, 4, 2)
    # the real training step (ScaleModel, default config), SDPA vs naive, one after the other
    steps = {impl: train_step_benchmark(feats, steps=8, batch_size=64, attention=impl) for impl in ("sdpa", "naive")}
    fu["train_step"] = {**steps, "naive_over_sdpa": steps["naive"]["step_s"] / steps["sdpa"]["step_s"]}
    # the embedding forward (default model): every token encoded against the first tokens alone
    fu["embedding_pass"] = embedding_pass_benchmark(feats)
    return fu


def add_headline(r: dict[str, Any]) -> None:
    """``r["headline"]``: the figures the targets and docs quote, each ratio within its physical
    bound or None with the reason in ``r["not_measured"]``; ``r["targets"]``: each target's status."""
    from scalemm.bench.extract_scale import HEADLINE

    ex, st, fu, last = r["extract"], r["store"], r["fusion"], r["index"][-1]
    r["headline"] = {
        "extract_job_items_per_s": ex["job_items_per_s"], "extract_bare_items_per_s": ex["bare_pipeline_items_per_s"],
        "extract_efficiency": ex["extract_efficiency"], "extract_efficiency_steady": ex["extract_efficiency_steady"],
        "extract_scaling": ex["extract_scaling"],
        "extract_startup_s": ex["startup_s"], "decode_items_per_s": ex["decode_items_per_s"],
        "model_items_per_s": ex["model_items_per_s"], "write_mb_per_s": ex["write_mb_per_s"],
        "loader_samples_per_s": st["loader"]["samples_per_s"], "train_samples_per_s": st["train"]["samples_per_s"],
        "loader_headroom": st["loader"]["samples_per_s"] / st["train"]["samples_per_s"],
        "hdf5_read_mb_per_s": st["read"]["hdf5_mb_per_s"], "raw_read_mb_per_s": st["read"]["raw_mb_per_s"],
        "store_read_efficiency": st["read"]["store_read_efficiency"],
        "sdpa_speedup": fu["attention_op"]["naive_over_sdpa"],
        "sdpa_speedup_forward": fu["attention_op"].get("forward_naive_over_sdpa"),
        "sdpa_speedup_warm_heap": fu["attention_op"].get("naive_over_sdpa_warm_heap"),
        "sdpa_speedup_train_step": fu.get("train_step", {}).get("naive_over_sdpa"),
        "attention_peak_memory_ratio": fu["attention_op"]["peak_naive_over_sdpa"],
        "faiss_speedup": last["faiss_speedup"], "ann_recall@10": last["ann_recall@10"],
        "faiss_n": last["n"], "faiss_build_s": last["build_s"],
    }
    r["headline"].update({k: r["extract_scale"].get(k) for k in HEADLINE})
    if r.get("gpu", {}).get("vit_b32", {}).get("images_per_s"):
        r["headline"]["vit_b32_images_per_s"] = r["gpu"]["vit_b32"]["images_per_s"]
    r["not_measured"] = {**ex["not_measured"], **st["read"]["not_measured"],
                         **{k: r["extract_scale"][k + "_why"] for k in HEADLINE if k + "_why" in r["extract_scale"]}}
    within_bounds(r["headline"], r["not_measured"])
    for k in ("sdpa_speedup_train_step", "sdpa_speedup_warm_heap", "sdpa_speedup_forward"):
        if r["headline"][k] is None:
            r["not_measured"].setdefault(k, "measured in full mode only" if r["mode"] == "quick"
                                         else "not run on this device")
    r["targets"] = [{"key": k, "op": op, "threshold": th, "what": what, "value": r["headline"][k],
                     "status": check(r["headline"][k], op, th)} for k, op, th, what in HEADLINE_TARGETS]


def write_results(r: dict[str, Any], a: argparse.Namespace) -> dict[str, Any]:
    """Print the table, write the JSON (and the Markdown table with ``--md``); the summary."""
    text = markdown_table(r)
    print(text, flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(r, indent=2, default=str))
    if a.md:
        a.md.parent.mkdir(parents=True, exist_ok=True)
        a.md.write_text(text + "\n")
    log.info("wrote %s", a.out)
    return {"out": str(a.out), "mode": r["mode"], "seconds": round(r["seconds"], 1),
            **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r["headline"].items()},
            "targets": {t["key"]: t["status"] for t in r["targets"]}}
