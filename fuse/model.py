"""The SCALE fusion model on cached frozen features.

Per modality m (token features [B, T_m, D_m] from the store):

1. zero the padded tokens, LayerNorm over D_m, project to ``d_model``; masked tokens
   (masked modelling) are replaced by a learned mask embedding; a learned first ("CLS")
   token is prepended and learned positions added;
2. a small pre-LN transformer encoder over the modality's own tokens (key padding mask);
   its first token is the modality's pooled output *before fusion*, from which the
   self-harmonized weights are computed (:class:`SelfHarmonizer`);
3. the joint fusion transformer runs over the concatenation of all modalities' tokens,
   each with a modality-type embedding and fusion position embedding added, under one key
   padding mask: a missing modality has all its tokens (its first token included) masked
   as keys and its outputs are ignored (zeroed).

The pooled output of modality m is the fused token at m's first position. The product
embedding (:func:`product_embedding`, L2-normalized) is built from the encoders' or the fused
pooled outputs of the present modalities as the embedding settings say: the paper's plain sum,
or each modality's normalised output weighed by the product's importances (the default);
:attr:`ScaleModel.embedding_dim` is its width: ``d_model``, plus ``HEAD_DIM`` for each fitted
modality head the settings name (:mod:`fuse.heads`: narrow title and picture heads beside the
sum, fitted once training ends).

Modalities the model knows but a batch does not carry are treated as absent: their
encoders are skipped and their tokens left out of the fusion sequence, which is exactly
equivalent to masking them (masked keys contribute nothing), so modality ablations come
from one trained model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scalemm.modalities import MODALITIES

from .attention import Transformer
from .config import EmbedSettings, ScaleConfig
from .gather import all_gather_rows, world_size
from .heads import ModalityHeads, with_heads

# fixed parts of the architecture (the width of each block's MLP; no dropout on attention
# probabilities, which keeps CPU training on the fused SDPA kernel: docs/decisions.md)
MLP_RATIO = 4.0
ATTN_DROPOUT = 0.0


@dataclass
class ModelOutput:
    """What one forward pass returns; M follows ``modalities`` (the model's order)."""

    modalities: list[str]
    present: Tensor  # Bool [B, M]
    pooled: Tensor  # [B, M, d] fused first tokens (zero where absent)
    enc_pooled: Tensor  # [B, M, d] encoders' first tokens, before fusion (zero where absent)
    weights: Tensor  # [B, M, M] self-harmonized W (zero outside present pairs)
    importances: Tensor  # [B, M] W[m, m]
    # masked modelling: {m: (prediction [K, D_m], sample index [K], token index [K])}
    masked: dict[str, tuple[Tensor, Tensor, Tensor]] = field(default_factory=dict)


@dataclass
class Encoded:
    """The per-modality encoder outputs of a batch, before fusion."""

    modalities: list[str]  # the modalities the batch carries (model order)
    present: Tensor  # Bool [B, M] over the model's modalities
    seqs: dict[str, Tensor]  # m -> [B, 1 + T_m, d] (first token = the modality's pooled output)
    keys: dict[str, Tensor]  # m -> Bool [B, 1 + T_m] valid keys
    masks: dict[str, Tensor] = field(default_factory=dict)  # tokens hidden for masked modelling
    first_only: bool = False  # seqs hold each modality's first token alone ([B, 1, d]; keys [B, 1])


# What turns a trained model's outputs into the product embedding, as a version: an embeddings
# file and a catalogue record carry it, and a catalogue refuses vectors of another (the same
# checkpoint embeds differently under another rule). 1: until 2026-12-05, the heads weighed by the
# importances and the agreement's witnesses equal; 2: the heads at equal weight and the witnesses
# weighed by their identification (docs/decisions.md, "Heads at equal weight, witnesses by their
# identification").
EMBEDDING_RULE = 2


class SelfHarmonizer(nn.Module):
    """Self-harmonized modality weights, per sample, as in SCALE.

    f_m = ReLU(Linear(pooled_m)); S = cos(f_m, f_n) [B, M, M]; entries involving a missing
    modality are masked out of S before the row-wise softmax; S' = S * softmax(S);
    W = S' with each row L2-normalized. Entries of W outside present pairs are exactly 0, and
    rows of absent modalities are all 0 (no NaN: masked logits are filled with a large finite
    negative and normalisations are clamped).

    The importance of modality m (``importance``):

    * ``"gated"`` (the default): the product's agreement a_m, the mean of S[m, n] over the other
      present modalities n (in [0, 1]: how well m agrees with the rest of the product, which is
      what self-harmonizing is meant to measure), through sigmoid(a_m * softplus(s_m) + b_m) with a
      scale s_m and offset b_m per modality, starting at sigmoid(4 a - 2). At the network's lr
      these ten scalars stay within about 0.15 of their start in a run of a few hundred steps, so
      the gate is in effect a fixed sharpening of the agreement (docs/decisions.md). A modality
      alone in its product has importance 1.
    * ``"diagonal"``: the paper's literal W[m, m]. Because S[m, m] = 1 always and each row of W
      is normalised, W[m, m] is largest (up to 1) when m agrees with nothing else, and
      1/sqrt(#present) when it agrees with everything: it ranks the noisiest modality first.

    The agreement leaves out of that mean the single closest other modality, where two or more
    others are present (it is corroborated): a picture and its near-copy (the video of it, a
    second photo) agree with each other best, and with the plain mean each vouched for the other,
    ranking both above the title on the development corpus (docs/decisions.md).

    In training the harmonizer keeps each modality's running identification rate over the full
    products of the batches (:meth:`update_identification`).

    ``identification`` = p > 0 (the embedding's ``identification_power``): the identification
    rate is how often a modality's output alone finds its own product among the batch by the
    rest of the product. Outside training, with rates measured, each modality's identification
    factor f = (rate / best rate) ** p acts twice. Importances are multiplied by f: agreement
    says whether a modality fits the rest of its product; a shop's table template fits every
    product of the category and tells none apart, and weighed by agreement alone it blurred the
    instance. And the agreement itself hears the other modalities as witnesses weighed by f ** 2,
    leaving out the closest only where three or more others are present: with the old rule (and
    equal witnesses) a title beside a picture and a table was judged by the table alone, so a
    table's presence moved the balance of the title and the picture and cost fine retrieval
    (docs/decisions.md, "Heads at equal weight, witnesses by their identification").

    ``uniform=True`` gives W = 1 for every present pair and importance 1 (no harmonizing).
    """

    # running statistics a checkpoint may lack (written before they were always kept): they load
    # as zeros, which leaves the correction that needs them off
    RUNNING = ("identification_rate", "identification_updates")
    # running statistics older checkpoints carry for a correction since removed (the importance
    # shrinkage, which did not earn its place: docs/decisions.md); loading ignores them
    RETIRED = ("importance_mean", "importance_updates")

    def __init__(self, d_model: int, importance: str = "gated", n_modalities: int = 5,
                 identification: float = 0.0, momentum: float = 0.1) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, d_model)
        self.importance = importance
        self.momentum = float(momentum)
        self.identification = float(identification)
        # each modality's running identification rate (updated in training) and its updates
        for name in self.RUNNING:
            self.register_buffer(name, torch.zeros(n_modalities))
        if importance == "gated":  # sigmoid(4 a - 2) at the start: 0.5 for an agreement of 0.5
            self.gate_scale = nn.Parameter(torch.full((n_modalities,), math.log(math.e ** 4 - 1)))
            self.gate_bias = nn.Parameter(torch.full((n_modalities,), -2.0))

    def forward(self, pooled: Tensor, present: Tensor, uniform: bool = False) -> tuple[Tensor, Tensor]:
        pair = present[:, :, None] & present[:, None, :]  # [B, M, M]
        if uniform:
            W = pair.to(pooled.dtype)
            return W, torch.diagonal(W, dim1=1, dim2=2)
        f = F.relu(self.proj(pooled))
        fn = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        S = fn @ fn.transpose(1, 2)
        logits = S.masked_fill(~pair, -1e4)
        P = torch.where(pair, logits.softmax(dim=-1), torch.zeros_like(S))
        S2 = S * P
        W = S2 / S2.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        W = torch.where(pair, W, torch.zeros_like(W))
        if self.importance == "diagonal":
            return W, torch.diagonal(W, dim1=1, dim2=2)
        others = pair & ~torch.eye(pair.shape[1], dtype=torch.bool, device=pair.device)
        n = others.sum(-1)
        factor = self.identification_factor()  # None in training or without the correction
        # corroborated: leave out the closest other modality where two or more are present (a
        # picture's near-copy, the video or a second photo, cannot vouch for it alone); where the
        # witnesses are weighed by their identification, where three or more are
        drop = n >= (2 if factor is None else 3)
        closest = torch.where(others, S, torch.full_like(S, -2.0)).argmax(-1, keepdim=True)
        witness = others & ~(torch.zeros_like(others).scatter_(-1, closest, True) & drop[..., None])
        weight = witness.to(S.dtype) * (1.0 if factor is None else factor.to(S.dtype) ** 2)
        wsum = weight.sum(-1)
        agree = torch.where(wsum > 0, (weight * S).sum(-1) / wsum.clamp_min(1e-30), torch.zeros_like(wsum))
        if self.importance == "gated":
            agree = torch.sigmoid(agree * F.softplus(self.gate_scale) + self.gate_bias)
        imp = torch.where(n > 0, agree, torch.ones_like(agree))
        if factor is not None:
            imp = imp * factor.to(imp.dtype)
        return W, torch.where(present, imp, torch.zeros_like(imp))

    def identification_factor(self) -> Tensor | None:
        """Float32 [M]: each modality's (identification rate / the best rate) ** p, 1 where no rate
        was measured; None in training, where p is 0 or where no rate was measured (a checkpoint
        from before they were kept): see the class doc."""
        if not (self.identification > 0 and not self.training) or not bool((self.identification_updates > 0).any()):
            return None
        rate = self.identification_rate.float().clamp_min(1e-3)
        factor = (rate / rate.max()) ** self.identification
        return torch.where(self.identification_updates > 0, factor, torch.ones_like(factor))

    @torch.no_grad()
    def update_identification(self, pooled: Tensor, importances: Tensor, present: Tensor) -> None:
        """Fold a training batch's identification rates into the running ones: for each modality m,
        the share of the products having m and another modality whose normalised output of m is
        closest (cosine) to their own rest, the importance-weighted sum of their other modalities,
        among every product's rest in the batch. Under a process group the batch is every rank's
        rows together, as one process would see it (the rate depends on the batch's size)."""
        if self.importance == "diagonal":
            return
        pooled, importances, present = (all_gather_rows(x) for x in (pooled.float(), importances.float(), present))
        z = F.normalize(pooled.float(), dim=-1)
        hits = torch.zeros(present.shape[1], device=z.device)
        count = torch.zeros_like(hits)
        ids = torch.arange(z.shape[0], device=z.device)
        for m in range(present.shape[1]):
            others = present.clone()
            others[:, m] = False
            rest = weighted_embedding(pooled, others, importances, "importance")  # zero where none
            has_rest = others.any(-1)
            sim = (z[:, m] @ rest.T).masked_fill(~has_rest[None, :], -2.0)
            rows = present[:, m] & has_rest
            hits[m] = (sim.argmax(-1) == ids)[rows].sum()
            count[m] = rows.sum()
        self._fold(self.identification_rate, self.identification_updates, hits, count, reduce=False)

    def _fold(self, running: Tensor, updates: Tensor, sums: Tensor, count: Tensor, reduce: bool = True) -> None:
        """running <- (1 - momentum) running + momentum * sums / count per modality with count > 0
        (the first update sets it); ``reduce``: under a process group, sums and counts of every
        rank together."""
        both = torch.stack([sums.float(), count.float()])
        if reduce and world_size() > 1:
            torch.distributed.all_reduce(both)
        has = both[1] > 0
        batch = both[0] / both[1].clamp_min(1)
        first = updates == 0
        mixed = torch.where(first, batch, (1 - self.momentum) * running + self.momentum * batch)
        running.copy_(torch.where(has, mixed.to(running.dtype), running))
        updates.add_(has.to(updates.dtype))


