"""The SCALE training loop on cached features: seeded, checkpointed, resumable, logged.

:func:`train` runs the whole loop; ``pipelines/train.py`` is its command line and
:mod:`fuse.distributed` runs it under Ray Train on several workers. One optimisation step
is :func:`fuse.step.train_step`, which the benchmark times as well.

Determinism. The model is initialised from ``torch.manual_seed(seed)``; the batches of an
epoch are a pure function of ``(seed, epoch)`` (:func:`fuse.reader.epoch_batches`); before
every step the global torch RNG (dropout) and the masking generator are re-seeded from
``(seed, step)``. So a run is a function of its seed and config alone, and resuming from a
checkpoint (taken at an epoch boundary or in the middle of an epoch: the loop skips the
batches already done) reproduces the uninterrupted run exactly. RNG states are saved in
the checkpoint as well and restored on resume.

The run folder (config, provenance, checkpoints, log.jsonl, TensorBoard events, the plot,
result.json) is laid out as :mod:`scalemm.runs` says.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from scalemm.atomic import write_json_atomic
from scalemm.device import resolve_device
from scalemm.errors import UserError
from scalemm.runs import RunFolder, seed_runs
from scalemm.splits import assign, rows_of

from .checkpoint import (Checkpoint, CheckpointError, check_provenance, latest_checkpoint, load_state,
                         load_weights, provenance_to_json, clean_run_temps, rng_state, save_checkpoint,
                         set_rng_state)
from .config import ConfigError, RunSettings, ScaleConfig
from .plot import plot_training
from .reader import EpochBatchSampler, FeatureDataset, make_loader
from .runlog import RunLog
from .skip import fit_skip_maps
from .step import Learner, NonFiniteStep, build_learner, train_step

log = logging.getLogger(__name__)

# training keys that may differ between a run and its resumption (besides the embedding and
# runtime sections, which never change what is learned)
RESUMABLE = ("epochs",)


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

    final_loss: float  # mean loss over the last epoch's steps (an epoch cut by max_steps counts)
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
    heads: dict[str, Any] = field(default_factory=dict)  # the modality heads' fit (fuse.heads), {}: none
    skip_maps: dict[str, Any] = field(default_factory=dict)  # this call's fit of the frozen skip (fuse.skip), {}: none

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Counters:
    """Where the loop stands, and the sums behind the epoch means; saved in every checkpoint, so
    a run resumed in the middle of an epoch skips the batches done and ends with the same means."""

    step: int = 0  # steps done
    epoch: int = 0  # epochs done (the current one, 0-based)
    batch_in_epoch: int = 0  # batches of the current epoch done
    epoch_sums: dict[str, float] = field(default_factory=dict)  # "loss", "importance_<m>" and "n_<key>"
    epoch_n: int = 0  # steps of the current epoch
    epoch_losses: list[float] = field(default_factory=list)  # mean loss of every finished epoch
    last_epoch_importances: dict[str, float] = field(default_factory=dict)  # {modality: mean W[m, m]}

    def add_step(self, stats: dict[str, float], samples_per_s: float) -> dict[str, Any]:
        """Count one step done with ``stats`` (from :func:`train_step`); returns its log record."""
        self.step += 1
        self.batch_in_epoch += 1
        rec: dict[str, Any] = {"step": self.step, "epoch": self.epoch + 1, **stats, "samples_per_s": samples_per_s}
        for k, v in rec.items():
            if k == "loss" or k.startswith("importance_"):
                self.epoch_sums[k] = self.epoch_sums.get(k, 0.0) + v
                self.epoch_sums["n_" + k] = self.epoch_sums.get("n_" + k, 0) + 1
        self.epoch_n += 1
        return rec

    def reached(self, max_steps: int) -> bool:
        """True when ``max_steps`` (> 0) steps are done."""
        return 0 < max_steps <= self.step

    def epoch_means(self) -> tuple[float, dict[str, float]]:
        """Mean loss and mean importances over the steps of the current epoch (at least one)."""
        sums = self.epoch_sums
        return sums["loss"] / sums["n_loss"], {k.removeprefix("importance_"): sums[k] / sums["n_" + k]
                                               for k in sums if k.startswith("importance_")}

    def end_epoch(self) -> float | None:
        """Close the current epoch; returns its mean loss (None if it had no step)."""
        mean = None
        if self.epoch_n:
            mean, self.last_epoch_importances = self.epoch_means()
            self.epoch_losses = list(self.epoch_losses) + [mean]
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_sums, self.epoch_n = {}, 0
        return mean


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
    job = prepare(features_dir, run_dir, cfg, resume, epochs, seed, progress, dist or DistContext())
    t_loop = time.perf_counter()
    try:
        n_samples = run_loop(job)
        loop_s = time.perf_counter() - t_loop
        heads = attach_heads(job)
    finally:
        job.pbar.close()
        job.runlog.close()
    return finish_run(job, t0, loop_s, n_samples, heads)


@dataclass
class TrainJob:
    """Everything one training call works with, as :func:`prepare` sets it up."""

    run: RunFolder
    cfg: ScaleConfig
    dist: DistContext
    ds: FeatureDataset
    learner: Learner
    counters: Counters
    sampler: EpochBatchSampler
    loader: Any
    runlog: RunLog
    pbar: Any
    last_ck: Checkpoint | None
    resumed_from: int | None
    skip_maps: dict[str, Any]  # the frozen skip's fit of a fresh run ({}: resumed, the checkpoint holds the maps)


def prepare(features_dir: str | Path, run_dir: str | Path, cfg: ScaleConfig | None, resume: bool,
            epochs: int | None, seed: int | None, progress: bool, dist: DistContext) -> TrainJob:
    """The config, the data, the model and optimizer (fresh, or as the checkpoint left them), the
    batches of the train split, the run folder and its logs."""
    from tqdm.auto import tqdm

    run, features_dir = RunFolder(run_dir), Path(features_dir)
    cfg, ck = resolve_config(run.root, cfg, resume, epochs, seed)
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    device = dist.device or resolve_device(cfg.runtime.device)
    ds = FeatureDataset(features_dir, cfg.modalities, cfg.runtime.memory_budget_gb, progress=progress and dist.is_main)
    saved = read_checkpoint(ck, ds, f"resuming {run.root} on {features_dir}") if ck is not None else None
    learner = build_learner(cfg, {m: (s.max_tokens, s.dim) for m, s in ds.shapes.items()}, device, dist.world)
    counters = Counters() if saved is None else restore(learner, *saved, ck)
    resumed_from = counters.step if ck is not None else None
    if ck is not None:
        log.info("resuming %s from step %d (epoch %d, batch %d)", run.root, counters.step, counters.epoch + 1,
                 counters.batch_in_epoch)
    train_rows = rows_of(assign(ds.instances, ds.ids, cfg.split_spec()), cfg.train_split)
    skip_maps = {}
    if saved is None and cfg.frozen_skip > 0:
        skip_maps = fit_skip_maps(learner.model, ds, train_rows, cfg.seed)
    sampler = EpochBatchSampler(ds, cfg.batch_size, cfg.seed, rank=dist.rank, world=dist.world,
                                subset=train_rows, group_instances=cfg.instance_positives)
    loader = make_loader(ds, sampler, cfg.runtime.loader_workers)
    if dist.is_main:
        start_run_folder(run, cfg, ds)
    runlog = RunLog(run, resumed_from, cfg.runtime.tensorboard, dist.is_main)
    total = len(sampler.batches()) * cfg.epochs
    max_steps = cfg.runtime.max_steps
    pbar = tqdm(total=min(total, max_steps) if max_steps else total, initial=counters.step, unit="step",
                desc="train SCALE", disable=not (progress and dist.is_main), dynamic_ncols=True)
    return TrainJob(run, cfg, dist, ds, learner, counters, sampler, loader, runlog, pbar, ck, resumed_from, skip_maps)


def run_loop(job: TrainJob) -> int:
    """The epochs: steps, logs, checkpoints at the configured cadence, the last one at the end.
    Returns the samples trained on."""
    cfg, counters, rt = job.cfg, job.counters, job.cfg.runtime
    n_samples = 0
    job.learner.model.train()
    while counters.epoch < cfg.epochs and not counters.reached(rt.max_steps):
        job.sampler.set_epoch(counters.epoch, skip=counters.batch_in_epoch)
        t_last = time.perf_counter()
        for batch in job.loader:
            try:
                stats = train_step(job.learner, batch, counters.step)
            except NonFiniteStep as e:
                raise diverged(e, counters, job.last_ck, cfg.lr) from None
            now = time.perf_counter()
            rec = counters.add_step(stats, samples_per_s=stats["batch"] / max(now - t_last, 1e-9))
            t_last = now
            n_samples += stats["batch"]
            job.runlog.write(rec)
            job.pbar.update(1)
            job.pbar.set_postfix(loss=f"{rec['loss']:.4f}", epoch=counters.epoch + 1)
            if rt.checkpoint_unit == "step" and counters.step % rt.checkpoint_every == 0:
                job.last_ck = save(job.run, job.learner, counters, job.ds, job.dist) or job.last_ck
            if counters.reached(rt.max_steps):
                break
        if counters.reached(rt.max_steps):
            break  # the epoch stays open: a resume with more steps continues it where it stopped
        mean = counters.end_epoch()
        if mean is not None:
            log.info("epoch %d/%d: mean loss %.4f", counters.epoch, cfg.epochs, mean)
        if rt.checkpoint_unit == "epoch" and counters.epoch % rt.checkpoint_every == 0:
            job.last_ck = save(job.run, job.learner, counters, job.ds, job.dist) or job.last_ck
    if job.last_ck is None or job.last_ck.step != counters.step:
        job.last_ck = save(job.run, job.learner, counters, job.ds, job.dist) or job.last_ck
    return n_samples


def attach_heads(job: TrainJob) -> dict[str, Any]:
    """Fit the modality heads the embedding settings name (:mod:`fuse.heads`) on the train split's
    encoder outputs, with the trained model frozen, and checkpoint the model with them (main
    process only). Returns what the fit did ({} when no head is asked for or fitted)."""
    import numpy as np

    from .heads import MAX_ROWS, fit_heads, sample_rows
    from .variants import embed_variants

    cfg, model = job.cfg, job.learner.model
    names = [m for m in cfg.embedding.modality_heads if m in cfg.modalities]
    if not names or not job.dist.is_main:
        return {}
    t0 = time.perf_counter()
    train_rows = rows_of(assign(job.ds.instances, job.ds.ids, cfg.split_spec()), cfg.train_split)
    sample = sample_rows(job.ds, train_rows, MAX_ROWS, cfg.seed)
    sampler = EpochBatchSampler(job.ds, 256, seed=0, shuffle=False, drop_last=False, subset=np.sort(sample))
    model.eval()
    device = next(model.parameters()).device
    enc = embed_variants(model, make_loader(job.ds, sampler, cfg.runtime.loader_workers), [], device)
    heads, fit = fit_heads(enc["enc_pooled"], enc["presence"], enc["instances"], enc["ids"],
                           model.modalities, names, seed=cfg.seed, device=device)
    model.set_heads(heads)
    if heads is None:
        log.warning("no train product carries any of %s: the embedding is the sum alone", names)
        return {}
    job.last_ck = save(job.run, job.learner, job.counters, job.ds, job.dist) or job.last_ck
    out = {"modalities": list(heads.names), "dim": heads.dim, **fit, "seconds": time.perf_counter() - t0}
    log.info("modality heads %s fitted on %d train products in %.1f s (loss %.3f -> %.3f)", heads.names,
             fit["products"], out["seconds"], fit["first_loss"], fit["final_loss"])
    return out


def finish_run(job: TrainJob, t0: float, loop_s: float, n_samples: int,
               heads: dict[str, Any] | None = None) -> TrainResult:
    """The training plot and the run's result (``result.json``)."""
    counters = job.counters
    if job.dist.is_main:
        try:
            plot_training(job.run.log, job.run.plot)
        except Exception as e:  # a plot never fails a finished run
            log.warning("could not draw %s: %s", job.run.plot, e)
    losses, importances = counters.epoch_losses, counters.last_epoch_importances
    if counters.epoch_n:  # an epoch cut short by max_steps counts as the last one
        mean, importances = counters.epoch_means()
        losses = losses + [mean]
    result = TrainResult(
        final_loss=float(losses[-1]) if losses else float("nan"),
        first_epoch_loss=float(losses[0]) if losses else float("nan"),
        steps=int(counters.step), epochs=int(counters.epoch), seconds=time.perf_counter() - t0,
        samples_per_s=n_samples / loop_s if loop_s > 0 else 0.0,
        importances={k: float(v) for k, v in importances.items()},
        run_dir=str(job.run.root), checkpoint=str(job.last_ck.weights) if job.last_ck else "",
        resumed_from_step=job.resumed_from, epoch_losses=[float(x) for x in losses], heads=dict(heads or {}),
        skip_maps=dict(job.skip_maps))
    if job.dist.is_main:
        write_json_atomic(job.run.result, result.to_dict())
    return result


