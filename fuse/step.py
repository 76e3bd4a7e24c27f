"""One SCALE optimisation step: the piece that training and the benchmark share.

:func:`build_learner` makes what a step needs from a config (model, its loss, AdamW with
weight decay on matrices only, the warm-up schedule, the masking generator), and
:func:`train_step` runs one step on one batch: seeded masks, forward and loss (bf16
autocast on CUDA), a guard against a non-finite loss or gradient, backward, gradient
clipping, the optimizer and schedule steps. :func:`fuse.train.train` calls it once per
batch; ``bench/fuse.py`` times the same function, so the benchmark measures the step
training runs and cannot drift from it.

Determinism. Before every step the global torch RNG (dropout) and the masking generator
are re-seeded from ``(seed, step)`` (:func:`step_seed`), so a step is a function of the
weights, the optimizer state, the batch and the step number alone, whatever ran before it
in the process. That is what lets a resumed run reproduce the uninterrupted one exactly.

Several workers. With ``world > 1`` the objective is wrapped in
``DistributedDataParallel`` (the process group must exist), the contrastive losses see the
samples of every rank (``runtime.gather_negatives``, :mod:`fuse.gather`), and the finite-loss check
is reduced over all ranks, so a NaN on any rank stops every rank before any of them steps.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from .config import ScaleConfig
from scalemm.device import to_device
from .gather import all_gather_rows, gather_output
from .losses import instance_codes, scale_loss, subset_consistency_loss
from .masking import choose_masks
from .model import ScaleModel


class NonFiniteStep(ArithmeticError):
    """The loss or the gradient norm of a step is NaN/inf; raised before the optimizer steps."""

    def __init__(self, what: str, value: float) -> None:
        super().__init__(f"{what} is {value}")
        self.what, self.value = what, value


class WarmupConstant:
    """LR factor: linear warm-up over ``warmup`` steps, then constant (a picklable callable)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = int(warmup)

    def __call__(self, step: int) -> float:
        return 1.0 if self.warmup <= 0 else min(1.0, (step + 1) / self.warmup)


GRAD_CLIP = 1.0  # the global gradient norm is clipped at this
# the parts of the model output the contrastive losses read (what is gathered across ranks)
CONTRAST_FIELDS = ("enc_pooled", "weights")


class Objective(nn.Module):
    """Model + loss in one module, so that a data-parallel wrapper sees only tensors out."""

    def __init__(self, model: ScaleModel, cfg: ScaleConfig) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(self, batch: Mapping[str, Any], masks: Mapping[str, Tensor] | None
                ) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.cfg
        out = self.model(batch, masks)
        # W x sqrt(#present modalities): equal agreement weighs 1 (docs/decisions.md)
        rescale = cfg.harmonize
        # several ranks: the contrastive losses see every rank's samples (fuse.gather)
        gather = cfg.runtime.gather_negatives
        con = gather_output(out, CONTRAST_FIELDS) if gather else out
        codes = None
        if cfg.instance_positives and cfg.subset_weight > 0:
            codes = instance_codes(batch["ids"], batch["instances"], out.present.device)
            if gather:  # in the rows' order of ``con`` (unchanged on one process)
                codes = all_gather_rows(codes)
        subset = subset_consistency_loss(self.model, con, cfg.temperature, codes) if cfg.subset_weight > 0 else None
        terms = scale_loss(out, batch, cfg.temperature, rescale,
                           rescale_importance=rescale and cfg.importance == "diagonal", subset=subset,
                           subset_weight=cfg.subset_weight, simcl_weight=cfg.simcl_weight, gathered=con)
        stats: dict[str, Tensor] = {"loss": terms.total.detach(), "loss_simcl": terms.simcl.detach(),
                                    "loss_mask": terms.masked.detach()}
        if subset is not None:
            stats["loss_subset"] = subset.detach()
        stats.update({f"loss_mask_{m}": v.detach() for m, v in terms.mask.items()})
        stats.update({f"recon_{m}": v for m, v in terms.recon.items()})
        for j, m in enumerate(out.modalities):
            pres = out.present[:, j]
            if bool(pres.any()):
                stats[f"importance_{m}"] = out.importances[pres, j].detach().float().mean()
        return terms.total, stats


