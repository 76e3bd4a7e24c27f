"""The SCALE training configuration: one dataclass, loaded from YAML.

Every knob of stage 2 lives here, so that a run directory's ``config.yaml`` (written by
:mod:`fuse.train`) fully describes how its model was trained. Unknown keys are refused
with a message naming the file and the key, so a typo never silently falls back to a
default.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from scalemm.config import ConfigError, check_keys, read_yaml_mapping
from scalemm.modalities import MODALITIES as ALL_MODALITIES

__all__ = ["ALL_MODALITIES", "ConfigError", "ScaleConfig"]


@dataclass
class ScaleConfig:
    """Model, loss and training settings of SCALE on cached features.

    The defaults were chosen on the validation split of the real-media development corpus
    (corpora/clipart.py; why each is what it is: docs/decisions.md): the default run on its 771 training
    products takes about five and a half minutes on 2 CPU cores (see ``configs/scale.yaml``).
    """

    # ---- data
    modalities: list[str] = field(default_factory=lambda: list(ALL_MODALITIES))
    memory_budget_gb: float = 4.0  # load the stores into memory when they fit, else stream
    loader_workers: int = 0  # DataLoader workers (streaming always uses at least 1)
    # products split by instance into train / val / test (scalemm.splits); training sees
    # ``train_split`` only ("train", "train+val" or "all"), evaluation reports on another
    split_seed: int = 0
    split_fractions: list[float] = field(default_factory=lambda: [0.6, 0.2, 0.2])
    train_split: str = "train"

    # ---- model
    d_model: int = 384  # 256 loses 3.5 points of probe accuracy on the development corpus (docs/decisions.md)
    heads: int = 4
    encoder_layers: int = 2  # per-modality transformer
    fusion_layers: int = 0  # joint transformer (0: none; on the development corpus it did not help, see docs/decisions.md)
    mlp_ratio: float = 4.0
    dropout: float = 0.1  # on the residual branches (attention output, MLP)
    # on the attention probabilities; 0 keeps training on the fused SDPA kernel on CPU (its
    # flash kernel has no dropout; CUDA's kernels do), as ViT / timm default to
    attn_dropout: float = 0.0

    # ---- losses
    temperature: float = 0.07
    harmonize: bool = True  # False: uniform pair weights (W = 1 for present pairs)
    harmonizer_dim: int = 0  # width of f_m = ReLU(Linear(pooled_m)); 0 means d_model
    masked_losses: bool = False  # on the development corpus it did not help (see docs/decisions.md)
    mask_prob: float = 0.15
    mask_loss: str = "mse"  # "mse" or "smooth_l1" on the LayerNorm'd frozen token feature
    # SIMCL on the modality encoders' pooled outputs ("encoder": align before fusing, no
    # shortcut through the joint transformer) or on the fused ones ("fusion")
    contrast_on: str = "encoder"
    # product embedding: sum of the modality encoders' pooled outputs ("encoder", the space
    # SIMCL aligns; best fine-grained retrieval on the demo) or of the fused ones ("fusion")
    embed_from: str = "encoder"
    # the frozen backbone's global vector joins each modality's pooled output through a fixed
    # orthonormal map, with this weight (0: the encoders learn from the tokens alone)
    frozen_skip: float = 25.0  # about 1.25x the norm a LayerNorm'd output starts at (sqrt(d_model))
    # weight of SIMCL, the paper's pairwise inter-modality contrastive loss
    simcl_weight: float = 0.0
    # several workers (Ray Train): SIMCL and the subset-consistency loss contrast every rank's
    # samples against every rank's (pooled outputs and W gathered with their gradients,
    # fuse.gather), so N workers x batch B train the objective of one process with batch N x B;
    # false: each rank's own batch only (cheaper, another objective)
    gather_negatives: bool = True
    # weight of the subset-consistency loss (fuse.losses.subset_consistency_loss): the product
    # embedding from a random half of a product's modalities must find the one from the other half
    subset_weight: float = 1.0
    # listings of one instance (the catalogue's ``instance`` field) are positives of each other in
    # the subset-consistency loss, and the training batches keep them together (self-supervised:
    # no category label is read). Checkpoints from before this setting load with False
    instance_positives: bool = True
    # importance of a modality per product: "agreement" (mean harmonizer cosine with the other
    # present modalities) | "gated" (that agreement through a learned per-modality gate) |
    # "diagonal" (the paper's literal W[m, m]; see fuse.model.SelfHarmonizer)
    importance: str = "gated"
    # the agreement the importance is made of: "mean" of the cosines with the other present
    # modalities | "corroborated": the same mean without the single closest of them (when two or
    # more others are present), so a modality is not vouched for by its own near-copy alone.
    # Checkpoints saved before this setting existed load with "mean", what they were trained with
    agreement: str = "corroborated"
    # shrinkage of a product's importances towards each modality's running mean importance (kept
    # over the training batches, used outside training): importance' = mean + n / (n + k) x
    # (importance - mean), n = the other modalities the product's agreement was measured on, k
    # this pseudo-count. One agreement is a noisy estimate; the fewer modalities it rests on
    # (a listing with some missing), the more it leans on the modality's mean. 0 = no shrinkage,
    # what checkpoints from before this setting load with
    importance_shrink: float = 3.0
    # each modality's identification rate, kept over the training batches: how often its output
    # alone finds its own product among the batch by the rest of the product (the importance-
    # weighted sum of the product's other modalities). Outside training a product's importances
    # are multiplied by (rate / the best modality's rate) ** p, this p: a modality that agrees
    # with the category but tells one product from another less well (a shop's table template,
    # a noisy recording) weighs less. The rates are measured on products the model trains on, so
    # they flatter the weak modalities (it learns those products); 2 was chosen on validation
    # over 1. 0 = not used, what checkpoints from before this setting load with
    identification_power: float = 2.0
    # product embedding: "importance" (each modality's normalised output weighed by its
    # importance) | "sum" (the paper's plain sum)
    embed_weighting: str = "importance"
    # with "importance": each modality's own importance-weighted output joins the sum, side by
    # side, at this weight (embedding (1 + M) x d_model wide); cosine search ranks by
    # (cos_sum + a^2 cos_blocks) / (1 + a^2), a this weight. 0 (the default): the sum alone,
    # d_model wide, what a catalogue of millions can index (docs/decisions.md)
    block_weight: float = 0.0
    # each modality's frozen global vector (the mean of its tokens, at the store's full width),
    # weighed by the product's importance, appended at this weight (fuse/frozen_blocks.py; + the
    # sum of the token widths). 0 (the default): none
    frozen_blocks: float = 0.0
    # "sqrt_m": W (unit rows) times sqrt(present modalities), so equal agreement weighs 1 and
    # harmonizing changes the relative weights, not the temperature; "none": W as it is
    weight_scale: str = "sqrt_m"

    # ---- optimisation
    lr: float = 1e-3
    # learning rate of the importance gate's per-modality scale and offset (0: ``lr``)
    gate_lr: float = 0.0
    warmup_steps: int = 10  # linear warm-up from 0, then constant (paper: Adam, warm-up)
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    batch_size: int = 64
    epochs: int = 12
    max_steps: int = 0  # stop after this many steps in all, even mid-epoch (0: no limit)
    seed: int = 0

    # ---- checkpoints and logs
    checkpoint_every: int = 1
    checkpoint_unit: str = "epoch"  # "epoch" or "step"
    keep_checkpoints: int = 2
    tensorboard: bool = True
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    threads: int = 2  # torch CPU threads; 0 leaves torch's default

    def __post_init__(self) -> None:
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
        for name in ("d_model", "heads", "batch_size", "epochs", "checkpoint_every", "keep_checkpoints"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("encoder_layers", "fusion_layers", "warmup_steps", "loader_workers", "threads",
                     "harmonizer_dim", "max_steps"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
        if self.frozen_skip < 0 or self.simcl_weight < 0:
            raise ConfigError(f"frozen_skip and simcl_weight must be >= 0, got {self.frozen_skip}, {self.simcl_weight}")
        if self.subset_weight < 0:
            raise ConfigError(f"subset_weight must be >= 0, got {self.subset_weight}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.gate_lr < 0:
            raise ConfigError(f"gate_lr must be >= 0 (0: lr), got {self.gate_lr}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.weight_scale not in ("sqrt_m", "none"):
            raise ConfigError(f"weight_scale must be 'sqrt_m' or 'none', got {self.weight_scale!r}")
        if self.importance not in ("agreement", "gated", "diagonal"):
            raise ConfigError(f"importance must be 'agreement', 'gated' or 'diagonal', got {self.importance!r}")
        if self.agreement not in ("mean", "corroborated"):
            raise ConfigError(f"agreement must be 'mean' or 'corroborated', got {self.agreement!r}")
        if not self.importance_shrink >= 0:
            raise ConfigError(f"importance_shrink must be >= 0 (0: none), got {self.importance_shrink}")
        if not self.identification_power >= 0:
            raise ConfigError(f"identification_power must be >= 0 (0: none), got {self.identification_power}")
        if self.embed_weighting not in ("importance", "importance_concat", "sum"):
            raise ConfigError(f"embed_weighting must be 'importance', 'importance_concat' or 'sum', "
                              f"got {self.embed_weighting!r}")
        if not (self.block_weight >= 0 and math.isfinite(self.block_weight)):
            raise ConfigError(f"block_weight must be a finite number >= 0 (0: none), got {self.block_weight}")
        if not (self.frozen_blocks >= 0 and math.isfinite(self.frozen_blocks)):
            raise ConfigError(f"frozen_blocks must be a finite number >= 0 (0: none), got {self.frozen_blocks}")
        if self.block_weight > 0 and self.embed_weighting != "importance":
            raise ConfigError(f"block_weight {self.block_weight} needs embed_weighting 'importance' (the blocks "
                              f"join the importance-weighted sum), not {self.embed_weighting!r}; set block_weight: 0")
        if self.contrast_on not in ("encoder", "fusion"):
            raise ConfigError(f"contrast_on must be 'encoder' or 'fusion', got {self.contrast_on!r}")
        if self.embed_from not in ("encoder", "fusion"):
            raise ConfigError(f"embed_from must be 'encoder' or 'fusion', got {self.embed_from!r}")
        if self.mask_loss not in ("mse", "smooth_l1"):
            raise ConfigError(f"mask_loss must be 'mse' or 'smooth_l1', got {self.mask_loss!r}")
        if self.checkpoint_unit not in ("epoch", "step"):
            raise ConfigError(f"checkpoint_unit must be 'epoch' or 'step', got {self.checkpoint_unit!r}")
        from scalemm.splits import SplitSpec, rows_of
        SplitSpec(self.split_seed, tuple(self.split_fractions))
        rows_of(np.array([], dtype=object), self.train_split)
        if self.memory_budget_gb < 0:
            raise ConfigError(f"memory_budget_gb must be >= 0, got {self.memory_budget_gb}")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "ScaleConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a mapping of settings, got {type(d).__name__}")
        check_keys(d, cls.field_names(), source)
        kw = dict(d)
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        for k, v in list(kw.items()):
            kw[k] = _coerce(k, v, types[k], source)
        try:
            return cls(**kw)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "ScaleConfig":
        """Read a YAML file; ``overrides`` (not None) replace its values."""
        data = read_yaml_mapping(path)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data, source=f"config file {path}")

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def split_spec(self) -> "SplitSpec":
        from scalemm.splits import SplitSpec
        return SplitSpec(self.split_seed, tuple(self.split_fractions))

    def replace(self, **changes: Any) -> "ScaleConfig":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


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
