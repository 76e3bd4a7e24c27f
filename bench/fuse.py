"""Side-by-side timing of the fused SDPA attention path against the naive reference.

:func:`attention_benchmark` times one :class:`fuse.attention.Transformer` (same weights)
run with ``impl="sdpa"`` and with ``impl="naive"`` on the same padded input, interleaving
the two so that both see the same machine load, and returns their times and the ratio.
It is for benchmark scripts (``pipelines/bench.py``), not for tests.

Also here, for the same scripts: the peak memory of both paths (:func:`attention_memory`),
which aten kernel SDPA runs (:func:`sdpa_kernels`), the training loader's samples/s
(:func:`loader_benchmark`), the samples/s of the train step (:func:`train_step_benchmark`,
which times :func:`fuse.step.train_step` itself), the embedding forward with every token
encoded against the first tokens alone (:func:`embedding_pass_benchmark`) and
HDF5 shard reads against raw file reads (:func:`store_read_benchmark`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from scalemm.device import torch_threads
from scalemm.fuse.attention import Transformer


def attention_benchmark(batch: int = 64, length: int = 213, d_model: int = 256, heads: int = 4,
                        layers: int = 2, repeats: int = 5, device: str = "cpu", backward: bool = True,
                        seed: int = 0, dropout: float = 0.0, attn_dropout: float = 0.0) -> dict[str, Any]:
    """Median seconds per forward(+backward) of the SDPA and naive paths, and naive/sdpa.

    ``dropout`` (residual branches) or ``attn_dropout`` (attention probabilities) > 0 runs the
    blocks in training mode with them, as the model trains; both 0 runs them in eval mode.
    Malloc as the process has it (see :func:`warm_heap`)."""
    dev = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    train = dropout > 0 or attn_dropout > 0
    net = Transformer(d_model, heads, layers, dropout=dropout, attn_dropout=attn_dropout).to(dev).train(train)
    x = torch.randn(batch, length, d_model, generator=g).to(dev)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=g)
    key = (torch.arange(length)[None, :] < lengths[:, None]).to(dev)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    times: dict[str, list[float]] = {"sdpa": [], "naive": []}

    def run(impl: str) -> float:
        net.impl = impl
        xi = x.detach().requires_grad_(backward)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t = time.perf_counter()
        with torch.autocast(device_type=dev.type, dtype=dtype, enabled=dev.type == "cuda"):
            y = net(xi, key)
        if backward:
            y.float().sum().backward()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - t

    for impl in ("sdpa", "naive"):  # warm-up
        run(impl)
    for _ in range(repeats):
        for impl in ("sdpa", "naive"):
            times[impl].append(run(impl))
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {"device": str(dev), "batch": batch, "length": length, "d_model": d_model, "heads": heads,
            "layers": layers, "backward": backward, "dropout": dropout, "attn_dropout": attn_dropout,
            "sdpa_s": med["sdpa"], "naive_s": med["naive"],
            "naive_over_sdpa": med["naive"] / med["sdpa"]}


# ----------------------------------------------------------------------------- fusion length, memory

def fusion_length(max_tokens: dict[str, int]) -> int:
    """The joint transformer's sequence length: a first token plus ``max_tokens`` per modality."""
    return int(sum(int(t) + 1 for t in max_tokens.values()))


def attention_matrix_bytes(batch: int, length: int, heads: int, layers: int, dtype_bytes: int = 4) -> int:
    """Bytes of one layer's [B, H, L, L] score matrix times ``layers`` (what the naive path keeps
    for backward per matrix it materialises; fused kernels never hold it whole)."""
    return batch * heads * length * length * dtype_bytes * layers


def _peak_allocated(fn: Any) -> int:
    """Peak bytes allocated by torch's CPU allocator while ``fn()`` runs, above the level at its
    start: read from torch.profiler's memory records (``profile_memory=True``)."""
    import json
    import os
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False) as prof:
        fn()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as fh:
            trace = json.load(fh)
    finally:
        os.unlink(path)
    recs = sorted((e for e in trace.get("traceEvents", []) if e.get("name") == "[memory]"
                   and int(e.get("args", {}).get("Device Type", 0)) == 0), key=lambda e: float(e["ts"]))
    if not recs:
        return 0
    # Total Allocated is after each (de)allocation; its start level is before the first record
    start = int(recs[0]["args"]["Total Allocated"]) - int(recs[0]["args"]["Bytes"])
    return max(int(r["args"]["Total Allocated"]) for r in recs) - start


