"""A private local Ray head (own ports, own temp dir, own auth token) for end-to-end tests,
with ``ray job submit`` to it; see :mod:`scalemm.bench.cluster` (only the processes it started
are stopped, never with ``ray stop``)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from scalemm.bench.cluster import LocalCluster


class RayHead(LocalCluster):
    def __init__(self, num_cpus: int = 2) -> None:
        super().__init__(head_cpus=num_cpus, dashboard=True)

    def submit(self, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        ray = str(Path(sys.executable).parent / "ray")
        root = Path(__file__).resolve().parents[1]
        cmd = [ray, "job", "submit", "--address", self.dashboard, "--working-dir", str(root), "--", "python", *args]
        for _ in range(30):  # the job agent comes up a little after the dashboard
            r = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=timeout)
            if "No available agent" not in r.stderr + r.stdout:
                return r
            time.sleep(2)
        return r
