"""Native decoders (decord's video and audio readers) run in a child process: a crash there
(SIGSEGV in the C++ code on a hostile file) or a decoder that never returns costs that one
item's record, not the decode task and every item in it.

One spawned child per decode worker process, reused from item to item; it is replaced after
a crash and killed after a timeout (a hung decoder must not keep a CPU), and it exits by itself
when that worker dies: a Ray worker killed with the cluster never shuts its pool down, and an
idle pool child waits on its call queue, whose write end it holds itself, for ever.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

import numpy as np

from scalemm.extract.decode import DecodeError

_POOL: ProcessPoolExecutor | None = None
PARENT_POLL_S = 1.0


def _exit_with(parent: int) -> None:
    """In the child: a daemon thread that ends the process once ``parent`` is no longer its
    parent (it died and the child was re-parented), whatever the child is doing."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _pool() -> ProcessPoolExecutor:
    global _POOL
    if _POOL is None:
        import multiprocessing as mp
        _POOL = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"),
                                    initializer=_exit_with, initargs=(os.getpid(),))
    return _POOL


def _reset_pool() -> None:
    """Drop the decoder process, killing it if it still runs (a hung decoder must not keep a CPU)."""
    global _POOL
    if _POOL is not None:
        procs = list((getattr(_POOL, "_processes", None) or {}).values())
        _POOL.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            if p.is_alive():
                p.kill()
    _POOL = None


def _isolated(fn: Callable[..., np.ndarray], path: Any, cfg: Any, timeout: float) -> np.ndarray:
    """``fn(path, cfg)`` in the child process: a crash there fails this item only."""
    for attempt in (1, 2):
        try:
            return _pool().submit(fn, path, cfg).result(timeout=timeout)
        except BrokenProcessPool:
            _reset_pool()
            if attempt == 2:
                raise DecodeError("decoder process crashed (native decoder fault)") from None
        except TimeoutError:
            _reset_pool()
            raise DecodeError(f"decoding took longer than {timeout:.0f} s; skipped") from None
    raise AssertionError("unreachable")
