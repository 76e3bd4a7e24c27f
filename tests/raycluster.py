"""Start and stop a private local Ray head (own ports, own temp dir) for end-to-end tests.

Only the processes this head started are stopped: it runs as ``ray start --block`` in its own
process group, and the whole group gets SIGTERM at the end (never ``ray stop``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayHead:
    def __init__(self, num_cpus: int = 2) -> None:
        self.gcs_port, self.dash_port = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dash_port}"
        self.num_cpus = num_cpus
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", PYTHONUNBUFFERED="1")
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        return env

    def __enter__(self) -> "RayHead":
        ray = str(Path(sys.executable).parent / "ray")
        self.proc = subprocess.Popen(
            [ray, "start", "--head", "--block", f"--port={self.gcs_port}", f"--dashboard-port={self.dash_port}",
             "--dashboard-host=127.0.0.1", f"--num-cpus={self.num_cpus}",
             # own agent ports, so that a head the user already runs on this machine does not clash
             f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
             f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
             "--disable-usage-stats", "--include-dashboard=true"],
            env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("ray head exited during start")
            try:
                urllib.request.urlopen(f"{self.address}/api/version", timeout=2)
                return self
            except urllib.error.HTTPError:  # it answers (token auth asks for a token): it is up
                return self
            except Exception:
                time.sleep(1)
        self.__exit__()
        raise RuntimeError("ray head did not come up in 90 s")

    def submit(self, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        ray = str(Path(sys.executable).parent / "ray")
        root = Path(__file__).resolve().parents[1]
        cmd = [ray, "job", "submit", "--address", self.address, "--working-dir", str(root), "--", "python", *args]
        for _ in range(30):  # the job agent comes up a little after the dashboard
            r = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=timeout)
            if "No available agent" not in r.stderr + r.stdout:
                return r
            time.sleep(2)
        return r

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
