"""Which Ray cluster a command joins, decided without waiting: ``ray.init`` keeps retrying a
dead address for minutes, so every address is probed first (one TCP connect)."""

from __future__ import annotations

import logging
import os
import socket

from scalemm.errors import ClusterError, ConfigError

log = logging.getLogger(__name__)


def _host_port(address: str) -> tuple[str, int]:
    hostport = address.split("://", 1)[-1].split("/", 1)[0]
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"{address!r} is not a Ray address of the form host:port")
    return host.strip("[]"), int(port)


def answers(address: str, timeout: float = 3.0) -> bool:
    """Whether something listens at ``address`` (host:port, with or without a scheme)."""
    try:
        host, port = _host_port(address)
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except (OSError, ConfigError):
        return False


def check_ray_address(address: str | None, flag: str = "--address", timeout: float = 5.0) -> None:
    """Fail fast when an explicit Ray address does not answer. 'auto', 'local' and None are left to Ray."""
    if not address or address in ("auto", "local"):
        return
    try:
        host, port = _host_port(address)
    except ConfigError:
        raise ConfigError(f"{flag} {address!r} is not a Ray address of the form host:port") from None
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise ClusterError(f"no Ray cluster answers at {flag} {address} ({e.strerror or e}); start one "
                           f"with `ray start --head`, or leave out {flag} to use a local Ray") from None


def resolve_ray_address(address: str | None) -> str | None:
    """The address to give ray.init. Without one, Ray joins the cluster named by $RAY_ADDRESS,
    else the one last started with ``ray start`` on this machine (its address is kept in
    /tmp/ray/ray_current_cluster), and waits for ever when that one is gone (a head that was
    killed leaves the file behind). A dead $RAY_ADDRESS is an error; a dead last cluster is
    skipped for a private local Ray ("local")."""
    if address is not None:
        return address
    env = os.environ.get("RAY_ADDRESS", "")
    if env:
        if ":" in env and not env.startswith(("ray://", "http://", "https://")) and not answers(env):
            raise ClusterError(f"no Ray cluster answers at $RAY_ADDRESS={env}; start it, or unset RAY_ADDRESS "
                               f"to use a local Ray")
        return None
    try:
        from ray._private.utils import get_ray_address_file, read_ray_address
        last, where = read_ray_address(), get_ray_address_file(None)
    except Exception:  # a Ray without these helpers: leave it to Ray
        return None
    if last and not answers(last):
        log.warning("the Ray cluster last started on this machine (%s, named in %s) does not answer; "
                    "starting a local Ray instead", last, where)
        return "local"
    return None
