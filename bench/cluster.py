"""A private Ray cluster on this machine, for benchmarks and tests: a head and any number of
worker nodes joined to it with ``ray start --address``, each with its own CPUs and ports.

Private on every count: token authentication with a token file of its own
(``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN_PATH``; ``~/.ray`` is never read or written), its
own temporary folder (``RAY_TMPDIR``, so the ``ray_current_cluster`` file that ``ray start``
writes is not the one other Ray users on this machine find), free ports. Every node runs as
``ray start --block`` in a process group of its own; stopping the cluster, or one node, sends
SIGTERM (then SIGKILL) to those groups only, never ``ray stop``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 30) -> None:
    """Signal ``proc``'s process group (``sig``, then SIGKILL if it outlives ``wait``)."""
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=wait)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=wait)


class LocalCluster:
    """``with LocalCluster(head_cpus=1, worker_cpus=[1]) as c:`` a head and one worker node;
    ``c.address`` (GCS, for ``ray.init`` / ``--address``), ``c.dashboard`` (for ``ray job
    submit``), ``c.env()`` (what a driver process needs to connect), ``c.kill_worker(i)``."""

    def __init__(self, head_cpus: float = 2, worker_cpus: list[float] | tuple[float, ...] = (),
                 dashboard: bool = False) -> None:
        self.head_cpus, self.worker_cpus, self.with_dashboard = head_cpus, list(worker_cpus), dashboard
        self.gcs_port, self.dash_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard = f"http://127.0.0.1:{self.dash_port}"
        self.head: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen | None] = []
        self.tmp: Path | None = None

    # ------------------------------------------------------------------ environment
    def env(self) -> dict[str, str]:
        assert self.tmp is not None, "start the cluster first"
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", PYTHONUNBUFFERED="1",
                   RAY_AUTH_TOKEN_PATH=str(self.tmp / "auth_token"), RAY_TMPDIR=str(self.tmp))
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        return env

    def _ray(self, *args: str) -> subprocess.Popen:
        ray = str(Path(sys.executable).parent / "ray")
        ports = [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                 f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
                 f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}"]
        return subprocess.Popen([ray, "start", "--block", "--disable-usage-stats", *ports, *args], env=self.env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    # ------------------------------------------------------------------ life cycle
    def __enter__(self) -> "LocalCluster":
        self.tmp = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))  # short: Ray's socket paths are long
        token = self.tmp / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        dash = ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dash_port}"] \
            if self.with_dashboard else ["--include-dashboard=false"]
        try:
            self.head = self._ray("--head", f"--port={self.gcs_port}", f"--num-cpus={self.head_cpus}",
                                  "--node-ip-address=127.0.0.1", *dash)
            self._wait_head()
            for c in self.worker_cpus:
                self.workers.append(self._ray(f"--address={self.address}", f"--num-cpus={c}",
                                              "--node-ip-address=127.0.0.1"))
            self.wait_nodes(1 + len(self.worker_cpus))
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_head(self, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.head is not None
            if self.head.poll() is not None:
                raise RuntimeError("the ray head exited during start")
            try:
                if not self.with_dashboard:
                    socket.create_connection(("127.0.0.1", self.gcs_port), timeout=2).close()
                    return
                urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=2)
                return
            except urllib.error.HTTPError:  # it answers (token auth asks for a token): it is up
                return
            except OSError:
                time.sleep(1)
        raise RuntimeError(f"the ray head did not come up in {timeout:.0f} s")

    def alive_nodes(self) -> int:
        """Alive nodes, as the GCS sees them (asked from a short-lived driver process)."""
        code = ("import ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
                "print(sum(1 for n in ray.nodes() if n['Alive']))" % self.address)
        r = subprocess.run([sys.executable, "-c", code], env=self.env(), capture_output=True, text=True, timeout=120)
        return int(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 and r.stdout.strip() else -1

    def wait_nodes(self, n: int, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while (got := self.alive_nodes()) != n:
            if time.time() > deadline:
                raise RuntimeError(f"{got} of {n} Ray nodes came up in {timeout:.0f} s")
            time.sleep(1)

    def kill_worker(self, i: int = 0) -> None:
        """SIGKILL worker node ``i``'s whole process group (its raylet and workers): a node lost."""
        proc = self.workers[i]
        if proc is not None:
            _stop(proc, signal.SIGKILL)
            self.workers[i] = None

    def __exit__(self, *exc: object) -> None:
        for proc in [*self.workers, self.head]:
            if proc is not None:
                _stop(proc)
        self.workers, self.head = [], None
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
