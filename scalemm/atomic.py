"""Atomic file writes: a file appears whole or not at all.

Every write of the pipeline that a crash must not leave half-done (shards, failure parts,
manifests, checkpoints, embeddings, indexes' id maps, plots, reports) goes through
:func:`replace_atomic`: the content is written to ``<name>.tmp<pid>``, fsynced and renamed
over the target. :func:`remove_stale_temps` deletes what a killed writer left behind.
"""

from __future__ import annotations

import errno
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from scalemm.errors import machine_os_error

_TEMP_RE = re.compile(r"\.tmp(\d+)$")


def replace_atomic(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Make ``path`` appear whole or not at all: ``write(tmp)`` fills ``<name>.tmp<pid>`` (parent
    folders made), which is fsynced and renamed over ``path``; on any error the temporary file
    is removed and ``path`` keeps what it held. A write the machine refused (a full disk,
    a read-only file system...) raises an OSError with its errno and ``path``, whatever the
    library that wrote said. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except Exception as e:
        err = _machine_error(e, path, tmp)
        if err is not None:
            raise err from e
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _machine_error(e: Exception, path: Path, tmp: Path) -> OSError | None:
    """An OSError naming ``path`` when writing it failed for the machine (no space, quota, file
    too large, read-only, permission denied; see :func:`scalemm.errors.machine_os_error`). A
    library that says nothing of the cause (``torch.save``: "unexpected pos") counts as a full
    disk when its file system has less than 1 MiB left. None for anything else."""
    err = machine_os_error(e)
    if err is None:
        try:
            st = os.statvfs(tmp.parent)
            full = st.f_bavail * st.f_frsize < (1 << 20)
        except OSError:
            full = False
        if not full:
            return None
        err = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return type(err)(err.errno, err.strerror, str(path))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_files(dirs: Iterable[str | Path]) -> list[tuple[Path, int]]:
    """The temporary files of :func:`replace_atomic` in ``dirs``, each with its writer's pid."""
    found = []
    for d in map(Path, dirs):
        for p in sorted(d.iterdir()) if d.is_dir() else []:
            m = _TEMP_RE.search(p.name)
            if m and p.is_file():
                found.append((p, int(m.group(1))))
    return found


def remove_stale_temps(dirs: Iterable[str | Path], wait: float = 0.0) -> list[Path]:
    """Delete the temporary files (``<name>.tmp<pid>``, see :func:`replace_atomic`) that a killed
    writer left in ``dirs``; those of a process still alive are kept, after waiting at most
    ``wait`` s for it to end (a writer just killed). Returns the files removed."""
    dirs = list(map(Path, dirs))
    deadline = time.monotonic() + wait
    removed = []
    while True:
        alive = False
        for p, pid in temp_files(dirs):
            if pid != os.getpid() and _alive(pid):
                alive = True  # its writer is still running
                continue
            p.unlink(missing_ok=True)
            removed.append(p)
        if not alive or time.monotonic() >= deadline:
            return removed
        time.sleep(0.1)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return replace_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True))


def write_jsonl_atomic(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            for r in records:
                f.write(json.dumps(r, sort_keys=True) + "\n")
    return replace_atomic(path, write)


def save_npz_atomic(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """``np.savez`` (no pickles: pass strings as unicode arrays) through :func:`replace_atomic`."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return replace_atomic(path, write)


def save_figure_atomic(fig: Any, path: str | Path, **kwargs: Any) -> Path:
    """A matplotlib figure as PNG through :func:`replace_atomic`."""
    return replace_atomic(path, lambda tmp: fig.savefig(tmp, format="png", **kwargs))