def random_skip_map(dim: int, d: int, index: int) -> Tensor:
    """The fixed random orthonormal map [dim, d] of modality number ``index`` (drawn from its own
    seed: the same in every run), the frozen skip's map before it is fitted (:mod:`fuse.skip`)."""
    g = torch.Generator().manual_seed(0x5CA1E + index)
    q, _ = torch.linalg.qr(torch.randn(max(dim, d), min(dim, d), generator=g))
    return q if dim >= d else q.T.contiguous()


class ModalityEncoder(nn.Module):
    """Input projection, first token, mask embedding, positions and encoder of one modality,
    plus its fusion-side embeddings and masked-modelling head."""

    def __init__(self, max_tokens: int, dim: int, cfg: ScaleConfig, index: int = 0) -> None:
        super().__init__()
        d = cfg.d_model
        self.max_tokens, self.dim = max_tokens, dim
        self.skip = float(cfg.frozen_skip)
        if self.skip > 0:
            # the frozen global vector's fixed map into d_model (see forward): training sets it to
            # the train split's principal directions before its first step (fuse/skip.py); until
            # then, and in checkpoints from before it was kept, a fixed random orthonormal map
            # drawn from its own seed with mean 0
            self.register_buffer("skip_map", random_skip_map(dim, d, index))
            self.register_buffer("skip_mu", torch.zeros(dim))
            self.index = index
        self.in_norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, d)
        self.cls = nn.Parameter(torch.randn(d) * 0.02)
        self.mask_emb = nn.Parameter(torch.randn(d) * 0.02)
        self.pos = nn.Parameter(torch.randn(max_tokens + 1, d) * 0.02)
        self.encoder = Transformer(d, cfg.heads, cfg.encoder_layers, MLP_RATIO, cfg.dropout, ATTN_DROPOUT)
        self.type_emb = nn.Parameter(torch.randn(d) * 0.02)
        self.fusion_pos = nn.Parameter(torch.randn(max_tokens + 1, d) * 0.02)
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.LayerNorm(d), nn.Linear(d, dim))

    def set_skip(self, mu: Tensor, w: Tensor) -> None:
        """Fix the skip's centre ``mu`` [dim] and map ``w`` [dim, d_model] (:mod:`fuse.skip`)."""
        if tuple(mu.shape) != tuple(self.skip_mu.shape) or tuple(w.shape) != tuple(self.skip_map.shape):
            raise ValueError(f"skip map of shape {tuple(w.shape)} / centre {tuple(mu.shape)} for an encoder of "
                             f"{tuple(self.skip_map.shape)} / {tuple(self.skip_mu.shape)}")
        self.skip_mu.copy_(mu)
        self.skip_map.copy_(w)

    def reset_skip(self) -> None:
        """Back to the fixed random map with centre 0 (what checkpoints from before the fit used)."""
        self.set_skip(torch.zeros_like(self.skip_mu), random_skip_map(self.dim, self.skip_map.shape[1], self.index))

    def forward(self, tokens: Tensor, valid: Tensor, masked: Tensor | None,
                first_only: bool = False) -> tuple[Tensor, Tensor]:
        """tokens [B, T, D], valid Bool [B, T], masked Bool [B, T] or None.

        Returns the encoder output [B, 1 + T, d] and its key mask Bool [B, 1 + T]; with
        ``first_only`` the first token's output alone, [B, 1, d], and its key [B, 1]
        (:meth:`Transformer.forward`).
        """
        B, T, _ = tokens.shape
        if T != self.max_tokens or tokens.shape[2] != self.dim:
            raise ValueError(f"tokens of shape {tuple(tokens.shape[1:])} do not fit this model's "
                             f"({self.max_tokens}, {self.dim})")
        x = torch.where(valid[..., None], tokens, torch.zeros((), dtype=tokens.dtype, device=tokens.device))
        h = self.proj(self.in_norm(x))
        if masked is not None:
            h = torch.where(masked[..., None], self.mask_emb.to(h.dtype), h)
        h = torch.cat([self.cls.to(h.dtype).expand(B, 1, -1), h], dim=1) + self.pos.to(h.dtype)
        key = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=valid.device), valid], dim=1)
        out = self.encoder(h, key, first_only=first_only)
        if first_only:
            key = key[:, :1]
        if self.skip > 0:
            # The frozen backbone's global vector (the mean of the visible tokens), as a unit vector
            # centred on the train split's mean, joins the first token through the fixed map
            # (fuse/skip.py: its principal directions, in columns of its own): the modality's
            # output starts as the frozen feature, whose neighbourhoods it keeps, and the encoder
            # learns what to add. A few hundred products cannot teach a transformer from scratch
            # what the backbone already knows.
            seen = valid if masked is None else valid & ~masked
            mean = (x.float() * seen[..., None]).sum(1) / seen.sum(1, keepdim=True).clamp_min(1)
            z = torch.where(seen.any(1, keepdim=True), F.normalize(mean, dim=-1) - self.skip_mu, 0.0)
            first = out[:, 0] + self.skip * F.normalize(z @ self.skip_map, dim=-1).to(out.dtype)
            out = torch.cat([first[:, None], out[:, 1:]], dim=1)
        return out, key


