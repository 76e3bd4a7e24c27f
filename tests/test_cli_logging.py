"""The command lines' log lines and progress bars share stderr without cutting into each other."""

from __future__ import annotations

import io
import logging

from tqdm import tqdm

from scalemm.cli import ProgressAwareHandler


def _lines(handler: logging.Handler, buf: io.StringIO) -> list[str]:
    log = logging.getLogger("scalemm.test_cli_logging")
    log.propagate, log.level = False, logging.INFO
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log.addHandler(handler)
    try:
        with tqdm(total=3, file=buf, desc="work", mininterval=0, ascii=True) as bar:
            bar.update(1)
            log.info("epoch 1 done")
            bar.update(2)
    finally:
        log.removeHandler(handler)
    return [line.strip() for line in buf.getvalue().replace("\r", "\n").split("\n")]


def test_a_log_line_written_under_a_progress_bar_is_a_line_of_its_own() -> None:
    buf = io.StringIO()
    lines = _lines(ProgressAwareHandler(buf), buf)
    assert "INFO epoch 1 done" in lines  # nothing of the bar before or after it
    assert any(line.startswith("work: 100%") for line in lines)  # the bar drawn again, to its end
    # what a plain stream handler does: the line lands inside the bar's last drawing
    buf = io.StringIO()
    plain = _lines(logging.StreamHandler(buf), buf)
    assert "INFO epoch 1 done" not in plain
    assert any(line.startswith("work:") and line.endswith("INFO epoch 1 done") for line in plain)
