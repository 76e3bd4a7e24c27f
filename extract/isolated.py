"""Native decoders (decord's video and audio readers) run in a child process: a crash there
(SIGSEGV in the C++ code on a hostile file) or a decoder that never returns costs that one
item's record, not the decode task and every item in it.

One spawned child per decode worker process, reused from item to item and spoken to over one
pipe; it is replaced after a crash and killed after a timeout (a hung decoder must not keep a
CPU), and it exits by itself when that worker dies: a Ray worker killed with the cluster never
stops it, and a decoder that hangs never reads the pipe's end.

A plain process and a pipe, not a ``ProcessPoolExecutor``: the executor's queues hold
semaphores registered with multiprocessing's resource tracker, a process of its own. Ray kills
a worker's child processes, that tracker among them, as the worker exits; the executor's
finalizers then found it dead and printed a warning and a traceback per semaphore into every
extraction log, once per decode worker. A pipe registers nothing.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable

import numpy as np

from scalemm.extract.decode import DecodeError

PARENT_POLL_S = 1.0


def _exit_with(parent: int) -> None:
    """In the child: a daemon thread that ends the process once ``parent`` is no longer its
    parent (it died and the child was re-parented), whatever the child is doing."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _serve(conn: Any, parent: int) -> None:
    """The child's loop: (fn, path, cfg) in, (True, fn(path, cfg)) or (False, the exception) out,
    until the pipe closes."""
    _exit_with(parent)
    while True:
        try:
            fn, path, cfg = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply = (True, fn(path, cfg))
        except Exception as e:  # the decoder's error, raised again in the parent
            reply = (False, e)
        try:
            conn.send(reply)
        except OSError:  # the parent is gone
            return
        except Exception as e:  # an exception (or a result) that does not pickle
            conn.send((False, RuntimeError(f"{type(e).__name__} sending the decoder's reply: {e}")))


class _Died(Exception):
    """The decoder child died during a call."""


class _Hung(Exception):
    """The decoder child did not answer in time."""


class _Child:
    """One spawned decoder process and the parent's end of its pipe."""

    def __init__(self) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conn, theirs = ctx.Pipe()
        # daemonic: an exiting worker ends it instead of waiting for it
        self.proc = ctx.Process(target=_serve, args=(theirs, os.getpid()), name="scalemm-decoder", daemon=True)
        self.proc.start()
        theirs.close()

    def call(self, fn: Callable[..., np.ndarray], path: Any, cfg: Any, timeout: float) -> Any:
        """``fn(path, cfg)`` in the child, or the exception it raised there. Raises
        :class:`_Died` when the child died (crashed), :class:`_Hung` when it has not answered
        within ``timeout`` seconds."""
        try:
            self.conn.send((fn, path, cfg))
            if not self.conn.poll(timeout):  # True on an answer and on a closed pipe alike
                raise _Hung
            ok, value = self.conn.recv()
        except (EOFError, OSError):
            raise _Died from None
        if not ok:
            raise value
        return value

    def close(self) -> None:
        """Kill the child if it still runs (a hung decoder must not keep a CPU) and reap it."""
        self.conn.close()
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(10)


_CHILD: _Child | None = None


def decoder_pid() -> int | None:
    """The running decoder child's pid, if there is one."""
    return None if _CHILD is None else _CHILD.proc.pid


def reset() -> None:
    """Drop the decoder child, killing it if it still runs."""
    global _CHILD
    if _CHILD is not None:
        _CHILD.close()
    _CHILD = None


def _isolated(fn: Callable[..., np.ndarray], path: Any, cfg: Any, timeout: float) -> np.ndarray:
    """``fn(path, cfg)`` in the child process: a crash there fails this item only (after one
    retry in a new child); a decoder that runs past ``timeout`` seconds is killed."""
    global _CHILD
    for attempt in (1, 2):
        if _CHILD is None:
            _CHILD = _Child()
        try:
            return _CHILD.call(fn, path, cfg, timeout)
        except _Died:  # a native crash
            reset()
            if attempt == 2:
                raise DecodeError("decoder process crashed (native decoder fault)") from None
        except _Hung:
            reset()
            raise DecodeError(f"decoding took longer than {timeout:.0f} s; skipped") from None
    raise AssertionError("unreachable")
