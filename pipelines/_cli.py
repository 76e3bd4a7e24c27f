"""Shared start-up for the command-line entry points: repo root first on sys.path (so our
``evaluate`` package wins over the PyPI library of that name), logging, and one-line errors."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path[:1]:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("urllib3", "filelock", "matplotlib", "PIL", "h5py", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def prepare_ray_driver() -> None:
    """Before starting Ray from a script: take pipelines/ off sys.path, as Ray gives its
    workers the driver's script folder, where pipelines/extract.py and evaluate.py would
    shadow the extract and evaluate packages; and put the repository on PYTHONPATH, for the
    workers of a local Ray (they inherit this environment) when the package is not installed."""
    here = Path(__file__).resolve().parent
    if sys.argv and sys.argv[0] and Path(sys.argv[0]).resolve().parent == here:
        sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != here]
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(ROOT) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *paths])


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


def check_ray_address(address: str | None, flag: str = "--address", timeout: float = 5.0) -> None:
    """Fail fast when an explicit Ray address does not answer: ray.init would retry for a
    long time. 'auto', 'local' and None are left to Ray."""
    if not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].split("/", 1)[0]
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{flag} {address!r} is not a Ray address of the form host:port")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(f"no Ray cluster answers at {flag} {address} ({e.strerror or e}); start one "
                              f"with `ray start --head`, or leave out {flag} to use a local Ray") from None


def run(main: Callable[[], Any]) -> None:
    """Run ``main``; print its result as the last stdout line (JSON); a failure is one line on
    stderr and exit code 1 (SCALE_DEBUG=1 shows the traceback)."""
    try:
        result = main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - the user gets one line, not a traceback
        if os.environ.get("SCALE_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(1)
    if result is not None:
        sys.stdout.flush()
        print(json.dumps(result, sort_keys=False), flush=True)
