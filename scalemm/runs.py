"""The folder of one training run: what ``fuse/`` writes there and ``evaluate/`` reads back.

    RUN/config.yaml         the config (as resolved)
    RUN/provenance.json     provenance of the feature stores trained on
    RUN/checkpoints/        step-<S>.safetensors + step-<S>.state.pt, latest.json
                            (the checkpoint format: fuse/checkpoint.py)
    RUN/log.jsonl           one JSON record per step (``step``, ``epoch``, ``lr``, every loss
                            term, each modality's ``importance_<m>``, ...)
    RUN/tb/                 TensorBoard events
    RUN/training.png        loss terms and importances over steps
    RUN/result.json         the summary (also the last stdout line of pipelines/train.py)

Every name is defined here once; code elsewhere asks a :class:`RunFolder` for the path.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CONFIG = "config.yaml"
PROVENANCE = "provenance.json"
CHECKPOINTS = "checkpoints"
LOG = "log.jsonl"
TENSORBOARD = "tb"
PLOT = "training.png"
RESULT = "result.json"


class RunFolder:
    """The paths of the run folder ``root`` (nothing is created or read here)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.config = self.root / CONFIG
        self.provenance = self.root / PROVENANCE
        self.checkpoints = self.root / CHECKPOINTS
        self.log = self.root / LOG
        self.tensorboard = self.root / TENSORBOARD
        self.plot = self.root / PLOT
        self.result = self.root / RESULT

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"


def seed_runs(folder: str | Path) -> list[Path]:
    """The runs ``seed-<s>/`` below ``folder`` (the ``--out`` of pipelines/train.py, one run per
    seed) that hold checkpoints, in seed order; [] when there are none."""
    def seed(d: Path) -> int:
        s = d.name.split("-", 1)[1]
        return int(s) if s.isdigit() else 0

    return sorted((d for d in Path(folder).glob("seed-*") if (d / CHECKPOINTS).is_dir()), key=seed)


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The step records of a ``log.jsonl``, in file order; ``[]`` when the file does not exist.

    Blank lines are passed over; a line that is not a JSON object with a ``step`` (the last
    line of a run killed while writing it) is skipped with a warning."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            log.warning("%s line %d is not JSON (%s); skipped", p, n, e)
            continue
        if isinstance(rec, dict) and "step" in rec:
            out.append(rec)
        else:
            log.warning("%s line %d is not a step record; skipped", p, n)
    return out
