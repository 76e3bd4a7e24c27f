"""The training log of a run: ``log.jsonl`` (one JSON record per step) and TensorBoard events.

Only the main process of a data-parallel job writes (``enabled``). A resumed run first cuts
the log back to the records of the steps its checkpoint holds, so that the log of a killed
and resumed run has one record per step, equal to the uninterrupted run's.
"""

from __future__ import annotations

import json
from typing import Any

from scalemm.atomic import write_jsonl_atomic
from scalemm.runs import RunFolder, read_log


class RunLog:
    """Appends step records to ``log.jsonl`` (line-buffered) and, with ``tensorboard``, their
    numbers as TensorBoard scalars. ``resume_step`` None starts a fresh log."""

    def __init__(self, run: RunFolder, resume_step: int | None, tensorboard: bool, enabled: bool) -> None:
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        if resume_step is None:
            run.log.write_text("")
        elif run.log.exists():  # drop the records of steps after the checkpoint
            write_jsonl_atomic(run.log, [r for r in read_log(run.log) if r["step"] <= resume_step])
        self.fh = open(run.log, "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run.tensorboard), purge_step=None if resume_step is None else resume_step + 1)

    def write(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.fh.write(json.dumps(rec, sort_keys=True) + "\n")
        if self.tb is not None:
            for k, v in rec.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, rec["step"])

    def close(self) -> None:
        if not self.enabled:
            return
        self.fh.close()
        if self.tb is not None:
            self.tb.close()
