"""The five product modalities, in their canonical order, and the paper's ablation order."""

from __future__ import annotations

MODALITIES: tuple[str, ...] = ("image", "text", "table", "video", "audio")

# The modality ablation of the paper: text, then adding image, table, video, audio.
ABLATION_ORDER: tuple[tuple[str, ...], ...] = tuple(
    ("text", *[m for m in ("image", "table", "video", "audio")][:k]) for k in range(5))


def ablation_name(modalities: tuple[str, ...] | list[str]) -> str:
    """``('text', 'image')`` -> ``'text+image'`` (the metrics.json key)."""
    return "+".join(modalities)


ABLATION_NAMES: tuple[str, ...] = tuple(ablation_name(m) for m in ABLATION_ORDER)


def canonical(modalities: list[str] | tuple[str, ...]) -> list[str]:
    """The given modalities in canonical order."""
    return [m for m in MODALITIES if m in set(modalities)]
