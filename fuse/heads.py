"""Narrow modality heads beside the summed embedding: fine retrieval without losing the category.

The summed embedding (:func:`fuse.model.weighted_embedding`) adds every modality's output into
one vector, so the cosine of two products adds every cross-modality term: that keeps the
category (coarse retrieval, NMI) and loses some of what tells one product from its neighbours
(fine retrieval). A narrow linear head per chosen modality (default: the title and the picture,
:attr:`fuse.config.EmbedSettings.modality_heads`) maps that modality's encoder output to ``HEAD_DIM``
floats; the embedding is the sum beside the heads:

    [ sqrt(SUM_SHARE) * sum  ,  sqrt(1 - SUM_SHARE) * heads ]   (L2-normalised)

where ``heads`` is each present head's normalised output, side by side, at equal weight,
normalised. A product with none of the headed modalities has the sum alone. The heads do not
read the importances: with them, a third modality's presence (a table) moved the balance of the
title and the picture (the harmonizer judges each by its agreement with the others) and with it
the instance (docs/decisions.md, "Heads at equal weight, witnesses by their identification").

The heads are fitted once training ends (:func:`fit_heads`), on the encoder outputs of the
train split's products, with the model frozen; no category label is read. The objective is a
multi-positive InfoNCE between a product's heads and the same with ``DROP`` of its headed
modalities dropped, where the other listings of the product's instance are positives too.
Each head starts at the PCA of its modality's train outputs. The fit sees a sample of whole
instances (``MAX_ROWS`` products at most) for ``STEPS`` Adam steps; each step contrasts all of
them when they are at most ``BATCH`` (the development corpus's 729 train products: 24 s on one
thread), else a draw of whole instances up to ``BATCH`` products. In one batch of 4,096 products
a step cost over 2 s on one thread (the 4,096 x 4,096 logits), over ten minutes a fit.

Measured on validation (docs/decisions.md, "Narrow heads beside the sum").
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scalemm.splits import split_key

HEAD_DIM = 64  # floats per headed modality (d_model where that is narrower)
SUM_SHARE = 0.8  # of the embedding's squared norm held by the sum; the heads hold the rest
STEPS = 300
LR = 1e-3
TEMPERATURE = 0.05
DROP = 0.3  # each headed modality of the second view is dropped with this probability
MAX_ROWS = 4096  # the fit's sample of train products (whole instances)
BATCH = 1024  # products a step contrasts at most (whole instances drawn afresh each step)


class ModalityHeads(nn.Module):
    """One bias-free linear map ``d_model -> HEAD_DIM`` per headed modality (see the module doc)."""

    def __init__(self, modalities: Sequence[str], d_model: int, dim: int = HEAD_DIM) -> None:
        super().__init__()
        self.names = list(modalities)
        self.dim = int(dim)
        self.proj = nn.ModuleDict({m: nn.Linear(d_model, dim, bias=False) for m in self.names})

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], prefix: str = "heads.") -> "ModalityHeads | None":
        """The heads a checkpoint's weights hold (None: none were fitted)."""
        keys = sorted(k for k in tensors if k.startswith(prefix + "proj."))
        if not keys:
            return None
        names = [k[len(prefix + "proj."):].split(".")[0] for k in keys]
        w = tensors[keys[0]]
        return cls(list(dict.fromkeys(names)), int(w.shape[1]), int(w.shape[0]))

    def forward(self, z: Tensor, present: Tensor, modalities: Sequence[str],
                names: Sequence[str] | None = None) -> Tensor:
        """Float32 [B, H * dim]: the heads of ``names`` (default: all) side by side, each normalised,
        zero where its modality is absent, the whole L2-normalised (zero where a product has none of
        them). ``z`` [B, M, d] and ``present`` [B, M] are in the model's modality order ``modalities``."""
        names = self.names if names is None else [m for m in self.names if m in names]
        cols = [list(modalities).index(m) for m in names]
        parts = [F.normalize(self.proj[m](z[:, c].float()), dim=-1) * present[:, c:c + 1].float()
                 for m, c in zip(names, cols)]
        h = torch.cat(parts, dim=-1)
        return h / h.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def with_heads(summed: Tensor, heads: Tensor) -> Tensor:
    """The embedding: the normalised sum beside the normalised heads at ``SUM_SHARE`` of the
    squared norm, L2-normalised (a product without heads keeps the sum's direction)."""
    out = torch.cat([math.sqrt(SUM_SHARE) * summed.float(), math.sqrt(1.0 - SUM_SHARE) * heads], dim=-1)
    return out / out.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def sample_instances(instances: Sequence[str], ids: Sequence[str], cap: int, seed: int) -> np.ndarray:
    """Sorted positions of whole instances (a product without one is its own), drawn in a random
    order until ``cap`` products are taken (all of them when they fit)."""
    keys = np.array([split_key(i, p) for i, p in zip(instances, ids)], dtype=object)
    if len(keys) <= cap:
        return np.arange(len(keys))
    uniq, inv = np.unique(keys, return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(uniq))
    sizes = np.bincount(inv, minlength=len(uniq))[order]
    chosen = order[: max(1, int(np.searchsorted(np.cumsum(sizes), cap, side="right")))]
    return np.flatnonzero(np.isin(inv, chosen))