class ScaleModel(nn.Module):
    """SCALE: modality encoders, joint fusion transformer, self-harmonizer, masked heads.

    ``shapes`` maps every modality of ``cfg.modalities`` to ``(max_tokens, dim)`` of its store.
    """

    def __init__(self, cfg: ScaleConfig, shapes: Mapping[str, tuple[int, int]]) -> None:
        super().__init__()
        missing = [m for m in cfg.modalities if m not in shapes]
        if missing:
            raise ValueError(f"no token shape for modalities {missing}")
        self.cfg = cfg
        self.modalities: list[str] = list(cfg.modalities)
        self.shapes = {m: (int(shapes[m][0]), int(shapes[m][1])) for m in self.modalities}
        self.encoders = nn.ModuleDict({m: ModalityEncoder(*self.shapes[m], cfg, MODALITIES.index(m))
                                       for m in self.modalities})
        self.fusion = Transformer(cfg.d_model, cfg.heads, cfg.fusion_layers, MLP_RATIO, cfg.dropout, ATTN_DROPOUT)
        self.harmonizer = SelfHarmonizer(cfg.d_model, cfg.importance, len(self.modalities))
        self.heads: ModalityHeads | None = None  # fitted once training ends (fuse.heads)
        # the reference path: forward encodes every token even where the first ones suffice
        # (benchmarks time the two side by side; see :meth:`forward`)
        self.every_token = False
        self.embedding = cfg.embedding
        self.set_embedding(cfg.embedding)

    def set_embedding(self, settings: EmbedSettings) -> None:
        """Embed with ``settings`` from now on (the checkpoint's by default): they act only outside
        training, so any trained model embeds under any of them."""
        self.embedding = settings
        self.harmonizer.identification = settings.identification_power if self.cfg.harmonize else 0.0

    @property
    def active_heads(self) -> list[str]:
        """The fitted modality heads the embedding settings name (in the heads' order)."""
        if self.heads is None:
            return []
        return [m for m in self.heads.names if m in self.embedding.modality_heads]

    @property
    def embedding_dim(self) -> int:
        """Width of the product embedding: ``d_model`` plus each active head's width."""
        return self.cfg.d_model + (self.heads.dim * len(self.active_heads) if self.heads is not None else 0)

    def set_heads(self, heads: ModalityHeads | None) -> None:
        """Attach fitted heads (:func:`fuse.heads.fit_heads`), on the model's device; None: none."""
        if heads is not None:
            unknown = [m for m in heads.names if m not in self.modalities]
            if unknown:
                raise ValueError(f"heads for modalities {unknown} the model was not trained on")
            heads = heads.to(next(self.encoders.parameters()).device).eval()
            for p in heads.parameters():
                p.requires_grad_(False)
        self.heads = heads

    def product_vector(self, z: Tensor, present: Tensor, importances: Tensor,
                       enc_pooled: Tensor | None = None) -> Tensor:
        """The product embedding [B, embedding_dim] from pooled outputs ``z`` [B, M, d] (the
        encoders' or the fused ones) of the present modalities with their importances: the
        weighted sum (:func:`weighted_embedding`), beside the active heads of the encoders'
        outputs ``enc_pooled`` (default: ``z``) when there are any (:func:`fuse.heads.with_heads`)."""
        summed = weighted_embedding(z, present, importances, self.embedding.weighting)
        names = self.active_heads
        if not names:
            return summed
        h = self.heads(z if enc_pooled is None else enc_pooled, present, self.modalities, names)
        return with_heads(summed, h)

    def load_trained(self, tensors: Mapping[str, Tensor]) -> None:
        """Load a checkpoint's weights, strictly, except that the harmonizer's running statistics
        may be missing (checkpoints from before they were always kept): those stay zero; and the
        frozen skip's maps (checkpoints from before they were fitted, :mod:`fuse.skip`): those
        keep the fixed random map they were trained with. Fitted heads in the weights are attached."""
        self.set_heads(ModalityHeads.from_tensors(dict(tensors)))
        running = {f"harmonizer.{name}" for name in SelfHarmonizer.RUNNING}
        retired = {f"harmonizer.{name}" for name in SelfHarmonizer.RETIRED}
        missing, unexpected = self.load_state_dict({k: v for k, v in tensors.items() if k not in retired},
                                                   strict=False)
        # an encoder whose skip map and centre are both missing comes from before they were kept
        unfitted = [m for m in self.modalities if getattr(self.encoders[m], "skip", 0) > 0
                    and {f"encoders.{m}.skip_map", f"encoders.{m}.skip_mu"} <= set(missing)]
        bad = [k for k in missing if k not in running
               and k not in {f"encoders.{m}.{b}" for m in unfitted for b in ("skip_map", "skip_mu")}]
        if bad or unexpected:
            raise RuntimeError(f"weights do not fit the model: missing {bad[:5]}, unexpected {list(unexpected)[:5]}")
        for m in unfitted:
            self.encoders[m].reset_skip()

    def set_attention(self, impl: str) -> None:
        """Run every block with ``"sdpa"`` (default) or the ``"naive"`` reference."""
        for mod in self.modules():
            if isinstance(mod, Transformer):
                mod.impl = impl

    @property
    def first_tokens_suffice(self) -> bool:
        """Whether the product embedding reads the modalities' first tokens alone: without a joint
        transformer (``fusion_layers: 0``) each fused first token is its encoder's first token,
        normalised, whichever source the embedding takes; with one, every token feeds it."""
        return self.cfg.fusion_layers == 0

    def encode(self, batch: Mapping[str, Any], masks: Mapping[str, Tensor] | None = None,
               first_only: bool = False) -> Encoded:
        """Run each modality's encoder (they do not see each other): ``batch`` as from
        :func:`fuse.reader.collate` (on the model's device); ``masks`` {m: Bool [B, T_m]} marks
        the tokens to hide for masked modelling (None: none). ``first_only`` keeps each modality's
        first token alone, computed with a quarter of the last layer's arithmetic (embedding, when
        :attr:`first_tokens_suffice`; not with ``masks``, whose predictions read every token)."""
        masks = masks or {}
        if first_only and masks:
            raise ValueError("masked modelling reads every token's output: encode them all (first_only=False)")
        mods = [m for m in self.modalities if m in batch["tokens"]]
        if not mods:
            raise ValueError(f"the batch carries none of the model's modalities {self.modalities}")
        B = batch["tokens"][mods[0]].shape[0]
        dev = batch["tokens"][mods[0]].device
        present = torch.zeros(B, len(self.modalities), dtype=torch.bool, device=dev)
        seqs: dict[str, Tensor] = {}
        keys: dict[str, Tensor] = {}
        for m in mods:
            pres = batch["present"][m]
            present[:, self.modalities.index(m)] = pres
            h, key = self.encoders[m](batch["tokens"][m], batch["mask"][m] & pres[:, None], masks.get(m), first_only)
            seqs[m], keys[m] = h, key
        return Encoded(mods, present, seqs, keys, dict(masks), first_only)

    def fuse(self, enc: Encoded, present: Tensor | None = None, masked_targets: Mapping[str, Any] | None = None
             ) -> ModelOutput:
        """The joint transformer, the self-harmonizer and the masked-modelling heads over encoded
        modalities. ``present`` Bool [B, M] (default: the batch's) may switch modalities off, which
        is exactly the model on a batch without them: that is how ablations and dropped-query
        variants come from one pass of the encoders. ``masked_targets`` (the batch) enables the
        masked-modelling predictions for the tokens ``enc`` was encoded with hidden."""
        if enc.first_only and not self.first_tokens_suffice:
            raise ValueError(f"the joint transformer ({self.cfg.fusion_layers} layers) reads every token: "
                             f"encode them all (first_only=False)")
        present = enc.present if present is None else present & enc.present
        mods = [m for m in enc.modalities if bool(present[:, self.modalities.index(m)].any())]
        if not mods:
            mods = enc.modalities[:1]
        first = enc.seqs[enc.modalities[0]]
        B, dev, d = first.shape[0], first.device, self.cfg.d_model
        seq, keys, starts = [], [], {}
        L = 0
        for m in mods:
            h = enc.seqs[m]
            e = self.encoders[m]
            seq.append(h + (e.type_emb + e.fusion_pos[: h.shape[1]]).to(h.dtype))
            keys.append(enc.keys[m] & present[:, self.modalities.index(m)][:, None])
            starts[m] = L
            L += h.shape[1]
        fused = self.fusion(torch.cat(seq, dim=1), torch.cat(keys, dim=1))

        zeros = torch.zeros(B, d, dtype=fused.dtype, device=dev)
        pooled = torch.stack([fused[:, starts[m]] if m in starts else zeros for m in self.modalities], 1)
        enc_pooled = torch.stack([enc.seqs[m][:, 0].to(fused.dtype) if m in starts else zeros
                                  for m in self.modalities], 1)
        pm = present[..., None]
        pooled = torch.where(pm, pooled, torch.zeros((), dtype=pooled.dtype, device=dev))
        enc_pooled = torch.where(pm, enc_pooled, torch.zeros((), dtype=pooled.dtype, device=dev))
        # weights and importances in float32, whatever autocast does around them
        with torch.autocast(device_type=dev.type, enabled=False):
            W, imp = self.harmonizer(enc_pooled.float(), present, uniform=not self.cfg.harmonize)
            if self.training and self.cfg.harmonize and torch.equal(present, enc.present):  # full products only
                self.harmonizer.update_identification(enc_pooled, imp, present)

        masked: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        for m in mods if masked_targets is not None else ():
            mk = enc.masks.get(m)
            if mk is None:
                continue
            mk = mk & masked_targets["present"][m][:, None] & masked_targets["mask"][m] \
                & present[:, self.modalities.index(m)][:, None]
            T = self.shapes[m][0]
            tok = fused[:, starts[m] + 1: starts[m] + 1 + T]
            rows = mk.nonzero(as_tuple=True)
            masked[m] = (self.encoders[m].head(tok[rows]), rows[0], rows[1])
        return ModelOutput(self.modalities, present, pooled, enc_pooled, W, imp, masked)

    def subset_embedding(self, enc_pooled: Tensor, present: Tensor) -> Tensor:
        """The summed product embedding (from the encoders' pooled outputs) of the modalities in
        ``present`` only, with importances harmonized among those modalities alone: what the
        subset-consistency loss compares. Always the weighted sum, never modality blocks side by
        side: two disjoint halves of a product share no block, so their blocks' cosine is 0 for
        every pair of products and the loss could not learn from them."""
        weighting = self.embedding.weighting
        with torch.autocast(device_type=enc_pooled.device.type, enabled=False):
            _, imp = self.harmonizer(enc_pooled.float(), present, uniform=not self.cfg.harmonize)
            return weighted_embedding(enc_pooled, present, imp, weighting)

    def forward(self, batch: Mapping[str, Any], masks: Mapping[str, Tensor] | None = None) -> ModelOutput:
        """``encode`` then ``fuse`` (see both): the training forward pass. Without masked
        modelling and without a joint transformer every output it returns (the pooled outputs,
        W, the importances) comes from the modalities' first tokens, so it encodes those alone
        (:attr:`first_tokens_suffice`): the same function, with each encoder's last block
        computed for one position, whose dropout draws the random numbers the every-token path
        draws (:meth:`fuse.attention.Block.drop_first`), so a seed trains the same weights on
        either path, to rounding (``every_token`` runs the every-token path)."""
        return self.fuse(self.encode(batch, masks, self.encodes_first_tokens_alone(bool(masks))),
                         masked_targets=batch)

    def encodes_first_tokens_alone(self, masked: bool) -> bool:
        """Whether :meth:`forward` encodes the first tokens alone, with (``masked``) or without
        masked modelling's masks."""
        return not masked and self.first_tokens_suffice and not self.every_token


