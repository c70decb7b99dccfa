"""A deployed client's persistent state (e.g. SCAFFOLD's control variate), kept with the round it came from.

The server may run a round again: a failed round is retried, and a server resumed from its checkpoint redoes
the round it lost. A client that already answered such a round must start it again from the state it started
with, not from the state its lost reply produced; so the store keeps both, in one atomically written record.
"""

from __future__ import annotations

import logging

import torch

from ..sim.states import StateStore

log = logging.getLogger(__name__)


class RoundStates:
    """The state a client starts each fit round with, over a StateStore (its own disk with --state-dir)."""

    def __init__(self, store: StateStore):
        self.store = store

    def start(self, client_id: int, round_: int) -> dict[str, torch.Tensor]:
        record = self.store.get(client_id)
        if record is None:
            return {}
        last = int(record["round"])
        if round_ < last:
            log.warning("round %d is older than round %d, which this client's state comes from; the server "
                        "lost rounds, so the client continues from its newest state", round_, last)
        which = "before/" if round_ == last else "after/"
        return {k[len(which):]: v for k, v in record.items() if k.startswith(which)}

    def commit(self, client_id: int, round_: int, before: dict[str, torch.Tensor],
               after: dict[str, torch.Tensor]) -> None:
        record = {"round": torch.tensor(round_, dtype=torch.int64)}
        record.update({f"before/{k}": v for k, v in before.items()})
        record.update({f"after/{k}": v for k, v in after.items()})
        self.store.put(client_id, record)
