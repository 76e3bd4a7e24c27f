"""One writer per store: the lock file ``<store>/.writer.lock``.

An extraction job takes the lock before it touches the store and holds it until it ends. The
file is a small JSON record: the writer's host, pid, Ray job id (and ``ray job submit``'s
submission id), start time, a random token, and a lease: the time of its last refresh and how
long the lease lasts (``lease_s``). A thread of the writer refreshes it every ``lease_s / 6``.

* **Taking it** is atomic: the record is written to ``.writer.lock.tmp<pid>`` and linked to
  ``.writer.lock`` (``os.link`` fails if the lock exists; ``O_EXCL`` where a file system has
  no hard links), so a reader never sees a half record and two writers never both succeed.
* **A second writer** finds the lock held and refuses at once (:class:`StoreLockedError`,
  naming the writer).
* **A stale lock** is one whose writer is gone: its lease expired (the writer was killed with
  ``kill -9``, or its node died; this is what works on a folder shared by several hosts), or
  its pid is not alive on this host. It is taken over under a guard file
  (``.writer.lock.break``, created with ``O_EXCL``): the taker reads the lock again, and only if
  it still holds the stale record replaces it with its own (``os.replace``, atomic); the
  takeover is logged at WARNING.
* **Released** (deleted, if it is still this writer's) when the job ends, however it ends.

The lease uses the hosts' clocks: on a shared folder they must agree to within a lease.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

from scalemm.errors import StoreError

log = logging.getLogger(__name__)

LOCK = ".writer.lock"
BREAK = ".writer.lock.break"
LEASE_S = 60.0  # a lock not refreshed for this long is stale (SCALE_LOCK_LEASE_S)


class StoreLockedError(StoreError):
    """The store is being written by another job."""


def lease_seconds() -> float:
    try:
        return max(1.0, float(os.environ.get("SCALE_LOCK_LEASE_S", LEASE_S)))
    except ValueError:
        return LEASE_S


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def read_lock(path: Path) -> dict[str, Any] | None:
    """The lock record at ``path``; None when there is none; ``{}`` when it cannot be read."""
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return rec if isinstance(rec, dict) else {}


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else "?"


def describe_writer(rec: dict[str, Any]) -> str:
    """The writer of a lock record, for a message: host, pid, Ray job, start time."""
    job = rec.get("ray_job_id") or "?"
    sub = f", submission {rec['submission_id']}" if rec.get("submission_id") else ""
    return (f"host {rec.get('host', '?')}, pid {rec.get('pid', '?')}, Ray job {job}{sub}, "
            f"started {_when(rec.get('started'))}")


def stale_reason(rec: dict[str, Any], path: Path, now: float | None = None) -> str | None:
    """Why the lock ``rec`` (read from ``path``) is stale, or None when its writer may be alive."""
    now = time.time() if now is None else now
    if not rec:  # unreadable: being written right now, or garbage left behind
        try:
            age = now - path.stat().st_mtime
        except OSError:
            return "it is gone"
        return f"it is unreadable and {age:.0f} s old" if age > lease_seconds() else None
    refreshed, lease = float(rec.get("refreshed", 0)), float(rec.get("lease_s", LEASE_S))
    if now - refreshed > lease:
        return f"its lease expired {now - refreshed - lease:.0f} s ago (last refreshed {_when(refreshed)})"
    if rec.get("host") == socket.gethostname() and isinstance(rec.get("pid"), int) and not _pid_alive(rec["pid"]):
        return f"its process {rec['pid']} is not running on this host"
    return None


class StoreLock:
    """``with StoreLock(out) as lock:`` this process is the store's one writer (see the module doc)."""

    def __init__(self, folder: str | Path, lease_s: float | None = None, ray_job_id: str | None = None) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self.lease_s = lease_seconds() if lease_s is None else float(lease_s)
        self.record: dict[str, Any] = {
            "host": socket.gethostname(), "pid": os.getpid(), "ray_job_id": ray_job_id,
            "submission_id": _submission_id(), "started": time.time(), "token": secrets.token_hex(8),
            "lease_s": self.lease_s, "refreshed": time.time()}
        self.lost: str | None = None  # why this writer lost its lock (another took it over)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()

    # ------------------------------------------------------------------ taking and giving back
    def acquire(self) -> "StoreLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            if self._create():
                break
            rec = read_lock(self.path)
            if rec is None:
                continue  # released between the two calls: try again
            why = stale_reason(rec, self.path)
            if why is None:
                raise StoreLockedError(
                    f"{self.folder} is being written by another extraction ({describe_writer(rec)}); wait for it to "
                    f"finish or choose another --out (a writer that died gives up the store when its lease "
                    f"of {float(rec.get('lease_s', LEASE_S)):.0f} s runs out)")
            if self._take_over(rec, why):
                break
            time.sleep(0.05)
        else:
            raise StoreLockedError(f"{self.folder}: could not take the writer lock {self.path} (other jobs keep "
                                   f"taking it); rerun")
        self._thread = threading.Thread(target=self._refresh_loop, name="store-lock-lease", daemon=True)
        self._thread.start()
        return self

    def _tmp(self) -> Path:
        return self.path.with_name(self.path.name + f".tmp{os.getpid()}")

    def _write_tmp(self) -> Path:
        tmp = self._tmp()
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.record, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def _create(self) -> bool:
        """Create the lock with this writer's record, if there is none; whether it was created."""
        self.record["refreshed"] = time.time()
        tmp = self._write_tmp()
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links on this file system: O_EXCL, then the record
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.record, f, sort_keys=True)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _take_over(self, stale: dict[str, Any], why: str) -> bool:
        """Replace the stale record ``stale`` by this writer's, under the break guard."""
        guard = self.folder / BREAK
        try:
            fd = os.open(guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            with contextlib.suppress(OSError):  # a taker that died holding the guard
                if time.time() - guard.stat().st_mtime > 30:
                    guard.unlink()
            return False
        os.close(fd)
        try:
            if read_lock(self.path) != stale:
                return False  # someone else changed it meanwhile: look again
            self.record["refreshed"] = time.time()
            os.replace(self._write_tmp(), self.path)
        finally:
            self._tmp().unlink(missing_ok=True)
            guard.unlink(missing_ok=True)
        log.warning("took over the writer lock of %s from %s: %s", self.folder,
                    describe_writer(stale) if stale else "an unknown writer", why)
        return True

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with self._mutex:
            if self.lost is None and self._mine():
                self.path.unlink(missing_ok=True)

    def _mine(self) -> bool:
        rec = read_lock(self.path)
        return bool(rec) and rec.get("token") == self.record["token"]

    # ------------------------------------------------------------------ the lease
    def update(self, **fields: Any) -> None:
        """Set fields of the record (e.g. the Ray job id once Ray is up) and write it now."""
        self.record.update(fields)
        self.refresh()

    def refresh(self) -> None:
        with self._mutex:
            if self.lost is not None:
                return
            if not self._mine():
                rec = read_lock(self.path) or {}
                self.lost = describe_writer(rec) if rec else "nobody (the lock file was removed)"
                log.error("the writer lock %s was taken over by %s; this job stops", self.path, self.lost)
                return
            self.record["refreshed"] = time.time()
            try:
                os.replace(self._write_tmp(), self.path)
            finally:
                self._tmp().unlink(missing_ok=True)

    def _refresh_loop(self) -> None:
        every = max(0.2, self.lease_s / 6)
        while not self._stop.wait(every):
            try:
                self.refresh()
            except FileNotFoundError:  # its temporary file, removed by the job's sweep of its own temps
                continue
            except OSError as e:  # a full disk: keep trying, the lease has room for a few misses
                log.warning("could not refresh the writer lock %s: %s", self.path, e)

    def check(self) -> None:
        """Raise when another job took this writer's lock (its lease had run out)."""
        if self.lost is not None:
            raise StoreLockedError(f"{self.folder}: this job's writer lock was taken over by {self.lost} "
                                   f"(its lease had expired); the shards committed so far are kept; rerun")

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _submission_id() -> str | None:
    """The ``ray job submit`` submission id of this driver, from the job config Ray gives it."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return None
    try:
        return (json.loads(raw).get("metadata") or {}).get("job_submission_id")
    except (ValueError, AttributeError):
        return None