def importance_shares(present: Tensor, importances: Tensor) -> Tensor:
    """Float32 [B, M]: each product's importances over its present modalities (negative ones as
    0), normalised to sum 1; zero where absent (a product with none: all zero)."""
    imp = importances.float().clamp_min(0)
    w = torch.where(present, imp, torch.zeros_like(imp))
    return w / w.sum(-1, keepdim=True).clamp_min(1e-6)


def weighted_embedding(z: Tensor, present: Tensor, importances: Tensor, weighting: str = "sum") -> Tensor:
    """L2-normalized sum over the modality axis of ``z`` [B, M, d]: of the outputs as they are
    (``"sum"``), or of each modality's normalised output times its share of the product's
    importances (``"importance"``; see :func:`product_embedding`)."""
    z = z.float()
    if weighting == "importance":
        z = F.normalize(z, dim=-1) * importance_shares(present, importances)[..., None]
    s = z.sum(dim=1)
    return s / s.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def product_embedding(out: ModelOutput, settings: EmbedSettings) -> Tensor:
    """The product embedding from the pooled outputs of the present modalities, L2-normalized.

    ``settings.source``: the fused pooled outputs (``"fusion"``), or the modality encoders' before
    fusion (``"encoder"``). ``settings.weighting``: ``"sum"`` is the paper's plain sum of the
    pooled outputs; ``"importance"`` L2-normalizes each modality's output and weighs it by the
    product's own importances (each modality by how well it agrees with the product's other
    modalities), so that a modality that is weak, or wrong for this product, moves the embedding
    little. An item with no present modality gets a zero vector.
    """
    z = out.pooled if settings.source == "fusion" else out.enc_pooled
    return weighted_embedding(z, out.present, out.importances, settings.weighting)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
