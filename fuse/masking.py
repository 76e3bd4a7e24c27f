"""Choosing the tokens that masked modelling hides.

For every present modality of every sample, ``max(1, round(p * count))`` of its valid
tokens are chosen uniformly at random (``p`` = ``mask_prob``, 0.15). For the table the
unit is the entity, not the token: whole keys or whole values (the store's ``entities``
index, entity 2k = k-th key, 2k+1 its value) are drawn in random order until at least
that many tokens are covered, and every token of a chosen entity is masked (SCALE's masked
entity modelling, which beat word-piece masking). Tokens outside any entity (-1) are never
masked in the table; a table row with no entity at all falls back to token masking.

All randomness comes from the ``torch.Generator`` passed in, so masks are a function of
its seed alone (the training loop seeds it from ``(seed, step)``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .reader import TABLE


def _n_to_mask(counts: Tensor, prob: float) -> Tensor:
    n = torch.round(counts.double() * prob).long()
    return torch.where(counts > 0, n.clamp(min=1), torch.zeros_like(n))


def token_mask(valid: Tensor, prob: float, generator: torch.Generator) -> Tensor:
    """Bool [B, T]: ``max(1, round(prob * count))`` random valid tokens per row."""
    B, T = valid.shape
    scores = torch.rand(B, T, generator=generator)
    scores = scores.masked_fill(~valid.cpu(), 2.0)  # invalid tokens sort last
    rank = scores.argsort(dim=1).argsort(dim=1)
    k = _n_to_mask(valid.cpu().sum(dim=1), prob)
    return (rank < k[:, None]).to(valid.device)


def entity_mask(valid: Tensor, entities: Tensor, prob: float, generator: torch.Generator) -> Tensor:
    """Bool [B, T]: whole entities chosen at random until >= ``round(prob * count)`` tokens."""
    valid_c, ent = valid.cpu(), entities.cpu()
    B, T = valid_c.shape
    out = torch.zeros(B, T, dtype=torch.bool)
    need = _n_to_mask(valid_c.sum(dim=1), prob)
    fallback = token_mask(valid_c, prob, generator)  # drawn for every row: keeps the stream fixed
    for i in range(B):
        if need[i] == 0:
            continue
        e_row = ent[i].masked_fill(~valid_c[i], -1)
        ids = torch.unique(e_row[e_row >= 0])
        if ids.numel() == 0:
            out[i] = fallback[i]
            continue
        covered = 0
        for e in ids[torch.randperm(ids.numel(), generator=generator)]:
            sel = e_row == e
            out[i] |= sel
            covered += int(sel.sum())
            if covered >= int(need[i]):
                break
    return out.to(valid.device)


def choose_masks(batch: dict[str, Any], modalities: list[str], prob: float,
                 generator: torch.Generator) -> dict[str, Tensor]:
    """Masked positions {m: Bool [B, T_m]} for the modalities of ``batch`` (in ``modalities`` order)."""
    out: dict[str, Tensor] = {}
    for m in modalities:
        if m not in batch["tokens"]:
            continue
        valid = batch["mask"][m] & batch["present"][m][:, None]
        if m == TABLE and m in batch.get("entities", {}):
            out[m] = entity_mask(valid, batch["entities"][m], prob, generator)
        else:
            out[m] = token_mask(valid, prob, generator)
    return out
