"""Where the backbones run: CUDA when there is a device and the config allows it."""

from __future__ import annotations

from scalemm.extract.config import ExtractConfig


def pick_device(cfg: ExtractConfig) -> str:
    """``use_gpu``: ``no`` -> cpu; ``auto`` -> cuda when visible; ``yes`` -> cuda or an error."""
    import torch
    if cfg.use_gpu == "no":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if cfg.use_gpu == "yes":
        raise RuntimeError("use_gpu: yes but no CUDA device is visible")
    return "cpu"


def cpu_threads() -> int:
    """CPU cores this process may run on."""
    import os
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
