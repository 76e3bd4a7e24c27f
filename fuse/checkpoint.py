"""Checkpoints of a training run: writing atomically, finding the latest, loading safely.

A checkpoint of step S is two files under ``RUN/checkpoints/``:

* ``step-<S>.safetensors``: the model weights; its metadata holds the training config
  (JSON), the feature stores' provenance (JSON, per modality) and the step, so that the
  weights file alone is enough to rebuild the model and check the stores it may embed;
* ``step-<S>.state.pt``: optimizer, scheduler, RNG states and the loop's counters, read
  back with ``torch.load(weights_only=True)`` (tensors, numbers, strings, lists, dicts).

Both are written under a temporary name and renamed; ``latest.json`` (also renamed into
place) names the newest complete checkpoint and is written last, so a crash at any point
leaves the previous checkpoint in force.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from scalemm.atomic import remove_stale_temps
from scalemm.atomic import replace_atomic, write_json_atomic
from scalemm.errors import UserError
from scalemm.runs import CHECKPOINTS, RunFolder, seed_runs
from scalemm.store import Provenance, StoreError

from .config import ConfigError, ScaleConfig

log = logging.getLogger(__name__)

FORMAT = "scale-fuse-2"
FORMATS = ("scale-fuse-1", FORMAT)  # every format this project wrote; older ones are migrated on load

# options removed (in scale-fuse-1 -> 2, and ``contrast_on`` since), each with the only value that
# still loads (the behaviour that stayed); a checkpoint of any format trained with any other value
# is refused, naming the option. A key a scale-fuse-1 checkpoint lacks was not yet an option when
# it was written: TRAINED_BEFORE holds the value it was trained with then.
REMOVED = {"mlp_ratio": 4.0, "attn_dropout": 0.0, "harmonizer_dim": 0, "mask_loss": "mse",
           "weight_scale": "sqrt_m", "agreement": "corroborated", "gate_lr": 0.0, "grad_clip": 1.0,
           "block_weight": 0.0, "frozen_blocks": 0.0, "contrast_on": "encoder"}
TRAINED_BEFORE = {"agreement": "mean", "block_weight": 0.0, "frozen_blocks": 0.0,
                  "importance_shrink": 0.0, "identification_power": 0.0, "instance_positives": False}
# moved into the embedding section (new name), and the runtime settings a checkpoint no longer keeps
MOVED = {"embed_from": "source", "embed_weighting": "weighting", "identification_power": "identification_power"}
# embedding-time settings removed: the weights never depended on them, so any value loads
DROPPED = ("importance_shrink",)
RUNTIME = ("memory_budget_gb", "loader_workers", "max_steps", "checkpoint_every", "checkpoint_unit",
           "keep_checkpoints", "tensorboard", "device", "threads", "gather_negatives")
LATEST = "latest.json"
# provenance fields a store must share with the training stores to be embedded by the model
EMBED_FIELDS = ("modality", "backbone", "weights_hash", "pretrained", "preprocessing", "dim",
                "max_tokens", "schema_version")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, corrupt or does not belong to this run."""


@dataclass
class Checkpoint:
    step: int
    weights: Path
    state: Path


def checkpoint_dir(run_dir: str | Path) -> Path:
    return RunFolder(run_dir).checkpoints


def clean_run_temps(run_dir: str | Path) -> list[Path]:
    """Delete the temporary files (``<name>.tmp<pid>``) a killed run left in ``run_dir`` and its
    checkpoints (:func:`scalemm.atomic.remove_stale_temps`); those of a process still alive are
    kept. Returns the files removed."""
    removed = remove_stale_temps([Path(run_dir), checkpoint_dir(run_dir)])
    if removed:
        log.info("removed %d temporary file(s) of an interrupted run under %s", len(removed), run_dir)
    return removed


def provenance_to_json(prov: dict[str, Provenance]) -> dict[str, dict[str, Any]]:
    return {m: p.to_json() for m, p in prov.items()}


def provenance_from_json(d: dict[str, dict[str, Any]]) -> dict[str, Provenance]:
    return {m: Provenance.from_json(p) for m, p in d.items()}


def rng_state() -> dict[str, Any]:
    """The global RNG states (torch, Python, CUDA when present), for a checkpoint's state."""
    st: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
                          "python_version": random.getstate()[0]}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(st["torch"])
    random.setstate((st["python_version"], tuple(st["python"]), None))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module, state: dict[str, Any],
                    cfg: ScaleConfig, provenance: dict[str, Provenance], keep: int = 2) -> Checkpoint:
    """Write the checkpoint of ``step`` atomically, point ``latest.json`` at it, prune old ones."""
    d = checkpoint_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    ck = Checkpoint(step, d / f"step-{step:08d}.safetensors", d / f"step-{step:08d}.state.pt")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "step": str(step), "config": json.dumps(cfg.training_dict()),
            "provenance": json.dumps(provenance_to_json(provenance))}
    replace_atomic(ck.weights, lambda p: save_file(tensors, str(p), metadata=meta))
    replace_atomic(ck.state, lambda p: torch.save(state, p))
    write_json_atomic(d / LATEST, {"step": step, "weights": ck.weights.name, "state": ck.state.name})
    old = sorted(d.glob("step-*.safetensors"))
    for w in old[:-keep] if keep > 0 else []:
        for p in (w, w.with_name(w.name.replace(".safetensors", ".state.pt"))):
            if p != ck.weights and p != ck.state and p.exists():
                p.unlink()
    return ck


