"""A private local Ray head for end-to-end tests: the demo's head (scalemm/ray_head.py), with
its own token, ports and temp dir in a temporary folder; never ~/.ray, never ``ray stop``."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from scalemm.ray_head import Head, ray_executable, start_head, stop_head

ROOT = Path(__file__).resolve().parents[1]


class RayHead:
    def __init__(self, num_cpus: int = 2) -> None:
        self.num_cpus = num_cpus
        self.folder = Path(tempfile.mkdtemp(prefix="scalemm-test-head-"))
        self.head: Head | None = None

    @property
    def address(self) -> str:
        assert self.head is not None
        return self.head.dashboard

    def env(self) -> dict[str, str]:
        """The environment of a client of this head (its token; the venv's bin first on PATH)."""
        assert self.head is not None
        return self.head.process_env()

    def __enter__(self) -> "RayHead":
        try:
            self.head = start_head(self.folder, num_cpus=self.num_cpus)
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        return self

    def log_tails(self, pattern: str = "runtime_env_agent*", lines: int = 30) -> str:
        """The last lines of this head's Ray logs matching ``pattern``, for a failing test's
        message (the head's temp dir goes with it)."""
        assert self.head is not None
        root = Path(self.head.temp_dir) / "session_latest" / "logs"
        tails = [f"== {f}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-lines:])
                 for f in sorted(root.glob(pattern))]
        return "\n".join(tails) or f"(no {pattern} under {root})"

    def submit(self, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        cmd = [ray_executable(), "job", "submit", "--address", self.address, "--working-dir", str(ROOT), "--", "python", *args]
        return subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=timeout)

    def start(self, *args: str, log: Path) -> subprocess.Popen:
        """:meth:`submit` without waiting: the ``ray job submit`` process, its output into ``log``."""
        cmd = [ray_executable(), "job", "submit", "--address", self.address, "--working-dir", str(ROOT), "--", "python", *args]
        with open(log, "w") as fh:
            return subprocess.Popen(cmd, env=self.env(), stdout=fh, stderr=subprocess.STDOUT, text=True)

    def __exit__(self, *exc: object) -> None:
        try:
            stop_head(self.folder)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
