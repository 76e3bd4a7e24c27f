"""SCALE's losses: SIMCL over all modality pairs and masked modelling per modality.

SIMCL (self-harmonized inter-modality contrastive learning). For each pair (m, n) of
modalities, over the samples that have both, with z = L2-normalized pooled outputs and
temperature tau, the logits are ``z_m[i] . z_n[j] / tau``; sample i's row is scaled by its
pair weight W_i[m, n] and InfoNCE (cross-entropy with the positive j = i) is taken; the
reverse direction n -> m uses the transposed logits with rows scaled by W_i[n, m]; the
pair loss is the mean of the two directions. Pairs with fewer than 2 such samples are
skipped; the SIMCL loss is the mean over the remaining pairs (0 if none).

Masked modelling. The chosen tokens (:mod:`fuse.masking`) were replaced by a mask
embedding before the modality encoder; a per-modality head predicts, from the fusion
output at the token's position, the token's frozen feature. We use **regression of the
LayerNorm'd target feature with mean squared error**. Why: the cached features are continuous vectors from frozen
backbones, so there is no vocabulary to classify over (SCALE itself regresses region,
frame and audio features); normalising each target token by LayerNorm (as MAE's normalised
pixel loss does) puts modalities with very different scales (CLIP patches, text states,
log-mel bands) on the same footing, so the per-modality losses are comparable and start
near 1; a contrastive variant would need in-batch negatives of masked tokens that are
often near-duplicates (neighbouring patches, repeated key strings), which makes it noisy
at small batch sizes. Each sample's loss is the mean over its masked tokens, scaled by
the sample's importance W[m, m] (detached: W learns from SIMCL); a modality's masked loss is the mean over its samples
with a masked token; the masked loss is the mean over modalities that had any.

With several data-parallel workers, SIMCL and the subset-consistency loss contrast the samples
of every worker: the model outputs they read are gathered across ranks with their gradients
(:mod:`fuse.gather`, passed in as ``gathered``); the masked losses stay per rank.

Total = SIMCL + masked loss (weight 1 each). Uniform pair weights and switching masked
losses off go through the same code (W = 1 / ``masked=None``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from .model import ModelOutput


@dataclass
class LossTerms:
    """Scalar loss terms of one batch (tensors, with gradient on ``total``)."""

    total: Tensor
    simcl: Tensor
    masked: Tensor
    per_pair: dict[str, Tensor] = field(default_factory=dict)
    mask: dict[str, Tensor] = field(default_factory=dict)  # weighted, as in ``total``
    recon: dict[str, Tensor] = field(default_factory=dict)  # unweighted mean error
    subset: Tensor | None = None  # subset-consistency loss (unweighted), when used

    def scalars(self) -> dict[str, float]:
        """Plain floats for logging: loss, loss_simcl, loss_mask, loss_mask_<m>, recon_<m>."""
        out = {"loss": float(self.total), "loss_simcl": float(self.simcl), "loss_mask": float(self.masked)}
        out.update({f"loss_mask_{m}": float(v) for m, v in self.mask.items()})
        out.update({f"recon_{m}": float(v) for m, v in self.recon.items()})
        if self.subset is not None:
            out["loss_subset"] = float(self.subset)
        return out


def info_nce(logits: Tensor) -> Tensor:
    """Cross-entropy of each row against the diagonal (the positive), mean over rows."""
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))


def weight_scale(present: Tensor) -> Tensor:
    """sqrt(number of present modalities) per sample [B]: W's rows are unit vectors, so when
    all modalities agree equally every entry is 1/sqrt(M). Multiplying by sqrt(M) keeps W's
    relative, per-sample weighting but makes that neutral case 1, so harmonized and uniform
    training use the same effective temperature (W ~ 0.45 for five modalities would otherwise
    double it)."""
    return present.float().sum(-1).clamp_min(1).sqrt()


def simcl_loss(pooled: Tensor, present: Tensor, weights: Tensor, modalities: list[str],
               temperature: float = 0.07, rescale: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
    """SIMCL over all pairs. pooled [B, M, d], present Bool [B, M], weights W [B, M, M];
    ``rescale`` multiplies W by :func:`weight_scale`."""
    z = F.normalize(pooled.float(), dim=-1)
    W = weights.float()
    if rescale:
        W = W * weight_scale(present)[:, None, None]
    M = z.shape[1]
    per_pair: dict[str, Tensor] = {}
    for a in range(M):
        for b in range(a + 1, M):
            sel = (present[:, a] & present[:, b]).nonzero(as_tuple=True)[0]
            if sel.numel() < 2:
                continue
            logits = z[sel, a] @ z[sel, b].T / temperature
            l_ab = info_nce(logits * W[sel, a, b][:, None])
            l_ba = info_nce(logits.T * W[sel, b, a][:, None])
            per_pair[f"{modalities[a]}-{modalities[b]}"] = 0.5 * (l_ab + l_ba)
    if not per_pair:
        return pooled.sum() * 0.0, per_pair
    return torch.stack(list(per_pair.values())).mean(), per_pair


def masked_losses(out: ModelOutput, tokens: Mapping[str, Tensor], rescale: bool = False
                  ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per-modality masked-modelling losses (importance-weighted) and plain reconstruction errors."""
    weighted: dict[str, Tensor] = {}
    recon: dict[str, Tensor] = {}
    for m, (pred, rows, cols) in out.masked.items():
        if rows.numel() == 0:
            continue
        target = tokens[m][rows, cols].float()
        target = F.layer_norm(target, target.shape[-1:])
        err = F.mse_loss(pred.float(), target, reduction="none").mean(-1)
        B = out.present.shape[0]
        sums = torch.zeros(B, device=err.device).index_add(0, rows, err)
        cnt = torch.zeros(B, device=err.device).index_add(0, rows, torch.ones_like(err))
        has = cnt > 0
        per_sample = sums[has] / cnt[has]
        # The importance scales the masked loss but takes no gradient from it: otherwise the
        # cheapest way to lower this term is to shrink every W[m, m] by making the harmonizer's
        # f_m all alike (W tends to uniform, 1/sqrt(M)). W learns from SIMCL's agreement alone.
        imp = out.importances[has, out.modalities.index(m)].float().detach()
        if rescale:
            imp = imp * weight_scale(out.present[has])
        weighted[m] = (imp * per_sample).mean()
        recon[m] = per_sample.mean().detach()
    return weighted, recon


