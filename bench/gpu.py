"""The CUDA paths, measured side by side on one GPU: ``python -m scalemm.bench.gpu --out gpu.json``.

What the CPU benchmarks cannot show (docs/benchmarks.md, "On a GPU"):

* **train step**: samples/s of :func:`fuse.step.train_step` (bf16 autocast on CUDA) with SDPA
  attention against the naive reference, on a synthetic store with the development store's token
  shapes (image 49 x 1280, text 36 x 384, table 64 x 384, video 12 x 1280, audio 47 x 80), and what
  that makes of the default training (240 steps of 64);
* **attention**: the op alone and the two-layer transformer, SDPA against naive, bf16, and which
  CUDA kernels SDPA runs with the model's boolean padding mask (flash attention takes no mask;
  the memory-efficient or cuDNN kernel does);
* **image backbones**: images/s of EfficientNet-Lite0 (the offline default) and open_clip ViT-B-32
  in bf16 autocast, random weights (speed does not depend on them), the model alone;
* **FAISS on the GPU**: when ``faiss`` has GPU support, an exact search of 1M x 512 against the
  CPU's; otherwise recorded as not measured, with the reason.

Each section runs on its own: one that fails records its error and the others still run. Needs a
CUDA device; the store is written under ``--work`` (a temporary folder by default).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

DEV_SHAPES = {"image": (49, 1280), "text": (36, 384), "table": (64, 384), "video": (12, 1280), "audio": (47, 80)}
DEFAULT_STEPS = 240  # the default training on the development corpus: 12 epochs x 20 batches of 64


def _section(out: dict[str, Any], name: str, fn: Callable[[], Any], path: Path | None) -> None:
    t = time.perf_counter()
    try:
        out[name] = fn()
    except Exception as e:  # noqa: BLE001 - each section reports its own failure
        out[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
    print(f"{name}: {time.perf_counter() - t:.1f} s", flush=True)
    if path is not None:
        path.write_text(json.dumps(out, indent=1, default=str))


def train_steps(store: Path, steps: int) -> dict[str, Any]:
    from scalemm.bench.fuse import train_step_benchmark

    res = {impl: train_step_benchmark(store, steps=steps, batch_size=64, device="cuda", attention=impl)
           for impl in ("sdpa", "naive")}
    sdpa = res["sdpa"]
    res["naive_over_sdpa_step_s"] = res["naive"]["step_s"] / sdpa["step_s"]
    res["default_training_s_estimate"] = DEFAULT_STEPS * sdpa["step_s"]
    return res


def faiss_gpu(n: int = 1_000_000, d: int = 512, queries: int = 10_000, k: int = 10) -> dict[str, Any]:
    try:
        import faiss
    except ImportError as e:
        return {"not_measured": f"faiss is not installed here ({e})"}
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        return {"not_measured": "this faiss has no GPU support (faiss-cpu)"}
    import numpy as np

    rng = np.random.default_rng(0)
    xb = rng.standard_normal((n, d), dtype=np.float32)
    xq = xb[:queries] + 0.01
    out: dict[str, Any] = {"n": n, "d": d, "queries": queries, "k": k}
    cpu = faiss.IndexFlatIP(d)
    cpu.add(xb)
    gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, cpu)
    for name, index in (("gpu", gpu), ("cpu", cpu)):
        t = time.perf_counter()
        index.search(xq, k)
        out[f"{name}_queries_per_s"] = queries / (time.perf_counter() - t)
    out["gpu_over_cpu"] = out["gpu_queries_per_s"] / out["cpu_queries_per_s"]
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write (rewritten after each section)")
    ap.add_argument("--work", type=Path, default=None, help="folder for the synthetic store (default: a temporary one)")
    ap.add_argument("--items", type=int, default=2048, help="products in the synthetic store")
    ap.add_argument("--steps", type=int, default=20, help="timed train steps per attention path")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device: this benchmark measures the CUDA paths only")
    from scalemm.bench.extract import image_throughput, vit_b32_throughput
    from scalemm.bench.fuse import attention_benchmark, attention_op_benchmark, fusion_length, sdpa_kernels
    from scalemm.corpora.scalestore import ScaleStoreSpec, write_scale_store

    work = a.work or Path(tempfile.mkdtemp(prefix="scale-gpu-"))
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                           "cuda": torch.version.cuda, "shapes": DEV_SHAPES}
    L = fusion_length({m: s[0] for m, s in DEV_SHAPES.items()})
    out["fusion_length"] = L
    store = work / "store"
    try:
        _section(out, "store", lambda: write_scale_store(store, ScaleStoreSpec(n_items=a.items, shard_size=512,
                                                                               shapes=dict(DEV_SHAPES)),
                                                         progress=False), a.out)
        _section(out, "train_step", lambda: train_steps(store, a.steps), a.out)
        _section(out, "sdpa_cuda_kernels", lambda: sdpa_kernels(64, L, 384, 4, train=True, device="cuda"), a.out)
        _section(out, "attention_op", lambda: attention_op_benchmark(64, L, 4, 64, repeats=10, device="cuda"), a.out)
        _section(out, "attention_model", lambda: attention_benchmark(64, L, 384, 4, 2, repeats=10, device="cuda"), a.out)

        def lite0() -> dict[str, Any]:
            import timm
            return image_throughput(lambda: timm.create_model("efficientnet_lite0", pretrained=False), 224)

        _section(out, "efficientnet_lite0", lite0, a.out)
        _section(out, "vit_b32", vit_b32_throughput, a.out)
        _section(out, "faiss_gpu", faiss_gpu, a.out)
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return out


if __name__ == "__main__":
    main()