# ----------------------------------------------------------------------------- the loop's parts

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
                if k not in RESUMABLE and getattr(cfg, k) != getattr(saved, k)]
        if diff:
            k = diff[0]
            raise ConfigError(f"the config's '{k}' ({getattr(cfg, k)!r}) differs from the run's "
                              f"({getattr(saved, k)!r}, in {RunFolder(run_dir).config}); resume without "
                              f"--config or start a new run")
        saved = saved.replace(epochs=cfg.epochs, embedding=cfg.embedding, runtime=cfg.runtime)
    else:  # the runtime the run was started with (a checkpoint keeps none)
        saved = saved.replace(runtime=saved_runtime(RunFolder(run_dir).config))
    return saved.replace(epochs=epochs), ck


def started_seed_config(folder: str | Path) -> ScaleConfig | None:
    """The config a seed run below ``folder`` (pipelines/train.py ``--seeds``) was started with: the
    first one that holds a checkpoint, its runtime included (None: no seed has started). A seed not
    started yet, resumed with ``--seeds ... --resume`` and no ``--config``, starts with it, so that
    every seed of the folder trains one config."""
    for run in seed_runs(folder):
        if latest_checkpoint(run) is not None:
            return resolve_config(run, None, True, None, None)[0]
    return None


def saved_runtime(config_yaml: Path) -> RunSettings:
    """The runtime section of a run folder's ``config.yaml`` (its flat keys in a run written before
    the section existed); the defaults where it is unreadable."""
    import dataclasses
    import yaml
    try:
        data = yaml.safe_load(config_yaml.read_text()) or {}
        data = data.get("runtime", data) if isinstance(data, dict) else {}
        names = [f.name for f in dataclasses.fields(RunSettings)]
        return ScaleConfig.from_dict({"runtime": {k: v for k, v in data.items() if k in names}}).runtime
    except (OSError, yaml.YAMLError, ConfigError, AttributeError):
        return RunSettings()


