"""Where the model runs: the device a config names, and batches moved onto it."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from .config import ConfigError


def resolve_device(spec: str) -> torch.device:
    """``"auto"`` (CUDA when there is one, else CPU) or a torch device string."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"device {spec!r} is not a torch device; use 'auto', 'cpu' or 'cuda'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} asked for but CUDA is not available; set device: auto or cpu")
    return dev


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """A collated batch (see :func:`fuse.reader.collate`) with its tensors on ``device``."""
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif isinstance(v, dict):
            out[k] = {m: t.to(device, non_blocking=True) for m, t in v.items()}
        else:
            out[k] = v
    return out
