"""Contrastive negatives from every data-parallel rank: gathering with gradients.

With N workers (Ray Train, DDP) each rank holds its own batch of B products. SIMCL and the
subset-consistency loss are InfoNCE losses: each sample's positive competes with the batch's
other samples. Computed on a rank's own batch, N workers x batch B train another objective
than one process with batch N x B (each InfoNCE sees B - 1 negatives instead of N x B - 1).
:func:`gather_output` therefore concatenates, across ranks and in rank order, the parts of a
:class:`~fuse.model.ModelOutput` these losses read (the pooled outputs, W, the importances,
the presence flags) so that every rank computes the loss of the combined batch.

Gradients, as open_clip does with ``gather_with_grad=True, local_loss=False``
(``open_clip/loss.py``, ``gather_features``): every rank computes the same loss L of the
combined batch. The backward of the gather (:class:`_AllGatherWithGrad`) sums, over the ranks,
the gradient each rank's L sends to a rank's slice (an all-reduce of the gathered gradient,
of which each rank keeps its slice: a reduce-scatter), so rank r's own outputs receive
N x dL/dz_r. DDP then averages the parameter gradients over the ranks:
(1/N) sum_r N dL/dz_r dz_r/dtheta = dL/dtheta, the gradient of the combined batch; parameters
used after the gather (the harmonizer inside the subset-consistency loss) get dL/dtheta on
every rank, which the average keeps. So 2 workers x batch B give the loss and gradients of
1 worker x batch 2B (checked by ``tests/test_fuse_gather.py``). open_clip uses
``torch.distributed.nn.all_gather``, deprecated in our torch; the autograd function here does
the same with ``all_gather`` and ``all_reduce`` only, which gloo (CPU) and NCCL (GPU) both have,
and pads ranks with fewer rows, so batches of different sizes gather too.

The masked-modelling losses are per sample and stay on each rank. Outside a process group of
more than one rank, :func:`gather_output` returns its input unchanged.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

if TYPE_CHECKING:  # for the annotations only: the model imports this module's collectives
    from .model import ModelOutput


def world_size() -> int:
    """Ranks of the default process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _sizes(n: int, device: torch.device) -> list[int]:
    """Every rank's row count."""
    mine = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.zeros_like(mine) for _ in range(world_size())]
    dist.all_gather(out, mine)
    return [int(x) for x in out]


def _gather_padded(x: Tensor, sizes: list[int]) -> Tensor:
    """Rows of every rank concatenated in rank order (no gradient)."""
    top = max(sizes)
    if x.shape[0] < top:
        x = torch.cat([x, x.new_zeros((top - x.shape[0], *x.shape[1:]))])
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _AllGatherWithGrad(torch.autograd.Function):
    """All ranks' rows (rank order); backward: the sum over ranks of the gradient of this
    rank's rows (see the module doc)."""

    @staticmethod
    def forward(ctx, x: Tensor, sizes: list[int]) -> Tensor:  # type: ignore[override]
        rank = dist.get_rank()
        ctx.start, ctx.stop = sum(sizes[:rank]), sum(sizes[:rank + 1])
        return _gather_padded(x, sizes)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start:ctx.stop], None


def all_gather_with_grad(x: Tensor, sizes: list[int] | None = None) -> Tensor:
    """``x`` [n_r, ...] of every rank r concatenated along dim 0, gradients flowing back to every
    rank's ``x`` (:class:`_AllGatherWithGrad`). ``sizes``: the ranks' row counts, if known."""
    if world_size() == 1:
        return x
    return _AllGatherWithGrad.apply(x, sizes or _sizes(x.shape[0], x.device))


def all_gather_rows(x: Tensor, sizes: list[int] | None = None) -> Tensor:
    """``x`` of every rank concatenated along dim 0, without gradient (bool tensors too)."""
    if world_size() == 1:
        return x
    sizes = sizes or _sizes(x.shape[0], x.device)
    if x.dtype == torch.bool:
        return _gather_padded(x.to(torch.uint8), sizes).bool()
    return _gather_padded(x.detach(), sizes)


def gather_output(out: ModelOutput, fields: tuple[str, ...] = ("enc_pooled", "pooled", "weights", "importances")
                  ) -> ModelOutput:
    """``out`` with ``present`` and the tensors named in ``fields`` gathered across ranks (with
    their gradients); the other fields (and the masked-modelling predictions, which index the
    rank's own batch) are the rank's own. Unchanged outside a process group of several ranks."""
    if world_size() == 1:
        return out
    sizes = _sizes(out.present.shape[0], out.present.device)
    gathered = {f: all_gather_with_grad(getattr(out, f), sizes) for f in fields}
    return replace(out, present=all_gather_rows(out.present, sizes), **gathered)
