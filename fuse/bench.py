"""Side-by-side timing of the fused SDPA attention path against the naive reference.

:func:`attention_benchmark` times one :class:`fuse.attention.Transformer` (same weights)
run with ``impl="sdpa"`` and with ``impl="naive"`` on the same padded input, interleaving
the two so that both see the same machine load, and returns their times and the ratio.
It is for benchmark scripts (``pipelines/bench.py``), not for tests.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from .attention import Transformer


def attention_benchmark(batch: int = 64, length: int = 213, d_model: int = 256, heads: int = 4,
                        layers: int = 2, repeats: int = 5, device: str = "cpu", backward: bool = True,
                        seed: int = 0) -> dict[str, Any]:
    """Median seconds per forward(+backward) of the SDPA and naive paths, and naive/sdpa."""
    dev = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    net = Transformer(d_model, heads, layers).to(dev).eval()
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
            "layers": layers, "backward": backward, "sdpa_s": med["sdpa"], "naive_s": med["naive"],
            "naive_over_sdpa": med["naive"] / med["sdpa"]}
