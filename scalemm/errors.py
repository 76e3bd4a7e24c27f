"""The errors a user can cause and fix: each ends a command with one ``error:`` line.

Every error class the stages raise for bad input, bad files or bad settings derives from
:class:`UserError`; :func:`scalemm.cli.run` prints it as one line and exits with its
``exit_code``. Anything else is a bug: the command line prints one line too, but keeps the
traceback in a file it names (see :mod:`scalemm.cli`).
"""

from __future__ import annotations

import errno
import os
import re


class UserError(Exception):
    """Something the user can fix (a path, a file, a setting); one line, exit code 2."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A configuration file or value a user must fix."""


class StoreError(UserError, RuntimeError):
    """A feature store is missing, unreadable or does not fit the others."""


class ClusterError(UserError, ConnectionError):
    """A Ray cluster that was named does not answer, or a Ray head that did not start."""


class ClusterBusyError(ClusterError):
    """A job waited longer than its timeout for the cluster's resources, or made no progress."""


class MachineError(UserError):
    """The machine refused a write or a read: no space left, a quota, a read-only file system,
    permission denied. Not a bug; the message says what is intact and what to do."""


# ----------------------------------------------------------------------------- errors of the machine

# errno -> (what happened, what to do about it)
MACHINE_ERRNOS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on device", "free space"),
    errno.EDQUOT: ("disk quota exceeded", "free space or raise the quota"),
    errno.EFBIG: ("file too large for its file system", "write to a file system that takes larger files"),
    errno.EROFS: ("read-only file system", "make the file system writable again (or choose another folder)"),
    errno.EACCES: ("permission denied", "fix the permissions (or choose another folder)"),
    errno.EPERM: ("operation not permitted", "fix the permissions (or choose another folder)"),
}
# how libraries that do not raise OSError (HDF5, safetensors, FAISS) spell an errno in their messages
_ERRNO_TEXT = (re.compile(r"\[Errno (\d+)\]"), re.compile(r"errno = (\d+)"), re.compile(r"os error (\d+)"))
_TEMP_SUFFIX = re.compile(r"\.tmp\d+$")  # see scalemm.atomic.replace_atomic
_STRERRORS = {os.strerror(n).lower(): n for n in MACHINE_ERRNOS}


def _chain(e: BaseException) -> list[BaseException]:
    """``e``, then what it wraps: a Ray task error's ``cause``, ``__cause__``, ``__context__``."""
    seen: list[BaseException] = []
    todo = [e]
    while todo and len(seen) < 32:
        x = todo.pop(0)
        if x is None or any(x is s for s in seen):
            continue
        seen.append(x)
        todo += [getattr(x, "cause", None), x.__cause__, x.__context__]
    return [x for x in seen if isinstance(x, BaseException)]


def errno_of(e: BaseException) -> int | None:
    """The errno of ``e`` itself: an OSError's, or one its message spells out."""
    if isinstance(e, OSError) and e.errno in MACHINE_ERRNOS:
        return e.errno
    text = str(e)
    for rx in _ERRNO_TEXT:
        for m in rx.finditer(text):
            if int(m.group(1)) in MACHINE_ERRNOS:
                return int(m.group(1))
    low = text.lower()
    return next((n for s, n in _STRERRORS.items() if s in low), None)


def machine_os_error(e: BaseException) -> OSError | None:
    """The error of the machine (no space, quota, file too large, read-only, permission denied)
    behind ``e``, as an OSError with its errno and (when known) its path; None when ``e`` is
    not one. Looks through Ray's task errors and exception chains."""
    found: OSError | None = None
    for x in _chain(e):
        if isinstance(x, UserError) or getattr(x, "cause", None) is not None:
            continue  # a Ray task error: its text quotes the worker's traceback; its cause is the error
        n = errno_of(x)
        if n is None:
            continue
        path = getattr(x, "filename", None) if isinstance(x, OSError) else None
        if path is None:
            m = re.search(r"filename = '([^']+)'|write error in (.+?): \d+ != ", str(x))
            path = (m.group(1) or m.group(2)) if m else None
        if path is not None:
            path = _TEMP_SUFFIX.sub("", str(path))  # the file being written, not its temporary name
        if found is None or (found.filename is None and path is not None):
            found = OSError(n, os.strerror(n), path) if path else OSError(n, os.strerror(n))
        if found.filename is not None:
            break
    return found


def machine_message(err: OSError, intact: str, todo: str) -> str:
    """One line: what happened where, what is intact, what to do (``todo`` finishes "... and")."""
    what, fix = MACHINE_ERRNOS.get(err.errno, (err.strerror or "error", "fix it"))
    where = f" at {err.filename}" if err.filename else ""
    return f"{what}{where}; {intact}; {fix} and {todo}"