def read_checkpoint(ck: Checkpoint, ds: FeatureDataset, where: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights and training state of ``ck``, after checking that ``ds`` is what it trained on."""
    tensors, _, saved_prov, _ = load_weights(ck.weights)
    check_provenance(saved_prov, ds.provenance, None, where=where)
    return tensors, load_state(ck.state)


def restore(learner: Learner, tensors: dict[str, torch.Tensor], state: dict[str, Any], ck: Checkpoint) -> Counters:
    """Put the checkpoint's weights, optimizer, schedule and RNG states in place; its counters."""
    try:
        learner.model.load_trained(tensors)
        learner.optimizer.load_state_dict(state["optimizer"])
        learner.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        return Counters(**state["counters"])
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {ck.weights.name} does not fit this model/optimizer "
                              f"({str(e).splitlines()[0]}); start a new run") from None


def start_run_folder(run: RunFolder, cfg: ScaleConfig, ds: FeatureDataset) -> None:
    """Create the run folder (or clean what a killed run left) and write its config and provenance."""
    run.root.mkdir(parents=True, exist_ok=True)
    clean_run_temps(run.root)
    cfg.to_yaml(run.config)
    write_json_atomic(run.provenance, provenance_to_json(ds.provenance))


def save(run: RunFolder, learner: Learner, counters: Counters, ds: FeatureDataset,
         dist: DistContext) -> Checkpoint | None:
    """Checkpoint the current step (main process only; others get None)."""
    if not dist.is_main:
        return None
    state = {"optimizer": learner.optimizer.state_dict(), "scheduler": learner.scheduler.state_dict(),
             "rng": rng_state(), "counters": asdict(counters)}
    cfg = learner.cfg
    return save_checkpoint(run.root, counters.step, learner.model, state, cfg, ds.provenance, cfg.runtime.keep_checkpoints)


def diverged(e: NonFiniteStep, counters: Counters, last_ck: Checkpoint | None, lr: float) -> TrainingDiverged:
    """The user's error for a step that went non-finite: which step, and the checkpoint kept."""
    where = f"{last_ck.weights}" if last_ck is not None else "none was written yet"
    return TrainingDiverged(
        f"training diverged: {e.what} is {e.value} at step {counters.step + 1} (epoch {counters.epoch + 1}); "
        f"nothing of that step was saved, the last good checkpoint is kept ({where}). "
        f"Check the features for NaN/inf or lower lr (now {lr}), then rerun with --resume.")
