"""The deployment's settings ([server] of the config)."""

from __future__ import annotations

from dataclasses import dataclass

from .. import checks
from ..loop import RoundPolicy


@dataclass(frozen=True)
class ServerOptions(RoundPolicy):
    """Where the server listens, how many clients it waits for before round 1 (for at most `join_timeout` s), how
    long a round waits for replies, and after how many seconds without a call a client counts as gone
    (`liveness_timeout`: it is then no longer selected, until it calls again). The round policy's min_updates and
    retries apply as in every mode."""

    address: str = "127.0.0.1:50051"
    min_clients: int = 2
    join_timeout: float = 600.0
    round_deadline: float | None = 120.0
    liveness_timeout: float = 60.0

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.at_least(self, "min_clients", 1)
        checks.positive(self, "join_timeout", "liveness_timeout")
        checks.at_least(self, "min_updates", 1)