def _padded_key(batch: int, length: int, g: torch.Generator) -> Tensor:
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=g)
    return torch.arange(length)[None, :] < lengths[:, None]


def _peak(step: Any, dev: torch.device) -> int:
    """Peak bytes above the starting level while ``step()`` runs (after one warm-up call)."""
    step()  # warm-up: lazily made buffers do not count
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        step()
        torch.cuda.synchronize(dev)
        return int(torch.cuda.max_memory_allocated(dev) - base)
    return _peak_allocated(step)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_GLIBC_DEFAULT_THRESHOLD = 128 * 1024


@contextlib.contextmanager
def warm_heap() -> Iterator[str]:
    """glibc's malloc set to reuse freed heap memory, for timing code that allocates large blocks.

    The naive path allocates [B, H, L, L] score matrices (tens of MB) on every call. glibc
    serves such a block from free heap memory when it has a big enough chunk, whose pages were
    touched before; otherwise, above its mmap threshold, with a fresh ``mmap`` whose pages fault
    in on first touch. The dynamic threshold follows freed blocks up only to 32 MiB
    (``DEFAULT_MMAP_THRESHOLD_MAX``), so score matrices above that (64 x 4 x 213 x 213 float32 =
    44 MiB) fault unless the heap happens to hold that much free memory: a fresh process faults
    on all of them, a process that has trained for a while on some. That history-dependent state
    is the process default, measured without this context. Here both thresholds are raised to
    1 GiB (what ``MALLOC_MMAP_THRESHOLD_`` would do): blocks are reused from the heap, the
    naive path's best case. Yields the regime's name ("warm heap", or "default" where glibc's
    mallopt is not available). Leaves glibc at its fixed 128 KiB thresholds, memory trimmed.
    """
    libc = None
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6")
        except OSError:
            libc = None
    if libc is None or not hasattr(libc, "mallopt"):
        yield "default"
        return
    big = 1 << 30
    libc.mallopt(_M_MMAP_THRESHOLD, big)
    libc.mallopt(_M_TRIM_THRESHOLD, 2 * big)
    libc.malloc_trim(0)
    try:
        yield "warm heap"
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
        libc.malloc_trim(0)


def _minor_faults() -> int:
    try:
        import resource
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
    except (ImportError, OSError):
        return 0


