"""The SCALE settings: what a model is trained with, how it embeds, and how a run is executed.

Three small dataclasses, each setting in one place:

* :class:`ScaleConfig`, the training config (at most 25 keys: data split, model, losses,
  optimisation). A run directory's ``config.yaml`` and every checkpoint record it.
* :class:`EmbedSettings` (the ``embedding:`` section): what acts only when products are
  embedded (which pooled outputs, how they are weighed, the importance correction). A
  checkpoint records the values it was trained beside; embedding may override them.
* :class:`RunSettings` (the ``runtime:`` section): where and how a run executes (device,
  threads, memory, checkpoint cadence, logs). It never changes what is learned on one process,
  so a resumed run takes the new command's values.

A YAML file holds the training keys at its top level and the two sections under their names;
every key may be left out (the default holds). Unknown keys are refused with a message naming
the file and the key, so a typo never silently falls back to a default. Why each default is what
it is: docs/decisions.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from scalemm.config import ConfigError, check_keys, read_yaml_mapping
from scalemm.modalities import MODALITIES as ALL_MODALITIES

__all__ = ["ALL_MODALITIES", "ConfigError", "EmbedSettings", "RunSettings", "ScaleConfig", "SECTIONS"]

SECTIONS = ("embedding", "runtime")


@dataclass
class EmbedSettings:
    """How a trained model turns a product into its embedding (``embedding:``)."""

    source: str = "encoder"  # the modality encoders' pooled outputs | "fusion": the fused first tokens
    weighting: str = "importance"  # each modality's normalised output x its importance | "sum" (the paper)
    # each modality's identification factor f = (its identification rate / the best rate) ** p, this p
    # (0: none): importances x f, and the agreement hears the other modalities as witnesses by f ** 2
    identification_power: float = 2.0
    # narrow heads of these modalities beside the sum (fuse/heads.py): fitted once training ends,
    # used at embedding time when fitted ([]: the sum alone, d_model floats)
    modality_heads: list[str] = field(default_factory=lambda: ["text", "image"])

    def validate(self) -> None:
        if self.source not in ("encoder", "fusion"):
            raise ConfigError(f"embedding.source must be 'encoder' or 'fusion', got {self.source!r}")
        if self.weighting not in ("importance", "sum"):
            raise ConfigError(f"embedding.weighting must be 'importance' or 'sum', got {self.weighting!r}")
        v = self.identification_power
        if not (v >= 0 and np.isfinite(v)):
            raise ConfigError(f"embedding.identification_power must be a finite number >= 0 (0: none), got {v}")
        bad = [m for m in self.modality_heads if m not in ALL_MODALITIES]
        if bad:
            raise ConfigError(f"embedding.modality_heads names unknown modalities {bad}; choose from {list(ALL_MODALITIES)}")


@dataclass
class RunSettings:
    """Where and how a run executes (``runtime:``); none of it changes what one process learns."""

    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    threads: int = 2  # torch CPU threads (0: torch's default)
    memory_budget_gb: float = 4.0  # load the stores into memory when they fit, else stream shards
    loader_workers: int = 0  # DataLoader workers (streaming always uses at least 1)
    max_steps: int = 0  # stop after this many steps in all, even mid-epoch (0: no limit)
    checkpoint_every: int = 1
    checkpoint_unit: str = "epoch"  # epoch | step
    keep_checkpoints: int = 2
    tensorboard: bool = True
    # several workers (Ray Train): the contrastive losses see every rank's samples (fuse.gather),
    # so N workers x batch B train the objective of one process with batch N x B; false: each
    # rank's own batch only (cheaper, another objective). No effect on one process
    gather_negatives: bool = True

    def validate(self) -> None:
        for name in ("checkpoint_every", "keep_checkpoints"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"runtime.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("threads", "loader_workers", "max_steps"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"runtime.{name} must be >= 0, got {getattr(self, name)}")
        if self.checkpoint_unit not in ("epoch", "step"):
            raise ConfigError(f"runtime.checkpoint_unit must be 'epoch' or 'step', got {self.checkpoint_unit!r}")
        if self.memory_budget_gb < 0:
            raise ConfigError(f"runtime.memory_budget_gb must be >= 0, got {self.memory_budget_gb}")


@dataclass
class ScaleConfig:
    """The training config of SCALE on cached features (at most 25 keys), with its two sections.

    The defaults were chosen on the validation split of the real-media development corpus
    (corpora/clipart.py; docs/decisions.md).
    """

    # ---- data
    modalities: list[str] = field(default_factory=lambda: list(ALL_MODALITIES))
    # products split by instance into train / val / test (scalemm.splits); training sees
    # ``train_split`` only ("train", "train+val" or "all"), evaluation reports on another. Seed 4
    # since embedding rule 2 (fuse/model.py:EMBEDDING_RULE): the test products of seeds 0 to 3
    # were read (docs/results.md)
    split_seed: int = 4
    split_fractions: list[float] = field(default_factory=lambda: [0.6, 0.2, 0.2])
    train_split: str = "train"

    # ---- model
    d_model: int = 384  # width of every modality encoder and of the product embedding
    heads: int = 4
    encoder_layers: int = 2  # per-modality transformer over that modality's tokens
    fusion_layers: int = 0  # joint transformer over all modalities' tokens (0: none)
    dropout: float = 0.1  # on the residual branches (attention output, MLP)
    # the frozen backbone's global vector joins each modality's pooled output at this norm, through
    # a map fixed before training (fuse/skip.py: the train split's principal directions, in
    # columns of its own); 0: the encoders learn from the tokens alone
    frozen_skip: float = 25.0

    # ---- losses
    temperature: float = 0.07  # of every InfoNCE term
    harmonize: bool = True  # self-harmonized pair weights W and importances; false: uniform (W = 1)
    # a modality's importance per product: "gated" (its agreement with the product's other
    # modalities, through a per-modality gate) | "diagonal" (the paper's literal W[m, m])
    importance: str = "gated"
    # SIMCL, the paper's pairwise inter-modality contrast, on the encoders' pooled outputs (on the
    # fused ones it collapsed: docs/decisions.md)
    simcl_weight: float = 0.0
    # subset consistency: the embedding of a random half of a product's modalities finds the other half
    subset_weight: float = 1.0
    # other listings of the product's instance are positives there (no category label is read)
    instance_positives: bool = True
    masked_losses: bool = False  # masked modelling: regress hidden tokens' frozen features (MSE)
    mask_prob: float = 0.15  # share of valid tokens hidden (table: whole key/value entities)

    # ---- optimisation (AdamW, linear warm-up then constant, grad norm clipped at 1)
    lr: float = 1e-3
    warmup_steps: int = 10
    weight_decay: float = 0.01
    batch_size: int = 64
    epochs: int = 12
    seed: int = 0

    # ---- the two sections
    embedding: EmbedSettings = field(default_factory=EmbedSettings)
    runtime: RunSettings = field(default_factory=RunSettings)

    def __post_init__(self) -> None:
        if isinstance(self.embedding, dict):
            self.embedding = _section(EmbedSettings, self.embedding, "embedding")
        if isinstance(self.runtime, dict):
            self.runtime = _section(RunSettings, self.runtime, "runtime")
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        mods = list(self.modalities)
        bad = [m for m in mods if m not in ALL_MODALITIES]
        if bad:
            raise ConfigError(f"unknown modalities {bad}; choose from {list(ALL_MODALITIES)}")
        if not mods:
            raise ConfigError("modalities is empty; name at least one modality")
        if len(set(mods)) != len(mods):
            raise ConfigError(f"modalities {mods} has duplicates")
        # keep the canonical order, so that model layouts do not depend on YAML order
        self.modalities = [m for m in ALL_MODALITIES if m in mods]
        if self.d_model % self.heads:
            raise ConfigError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        for name in ("d_model", "heads", "batch_size", "epochs"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("encoder_layers", "fusion_layers", "warmup_steps"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
        for name in ("frozen_skip", "simcl_weight", "subset_weight"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("temperature", "lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.importance not in ("gated", "diagonal"):
            raise ConfigError(f"importance must be 'gated' or 'diagonal', got {self.importance!r}")
        from scalemm.splits import SplitSpec, rows_of
        SplitSpec(self.split_seed, tuple(self.split_fractions))
        rows_of(np.array([], dtype=object), self.train_split)
        self.embedding.validate()
        self.runtime.validate()

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def training_dict(self) -> dict[str, Any]:
        """The training keys and the ``embedding`` section: what a checkpoint records."""
        d = self.to_dict()
        d.pop("runtime")
        return d

    @classmethod
    def field_names(cls) -> list[str]:
        """The training keys (the sections left out)."""
        return [f.name for f in dataclasses.fields(cls) if f.name not in SECTIONS]

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "ScaleConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a mapping of settings, got {type(d).__name__}")
        check_keys(d, cls.field_names() + list(SECTIONS), source)
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        kw: dict[str, Any] = {}
        for k, v in d.items():
            if k in SECTIONS:
                kw[k] = _section(EmbedSettings if k == "embedding" else RunSettings, v, f"{source}: {k}")
            else:
                kw[k] = _coerce(k, v, types[k], source)
        try:
            return cls(**kw)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "ScaleConfig":
        """Read a YAML file; ``overrides`` (not None) replace its training keys."""
        data = read_yaml_mapping(path)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data, source=f"config file {path}")

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def split_spec(self) -> "SplitSpec":
        from scalemm.splits import SplitSpec
        return SplitSpec(self.split_seed, tuple(self.split_fractions))

    def replace(self, **changes: Any) -> "ScaleConfig":
        """A copy with ``changes`` (not None) applied; ``embedding`` / ``runtime`` may be dicts of
        the keys to change in that section."""
        changes = {k: v for k, v in changes.items() if v is not None}
        for name in SECTIONS:
            if isinstance(changes.get(name), dict):
                changes[name] = dataclasses.replace(getattr(self, name), **changes[name])
        out = dataclasses.replace(self, **changes)
        return out


def _section(cls: type, data: Any, source: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    check_keys(data, names, source)
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    out = cls(**{k: _coerce(k, v, types[k], source) for k, v in data.items()})
    try:
        out.validate()
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return out


def _bad() -> Any:
    raise TypeError


def _coerce(name: str, value: Any, typ: Any, source: str) -> Any:
    t = str(typ)
    try:
        if t == "bool":
            if isinstance(value, bool):
                return value
            raise TypeError
        if t == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if t == "float":
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if t == "str":
            if not isinstance(value, str):
                raise TypeError
            return value
        if t.startswith("list"):
            if isinstance(value, str):
                value = [s.strip() for s in value.split(",") if s.strip()]
            if not isinstance(value, (list, tuple)):
                raise TypeError
            if t == "list[float]":
                return [float(v) for v in value if not isinstance(v, bool) or _bad()]
            return [str(v) for v in value]
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: setting '{name}' must be of type {t}, got {value!r}") from None
    return value


def embedding_change(spec: str, source: str = "--embedding") -> tuple[str, Any]:
    """``"KEY=VALUE"`` -> (KEY, VALUE) for one ``embedding:`` setting, the value read as YAML
    (``modality_heads=[]``, ``modality_heads=text``, ``weighting=sum``); an empty value is an
    empty list for a list setting. Raises :class:`ConfigError` saying what is wrong."""
    key, sep, raw = spec.partition("=")
    key = key.strip()
    types = {f.name: f.type for f in dataclasses.fields(EmbedSettings)}
    if not sep or key not in types:
        raise ConfigError(f"{source} {spec!r}: expected KEY=VALUE with KEY one of {list(types)} "
                          f"(e.g. modality_heads=[] for the sum alone)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} {spec!r}: the value is not YAML ({e})") from None
    return key, _coerce(key, value, types[key], f"{source} {spec!r}")


def with_embedding_changes(settings: EmbedSettings, changes: dict[str, Any], source: str = "--embedding") -> EmbedSettings:
    """``settings`` with ``changes`` ({key: value} from :func:`embedding_change`), read and
    validated as an ``embedding:`` section is."""
    return _section(EmbedSettings, {**dataclasses.asdict(settings), **changes}, source)
