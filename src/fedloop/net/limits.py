"""What the server remembers of callers that misbehave, in bounded memory: strikes that earn a penalty (by client
id, or by peer host for callers without a valid credential), and the audit log of refusals, rate-limited per
peer host so that no caller, credentialed or not, can grow the server's log faster than a few lines a minute."""

from __future__ import annotations

import collections
import logging
import time
from typing import Generic, TypeVar

log = logging.getLogger("fedloop.net.server")

STRIKES = 10
"""Refusals a caller may cause within STRIKE_WINDOW seconds; one more and it is penalized for PENALTY seconds. An
honest client is never refused this often."""
STRIKE_WINDOW = 60.0
PENALTY = 30.0

AUDIT_BURST = 5
"""Refusal lines logged in full per caller (peer host and client id) in each AUDIT_INTERVAL; further refusals are
counted and summed up in one line when the interval is over. A penalty is always logged (at most once per
PENALTY seconds and caller)."""
AUDIT_INTERVAL = 60.0

TRACKED = 4096
"""Callers remembered at once (the least recently seen are forgotten first)."""

K = TypeVar("K")


def peer_host(peer: str) -> str:
    """The address of a gRPC peer ("ipv4:10.0.0.7:51234", "ipv6:[::1]:51234") without its port."""
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


class Strikes(Generic[K]):
    """Refusals per caller within a sliding window; more than STRIKES and the caller is penalized."""

    def __init__(self) -> None:
        self._times: collections.OrderedDict[K, collections.deque[float]] = collections.OrderedDict()
        self._until: collections.OrderedDict[K, float] = collections.OrderedDict()

    def hit(self, key: K) -> bool:
        """Count one refusal of `key`; True when it has just earned a penalty."""
        now = time.monotonic()
        recent = self._times.pop(key, None) or collections.deque()
        self._times[key] = recent
        recent.append(now)
        while recent and recent[0] < now - STRIKE_WINDOW:
            recent.popleft()
        _bound(self._times)
        if len(recent) > STRIKES:
            recent.clear()
            self.penalize(key)
            return True
        return False

    def penalize(self, key: K) -> None:
        self._until[key] = time.monotonic() + PENALTY
        _bound(self._until)

    def penalized(self, key: K) -> bool:
        return self._until.get(key, 0.0) > time.monotonic()


class AuditLog:
    """The server's refusal lines: AUDIT_BURST in full per caller and interval, then a count. A caller is a peer
    host with a client id, or a peer host alone for callers without a valid credential."""

    def __init__(self) -> None:
        self._callers: collections.OrderedDict[tuple[str, int | None], list[float]] = collections.OrderedDict()
        # (host, client id) -> [interval start, lines logged, refusals counted but not logged]

    def _entry(self, peer: str, client: int | None) -> list[float]:
        key = (peer_host(peer), client)
        now = time.monotonic()
        entry = self._callers.pop(key, None) or [now, 0, 0]
        self._callers[key] = entry
        if now - entry[0] >= AUDIT_INTERVAL:
            self._summary(key, entry)
            entry[:] = [now, 0, 0]
        while len(self._callers) > TRACKED:
            self._summary(*self._callers.popitem(last=False))
        return entry

    def line(self, peer: str, client: int | None, message: str, always: bool = False) -> None:
        entry = self._entry(peer, client)
        if always or entry[1] < AUDIT_BURST:
            entry[1] += 1
            log.warning("%s", message)
        else:
            entry[2] += 1

    def count(self, peer: str, client: int | None) -> None:
        """A refusal that is not worth a line of its own (a penalized caller's)."""
        self._entry(peer, client)[2] += 1

    def flush(self) -> None:
        """The pending counts, one line per caller (when the server stops)."""
        for key, entry in self._callers.items():
            self._summary(key, entry)
        self._callers.clear()

    @staticmethod
    def _summary(key: tuple[str, int | None], entry: list[float]) -> None:
        if entry[2]:
            host, client = key
            who = f"client {client} at {host}" if client is not None else f"unauthenticated callers at {host}"
            log.warning("%d more refused calls of %s in the last %.0f s (not logged one by one)", entry[2], who,
                        time.monotonic() - entry[0])


def _bound(table: collections.OrderedDict) -> None:
    while len(table) > TRACKED:
        table.popitem(last=False)