def sample_rows(ds: Any, rows: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """The rows among ``rows`` of ``ds`` (:class:`fuse.reader.FeatureDataset`) that
    :func:`sample_instances` draws from their instances: whole instances, at most ``cap`` products."""
    rows = np.asarray(rows, np.int64)
    return rows[sample_instances([ds.instances[i] for i in rows], [ds.ids[i] for i in rows], cap, seed)]


def fit_heads(z: np.ndarray | Tensor, present: np.ndarray | Tensor,
              instances: Sequence[str], ids: Sequence[str], modalities: Sequence[str], names: Sequence[str],
              seed: int = 0, steps: int = STEPS, device: str | torch.device | None = None
              ) -> tuple[ModalityHeads | None, dict[str, float]]:
    """Heads for the modalities ``names`` fitted on train products' encoder outputs ``z``
    [N, M, d] (with ``present`` [N, M] in the order ``modalities``; the products' ``instances``
    and ``ids``). Returns the heads (None when no product carries any
    of them) and the fit's first and last loss.

    ``device``: where the fit runs (None: the CPU); training passes the model's. The start (the
    PCA) and the random draws (instances of a step, dropped modalities) are computed on the CPU on
    every device, so a fit on CUDA sees the same start, batches and views as on the CPU and ends
    within float rounding of it (checked on an H200: docs/benchmarks.md)."""
    names = [m for m in modalities if m in set(names)]
    z, present = (torch.as_tensor(np.asarray(a)) for a in (z, present))
    cols = [list(modalities).index(m) for m in names]
    if not cols or not bool(present[:, cols].any()):
        return None, {}
    gen = torch.Generator().manual_seed(int(seed))
    rows = sample_instances(instances, ids, MAX_ROWS, seed)
    rows = rows[present[rows][:, cols].any(1).numpy()]
    z, present = z[rows].float(), present[rows].bool()
    inst = np.array([split_key(instances[i], ids[i]) for i in rows], dtype=object)
    _, codes = np.unique(inst, return_inverse=True)
    codes = torch.as_tensor(codes)

    heads = ModalityHeads(names, z.shape[-1], min(HEAD_DIM, z.shape[-1]))
    with torch.no_grad():  # each head starts at the PCA of its modality's outputs
        for m, c in zip(names, cols):
            x = z[present[:, c], c]
            x = x - x.mean(0, keepdim=True)
            _, _, vt = torch.linalg.svd(x, full_matrices=False)
            k = min(heads.dim, vt.shape[0])
            heads.proj[m].weight.zero_()
            heads.proj[m].weight[:k] = vt[:k]
    # the start and the draws (a CPU generator; ``codes`` stays here) are the CPU's, so the fit on any
    # device sees the same start, batches and views (the SVD on CUDA gave another start on an H200)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    heads = heads.to(dev)
    z, present = z.to(dev), present.to(dev)
    positives = (codes[:, None] == codes[None, :]).to(dev)
    opt = torch.optim.Adam(heads.parameters(), lr=LR)
    losses = []
    sizes = torch.bincount(codes)
    for _ in range(steps):
        zb, pb, posb = z, present, positives
        if len(rows) > BATCH:  # whole instances in random order, up to BATCH products
            order = torch.randperm(len(sizes), generator=gen)
            n = max(1, int(torch.searchsorted(torch.cumsum(sizes[order], 0), BATCH, right=True)))
            idx = torch.isin(codes, order[:n]).nonzero().squeeze(1)
            posb = (codes[idx, None] == codes[None, idx]).to(dev)
            idx = idx.to(dev)
            zb, pb = z[idx], present[idx]
        keep = (torch.rand(pb.shape, generator=gen) >= DROP).to(dev)
        dropped = pb & keep
        lost = ~dropped[:, cols].any(1)  # a view keeps at least one headed modality
        dropped[lost] = pb[lost]
        a = heads(zb, pb, modalities)
        b = heads(zb, dropped, modalities)
        logits = a @ b.T / TEMPERATURE
        loss = 0.5 * (_multi_positive(logits, posb) + _multi_positive(logits.T, posb))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    heads.eval()
    return heads, {"first_loss": losses[0] if losses else float("nan"),
                   "final_loss": losses[-1] if losses else float("nan"), "products": int(len(rows))}


def _multi_positive(logits: Tensor, positives: Tensor) -> Tensor:
    """InfoNCE with several positives per row: -log of the softmax mass on the row's positives."""
    log_all = torch.logsumexp(logits, dim=1)
    log_pos = torch.logsumexp(logits.masked_fill(~positives, float("-inf")), dim=1)
    return (log_all - log_pos).mean()


__all__ = ["BATCH", "DROP", "HEAD_DIM", "LR", "MAX_ROWS", "ModalityHeads", "STEPS", "SUM_SHARE", "TEMPERATURE",
           "fit_heads", "sample_instances", "sample_rows", "with_heads"]
