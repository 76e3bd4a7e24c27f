"""The trained models one evaluation scores: ``--model NAME=RUN`` (repeatable), ``--checkpoint RUN``
(``--model scale=RUN``) and ``--uniform-checkpoint RUN`` (``--model scale_uniform=RUN``).

``scale`` is the default model: the headline, the paired bootstrap's reference and the one the
diagnostics (ablation, robustness of the baselines, importances, cross-modal recall, catalogue)
are computed for. Every model is scored on the same products in the same run (the evaluated split
is read once for all of them).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

from scalemm.errors import ConfigError

DEFAULT = "scale"
UNIFORM = "scale_uniform"
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
# names the evaluation gives its own methods: a model may not take them
RESERVED = ("scale_fused", "scale_untrained", "concat_frozen", "concat_text_image", "concat_weighted",
            "concat_pca")
RESERVED_PREFIXES = ("frozen_", "concat_")


class ModelSpecError(ConfigError):
    """A ``--model`` argument is malformed, or names a model twice."""


def parse_model_spec(spec: str) -> tuple[str, str]:
    """``"NAME=RUN"`` -> (NAME, RUN); raises :class:`ModelSpecError` saying what is wrong."""
    if not isinstance(spec, str) or "=" not in spec:
        raise ModelSpecError(f"--model {spec!r}: expected NAME=RUN (e.g. --model scale_paper=runs/paper)")
    name, run = (s.strip() for s in spec.split("=", 1))
    if not name or not run:
        raise ModelSpecError(f"--model {spec!r}: expected NAME=RUN with both parts non-empty")
    if not NAME.match(name):
        raise ModelSpecError(f"--model {spec!r}: the name {name!r} must start with a letter and hold only letters, "
                             f"digits, '_', '.' or '-' (at most 64 characters)")
    if name in RESERVED or name.startswith(RESERVED_PREFIXES):
        raise ModelSpecError(f"--model {spec!r}: {name!r} is the name of a baseline the evaluation computes itself; "
                             f"choose another name")
    if name.endswith(("@drop", "_untrained")) or "@" in name:
        raise ModelSpecError(f"--model {spec!r}: choose a name without '@' or an '_untrained' suffix")
    return name, run


def model_runs(checkpoint: str | Path | None = None, uniform_checkpoint: str | Path | None = None,
               models: Sequence[str] | Mapping[str, str | Path] | None = None) -> dict[str, Path]:
    """The models to score, ``{name: run}``: ``scale`` first, then ``scale_uniform``, then the
    others in the order given. ``models``: ``NAME=RUN`` strings or a mapping. Raises
    :class:`ModelSpecError` on a malformed spec, a name given twice (``--checkpoint`` is
    ``scale``, ``--uniform-checkpoint`` is ``scale_uniform``) or no ``scale`` model."""
    pairs: list[tuple[str, str, str]] = []  # (name, run, where it came from)
    if checkpoint is not None:
        pairs.append((DEFAULT, str(checkpoint), "--checkpoint"))
    if uniform_checkpoint is not None:
        pairs.append((UNIFORM, str(uniform_checkpoint), "--uniform-checkpoint"))
    if isinstance(models, Mapping):
        for n, r in models.items():
            name, run = parse_model_spec(f"{n}={r}")
            pairs.append((name, run, f"--model {n}={r}"))
    else:
        for spec in models or ():
            name, run = parse_model_spec(spec)
            pairs.append((name, run, f"--model {spec}"))
    out: dict[str, Path] = {}
    seen: dict[str, str] = {}
    for name, run, where in pairs:
        if name in out:
            raise ModelSpecError(f"model '{name}' is given twice ({seen[name]} and {where}); give each name once "
                                 f"(--checkpoint means --model scale=RUN, --uniform-checkpoint --model "
                                 f"scale_uniform=RUN)")
        out[name], seen[name] = Path(run), where
    if DEFAULT not in out:
        raise ModelSpecError("no default model: pass --checkpoint RUN (or --model scale=RUN); "
                             f"given: {sorted(out) or 'none'}")
    order = [DEFAULT, *([UNIFORM] if UNIFORM in out else []), *(n for n in out if n not in (DEFAULT, UNIFORM))]
    return {n: out[n] for n in order}


def embedding_changes(specs: Sequence[str] | None, names: Sequence[str]) -> dict[str, dict[str, object]]:
    """``--embedding NAME:KEY=VALUE`` (repeatable) -> ``{name: {key: value}}``: the model ``NAME``
    (another than ``scale``) embeds with its checkpoint's ``embedding:`` settings changed so, e.g.
    ``scale_sum:modality_heads=[]`` scores a run with the sum alone beside the same run with its
    heads (``--model scale_sum=RUN``). ``scale`` embeds as its checkpoint says: its catalogue
    index serves search, which embeds queries with the checkpoint's settings. Raises
    :class:`ModelSpecError` (or the config's error for a bad key or value)."""
    from scalemm.fuse.config import embedding_change

    out: dict[str, dict[str, object]] = {}
    for spec in specs or ():
        name, sep, change = str(spec).partition(":")
        name = name.strip()
        if not sep or not name:
            raise ModelSpecError(f"--embedding {spec!r}: expected NAME:KEY=VALUE (e.g. scale_sum:modality_heads=[])")
        if name == DEFAULT:
            raise ModelSpecError(f"--embedding {spec!r}: the default model '{DEFAULT}' embeds as its checkpoint says "
                                 f"(its catalogue index serves search); score the run under another name, e.g. "
                                 f"--model {DEFAULT}_sum=RUN --embedding {DEFAULT}_sum:{change}")
        if name not in names:
            raise ModelSpecError(f"--embedding {spec!r}: no model named {name!r}; models: {list(names)}")
        key, value = embedding_change(change, f"--embedding {spec!r}:")
        out.setdefault(name, {})[key] = value
    return out
