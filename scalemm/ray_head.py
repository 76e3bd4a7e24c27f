"""A private Ray head for one folder: its own token, its own ports, its own temp dir.

What the demo (``pipelines/demo.sh``), the README's own-corpus recipe
(``pipelines/ray_head.py start|stop DIR``), the tests' head (``tests/raycluster.py``) and the
head of the benchmarks' multi-node cluster (``bench/cluster.py``) run.

Why it is private, and how (Ray 2.60):

* **Token authentication.** A head started with ``RAY_AUTH_MODE=token`` refuses to start
  without a token, and one started with ``RAY_AUTH_MODE`` unset turns token auth on by itself
  when ``~/.ray/auth_token`` exists (``maybe_enable_token_auth_if_token_available`` in
  ``ray/_private/authentication/authentication_token_setup.py``): the same command behaves
  differently depending on what ran on the machine before. Ray reads the token from
  ``$RAY_AUTH_TOKEN``, else from the file ``$RAY_AUTH_TOKEN_PATH``, else from
  ``~/.ray/auth_token``. So the head gets a fresh random token in ``DIR/auth_token`` (mode 0600),
  ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` pointing at it, and ``RAY_AUTH_TOKEN``
  removed from its environment: the user's ``~/.ray`` is never read or written, and a client
  without this token is refused (HTTP 401 on the dashboard, ``Unauthenticated`` on the GCS).
  That matters because Ray binds the GCS, raylet and agent gRPC ports to every interface
  whatever the flags; the dashboard listens on 127.0.0.1 only.
* **Ports.** Every port a head opens by default at a fixed number (GCS 6379, dashboard 8265,
  client server 10001, the agents', metrics) is a free one picked here, so a head the user
  already runs on the machine does not clash.
* **Temp dir.** ``--temp-dir`` is a new folder under the system temp dir (kept short: Ray's
  unix sockets live under it and their paths are limited to 107 bytes), so the head's session
  and its ``ray_current_cluster`` file never land in ``/tmp/ray``, where a later ``ray.init()``
  without an address would join (or wait for) this head. When the head stops, its logs are
  moved to ``DIR/logs`` and the temp dir is removed.
* **Processes.** ``ray start --head --block`` runs as the leader of a new session; stopping
  sends SIGTERM to its process group, waits for every process of that session (Ray's workers
  run in their own process groups but stay in the session) and kills what is left after a
  10 s grace period (Ray's own graceful shutdown of the raylet and GCS takes about 30 s; the
  head holds nothing that must survive it). Nothing else is signalled, and ``ray stop``
  (which stops every Ray of the user) is never run.

A head that fails to start is one :class:`~scalemm.errors.ClusterError` naming the cause,
read from the head's log (``DIR/ray-head.log``) as soon as ``ray start`` exits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from scalemm.atomic import write_json_atomic, write_text_atomic
from scalemm.errors import ClusterError, UserError

log = logging.getLogger(__name__)

STATE = "head.json"
TOKEN = "auth_token"
HEAD_LOG = "ray-head.log"
ENV = "env.sh"
# variables of the caller that would point the head or its clients elsewhere
_DROP_ENV = ("RAY_AUTH_TOKEN", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_EXC_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*)?(?:Error|Exception|Exit)\b[^:\s]*:")
# every port a head opens at a fixed number by default, each given a free one here
_HEAD_PORT_FLAGS = ("--port", "--dashboard-port", "--ray-client-server-port", "--dashboard-agent-listen-port",
                    "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")
# heads started by this process, reaped when stopped (a child that is not waited for stays a zombie)
_children: dict[int, subprocess.Popen] = {}


@dataclass
class Head:
    """A running private head (also what ``DIR/head.json`` holds)."""

    dir: str
    pid: int
    gcs_address: str        # for ray.init(address=...)
    dashboard: str          # http://127.0.0.1:PORT, for `ray job submit --address`
    agent_port: int
    token_path: str
    temp_dir: str
    log: str

    def env(self) -> dict[str, str]:
        """What a client of this head needs in its environment (and nothing of ~/.ray)."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": self.token_path,
                "RAY_API_SERVER_ADDRESS": self.dashboard}

    def process_env(self) -> dict[str, str]:
        """The whole environment of a child process that is a client of this head (a driver, ``ray
        job submit``, a worker node): this process's, less any other cluster's address or token,
        plus :meth:`env`, usage stats off, unbuffered output, this Python's bin/ first on PATH."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        env.update(self.env(), RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        return env


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on every local address. All ``n`` are held bound until all are
    picked: ports picked one at a time (bind, read, close) can repeat, since the OS may hand the
    port just released to the next bind, and Ray refuses a node whose components share a port.

    Each is bound on the wildcard address, which no port is free on while anything listens on it
    at any address. Ray binds its agents to the node's address (the runtime-env agent listens on
    192.0.2.2:PORT, not on 127.0.0.1), so a port free on 127.0.0.1 alone could be another Ray's
    agent's: the new head's agent then failed to bind it and its raylet asked the other head's
    agent for the job's runtime env (``runtime_env setup failed ... 403 Invalid authentication
    token``, a CI failure of the two-jobs test)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in socks]


def free_port_flags(*flags: str) -> dict[str, int]:
    """A distinct free local port for each ``ray start`` port flag (``"--port"``, ...), in order."""
    return dict(zip(flags, free_ports(len(flags))))


def ray_executable() -> str:
    """The ``ray`` command of this Python (a virtualenv's bin/), else the one on PATH."""
    here = Path(sys.executable).parent / "ray"
    found = str(here) if here.exists() else shutil.which("ray")
    if not found:
        raise ClusterError(f"the `ray` command is not installed beside {sys.executable} nor on PATH; "
                           f"run `make setup` and use .venv/bin/python")
    return found


def failure_cause(log_text: str) -> str:
    """The reason a head did not start, from its log: the last exception line (with the lines
    that continue its message), else the last line; one line, ANSI colours removed."""
    lines = [_ANSI.sub("", ln).rstrip() for ln in log_text.splitlines()]
    lines = [ln for ln in lines if ln.strip()]
    if not lines:
        return "ray start exited without a message"
    starts = [i for i, ln in enumerate(lines) if _EXC_LINE.match(ln)]
    if not starts:
        return lines[-1].strip()
    i = starts[-1]
    msg = [lines[i]]
    for ln in lines[i + 1:]:
        if ln.startswith("  File ") or ln.startswith("Traceback"):
            break
        msg.append(ln)
    text = " ".join(" ".join(msg).split())
    return text if len(text) <= 600 else text[:597] + "..."


def _read_state(folder: Path) -> Head | None:
    try:
        return Head(**json.loads((folder / STATE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _session_members(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``, from /proc."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[3]) == sid:
            out.append(int(d.name))
    return out


def _state_letter(pid: int) -> str | None:
    """The /proc state of ``pid`` (R, S, Z, ...), None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[0]


def _is_our_head(head: Head) -> bool:
    """Whether ``head.pid`` is still that head's ``ray start`` (a pid can be reused)."""
    try:
        cmd = Path(f"/proc/{head.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"start" in cmd and f"--temp-dir={head.temp_dir}".encode() in cmd


def write_token(path: str | Path) -> Path:
    """A fresh random token in ``path``, readable by its owner only (0600 from the start)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def private_token(folder: str | Path) -> Iterator[Path]:
    """Within the block, every Ray this process starts with ``ray.init()`` (and every process
    it starts) uses a fresh token in ``folder/auth_token``. Without it, a new local cluster
    turns token auth on and, finding no token, writes one to ~/.ray/auth_token, after which
    the user's next ``ray start`` turns token auth on by itself. The environment is restored
    after the block."""
    keys = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")
    saved = {k: os.environ.get(k) for k in keys}
    token = write_token(Path(folder) / TOKEN)
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    _refresh_ray_auth()
    try:
        yield token
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _refresh_ray_auth()


def _refresh_ray_auth() -> None:
    """Make an already imported Ray see the auth settings of the environment: its C++ config
    keeps ``RAY_AUTH_MODE`` as it was at import, and its token loader caches the token (what
    Ray's own ``_enable_token_auth`` and ``ensure_token_if_auth_enabled`` do after changing
    them). Without this, a driver that imported Ray earlier starts a GCS that wants the token
    and then connects to it without one (``InvalidAuthToken``)."""
    if "ray._raylet" not in sys.modules:
        return  # Ray reads them when it is imported
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 never goes through a proxy


def _answers(head: Head, token: str) -> bool:
    """The dashboard answers with this token, and the job agent listens (a job submitted
    before the agent is up fails with 'No available agent')."""
    req = urllib.request.Request(f"{head.dashboard}/api/version", headers={"Authorization": f"Bearer {token}"})
    try:
        _NO_PROXY.open(req, timeout=2).read()
    except (urllib.error.URLError, OSError):
        return False
    try:
        socket.create_connection(("127.0.0.1", head.agent_port), timeout=2).close()
    except OSError:
        return False
    return True


def start_head(folder: str | Path, num_cpus: int | None = None, extra_args: list[str] | tuple[str, ...] = (),
               timeout: float = 180.0) -> Head:
    """Start a private head for ``folder`` (made if missing) and wait until it takes jobs.

    Writes ``folder/auth_token``, ``folder/head.json``, ``folder/env.sh`` (the exports a shell
    needs to use the head) and the head's output to ``folder/ray-head.log``. ``extra_args`` go
    to ``ray start`` as they are. Raises :class:`ClusterError` with the cause when the head
    exits during start-up or does not answer within ``timeout`` s (then it is stopped)."""
    folder = Path(folder).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    _refuse_a_running_head(folder)
    ray = ray_executable()
    token_path = write_token(folder / TOKEN)
    temp_dir = tempfile.mkdtemp(prefix="scalemm-ray-")
    ports = free_port_flags(*_HEAD_PORT_FLAGS)
    gcs, dash, agent = ports["--port"], ports["--dashboard-port"], ports["--dashboard-agent-listen-port"]
    log_path = folder / HEAD_LOG
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(_head_command(ray, temp_dir, ports, num_cpus, extra_args), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_head_env(ray, token_path),
                                start_new_session=True)
    _children[proc.pid] = proc
    head = Head(dir=str(folder), pid=proc.pid, gcs_address=f"127.0.0.1:{gcs}", dashboard=f"http://127.0.0.1:{dash}",
                agent_port=agent, token_path=str(token_path), temp_dir=temp_dir, log=str(log_path))
    write_json_atomic(folder / STATE, asdict(head))
    _wait_until_it_answers(head, proc, token_path.read_text(), timeout)
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in head.env().items())
    write_text_atomic(folder / ENV, f"# source this file to use the Ray head of {folder}\nunset RAY_AUTH_TOKEN\n{exports}")
    return head


def _refuse_a_running_head(folder: Path) -> None:
    old = _read_state(folder)
    if old is not None and _is_our_head(old) and _state_letter(old.pid) not in (None, "Z"):
        raise UserError(f"a Ray head started for {folder} is still running (pid {old.pid}); stop it first with "
                        f"`python pipelines/ray_head.py stop {folder}`")


def _head_command(ray: str, temp_dir: str, ports: dict[str, int], num_cpus: int | None,
                  extra_args: list[str] | tuple[str, ...]) -> list[str]:
    """``ray start --head`` on the given free local ports (``{flag: port}``), in the foreground
    (``--block``)."""
    cmd = [ray, "start", "--head", "--block", f"--temp-dir={temp_dir}", *(f"{f}={p}" for f, p in ports.items()),
           "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--disable-usage-stats"]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    return cmd + list(extra_args)


def _head_env(ray: str, token_path: Path) -> dict[str, str]:
    """This process's environment without another cluster's settings, with the head's token."""
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path), RAY_USAGE_STATS_ENABLED="0",
               PYTHONUNBUFFERED="1", PATH=str(Path(ray).parent) + os.pathsep + env.get("PATH", ""))
    return env


def _wait_until_it_answers(head: Head, proc: subprocess.Popen, token: str, timeout: float) -> None:
    """Poll the head until it answers; stop it and raise :class:`ClusterError` when it exits or
    ``timeout`` s pass (and on an interrupt)."""
    log_path = Path(head.log)
    t0 = time.monotonic()
    said = 0.0
    try:
        while not _answers(head, token):
            if proc.poll() is not None:
                _terminate(head, grace=10.0)
                _cleanup(head)
                cause = failure_cause(log_path.read_text(errors="replace"))
                raise ClusterError(f"the Ray head did not start: {cause} (log: {log_path})")
            waited = time.monotonic() - t0
            if waited > timeout:
                _terminate(head)
                _cleanup(head)
                raise ClusterError(f"the Ray head did not answer within {timeout:.0f} s; its log is {log_path}")
            if waited - said >= 15:
                said = waited
                log.info("waiting for the Ray head to answer (%.0f s so far; log %s)", waited, log_path)
            time.sleep(0.5)
    except KeyboardInterrupt:
        _terminate(head)
        _cleanup(head)
        raise


def kill_session(sid: int) -> None:
    """SIGKILL every live process of session ``sid`` (a ``ray start`` started with
    ``start_new_session=True`` and every process it started, Ray's workers included)."""
    for pid in _session_members(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def terminate_session(sid: int, grace: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM to the process group of the session leader ``sid`` (``ray start`` stops what it
    started), then, after ``grace`` s, SIGKILL to every process of its session still alive.
    ``proc``: the leader's Popen, reaped as soon as it exits."""
    try:
        os.killpg(sid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while _session_members(sid) and time.monotonic() < deadline:
        if proc is not None:
            proc.poll()  # reap the leader as soon as it exits
        time.sleep(0.25)
    kill_session(sid)


def _terminate(head: Head, grace: float = 10.0) -> None:
    """Stop the head's session (see :func:`terminate_session`)."""
    terminate_session(head.pid, grace, _children.get(head.pid))


def _cleanup(head: Head) -> None:
    """Keep the head's logs in DIR/logs, remove its temp dir and state, reap it if ours."""
    proc = _children.pop(head.pid, None)
    if proc is not None:
        proc.wait()
    logs = Path(head.temp_dir) / "session_latest" / "logs"
    if logs.is_dir():
        dest = Path(head.dir) / "logs"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(logs, dest, symlinks=True, ignore_dangling_symlinks=True)
    shutil.rmtree(head.temp_dir, ignore_errors=True)
    (Path(head.dir) / STATE).unlink(missing_ok=True)
    (Path(head.dir) / ENV).unlink(missing_ok=True)


def stop_head(folder: str | Path, grace: float = 10.0) -> bool:
    """Stop the head started for ``folder`` (see :func:`_terminate`); its logs stay in
    ``folder/logs``. False when no head of this folder was running."""
    folder = Path(folder).absolute()
    head = _read_state(folder)
    if head is None:
        return False
    state = _state_letter(head.pid)
    if state is not None and state != "Z" and not _is_our_head(head):
        # the pid belongs to another program now: the head is long gone (a pid is not reused
        # while processes of its session live, so there is nothing of ours to stop)
        _cleanup(head)
        return False
    running = bool(_session_members(head.pid))
    _terminate(head, grace)
    _cleanup(head)
    return running
