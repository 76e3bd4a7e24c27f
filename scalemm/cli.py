"""The one convention of every command line under ``pipelines/``.

* Progress and logs go to stderr; the last stdout line is one JSON object (the result).
* An error the user can fix (:class:`scalemm.errors.UserError`, or a path that does not
  exist, is not a directory or cannot be written, or a Ray address that does not answer)
  ends the command with one ``error: ...`` line on stderr and its exit code: 2, or 3 when
  training diverged.
* An error of the machine (no space left, a quota, a file too large, a read-only file system,
  permission denied), also when it was raised in a Ray worker and arrives wrapped in a
  ``RayTaskError``: one ``error:`` line naming the path, what happened, what is intact and
  what to do; exit code 2 (see :func:`scalemm.errors.machine_os_error`).
* Anything else is a bug of ours: the user still gets one ``error:`` line (exit code 1),
  and it names the file where the full traceback was written, for the bug report.
  ``SCALE_DEBUG=1`` lets the traceback through instead.
* Ctrl-C: exit code 130.

Model hubs are offline: weights come from local paths or packages (see README).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, NoReturn

from scalemm.errors import UserError, machine_message, machine_os_error

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "RAY_USAGE_STATS_ENABLED": "0"}
# OS errors about a path or an address the user gave: their message names it
USER_OS_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError,
                  ConnectionError)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the convention's one-line errors (no usage block), exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see --help)", file=sys.stderr, flush=True)
        raise SystemExit(2)


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low``."""
    def parse(v: str) -> int:
        try:
            n = int(v)
        except ValueError:
            n = low - 1
        if n < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {v!r}")
        return n
    return parse


def apply_offline_env() -> None:
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)


class ProgressAwareHandler(logging.StreamHandler):
    """A stream handler that writes each record through ``tqdm.write``: a progress bar drawn on
    the same stream is cleared and drawn again below the line, instead of the line landing in
    the middle of the bar (training logs each epoch under its bar, evaluation each seed)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def setup_logging(verbose: bool = False, level: str | None = None) -> None:
    lvl = getattr(logging, str(level).upper(), logging.INFO) if level else (logging.DEBUG if verbose else logging.INFO)
    logging.basicConfig(level=lvl, handlers=[ProgressAwareHandler(sys.stderr)],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("urllib3", "filelock", "matplotlib", "PIL", "h5py", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def check_out_dir(path: str | Path, flag: str = "--out") -> None:
    """Refuse an output directory that cannot be created or written, before any work."""
    p = Path(path).absolute()
    if p.exists() and not p.is_dir():
        raise NotADirectoryError(f"{flag} {path} is a file, not a directory; choose another {flag}")
    parent = p
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"{flag} {path} cannot be created: {parent} is a file, not a directory; "
                                 f"choose another {flag}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {path} cannot be written ({parent} is not writable); choose another {flag}")


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def error_log_dir() -> Path:
    """Where tracebacks of internal errors go: $SCALE_ERROR_DIR, else <tmp>/scalemm-errors."""
    return Path(os.environ.get("SCALE_ERROR_DIR") or Path(tempfile.gettempdir()) / "scalemm-errors")


def write_traceback(e: BaseException) -> Path | None:
    """Write the traceback of ``e`` (and the command line) to a new file; its path, or None."""
    try:
        d = error_log_dir()
        d.mkdir(parents=True, exist_ok=True)
        script = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "scalemm"
        path = d / f"{script}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        path.write_text("command: " + " ".join(sys.argv) + "\n\n"
                        + "".join(traceback.format_exception(type(e), e, e.__traceback__)))
        return path
    except OSError:
        return None


# what a command leaves intact when the machine refuses a write, and how to go on (by script)
MACHINE_NOTES = {
    "extract": ("the store is intact (committed shards are kept; the shard in flight is not committed)",
                "rerun: the rerun resumes"),
    "train": ("the run folder is intact (the last checkpoint is kept whole; files are written whole or not at all)",
              "rerun with --resume: it goes on from the last checkpoint"),
}
MACHINE_DEFAULT = ("nothing was written half (files are written whole or not at all)", "rerun")


def machine_error_line(err: OSError) -> str:
    """The one line for an error of the machine (see :func:`scalemm.errors.machine_os_error`)."""
    script = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else ""
    if err.filename is None:  # e.g. a line appended to a log: the folder the command writes
        out = next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--out"), None)
        if out:
            err = OSError(err.errno, err.strerror, f"{out} (a file under it)")
    return machine_message(err, *MACHINE_NOTES.get(script, MACHINE_DEFAULT))


def exit_for(e: BaseException) -> NoReturn:
    """Print the one ``error:`` line for ``e`` and exit with its code (see module doc)."""
    if isinstance(e, UserError):
        print(f"error: {_first_line(e)}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
    machine = machine_os_error(e)  # a full disk, a read-only file system..., also from a Ray worker
    if machine is not None:
        print(f"error: {machine_error_line(machine)}", file=sys.stderr, flush=True)
        sys.exit(2)
    cause = getattr(e, "cause", None)  # a Ray task error wrapping one of the user's errors
    if isinstance(cause, (UserError, *USER_OS_ERRORS)) and cause is not e:
        exit_for(cause)
    if isinstance(e, USER_OS_ERRORS):
        print(f"error: {_first_line(e)}", file=sys.stderr, flush=True)
        sys.exit(2)
    where = write_traceback(e)
    tail = f"; the traceback is in {where} (please attach it to a bug report)" if where else ""
    print(f"error: internal error: {type(e).__name__}: {_first_line(e)}{tail}", file=sys.stderr, flush=True)
    sys.exit(1)


def run(main: Callable[[], Any], interrupted: str = "interrupted") -> NoReturn:
    """Run ``main``; print its result (not None) as the last stdout line (JSON) and exit 0,
    or end as the module doc says. ``interrupted`` is printed on Ctrl-C."""
    apply_offline_env()
    try:
        result = main()
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr, flush=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - see the module doc
        if os.environ.get("SCALE_DEBUG"):
            raise
        exit_for(e)
    if result is not None:
        sys.stdout.flush()
        print(json.dumps(result, sort_keys=False), flush=True)
    sys.exit(0)
