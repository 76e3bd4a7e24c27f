"""Where models run, for every stage: the device a setting names, batches moved onto it, the
CPU cores a process may use.

Two settings name a device: extraction's ``use_gpu`` (``auto | yes | no``, see
:func:`pick_device`) and training's ``device`` (``auto`` or a torch device string, see
:func:`resolve_device`). Both mean CUDA when one is visible and the setting allows it, else
the CPU; asking for CUDA where there is none is an error. torch is imported on first use, so
importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from scalemm.errors import ConfigError

if TYPE_CHECKING:
    import torch


def pick_device(use_gpu: str) -> str:
    """Extraction's ``use_gpu``: ``no`` -> cpu; ``auto`` -> cuda when visible; ``yes`` -> cuda or an error."""
    import torch

    if use_gpu == "no":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if use_gpu == "yes":
        raise RuntimeError("use_gpu: yes but no CUDA device is visible")
    return "cpu"


def resolve_device(spec: str) -> "torch.device":
    """Training's ``device``: ``"auto"`` (CUDA when there is one, else CPU) or a torch device string."""
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"device {spec!r} is not a torch device; use 'auto', 'cpu' or 'cuda'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} asked for but CUDA is not available; set device: auto or cpu")
    return dev


def to_device(batch: Mapping[str, Any], device: "torch.device") -> dict[str, Any]:
    """A collated batch (see :func:`scalemm.fuse.reader.collate`) with its tensors on ``device``."""
    from torch import Tensor

    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif isinstance(v, dict):
            out[k] = {m: t.to(device, non_blocking=True) for m, t in v.items()}
        else:
            out[k] = v
    return out


def cpu_threads() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op CPU threads set to ``threads`` (0: left as they are), restored on exit."""
    import torch

    prev = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(prev)
