"""Reaching Ray: the address forms sim.ray_address takes, checked when the config is read; a private local Ray when
none is given (never a cluster that happens to be recorded on the machine); a clear error within seconds when
nothing listens at the address; and the process's own SIGINT/SIGTERM handling kept, so a stop request ends a Ray
run as it ends a local one."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
from typing import Any

from ..errors import ConfigError

ADDRESS = re.compile(r"(?P<client>ray://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.\-]*):(?P<port>\d{1,5})")
FORMS = ("host:port (the address of a cluster node, as `ray start --head` prints it), ray://host:port (Ray Client, "
         "port 10001 by default) or auto (the cluster `ray start` recorded on this machine)")
PROBE_TIMEOUT = 10.0
"""Seconds to wait for a TCP connection to the cluster before saying nothing listens there."""


def check_address(address: str | None) -> None:
    """ConfigError unless `address` is None (a private local Ray), 'auto' or one of the host:port forms."""
    if address is None or address == "auto":
        return
    m = ADDRESS.fullmatch(address)
    if m is None or not 1 <= int(m["port"]) <= 65535:
        raise ConfigError(f"sim.ray_address = {address!r} is not a Ray address; use {FORMS}", key="ray_address",
                          value=address, rule=f"not a Ray address; use {FORMS}")


def _probe(address: str) -> None:
    m = ADDRESS.fullmatch(address)
    assert m is not None  # check_address ran
    host = m["host"].strip("[]")
    try:
        socket.create_connection((host, int(m["port"])), timeout=PROBE_TIMEOUT).close()
    except OSError as exc:
        raise ConfigError(f"sim.ray_address = {address!r}: no Ray cluster answers there ({exc.strerror or exc}); "
                          f"start one with `ray start --head`, or check the address") from None


def auth_hint(address: str | None) -> str:
    """What to check when actors die at start on a cluster: Ray turns token authentication on in this process when
    ~/.ray/auth_token exists, and a cluster started without it then drops every actor without saying why."""
    if address is None or os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return ""
    return ("; this process uses Ray token authentication (RAY_AUTH_MODE=token, or ~/.ray/auth_token exists): if the "
            "cluster was started without it, set RAY_AUTH_MODE=disabled here, or start the cluster with the same token")


def connect(address: str | None, num_cpus: int | None = None) -> Any:
    """The `ray` module, initialized: connected to the cluster at `address`, or a private local Ray of `num_cpus`
    CPUs (default: this machine's) when address is None. An already initialized Ray (e.g. a test's) is used as is."""
    try:
        import ray
    except ImportError:
        raise ConfigError("sim.engine = 'ray' needs Ray: pip install 'fedloop[ray]'") from None
    if ray.is_initialized():
        return ray
    check_address(address)
    if address not in (None, "auto"):
        _probe(address)
    main = threading.current_thread() is threading.main_thread()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        ray.init(address="local" if address is None else address, num_cpus=num_cpus if address is None else None,
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"sim.ray_address = {address!r}: cannot connect to Ray ({exc})") from None
    finally:
        for s, handler in handlers.items():  # ray.init sets its own SIGTERM handler, which exits without files
            if handler is not None:
                signal.signal(s, handler)
    return ray
