"""Pre-LN transformer blocks whose attention goes through PyTorch's fused SDPA.

:class:`Block` is one pre-LN transformer layer (qkv projection, multi-head attention with a
key padding mask, out projection, MLP). Its attention runs through
``torch.nn.functional.scaled_dot_product_attention`` with a boolean ``attn_mask`` (True =
the key takes part), so on GPU PyTorch picks a fused kernel (memory-efficient attention
supports masks; flash attention is used where no mask is needed; on CPU the flash kernel
takes the mask but not attention dropout, so ``attn_dropout`` > 0 sends training to the
unfused math path). The same block can run
a naive reference ``softmax(Q K^T / sqrt(d)) V`` (``impl="naive"``, same weights), used by
the tests to check the fused path and by benchmarks to measure it.

A row of the mask with no True entry would make softmax produce NaN; callers guarantee at
least one valid key per row (:func:`ensure_one_key`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMPLS = ("sdpa", "naive")


def naive_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None,
                    dropout_p: float = 0.0) -> Tensor:
    """Reference attention: softmax(Q K^T / sqrt(d)) V with a boolean mask (True = attend).

    q, k, v: [B, H, L, dh]; attn_mask broadcastable to [B, H, L, L].
    """
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    p = scores.softmax(dim=-1)
    if dropout_p > 0:
        p = F.dropout(p, dropout_p)
    return p @ v


def ensure_one_key(key_mask: Tensor) -> Tensor:
    """``key_mask`` [B, L] with position 0 switched on in rows that have no valid key.

    Such rows belong to samples with nothing present; their outputs are ignored by the
    caller, this only keeps softmax finite.
    """
    empty = ~key_mask.any(dim=-1)  # no host sync: always rebuild the first column
    return torch.cat([(key_mask[:, :1] | empty[:, None]), key_mask[:, 1:]], dim=1)


class Block(nn.Module):
    """One pre-LN transformer layer: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, d_model: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 attn_dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} not divisible by heads {heads}")
        self.heads = heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        hidden = int(d_model * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))
        self.attn_dropout = attn_dropout  # on the attention probabilities
        self.drop = nn.Dropout(dropout)  # on the residual branches

    def attention(self, x: Tensor, key_mask: Tensor | None, impl: str = "sdpa", first_only: bool = False) -> Tensor:
        B, L, D = x.shape
        if first_only:  # the first position's query alone, against every key
            W, b = self.qkv.weight, self.qkv.bias
            q = F.linear(x[:, :1], W[:D], b[:D]).view(B, 1, self.heads, D // self.heads).transpose(1, 2)
            k, v = F.linear(x, W[D:], b[D:]).view(B, L, 2, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
            L = 1
        else:
            q, k, v = self.qkv(x).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]  # [B, 1, 1, L]
        p = self.attn_dropout if self.training else 0.0
        if impl == "sdpa":
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        elif impl == "naive":
            o = naive_attention(q, k, v, mask, p)
        else:
            raise ValueError(f"unknown attention impl {impl!r}; choose from {IMPLS}")
        return self.out(o.transpose(1, 2).reshape(B, L, D))

    def forward(self, x: Tensor, key_mask: Tensor | None = None, impl: str = "sdpa",
                first_only: bool = False) -> Tensor:
        """x [B, L, d] -> [B, L, d]; ``first_only``: the first position's output alone, [B, 1, d]
        (the same numbers: every position attends to all of x, and the rest is per position)."""
        a = self.attention(self.ln1(x), key_mask, impl, first_only)
        if first_only:
            length = x.shape[1]
            x = x[:, :1] + self.drop_first(a, length)
            return x + self.drop_first(self.mlp(self.ln2(x)), length)
        x = x + self.drop(a)
        return x + self.drop(self.mlp(self.ln2(x)))

    def drop_first(self, y: Tensor, length: int) -> Tensor:
        """Dropout on the first position's y [B, 1, d], drawing the random numbers dropout on all
        ``length`` positions would (y padded with zeros), so that a training run's dropout masks,
        and with them its weights, are the same whichever path encodes its batches."""
        if not (self.training and self.drop.p > 0) or length == 1:
            return self.drop(y)
        return self.drop(F.pad(y, (0, 0, 0, length - 1)))[:, :1]


class Transformer(nn.Module):
    """A stack of :class:`Block` with a final LayerNorm; ``impl`` selects the attention."""

    def __init__(self, d_model: int, heads: int, layers: int, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, attn_dropout: float = 0.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(d_model, heads, mlp_ratio, dropout, attn_dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.impl = "sdpa"

    def forward(self, x: Tensor, key_mask: Tensor | None = None, first_only: bool = False) -> Tensor:
        """x [B, L, d]; key_mask Bool [B, L] (True = a valid key). Returns [B, L, d], or with
        ``first_only`` the first position's output alone, [B, 1, d]: its last block then computes
        that one query (every key and value still), about a quarter of the block's arithmetic
        over a modality's few tokens, for the same numbers."""
        if key_mask is not None:
            key_mask = ensure_one_key(key_mask)
        last = len(self.blocks) - 1
        for j, blk in enumerate(self.blocks):
            x = blk(x, key_mask, self.impl, first_only and j == last)
        return self.norm(x[:, :1] if first_only else x)
