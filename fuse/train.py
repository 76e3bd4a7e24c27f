"""The SCALE training loop on cached features: seeded, checkpointed, resumable, logged.

:func:`train` runs the whole loop; ``pipelines/train.py`` is its command line and
:mod:`fuse.distributed` runs it under Ray Train on several workers.

Determinism. The model is initialised from ``torch.manual_seed(seed)``; the batches of an
epoch are a pure function of ``(seed, epoch)`` (:func:`fuse.reader.epoch_batches`); before
every step the global torch RNG (dropout) and the masking generator are re-seeded from
``(seed, step)``. So a run is a function of its seed and config alone, and resuming from a
checkpoint (taken at an epoch boundary or in the middle of an epoch: the loop skips the
batches already done) reproduces the uninterrupted run exactly. RNG states are saved in
the checkpoint as well and restored on resume.

Run directory ``RUN``::

    RUN/config.yaml         the config (as resolved)
    RUN/provenance.json     provenance of the feature stores trained on
    RUN/checkpoints/        step-<S>.safetensors + step-<S>.state.pt, latest.json
    RUN/log.jsonl           one JSON record per step
    RUN/tb/                 TensorBoard events
    RUN/training.png        loss terms and importances over steps
    RUN/result.json         the summary (also the last stdout line of the CLI)
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from scalemm.atomic import write_json_atomic
from scalemm.errors import UserError
from scalemm.splits import assign, rows_of

from .checkpoint import (Checkpoint, CheckpointError, check_provenance, latest_checkpoint, load_state,
                         load_weights, provenance_to_json, remove_stale_temps, save_checkpoint)
from .config import ConfigError, ScaleConfig
from .losses import scale_loss
from .masking import choose_masks
from .model import ScaleModel
from .plot import plot_training
from .reader import EpochBatchSampler, FeatureDataset, make_loader

log = logging.getLogger(__name__)

# settings that may differ between a run and its resumption (they do not change the math)
RUNTIME_FIELDS = ("epochs", "device", "threads", "loader_workers", "tensorboard", "memory_budget_gb",
                  "keep_checkpoints", "checkpoint_every", "checkpoint_unit")


class TrainingDiverged(UserError, RuntimeError):
    """The loss or the gradient became NaN/inf; nothing of that step was saved (exit code 3)."""

    exit_code = 3


@dataclass
class DistContext:
    """Where this process sits in a data-parallel job (single process by default)."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class TrainResult:
    """Summary of a run; ``to_dict`` is the CLI's last stdout line."""

    final_loss: float  # mean loss over the last epoch's steps
    first_epoch_loss: float  # mean loss over the first epoch's steps
    steps: int
    epochs: int
    seconds: float  # wall time of this call (data loading included)
    samples_per_s: float  # training samples per second of this call's loop
    importances: dict[str, float]  # mean W[m, m] over the last epoch (present samples)
    run_dir: str
    checkpoint: str
    resumed_from_step: int | None = None
    epoch_losses: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class WarmupConstant:
    """LR factor: linear warm-up over ``warmup`` steps, then constant (a picklable callable)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = int(warmup)

    def __call__(self, step: int) -> float:
        return 1.0 if self.warmup <= 0 else min(1.0, (step + 1) / self.warmup)


class Objective(nn.Module):
    """Model + loss in one module, so that a data-parallel wrapper sees only tensors out."""

    def __init__(self, model: ScaleModel, cfg: ScaleConfig) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(self, batch: Mapping[str, Any], masks: Mapping[str, Tensor] | None
                ) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.model(batch, masks)
        terms = scale_loss(out, batch, self.cfg.temperature, self.cfg.mask_loss, self.cfg.contrast_on,
                           self.cfg.harmonize and self.cfg.weight_scale == "sqrt_m")
        stats: dict[str, Tensor] = {"loss": terms.total.detach(), "loss_simcl": terms.simcl.detach(),
                                    "loss_mask": terms.masked.detach()}
        stats.update({f"loss_mask_{m}": v.detach() for m, v in terms.mask.items()})
        stats.update({f"recon_{m}": v for m, v in terms.recon.items()})
        for j, m in enumerate(out.modalities):
            pres = out.present[:, j]
            if bool(pres.any()):
                stats[f"importance_{m}"] = out.importances[pres, j].detach().float().mean()
        return terms.total, stats


# ----------------------------------------------------------------------------- helpers

def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"device {spec!r} is not a torch device; use 'auto', 'cpu' or 'cuda'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} asked for but CUDA is not available; set device: auto or cpu")
    return dev


def step_seed(seed: int, step: int) -> int:
    """The RNG seed of one training step, a function of ``(seed, step)``."""
    return int(np.random.SeedSequence([int(seed), int(step), 0xD0]).generate_state(1, np.uint64)[0] >> 1)


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif isinstance(v, dict):
            out[k] = {m: t.to(device, non_blocking=True) for m, t in v.items()}
        else:
            out[k] = v
    return out


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only (not on norms, biases, embeddings, first/mask tokens)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and not name.endswith(("pos", "fusion_pos")) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _rng_state() -> dict[str, Any]:
    st: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
                          "python_version": random.getstate()[0]}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: Mapping[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate((st["python_version"], tuple(st["python"]), None))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def resolve_config(run_dir: Path, cfg: ScaleConfig | None, resume: bool, epochs: int | None,
                   seed: int | None) -> tuple[ScaleConfig, Checkpoint | None]:
    """The config of this call and the checkpoint to resume from (None: fresh run)."""
    ck = latest_checkpoint(run_dir) if run_dir.exists() else None
    if not resume:
        if ck is not None:
            raise CheckpointError(f"{run_dir} already holds a training run (checkpoint of step {ck.step}); "
                                  f"pass --resume to continue it, or choose another --out")
        return (cfg or ScaleConfig()).replace(epochs=epochs, seed=seed), None
    if ck is None:
        raise CheckpointError(f"cannot resume: {run_dir} has no checkpoint (checkpoints/latest.json); "
                              f"drop --resume to start a new run there")
    _, saved, _, _ = load_weights(ck.weights)
    if seed is not None and seed != saved.seed:
        raise ConfigError(f"--seed {seed} differs from the run's seed {saved.seed}; a resumed run keeps "
                          f"its seed (start a new run for another seed)")
    if cfg is not None:
        diff = [k for k in ScaleConfig.field_names()
                if k not in RUNTIME_FIELDS and getattr(cfg, k) != getattr(saved, k)]
        if diff:
            k = diff[0]
            raise ConfigError(f"the config's '{k}' ({getattr(cfg, k)!r}) differs from the run's "
                              f"({getattr(saved, k)!r}, in {run_dir / 'config.yaml'}); resume without "
                              f"--config or start a new run")
        saved = saved.replace(**{k: getattr(cfg, k) for k in RUNTIME_FIELDS})
    return saved.replace(epochs=epochs), ck


class _RunLog:
    """log.jsonl + TensorBoard, on the main process only."""

    def __init__(self, run_dir: Path, resume_step: int | None, tensorboard: bool, enabled: bool) -> None:
        self.enabled = enabled
        self.path = run_dir / "log.jsonl"
        self.tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():  # drop records past the checkpoint
            keep = []
            for ln in self.path.read_text().splitlines():
                try:
                    if json.loads(ln).get("step", 0) <= resume_step:
                        keep.append(ln)
                except (json.JSONDecodeError, AttributeError):
                    continue  # a line cut short by a crash
            self.path.write_text("".join(ln + "\n" for ln in keep))
        elif resume_step is None:
            self.path.write_text("")
        self.fh = open(self.path, "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tb"),
                                    purge_step=None if resume_step is None else resume_step + 1)

    def write(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.fh.write(json.dumps(rec, sort_keys=True) + "\n")
        if self.tb is not None:
            for k, v in rec.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, rec["step"])

    def close(self) -> None:
        if not self.enabled:
            return
        self.fh.close()
        if self.tb is not None:
            self.tb.close()


# ----------------------------------------------------------------------------- the loop

def train(features_dir: str | Path, run_dir: str | Path, cfg: ScaleConfig | None = None, *,
          resume: bool = False, epochs: int | None = None, seed: int | None = None,
          progress: bool = True, dist: DistContext | None = None) -> TrainResult:
    """Train SCALE on the feature stores under ``features_dir``, writing the run to ``run_dir``.

    ``cfg`` None means the defaults (fresh run) or the run's saved config (``resume``);
    ``epochs``/``seed`` override it. ``resume`` continues from the latest checkpoint (the
    epoch count may be raised; other settings that change the math must stay equal).
    Raises StoreError (features), ConfigError, CheckpointError, TrainingDiverged.
    """
    t0 = time.perf_counter()
    dist = dist or DistContext()
    run_dir, features_dir = Path(run_dir), Path(features_dir)
    cfg, ck = resolve_config(run_dir, cfg, resume, epochs, seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = dist.device or resolve_device(cfg.device)

    ds = FeatureDataset(features_dir, cfg.modalities, cfg.memory_budget_gb, progress=progress and dist.is_main)
    state: dict[str, Any] | None = None
    if ck is not None:
        tensors, _, saved_prov, _ = load_weights(ck.weights)
        check_provenance(saved_prov, ds.provenance, None, where=f"resuming {run_dir} on {features_dir}")
        state = load_state(ck.state)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model = ScaleModel(cfg, {m: (s.max_tokens, s.dim) for m, s in ds.shapes.items()}).to(device)
    objective: nn.Module = Objective(model, cfg)
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel
        objective = DistributedDataParallel(objective, find_unused_parameters=True,
                                            device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupConstant(cfg.warmup_steps))

    c: dict[str, Any] = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "epoch_sums": {}, "epoch_n": 0,
                         "epoch_losses": [], "last_epoch_importances": {}}
    if state is not None:
        try:
            model.load_state_dict(tensors, strict=True)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            _set_rng_state(state["rng"])
            c = dict(state["counters"])
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise CheckpointError(f"checkpoint {ck.weights.name} does not fit this model/optimizer "
                                  f"({str(e).splitlines()[0]}); start a new run") from None
        log.info("resuming %s from step %d (epoch %d, batch %d)", run_dir, c["step"], c["epoch"] + 1,
                 c["batch_in_epoch"])
    resumed_from = c["step"] if ck is not None else None

    split = assign(ds.instances, ds.ids, cfg.split_spec())
    sampler = EpochBatchSampler(ds, cfg.batch_size, cfg.seed, rank=dist.rank, world=dist.world,
                                subset=rows_of(split, cfg.train_split))
    loader = make_loader(ds, sampler, cfg.loader_workers)
    steps_per_epoch = len(sampler.batches())
    total_steps = steps_per_epoch * cfg.epochs
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(run_dir)
        cfg.to_yaml(run_dir / "config.yaml")
        write_json_atomic(run_dir / "provenance.json", provenance_to_json(ds.provenance))
    runlog = _RunLog(run_dir, resumed_from, cfg.tensorboard, dist.is_main)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    gen = torch.Generator()
    last_ck: Checkpoint | None = ck
    n_samples = 0
    t_loop = time.perf_counter()

    def save() -> None:
        nonlocal last_ck
        if dist.is_main:
            st = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                  "rng": _rng_state(), "counters": c}
            last_ck = save_checkpoint(run_dir, c["step"], model, st, cfg, ds.provenance, cfg.keep_checkpoints)

    def diverged(what: str, value: float) -> TrainingDiverged:
        where = f"{last_ck.weights}" if last_ck is not None else "none was written yet"
        return TrainingDiverged(
            f"training diverged: {what} is {value} at step {c['step'] + 1} (epoch {c['epoch'] + 1}); "
            f"nothing of that step was saved, the last good checkpoint is kept ({where}). "
            f"Check the features for NaN/inf or lower lr (now {cfg.lr}), then rerun with --resume.")

    from tqdm.auto import tqdm
    pbar = tqdm(total=total_steps, initial=c["step"], unit="step", desc="train SCALE",
                disable=not (progress and dist.is_main), dynamic_ncols=True)
    model.train()
    try:
        while c["epoch"] < cfg.epochs:
            sampler.set_epoch(c["epoch"], skip=c["batch_in_epoch"])
            t_last = time.perf_counter()
            for batch in loader:
                s = step_seed(cfg.seed, c["step"])
                torch.manual_seed(s)
                gen.manual_seed(s)
                batch = to_device(batch, device)
                masks = (choose_masks(batch, model.modalities, cfg.mask_prob, gen)
                         if cfg.masked_losses else None)
                with autocast:
                    total, stats = objective(batch, masks)
                ok = torch.isfinite(total.detach()).float()
                if dist.world > 1:
                    torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
                if ok.item() < 1:
                    raise diverged("the loss", float(total.detach()))
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                gn = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                    cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
                if not math.isfinite(float(gn)):
                    raise diverged("the gradient norm", float(gn))
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                c["step"] += 1
                c["batch_in_epoch"] += 1
                bsz = len(batch["ids"])
                n_samples += bsz
                now = time.perf_counter()
                rec: dict[str, Any] = {"step": c["step"], "epoch": c["epoch"] + 1, "lr": lr,
                                       "grad_norm": float(gn), "batch": bsz,
                                       "samples_per_s": bsz / max(now - t_last, 1e-9)}
                rec.update({k: float(v) for k, v in stats.items()})
                t_last = now
                sums = c["epoch_sums"]
                for k, v in rec.items():
                    if k == "loss" or k.startswith("importance_"):
                        sums[k] = sums.get(k, 0.0) + v
                        sums["n_" + k] = sums.get("n_" + k, 0) + 1
                c["epoch_n"] += 1
                runlog.write(rec)
                pbar.update(1)
                pbar.set_postfix(loss=f"{rec['loss']:.4f}", epoch=c["epoch"] + 1)
                if cfg.checkpoint_unit == "step" and c["step"] % cfg.checkpoint_every == 0:
                    save()
            # end of epoch
            sums = c["epoch_sums"]
            if c["epoch_n"]:
                c["epoch_losses"] = list(c["epoch_losses"]) + [sums["loss"] / sums["n_loss"]]
                c["last_epoch_importances"] = {k.removeprefix("importance_"): sums[k] / sums["n_" + k]
                                               for k in sums if k.startswith("importance_")}
                log.info("epoch %d/%d: mean loss %.4f", c["epoch"] + 1, cfg.epochs, c["epoch_losses"][-1])
            c["epoch"] += 1
            c["batch_in_epoch"] = 0
            c["epoch_sums"], c["epoch_n"] = {}, 0
            if cfg.checkpoint_unit == "epoch" and (c["epoch"] % cfg.checkpoint_every == 0):
                save()
        if last_ck is None or last_ck.step != c["step"]:
            save()
    finally:
        pbar.close()
        runlog.close()
    loop_s = time.perf_counter() - t_loop
    if dist.is_main:
        try:
            plot_training(run_dir / "log.jsonl", run_dir / "training.png")
        except Exception as e:  # a plot never fails a finished run
            log.warning("could not draw %s: %s", run_dir / "training.png", e)
    losses = c["epoch_losses"]
    result = TrainResult(
        final_loss=float(losses[-1]) if losses else float("nan"),
        first_epoch_loss=float(losses[0]) if losses else float("nan"),
        steps=int(c["step"]), epochs=int(c["epoch"]), seconds=time.perf_counter() - t0,
        samples_per_s=n_samples / loop_s if loop_s > 0 else 0.0,
        importances={k: float(v) for k, v in c["last_epoch_importances"].items()},
        run_dir=str(run_dir), checkpoint=str(last_ck.weights) if last_ck else "",
        resumed_from_step=resumed_from, epoch_losses=[float(x) for x in losses])
    if dist.is_main:
        write_json_atomic(run_dir / "result.json", result.to_dict())
    return result
