"""The demo's private Ray head (pipelines/ray_head.py, scalemm/ray_head.py) as a new user meets
it: an empty HOME, no Ray state. It starts, takes a job, refuses clients without its token,
never creates ~/.ray, and stops every process it started; a head that cannot start is one
`error:` line naming the cause."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from scalemm.ray_head import failure_cause, free_ports
from cli_output import last_json

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "pipelines" / "ray_head.py"


def fresh_env(home: Path) -> dict[str, str]:
    """A new user's environment: an empty HOME, nothing of Ray's auth set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def source(env_sh: Path, env: dict[str, str]) -> dict[str, str]:
    """``env`` after ``source env_sh`` (the exports the script wrote)."""
    out = subprocess.run(["bash", "-c", f'source "{env_sh}" && env -0'], env=env, capture_output=True,
                         check=True).stdout.decode()
    return dict(kv.split("=", 1) for kv in out.split("\0") if "=" in kv)


def http_status(url: str, token: str | None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        return opener.open(req, timeout=10).status
    except urllib.error.HTTPError as e:
        return e.code


GCS_PROBE = ("import sys; from ray._raylet import GcsClient\n"
             "try:\n    GcsClient(address=sys.argv[1]).internal_kv_keys(b'', None, timeout=10); print('ACCEPTED')\n"
             "except Exception as e:\n    print('REFUSED', type(e).__name__, e)\n")


def gcs_answer(address: str, env: dict[str, str]) -> str:
    """What the head's GCS (gRPC, bound to every interface by Ray) says to a client with ``env``."""
    return subprocess.run([sys.executable, "-c", GCS_PROBE, address], env=env, capture_output=True, text=True,
                          timeout=120).stdout.strip()


def session_alive(sid: int) -> list[str]:
    """Processes of session ``sid`` that are not zombies, as ps lists them."""
    ps = subprocess.run(["ps", "-e", "-o", "sid=,stat=,pid=,comm="], capture_output=True, text=True, check=True)
    return [ln for ln in ps.stdout.splitlines() if ln.split()[0] == str(sid) and not ln.split()[1].startswith("Z")]


@pytest.mark.slow
def test_the_demo_head_is_private_under_an_empty_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = fresh_env(home)
    folder = tmp_path / "ray"
    start = subprocess.run([sys.executable, str(SCRIPT), "start", str(folder), "--num-cpus", "1"], env=env,
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert start.returncode == 0, start.stderr[-3000:]
    info = last_json(start.stdout)
    state = json.loads((folder / "head.json").read_text())
    try:
        token_file = Path(info["token_path"])
        assert token_file.parent == folder and (token_file.stat().st_mode & 0o777) == 0o600
        token = token_file.read_text().strip()
        assert info["dashboard"].startswith("http://127.0.0.1:")
        assert not state["temp_dir"].startswith("/tmp/ray")
        # every port the head was given is its own (Ray refuses a node whose components share one)
        args = Path(f"/proc/{state['pid']}/cmdline").read_bytes().decode().split("\0")
        ports = [a.split("=", 1)[1] for a in args if a.startswith("--") and a.split("=", 1)[0].endswith("port")]
        assert len(ports) == 7 and len(set(ports)) == 7, ports

        # a second start for the same folder is refused while the head runs
        again = subprocess.run([sys.executable, str(SCRIPT), "start", str(folder)], env=env, capture_output=True,
                               text=True, timeout=120)
        assert again.returncode == 2 and again.stderr.strip().splitlines()[-1].startswith("error: a Ray head started for")

        # the dashboard (job submission) and the GCS refuse clients without the token
        url = f"{info['dashboard']}/api/version"
        assert http_status(url, token) == 200
        assert http_status(url, None) == 401
        assert http_status(url, "0" * 64) in (401, 403)
        assert gcs_answer(info["gcs_address"], env).startswith("REFUSED AuthenticationError")
        assert gcs_answer(info["gcs_address"], {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}
                          ).startswith("REFUSED AuthenticationError")
        client = source(Path(info["env"]), env)
        assert client["RAY_AUTH_TOKEN_PATH"] == str(token_file)
        assert gcs_answer(info["gcs_address"], client) == "ACCEPTED"
        nojob = subprocess.run(["ray", "job", "list"], env=env | {"RAY_API_SERVER_ADDRESS": info["dashboard"]},
                               capture_output=True, text=True, timeout=120)
        assert nojob.returncode != 0 and "Unauthorized" in nojob.stdout + nojob.stderr

        # a job submitted with the exports joins the head from its driver with the same token
        job = subprocess.run(["ray", "job", "submit", "--", "python", "-c",
                              "import ray; ray.init(); print('CPUS', ray.cluster_resources()['CPU'])"],
                             env=client, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert job.returncode == 0 and "CPUS 1.0" in job.stdout, job.stdout[-3000:] + job.stderr[-3000:]
    finally:
        t = time.monotonic()
        stop = subprocess.run([sys.executable, str(SCRIPT), "stop", str(folder)], env=env, capture_output=True,
                              text=True, timeout=120)
        stop_s = time.monotonic() - t
    assert stop.returncode == 0 and last_json(stop.stdout)["stopped"] is True, stop.stderr
    assert stop_s < 60
    assert session_alive(state["pid"]) == []
    assert not Path(state["temp_dir"]).exists() and not (folder / "head.json").exists()
    assert (folder / "logs").is_dir()
    assert not (home / ".ray").exists(), sorted(p.name for p in home.rglob("*"))


def test_a_head_that_cannot_start_is_one_error_line_at_once(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    folder = tmp_path / "ray"
    t = time.monotonic()
    p = subprocess.run([sys.executable, str(SCRIPT), "start", str(folder), "--", "--object-store-memory=1000"],
                       env=fresh_env(home), capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert p.returncode == 2 and len(errors) == 1 and "Traceback" not in p.stderr, p.stderr
    assert errors[0].startswith("error: the Ray head did not start: ValueError: Attempting to cap object store memory")
    assert str(folder / "ray-head.log") in errors[0]
    assert took < 60  # `ray start` exits within seconds; nothing waits for a head that is gone
    assert not (folder / "head.json").exists() and not (home / ".ray").exists()


def test_free_ports_are_distinct_even_when_many_are_asked_for():
    # picked one at a time (bind, close) 300 ports repeat one in most tries; held together they cannot
    ports = free_ports(300)
    assert len(set(ports)) == 300 and all(1024 < p < 65536 for p in ports)


def test_free_ports_are_free_on_every_address_not_only_on_loopback():
    # Ray's agents listen on the node's address; a port another head's agent holds there must never
    # be picked for a new head (its raylet would reach the other agent: 403). 127.0.0.2 stands in
    # for the node's address (any 127/8 address is local on Linux): bound there, a port is still
    # free on 127.0.0.1, which is all the old pick checked
    held = []
    try:
        for _ in range(1500):  # 5 % of the usual ephemeral range
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.listen()
            held.append(s)
        taken = {s.getsockname()[1] for s in held}
        picked = [p for _ in range(200) for p in free_ports(7)]
        assert not taken & set(picked), f"{len(taken & set(picked))} picked ports are listened on at 127.0.0.2"
    finally:
        for s in held:
            s.close()


def test_failure_cause_reads_the_last_exception_of_the_log():
    gcs = ("2026-11-29 15:47:41,900\tINFO usage_lib.py:448 -- Usage stats collection is disabled.\n"
           "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
           "RuntimeError: Failed to start GCS.  Last 1 lines of error files:\n"
           "[2026-11-29 15:47:41,949 C 29202 29202] (gcs_server) grpc_server.cc:134:  Check failed: server_ "
           "Failed to start the grpc server. The specified port is 47111.\n\n")
    assert failure_cause(gcs).startswith("RuntimeError: Failed to start GCS. Last 1 lines of error files: [")
    assert "The specified port is 47111." in failure_cause(gcs)
    auth = ("Traceback (most recent call last):\n  File \"s.py\", line 2\n"
            "\x1b[31mray.exceptions.AuthenticationError: Token authentication is enabled but no token was found\x1b[0m\n")
    assert failure_cause(auth) == ("ray.exceptions.AuthenticationError: Token authentication is enabled but no "
                                   "token was found")
    assert failure_cause("Usage: ray start [OPTIONS]\nError: No such option: --bogus\n") == \
        "Error: No such option: --bogus"
    assert failure_cause("just a last line\n") == "just a last line"
    assert failure_cause("") == "ray start exited without a message"