def param_groups(model: nn.Module, weight_decay: float, lr: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only (not on norms, biases, embeddings, first/mask tokens)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and not name.endswith(("pos", "fusion_pos")) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "lr": lr},
            {"params": no_decay, "weight_decay": 0.0, "lr": lr}]


def step_seed(seed: int, step: int) -> int:
    """The RNG seed of one training step, a function of ``(seed, step)``."""
    return int(np.random.SeedSequence([int(seed), int(step), 0xD0]).generate_state(1, np.uint64)[0] >> 1)


@dataclass
class Learner:
    """What a step changes and reads: the model (``objective`` is the model and its loss,
    wrapped for data parallelism when ``world > 1``), the optimizer, the LR schedule and the
    masking generator."""

    cfg: ScaleConfig
    model: ScaleModel
    objective: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    world: int = 1
    gen: torch.Generator = field(default_factory=torch.Generator)

    def autocast(self) -> torch.autocast:
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                              enabled=self.device.type == "cuda")


def init_model(cfg: ScaleConfig, shapes: Mapping[str, tuple[int, int]]) -> ScaleModel:
    """The model as training starts it: torch's and Python's RNGs seeded with ``cfg.seed``, then
    ``ScaleModel(cfg, shapes)`` (what ``scale_untrained`` in evaluation is)."""
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    return ScaleModel(cfg, dict(shapes))


def build_learner(cfg: ScaleConfig, shapes: Mapping[str, tuple[int, int]], device: torch.device,
                  world: int = 1) -> Learner:
    """A freshly initialised model (:func:`init_model`) on ``device`` with its optimizer and
    schedule; ``shapes`` is ``{modality: (max_tokens, dim)}`` of the stores."""
    model = init_model(cfg, shapes).to(device)
    objective: nn.Module = Objective(model, cfg)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        objective = DistributedDataParallel(objective, find_unused_parameters=True,
                                            device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay, cfg.lr), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupConstant(cfg.warmup_steps))
    return Learner(cfg, model, objective, optimizer, scheduler, device, world)


def train_step(learner: Learner, batch: Mapping[str, Any], step: int) -> dict[str, float]:
    """One optimisation step on ``batch`` (collated; moved to the learner's device here) as step
    number ``step`` (0-based). Returns the step's record: ``lr`` (the rate it stepped with),
    ``grad_norm`` (before clipping), ``batch`` (its size) and every loss term and importance.
    Raises :class:`NonFiniteStep` before the optimizer steps if the loss (on any rank) or the
    gradient norm is not finite."""
    cfg, model = learner.cfg, learner.model
    s = step_seed(cfg.seed, step)
    torch.manual_seed(s)
    learner.gen.manual_seed(s)
    batch = to_device(batch, learner.device)
    masks = choose_masks(batch, model.modalities, cfg.mask_prob, learner.gen) if cfg.masked_losses else None
    with learner.autocast():
        total, stats = learner.objective(batch, masks)
    ok = torch.isfinite(total.detach()).float()
    if learner.world > 1:
        torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
    if ok.item() < 1:
        raise NonFiniteStep("the loss", float(total.detach()))
    learner.optimizer.zero_grad(set_to_none=True)
    total.backward()
    gn = torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    if not math.isfinite(float(gn)):
        raise NonFiniteStep("the gradient norm", float(gn))
    lr = learner.optimizer.param_groups[0]["lr"]
    learner.optimizer.step()
    learner.scheduler.step()
    rec = {"lr": lr, "grad_norm": float(gn), "batch": len(batch["ids"])}
    rec.update({k: float(v) for k, v in stats.items()})
    return rec
