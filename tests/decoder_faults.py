"""Fault injection for the extraction tests: native decoders that really crash.

:func:`runtime_env` gives a Ray runtime environment whose workers run :func:`install` at
start (Ray's ``worker_process_setup_hook``, with this folder on their ``PYTHONPATH``).
``install`` swaps the video and audio decoders that :mod:`scalemm.extract.decoding` calls for
the wrappers below, which kill their own process with SIGSEGV before opening a file whose path
contains :data:`CRASH_MARKER`, as a crashing native decoder would, and decode any other file
as usual. The wrappers are module-level functions of this module, so the isolated decoder
child (:mod:`scalemm.extract.isolated`, a spawned process that gets the function by
reference) runs them too: the crash happens where a real one would.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from scalemm.extract import decode

CRASH_MARKER = "CRASHME"
HERE = Path(__file__).resolve().parent


def _crash_if_marked(path: str | Path) -> None:
    if CRASH_MARKER in str(path):
        os.kill(os.getpid(), signal.SIGSEGV)


def crashing_decode_video(path: str | Path, cfg: decode.DecodeConfig = decode.DecodeConfig()) -> Any:
    _crash_if_marked(path)
    return decode.decode_video(path, cfg)


def crashing_decode_audio(path: str | Path, cfg: decode.DecodeConfig = decode.DecodeConfig()) -> Any:
    _crash_if_marked(path)
    return decode.decode_audio(path, cfg)


def install() -> None:
    """In a worker: the decode task uses the crashing decoders."""
    from scalemm.extract import decoding

    decoding.decode_video = crashing_decode_video
    decoding.decode_audio = crashing_decode_audio


def runtime_env() -> dict[str, Any]:
    """For ``ray.init(runtime_env=...)``: every worker of the job installs the crashing decoders."""
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    return {"worker_process_setup_hook": "decoder_faults.install", "env_vars": {"PYTHONPATH": path}}
