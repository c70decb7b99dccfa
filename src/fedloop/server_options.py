"""The deployment's settings ([server] of the config): read by the config and build layers and by the server in
net/, so they live below both."""

from __future__ import annotations

from dataclasses import dataclass

from . import checks
from .errors import ConfigError
from .loop import RoundPolicy


def host_port(address: str, what: str) -> tuple[str, int]:
    """(host, port) of "HOST:PORT" ("[::1]:PORT" for IPv6); a ConfigError naming `what` (e.g. --address) when the
    host or port is missing or the port is not 0-65535. A missing port is never filled in: gRPC would take 443."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535 or (host.count(":") and not host.startswith("[")):
        raise ConfigError(f"{what} {address!r}: expected HOST:PORT with a port number (0 picks a free port when "
                          f"listening)")
    return host, int(port)


@dataclass(frozen=True)
class ServerOptions(RoundPolicy):
    """The deployment's settings. The round policy's min_updates and retries apply as in every mode."""

    address: str = "127.0.0.1:50051"
    min_clients: int = 2
    """Clients to wait for before round 1, for at most `join_timeout` seconds."""
    join_timeout: float = 600.0
    round_deadline: float | None = 120.0
    liveness_timeout: float = 60.0
    """Seconds without a call after which a client is not selected, until it calls again."""
    max_missed: int = 3
    """Tasks in a row a client may leave unanswered before it is not selected, until it joins again."""
    max_examples: int = 1_000_000
    """The largest sample count a client may claim (its weight in a sample-weighted mean); fixed at its first join."""
    max_update_norm: float | None = None
    """Reject an update whose L2 norm exceeds this."""
    spool_bytes: int | None = None
    """Disk the server's spool of uploads may use; unset: as much as the open tasks' uploads may take (one upload of
    at most the upload size limit per open task), while the disk keeps SPOOL_MARGIN bytes free."""
    stream_idle_timeout: float = 10.0
    """Seconds a download or upload may pause before it is cut."""
    min_transfer_rate: float = 64 * 1024
    """Bytes per second a download or upload must average once stream_idle_timeout seconds have passed."""
    max_connections: int = 4096
    """Connections the server holds at once; more are refused until some close (each client holds one)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            host_port(self.address, "address")
        except ConfigError as exc:
            checks.fail(self, "address", exc.args[0].split(": ", 1)[1])
        checks.at_least(self, "min_clients", 1)
        checks.positive(self, "join_timeout", "liveness_timeout", "stream_idle_timeout", "min_transfer_rate")
        checks.at_least(self, "min_updates", 1)
        checks.at_least(self, "max_missed", 1)
        checks.at_least(self, "max_examples", 1)
        checks.at_least(self, "spool_bytes", 1, optional=True)
        checks.at_least(self, "max_connections", 1)
        if self.max_update_norm is not None:
            checks.positive(self, "max_update_norm")
