"""A private Ray cluster on this machine, for benchmarks and tests: the private head of
:mod:`scalemm.ray_head` (its own token file, ports and temp dir; never ``~/.ray``, never
``ray stop``) and any number of worker nodes joined to it with ``ray start --address``, each
with its own CPUs, ports and temp dir.

A worker node runs as ``ray start --block`` leading a session of its own, with the head's
token (``RAY_AUTH_MODE=token``, ``RAY_AUTH_TOKEN_PATH``). Stopping the cluster, or one node,
signals those sessions only (:func:`scalemm.ray_head.terminate_session`, or SIGKILL to the
whole session for a node lost), then stops the head with :func:`scalemm.ray_head.stop_head`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scalemm.ray_head import Head, free_port_flags, kill_session, ray_executable, start_head, stop_head, terminate_session


class LocalCluster:
    """``with LocalCluster(head_cpus=1, worker_cpus=[1]) as c:`` a head and one worker node;
    ``c.address`` (GCS, for ``ray.init`` / ``--address``), ``c.dashboard`` (for ``ray job
    submit``), ``c.env()`` (what a driver process needs to connect), ``c.kill_worker(i)``."""

    def __init__(self, head_cpus: float = 2, worker_cpus: list[float] | tuple[float, ...] = ()) -> None:
        self.head_cpus, self.worker_cpus = int(head_cpus), [int(c) for c in worker_cpus]
        self.folder: Path | None = None  # the head's folder (token, state, log); the workers' logs
        self.head: Head | None = None
        self.workers: list[subprocess.Popen | None] = []
        self.worker_tmp: list[Path] = []

    @property
    def address(self) -> str:
        assert self.head is not None, "start the cluster first"
        return self.head.gcs_address

    @property
    def dashboard(self) -> str:
        assert self.head is not None, "start the cluster first"
        return self.head.dashboard

    def env(self) -> dict[str, str]:
        """The environment of a driver (or a worker node) of this cluster: its token, nothing of ~/.ray."""
        assert self.head is not None, "start the cluster first"
        return self.head.process_env()

    def _worker(self, i: int, cpus: int) -> subprocess.Popen:
        assert self.folder is not None
        tmp = Path(tempfile.mkdtemp(prefix="scalemm-ray-"))  # short: Ray's socket paths are long
        self.worker_tmp.append(tmp)
        ports = [f"{flag}={port}" for flag, port in free_port_flags(
            "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port",
            "--metrics-export-port", "--node-manager-port", "--object-manager-port").items()]
        with open(self.folder / f"worker-{i}.log", "wb") as out:
            return subprocess.Popen(
                [ray_executable(), "start", "--block", "--disable-usage-stats", f"--address={self.address}",
                 f"--temp-dir={tmp}", f"--num-cpus={cpus}", "--node-ip-address=127.0.0.1", *ports],
                env=self.env(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)

    # ------------------------------------------------------------------ life cycle
    def __enter__(self) -> "LocalCluster":
        self.folder = Path(tempfile.mkdtemp(prefix="scalemm-cluster-"))
        try:
            self.head = start_head(self.folder, num_cpus=self.head_cpus, extra_args=["--node-ip-address=127.0.0.1"])
            for i, c in enumerate(self.worker_cpus):
                self.workers.append(self._worker(i, c))
            self.wait_nodes(1 + len(self.worker_cpus))
        except BaseException:
            self.__exit__()
            raise
        return self

    def alive_nodes(self) -> int:
        """Alive nodes, as the GCS sees them (asked from a short-lived driver process)."""
        # Ray may print its own warnings on stdout (e.g. "raylet has lagging heartbeats" on a busy
        # machine), so the count is printed behind a marker and only that line is read.
        code = ("import ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
                "print('ALIVE_NODES=%%d' %% sum(1 for n in ray.nodes() if n['Alive']))" % self.address)
        r = subprocess.run([sys.executable, "-c", code], env=self.env(), capture_output=True, text=True, timeout=120)
        return _alive_count(r.stdout) if r.returncode == 0 else -1

    def wait_nodes(self, n: int, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while (got := self.alive_nodes()) != n:
            if time.time() > deadline:
                raise RuntimeError(f"{got} of {n} Ray nodes came up in {timeout:.0f} s"
                                   f" (logs under {self.folder})")
            time.sleep(1)

    def kill_worker(self, i: int = 0) -> None:
        """SIGKILL worker node ``i``'s whole session (its raylet and Ray's workers): a node lost."""
        proc = self.workers[i]
        if proc is not None:
            kill_session(proc.pid)
            proc.wait(timeout=30)
            self.workers[i] = None

    def __exit__(self, *exc: object) -> None:
        try:
            for proc in self.workers:
                if proc is not None:
                    terminate_session(proc.pid, grace=10.0, proc=proc)
                    proc.wait(timeout=30)
            self.workers = []
            if self.folder is not None:
                stop_head(self.folder)
        finally:
            for tmp in self.worker_tmp:
                shutil.rmtree(tmp, ignore_errors=True)
            self.worker_tmp, self.head = [], None
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)


def _alive_count(stdout: str) -> int:
    """The node count a probe printed as ``ALIVE_NODES=<n>``, whatever else Ray wrote around it; -1 if none."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("ALIVE_NODES="):
            return int(line.split("=", 1)[1])
    return -1