def random_halves(present: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Split each sample's present modalities at random into two non-empty halves.

    Returns Bool [B, M] masks ``a`` and ``b`` (disjoint, together the present set) and Bool [B]
    ``ok``: the samples with at least two modalities (the others have empty halves). Uses the
    global torch RNG, which the training step seeds."""
    side = torch.rand(present.shape, device=present.device) < 0.5
    a, b = present & side, present & ~side
    # a half left empty takes one modality from the other: the first present one in random order
    order = torch.rand(present.shape, device=present.device).masked_fill(~present, 2.0).argsort(-1)
    first = torch.zeros_like(present).scatter_(1, order[:, :1], True)
    a_empty, b_empty = ~a.any(-1, keepdim=True), ~b.any(-1, keepdim=True)
    a = torch.where(a_empty, first, a & ~(b_empty & first))
    b = torch.where(b_empty, first, b & ~(a_empty & first))
    ok = present.sum(-1) >= 2
    return a & ok[:, None], b & ok[:, None], ok


def instance_codes(ids: list[str], instances: list[str], device: torch.device | None = None) -> Tensor:
    """Int64 [B]: one code per instance (a product without one is its own instance), equal for
    the listings of one instance, stable across processes (a hash of the instance key)."""
    import hashlib

    from scalemm.splits import split_key

    return torch.tensor([int.from_bytes(hashlib.blake2b(split_key(i, p).encode(), digest_size=8).digest(),
                                        "little") >> 1 for p, i in zip(ids, instances)],
                        dtype=torch.int64, device=device)


def subset_consistency_loss(model: Any, out: ModelOutput, temperature: float = 0.07,
                            instances: Tensor | None = None) -> Tensor:
    """The product embedding must not depend on which modalities a listing happens to have.

    Each product's present modalities are split at random into two halves; the embedding from
    one half (its importances harmonized among that half's modalities) must find the embedding
    of the same product from the other half among the batch's products (InfoNCE, both ways).
    Noise and modalities that say little about the product lower the loss least when their
    weight is small, so the harmonizer learns to weigh each modality by what it adds; and the
    embedding of any subset is trained to land near the others (missing modalities, ablations).

    ``instances`` (Int64 [B], :func:`instance_codes`): the other listings of the product's
    instance in the batch are positives too (multi-positive InfoNCE, as in supervised
    contrastive learning, but with the catalogue's own instance marks, no category labels):
    half of one listing must also find the other half of another listing of the same item."""
    a, b, ok = random_halves(out.present)
    if int(ok.sum()) < 2:
        return out.enc_pooled.sum() * 0.0
    z = out.enc_pooled[ok]
    ea, eb = model.subset_embedding(z, a[ok]), model.subset_embedding(z, b[ok])
    logits = ea @ eb.T / temperature
    if instances is None:
        return 0.5 * (info_nce(logits) + info_nce(logits.T))
    codes = instances[ok]
    same = codes[:, None] == codes[None, :]
    return 0.5 * (multi_positive_nce(logits, same) + multi_positive_nce(logits.T, same.T))


def multi_positive_nce(logits: Tensor, positives: Tensor) -> Tensor:
    """-log(sum of exp over the row's positives / sum of exp over the row), mean over rows;
    ``positives`` Bool [B, B] with the diagonal set (equals :func:`info_nce` when it is the identity)."""
    pos = torch.logsumexp(logits.masked_fill(~positives, float("-inf")), dim=-1)
    return (torch.logsumexp(logits, dim=-1) - pos).mean()


def scale_loss(out: ModelOutput, batch: Mapping[str, Any], temperature: float = 0.07, rescale: bool = False,
               rescale_importance: bool | None = None, subset: Tensor | None = None,
               subset_weight: float = 0.0, simcl_weight: float = 1.0,
               gathered: ModelOutput | None = None) -> LossTerms:
    """Total SCALE loss of one batch: ``simcl_weight`` x SIMCL (on the encoders' pooled outputs)
    + mean masked loss (+ ``subset_weight`` x the subset-consistency loss
    ``subset``, computed by the caller with the model). ``rescale`` multiplies W by sqrt(#present)
    in SIMCL, and the importances in the masked loss too unless ``rescale_importance`` says otherwise.
    ``gathered``: ``out`` gathered across data-parallel ranks (:func:`fuse.gather.gather_output`);
    SIMCL then contrasts every rank's samples, while the masked losses stay on ``out``."""
    con = out if gathered is None else gathered
    simcl, per_pair = simcl_loss(con.enc_pooled, con.present, con.weights, con.modalities, temperature, rescale)
    mask, recon = masked_losses(out, batch["tokens"], rescale if rescale_importance is None else rescale_importance)
    masked = torch.stack(list(mask.values())).mean() if mask else simcl * 0.0
    total = simcl_weight * simcl + masked
    if subset is not None and subset_weight > 0:
        total = total + subset_weight * subset
    return LossTerms(total, simcl, masked, per_pair, mask, recon, subset)
