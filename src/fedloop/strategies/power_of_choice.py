"""Power-of-choice client selection (Cho, Wang & Joshi 2022, "Towards Understanding Biased Client Selection in
Federated Learning"): a two-stage round. First the sampler draws `candidates` clients (d), and each evaluates the
global model on its own training data (the "probe" exchange); then the clients_per_round (m) candidates with the
highest local loss train, as in FedAvg. Selecting the clients the model serves worst speeds up convergence on
heterogeneous data. The paper draws candidates in proportion to their data: [strategy] sampling = "samples".

Trust: the losses are the clients' own claims, so a client that overstates its loss is selected more often.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from .. import checks
from ..sampling import round_rng
from ..types import ClientInfo, Evaluation, Reply, ServerState, Task
from .base import Strategy

PROBE = "probe"


@dataclass(frozen=True)
class PowerOfChoice(Strategy):
    name: ClassVar[str] = "power_of_choice"
    requires: ClassVar[frozenset[str]] = frozenset({"stages"})
    candidates: int = 20

    def __post_init__(self) -> None:
        super().__post_init__()
        checks.at_least(self, "candidates", 1)

    def configure(self, state: ServerState, clients: Sequence[ClientInfo]) -> list[Task]:
        chosen = self.sampler.select(clients, round_rng(state.seed, state.round + 1), self.candidates)
        return self.tasks(state, chosen, "evaluate", stage=PROBE, config={"split": "train"})

    def follow_up(self, state: ServerState, clients: Sequence[ClientInfo], tasks: Sequence[Task],
                  replies: Sequence[Reply]) -> list[Task]:
        if not tasks or tasks[0].broadcast.stage != PROBE:
            return []
        info = {c.client_id: c for c in clients}
        loss = {r.client_id: float(r.metrics["loss"]) for r in replies
                if isinstance(r, Evaluation) and r.client_id in info and math.isfinite(r.metrics.get("loss", math.nan))}
        ranked = sorted(loss, key=lambda c: (-loss[c], c))[:self.sampler.num_selected(len(clients))]
        return self.tasks(state, [info[c] for c in sorted(ranked)])