def latest_checkpoint(run_dir: str | Path) -> Checkpoint | None:
    """The checkpoint ``latest.json`` names (None if the run has none)."""
    d = checkpoint_dir(run_dir)
    p = d / LATEST
    if not p.exists():
        return None
    try:
        info = json.loads(p.read_text())
        ck = Checkpoint(int(info["step"]), d / info["weights"], d / info["state"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{p} is corrupt ({e}); delete it and point it at a complete checkpoint, "
                              f"or start a fresh run") from None
    for f in (ck.weights, ck.state):
        if not f.is_file():
            raise CheckpointError(f"{p} names {f.name}, which is missing; delete {p} or start a fresh run")
    return ck


def resolve_weights(path: str | Path) -> Path:
    """A run directory (its latest checkpoint) or a ``.safetensors`` file -> the weights file."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        ck = latest_checkpoint(path)
        if ck is None:
            seeds = seed_runs(path)
            if seeds:  # pipelines/train.py --out: one run per seed below it
                raise CheckpointError(f"{path} holds one run per seed ({', '.join(d.name for d in seeds)}), not a "
                                      f"checkpoint of its own; pass one of them, e.g. {seeds[0]}")
            raise CheckpointError(f"run directory {path} has no checkpoint ({checkpoint_dir(path) / LATEST} "
                                  f"missing); train first with pipelines/train.py --out {path}")
        return ck.weights
    raise CheckpointError(f"{path} is neither a run directory nor a checkpoint file; pass the --out "
                          f"directory of pipelines/train.py")


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], ScaleConfig, dict[str, Provenance], int]:
    """Weights, config, provenance and step of a checkpoint (run dir or .safetensors file)."""
    w = resolve_weights(path)
    try:
        from safetensors import safe_open
        with safe_open(str(w), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(w))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {w} is unreadable ({e}); delete it (and "
                              f"{CHECKPOINTS}/{LATEST} if it names it) and resume from an older one") from None
    fmt = meta.get("format")
    if fmt not in FORMATS:
        raise CheckpointError(f"{w} is not a SCALE checkpoint (metadata format {fmt!r}; this version reads "
                              f"{', '.join(FORMATS)})")
    try:
        saved = migrate(json.loads(meta["config"]), fmt, str(w))
        cfg = ScaleConfig.from_dict(saved, source=f"checkpoint {w}")
        prov = provenance_from_json(json.loads(meta["provenance"]))
        step = int(meta["step"])
    except (KeyError, TypeError, ValueError, json.JSONDecodeError, ConfigError) as e:
        raise CheckpointError(f"checkpoint {w} has bad metadata ({e}); it was not written by fuse/") from None
    return tensors, cfg, prov, step


def migrate(saved: dict[str, Any], fmt: str, where: str) -> dict[str, Any]:
    """A checkpoint's saved config, written in format ``fmt``, as the current format's: the one
    place that knows every older format. Raises CheckpointError naming a removed option the
    checkpoint was trained with at a value this version cannot reproduce."""
    saved = dict(saved)
    if fmt != FORMAT:
        for key, value in TRAINED_BEFORE.items():
            saved.setdefault(key, value)
    for key, kept in REMOVED.items():
        value = saved.pop(key, kept)
        if value != kept:
            raise CheckpointError(f"{where} was trained with {key}: {value!r}, an option this version removed "
                                  f"(it reproduces only {key}: {kept!r}); embed it with the version that "
                                  f"trained it, or train again")
    if fmt == FORMAT:
        return saved
    if saved.get("importance") == "agreement":
        raise CheckpointError(f"{where} was trained with importance: 'agreement', an option this version "
                              f"removed (only 'gated' and 'diagonal' remain); train again")
    embedding = {new: saved.pop(old) for old, new in MOVED.items() if old in saved}
    if embedding.get("weighting") == "importance_concat":
        raise CheckpointError(f"{where} embeds with embed_weighting: 'importance_concat', an option this "
                              f"version removed; train again")
    for key in RUNTIME + DROPPED:
        saved.pop(key, None)
    saved["embedding"] = embedding
    return saved


def load_state(path: str | Path) -> dict[str, Any]:
    """The training state of a checkpoint, with ``torch.load(weights_only=True)``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a truncated/corrupt pickle
        raise CheckpointError(f"checkpoint state {path} is unreadable ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); delete the checkpoint "
                              f"(and {CHECKPOINTS}/{LATEST}) and resume from an older one or start afresh") from None


def check_provenance(expected: dict[str, Provenance], actual: dict[str, Provenance],
                     fields: tuple[str, ...] | None, where: str) -> None:
    """Refuse stores whose provenance differs from the model's on ``fields`` (None: all).

    Raises StoreError naming the modality, the field and both values.
    """
    for m, prov in actual.items():
        if m not in expected:
            raise StoreError(f"{where}: the model was not trained on modality '{m}' "
                             f"(trained on {sorted(expected)}); leave it out")
        bad = expected[m].mismatches(prov, fields)
        if bad:
            f = bad[0]
            raise StoreError(
                f"{where}: the {m} store does not fit the model: provenance field '{f}' is "
                f"{getattr(prov, f)!r} but the model was trained on {getattr(expected[m], f)!r}. "
                f"Extract features with the same backbone and settings as the training stores.")