def attention_op_benchmark(batch: int = 64, length: int = 213, heads: int = 4, head_dim: int = 64,
                           repeats: int = 5, device: str = "cpu", backward: bool = True, dropout: float = 0.0,
                           seed: int = 0, memory: bool = True, regimes: bool = True) -> dict[str, Any]:
    """The attention op alone: ``F.scaled_dot_product_attention`` against :func:`naive_attention`
    on the same q, k, v [B, H, L, dh] and boolean key-padding mask; median seconds per call,
    the two interleaved.

    ``naive_over_sdpa``: forward(+``backward``) with malloc as the calling process has it (the
    benchmark calls it after the real train steps; see :func:`warm_heap`;
    ``naive_faults_mb_per_call``: the page faults the naive path pays per call there). With ``regimes`` also forward only (``forward_naive_over_sdpa``)
    and, on CPU, the naive path's best case with a warm heap (``naive_over_sdpa_warm_heap``; on
    CUDA the caching allocator makes this moot). With ``memory`` also the peak memory of one
    call of each (as :func:`attention_memory`)."""
    op = _AttentionOp(batch, length, heads, head_dim, device, dropout, seed)
    out: dict[str, Any] = {"device": str(op.dev), "dtype": str(op.dtype).replace("torch.", ""), "batch": batch,
                           "length": length, "heads": heads, "head_dim": head_dim, "backward": backward,
                           "dropout": dropout}
    med, faults = op.medians(backward, repeats)
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    out.update(sdpa_s=med["sdpa"], naive_s=med["naive"], naive_over_sdpa=med["naive"] / med["sdpa"],
               regime="CUDA caching allocator" if op.cuda else "as this process has it",
               **{f"{k}_faults_mb_per_call": sorted(v)[len(v) // 2] * page / 2**20 for k, v in faults.items()})
    if regimes and backward:
        fwd, _ = op.medians(False, repeats)
        out.update(forward_sdpa_s=fwd["sdpa"], forward_naive_s=fwd["naive"],
                   forward_naive_over_sdpa=fwd["naive"] / fwd["sdpa"])
    if regimes and not op.cuda:
        with warm_heap() as name:
            warm, _ = op.medians(backward, repeats)
        out.update(warm_heap_sdpa_s=warm["sdpa"], warm_heap_naive_s=warm["naive"],
                   naive_over_sdpa_warm_heap=warm["naive"] / warm["sdpa"], warm_regime=name)
    peaks = {impl: _peak(lambda impl=impl: op.run(impl, backward), op.dev) if memory else 0
             for impl in ("sdpa", "naive")}
    out.update(sdpa_peak_mb=peaks["sdpa"] / 1e6, naive_peak_mb=peaks["naive"] / 1e6,
               peak_naive_over_sdpa=peaks["naive"] / max(peaks["sdpa"], 1),
               score_matrix_mb_analytic=attention_matrix_bytes(batch, length, heads, 1, 2 if op.cuda else 4) / 1e6,
               memory_method=_MEM_METHOD[op.cuda])
    return out


class _AttentionOp:
    """SDPA and :func:`naive_attention` on the same seeded q, k, v [B, H, L, dh], boolean
    key-padding mask and upstream gradient (bf16 on CUDA, float32 on CPU)."""

    def __init__(self, batch: int, length: int, heads: int, head_dim: int, device: str, dropout: float,
                 seed: int) -> None:
        import torch.nn.functional as F

        from scalemm.fuse.attention import naive_attention

        self.dev = torch.device(device)
        self.cuda = self.dev.type == "cuda"
        g = torch.Generator().manual_seed(seed)
        self.qkv = [torch.randn(batch, heads, length, head_dim, generator=g).to(self.dev) for _ in range(3)]
        mask = _padded_key(batch, length, g).to(self.dev)[:, None, None, :]
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.grad_out = torch.randn(batch, heads, length, head_dim, generator=g).to(self.dev, self.dtype)
        self.fns = {"sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout),
                    "naive": lambda q, k, v: naive_attention(q, k, v, mask, dropout)}

    def run(self, impl: str, bw: bool) -> float:
        """Seconds of one call of ``impl`` (forward, and backward if ``bw``)."""
        q, k, v = (t.detach().to(self.dtype).requires_grad_(bw) for t in self.qkv)
        if self.cuda:
            torch.cuda.synchronize(self.dev)
        t = time.perf_counter()
        o = self.fns[impl](q, k, v)
        if bw:  # a dense upstream gradient (sum().backward() would hand the matmuls a stride-0 one)
            o.backward(self.grad_out)
        if self.cuda:
            torch.cuda.synchronize(self.dev)
        return time.perf_counter() - t

    def medians(self, bw: bool, repeats: int) -> tuple[dict[str, float], dict[str, list[int]]]:
        """Median seconds per call of each, the two interleaved after a warm-up call; and the
        minor page faults of every timed call."""
        times: dict[str, list[float]] = {"sdpa": [], "naive": []}
        faults: dict[str, list[int]] = {"sdpa": [], "naive": []}
        for impl in ("sdpa", "naive"):  # warm-up
            self.run(impl, bw)
        for _ in range(repeats):
            for impl in ("sdpa", "naive"):
                f0 = _minor_faults()
                times[impl].append(self.run(impl, bw))
                faults[impl].append(_minor_faults() - f0)
        return {k: sorted(v)[len(v) // 2] for k, v in times.items()}, faults


_MEM_METHOD = {False: "torch.profiler profile_memory: peak of torch's CPU allocator above the start level",
               True: "torch.cuda.max_memory_allocated above the start level"}


def attention_memory(batch: int = 64, length: int = 213, d_model: int = 256, heads: int = 4, layers: int = 2,
                     backward: bool = True, seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """Peak memory of one forward(+backward) of the whole Transformer (``layers`` blocks, MLPs
    included) through the SDPA and the naive path (same weights, eval mode).

    On CUDA: ``torch.cuda.max_memory_allocated``. On CPU: the peak of torch's CPU allocator as
    recorded by torch.profiler (``profile_memory=True``). Both relative to the level at the start.
    """
    g = torch.Generator().manual_seed(seed)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    net = Transformer(d_model, heads, layers).to(dev).eval()
    x = torch.randn(batch, length, d_model, generator=g).to(dev)
    key = _padded_key(batch, length, g).to(dev)

    def step(impl: str) -> None:
        net.impl = impl
        xi = x.detach().requires_grad_(backward)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=cuda):
            y = net(xi, key)
        if backward:
            y.float().sum().backward()
        net.zero_grad(set_to_none=True)

    peaks = {impl: _peak(lambda impl=impl: step(impl), dev) for impl in ("sdpa", "naive")}
    return {"method": _MEM_METHOD[cuda], "device": str(dev), "batch": batch, "length": length, "heads": heads,
            "layers": layers, "backward": backward, "sdpa_peak_mb": peaks["sdpa"] / 1e6,
            "naive_peak_mb": peaks["naive"] / 1e6, "naive_over_sdpa": peaks["naive"] / max(peaks["sdpa"], 1),
            "score_matrix_mb_analytic": attention_matrix_bytes(batch, length, heads, layers,
                                                               2 if cuda else 4) / 1e6}


def sdpa_kernels(batch: int = 8, length: int = 213, d_model: int = 256, heads: int = 4,
                 attn_dropout: float = 0.0, train: bool = False, device: str = "cpu") -> list[str]:
    """The aten attention ops one Block's SDPA call runs (with a padding mask), from torch.profiler:
    tells a fused kernel (``_scaled_dot_product_flash_attention*``) from the math fallback.

    On CUDA: in bf16 autocast, forward and backward (after one warm-up), with the CUDA kernels'
    names too (cuDNN's, flash, memory-efficient)."""
    from torch.profiler import ProfilerActivity, profile

    from scalemm.fuse.attention import Block

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    blk = Block(d_model, heads, attn_dropout=attn_dropout).to(dev)
    blk.train(train or attn_dropout > 0)
    x = torch.randn(batch, length, d_model, device=dev, requires_grad=cuda)
    key = torch.ones(batch, length, dtype=torch.bool, device=dev)
    key[:, length // 2:] = False

    def call() -> None:
        if cuda:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = blk.attention(x, key, "sdpa")
            out.float().sum().backward()
            torch.cuda.synchronize(dev)
        else:
            blk.attention(x, key, "sdpa")

    if cuda:
        call()  # warm-up: kernel selection and the cuDNN plan
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as prof:
        call()
    names = {e.name for e in prof.events()}
    fused = ("flash", "fmha", "efficient", "cudnn") if cuda else ()
    return sorted(n for n in names if "attention" in n or n in ("aten::softmax", "aten::_softmax", "aten::bmm")
                  or any(k in n.lower() for k in fused))


# ----------------------------------------------------------------------------- loader, train step, reads

def loader_benchmark(features_dir: str | Path, batch_size: int = 64, min_seconds: float = 2.0,
                     workers: int = 0, seed: int = 0) -> dict[str, Any]:
    """Samples/s of the training loader (FeatureDataset + EpochBatchSampler + make_loader)."""
    from scalemm.fuse.reader import EpochBatchSampler, FeatureDataset, make_loader

    t = time.perf_counter()
    ds = FeatureDataset(features_dir)
    open_s = time.perf_counter() - t
    sampler = EpochBatchSampler(ds, batch_size, seed)
    loader = make_loader(ds, sampler, workers)
    n = epochs = 0
    t = time.perf_counter()
    while epochs < 2 or time.perf_counter() - t < min_seconds:
        sampler.set_epoch(epochs)
        for b in loader:
            n += len(b["ids"])
        epochs += 1
    sec = time.perf_counter() - t
    return {"items": len(ds), "batch_size": batch_size, "in_memory": ds.in_memory, "workers": workers,
            "open_s": open_s, "epochs": epochs, "samples": n, "seconds": sec, "samples_per_s": n / sec,
            "shapes": {m: [s.max_tokens, s.dim] for m, s in ds.shapes.items()}}


def train_step_benchmark(features_dir: str | Path, steps: int = 6, batch_size: int = 64,
                         cfg: Any = None, device: str = "auto", attention: str = "sdpa",
                         every_token: bool = False) -> dict[str, Any]:
    """Samples/s of :func:`fuse.step.train_step`, the step training runs (masks, forward and
    loss, finite check, backward, clip, AdamW and schedule steps), on ScaleModel (default config
    unless ``cfg``) and batches from the training loader (collected beforehand, so loading is
    not timed); ``attention`` "naive" runs the same model through the reference attention,
    ``every_token`` encodes every token where the first ones suffice (the reference path of
    :meth:`fuse.model.ScaleModel.forward`)."""
    from scalemm.fuse.config import ScaleConfig
    from scalemm.device import resolve_device, to_device
    from scalemm.fuse.model import ATTN_DROPOUT, count_parameters
    from scalemm.fuse.reader import EpochBatchSampler, FeatureDataset, make_loader
    from scalemm.fuse.step import build_learner, train_step

    cfg = cfg or ScaleConfig()
    with torch_threads(cfg.runtime.threads):
        dev = resolve_device(device)
        ds = FeatureDataset(features_dir, cfg.modalities)
        sampler = EpochBatchSampler(ds, batch_size, cfg.seed)
        batches: list[dict[str, Any]] = []
        epoch = 0
        while len(batches) < steps + 1:
            sampler.set_epoch(epoch)
            batches += [to_device(b, dev) for b in make_loader(ds, sampler, 0)]
            epoch += 1
        learner = build_learner(cfg, {m: (s.max_tokens, s.dim) for m, s in ds.shapes.items()}, dev)
        learner.model.set_attention(attention)
        learner.model.every_token = every_token
        learner.model.train()
        train_step(learner, batches[0], 0)  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        n = 0
        for i, b in enumerate(batches[1:steps + 1], start=1):
            train_step(learner, b, i)
            n += len(b["ids"])
        if dev.type == "cuda":
            torch.cuda.synchronize()
        sec = time.perf_counter() - t
        seq = fusion_length({m: s.max_tokens for m, s in ds.shapes.items()})
        return {"device": str(dev), "threads": torch.get_num_threads(), "steps": steps, "batch_size": batch_size,
                "samples": n, "seconds": sec, "samples_per_s": n / sec, "step_s": sec / steps,
                "parameters": count_parameters(learner.model), "fusion_length": seq, "dropout": cfg.dropout,
                "attn_dropout": ATTN_DROPOUT, "attention": attention,
                # what ScaleModel.forward encodes: the first tokens alone without a joint
                # transformer and masked modelling (whose predictions read every token)
                "first_tokens_alone": learner.model.encodes_first_tokens_alone(bool(cfg.masked_losses))}


def embedding_pass_benchmark(features_dir: str | Path, cfg: Any = None, batch_size: int = 256, batches: int = 4,
                             repeats: int = 5, device: str = "auto") -> dict[str, Any]:
    """Seconds per 1,000 products of the embedding forward (the encoders, then the product vector)
    of ScaleModel (the default config unless ``cfg``; at initialisation: the arithmetic does not
    depend on the weights) on the store's first batches, with every token encoded and with each
    modality's first token alone (:meth:`fuse.model.ScaleModel.encode` ``first_only``, what
    embedding runs without a joint transformer), interleaved ``repeats`` times; their ratio and
    the largest difference between the two paths' product vectors."""
    from scalemm.device import resolve_device, to_device
    from scalemm.fuse.config import ScaleConfig
    from scalemm.fuse.model import product_embedding
    from scalemm.fuse.reader import EpochBatchSampler, FeatureDataset, make_loader
    from scalemm.fuse.step import init_model

    cfg = cfg or ScaleConfig()
    with torch_threads(cfg.runtime.threads):
        dev = resolve_device(device)
        ds = FeatureDataset(features_dir, cfg.modalities, stream=True)  # a few batches of the first shard
        loader = make_loader(ds, EpochBatchSampler(ds, batch_size, 0, shuffle=False, drop_last=False), 0)
        data = [to_device(b, dev) for _, b in zip(range(batches), loader)]
        model = init_model(cfg, {m: (s.max_tokens, s.dim) for m, s in ds.shapes.items()}).to(dev).eval()
        if not model.first_tokens_suffice:
            return {"not_measured": f"the config has a joint transformer ({cfg.fusion_layers} layers): "
                                    f"embedding encodes every token"}
        autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")

        @torch.no_grad()
        def run(first_only: bool) -> tuple[float, list[Tensor]]:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t = time.perf_counter()
            with autocast:
                out = [product_embedding(model.fuse(model.encode(b, first_only=first_only)), model.embedding)
                       for b in data]
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            return time.perf_counter() - t, out

        times: dict[bool, list[float]] = {False: [], True: []}
        vecs: dict[bool, list[Tensor]] = {}
        for flag in (False, True):  # warm-up
            run(flag)
        for _ in range(repeats):
            for flag in (False, True):
                sec, vecs[flag] = run(flag)
                times[flag].append(sec)
        n = sum(len(b["ids"]) for b in data)
        med = {k: sorted(v)[len(v) // 2] * 1000 / n for k, v in times.items()}
        diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(vecs[False], vecs[True]))
        return {"device": str(dev), "threads": torch.get_num_threads(), "products": n, "batch_size": batch_size,
                "encoder_layers": cfg.encoder_layers, "d_model": cfg.d_model,
                "max_tokens": {m: s.max_tokens for m, s in ds.shapes.items()},
                "every_token_s_per_1k": med[False], "first_tokens_s_per_1k": med[True],
                "every_over_first": med[False] / med[True], "max_abs_vector_difference": diff}


def store_read_benchmark(features_dir: str | Path, min_seconds: float = 0.5, min_file_mb: float = 1.0) -> dict[str, Any]:
    """HDF5 read MB/s against raw reads of the same files: every shard of every modality read
    through ``store.read_shard`` (h5py, float16 tokens into NumPy), and the same files opened
    and read whole as bytes. Both from the page cache (one pass first, not timed); each side
    repeats whole passes for at least ``min_seconds``. MB = total shard file bytes, so
    ``store_read_efficiency`` = HDF5 / raw is at most 1 (h5py reads what the file holds,
    plus its own work). It is a ratio of read throughputs, so it is measured only on files of
    at least ``min_file_mb`` on average: on smaller ones (the quick mode's tiny backbones write
    files of a few tens of KB) both times are per-file costs (opening, HDF5 metadata), and the
    ratio is None with the reason in ``not_measured``."""
    from scalemm.store import MODALITIES, list_shards, read_shard

    shards = [p for m in MODALITIES for p in list_shards(features_dir, m)]
    file_bytes = sum(p.stat().st_size for p in shards)

    def hdf5_pass() -> None:
        for p in shards:
            read_shard(p)

    def raw_pass() -> None:
        for p in shards:
            with open(p, "rb") as fh:
                fh.read()

    def rate(one_pass: Any) -> tuple[float, int]:
        one_pass()  # warm: page cache, imports
        passes = 0
        t = time.perf_counter()
        while passes < 2 or time.perf_counter() - t < min_seconds:
            one_pass()
            passes += 1
        return (time.perf_counter() - t) / passes, passes

    h_s, h_passes = rate(hdf5_pass)
    r_s, r_passes = rate(raw_pass)
    h_rate, r_rate = file_bytes / 1e6 / h_s, file_bytes / 1e6 / r_s
    mean_mb = file_bytes / 1e6 / max(len(shards), 1)
    why = {}
    if mean_mb < min_file_mb:
        why["store_read_efficiency"] = (f"the store's files are {mean_mb * 1e3:.0f} KB on average (under {min_file_mb:g} MB): "
                                        f"the times are per-file costs ({h_s / len(shards) * 1e3:.2f} ms per file through "
                                        f"HDF5, {r_s / len(shards) * 1e3:.3f} ms raw), not read throughput")
    return {"shards": len(shards), "mb": file_bytes / 1e6, "mean_file_kb": mean_mb * 1e3,
            "hdf5_s": h_s, "hdf5_passes": h_passes, "hdf5_mb_per_s": h_rate,
            "raw_s": r_s, "raw_passes": r_passes, "raw_mb_per_s": r_rate,
            "store_read_efficiency": None if why else h_rate / r_rate, "not_measured": why,
            "method": "warm page cache, the same shard files both sides (h5py read_shard vs open+read), "
                      "seconds per pass over all files; MB = total shard file bytes"}
