"""Stop conditions: a run ends when the first of its conditions says so. `before` is asked before each round (a
condition that would be broken by the next round, such as a round limit or a privacy budget), `after` after each
completed round (on its record: a target metric, patience). Each returns the stop reason, or None."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .transforms import Transform, own_state
from .types import RoundRecord, ServerState

log = logging.getLogger(__name__)


class StopCondition(Protocol):
    def before(self, state: ServerState) -> str | None: ...

    def after(self, record: RoundRecord, state: ServerState) -> str | None: ...


def _accuracy(record: RoundRecord) -> float | None:
    return record.metrics.get("accuracy", record.metrics.get("fed_accuracy"))


def _loss(record: RoundRecord) -> float | None:
    return record.metrics.get("loss", record.metrics.get("fed_loss"))


@dataclass(frozen=True)
class MaxRounds:
    """Stop once `rounds` rounds are done."""

    rounds: int

    def before(self, state: ServerState) -> str | None:
        return "rounds" if state.round >= self.rounds else None

    def after(self, record: RoundRecord, state: ServerState) -> str | None:
        return None


@dataclass(frozen=True)
class TargetAccuracy:
    """Stop when an evaluation reaches `value` (test accuracy; federated accuracy without a central test set)."""

    value: float

    def before(self, state: ServerState) -> str | None:
        return None

    def after(self, record: RoundRecord, state: ServerState) -> str | None:
        acc = _accuracy(record)
        return "target_accuracy" if acc is not None and acc >= self.value else None


class Patience:
    """Stop when the evaluation loss has not improved for `evaluations` evaluations in a row."""

    def __init__(self, evaluations: int):
        self.evaluations = evaluations
        self.best = float("inf")
        self.stale = 0

    def before(self, state: ServerState) -> str | None:
        return None

    def after(self, record: RoundRecord, state: ServerState) -> str | None:
        loss = _loss(record)
        if loss is None:
            return None
        if loss < self.best:
            self.best, self.stale = loss, 0
        else:
            self.stale += 1
        return "patience" if self.stale >= self.evaluations else None


class Diverged:
    """Stop when the clients' training loss or an evaluation loss is NaN or infinite."""

    def before(self, state: ServerState) -> str | None:
        return None

    def after(self, record: RoundRecord, state: ServerState) -> str | None:
        losses = [record.train_loss, record.metrics.get("loss"), record.metrics.get("fed_loss")]
        if any(v is not None and not math.isfinite(v) for v in losses):
            log.error("the run diverged in round %d: a loss is NaN or infinite (try a smaller learning rate)",
                      record.round)
            return "diverged"
        return None


class PrivacyBudget:
    """Stop before a round that would spend more than a privacy transform's max_epsilon (the transforms also
    refuse to release such a round, should it differ from the last one)."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def before(self, state: ServerState) -> str | None:
        for i, transform in enumerate(self.transforms):
            if (why := transform.exhausted(own_state(state.transform_state, i))) is not None:
                log.warning("privacy budget: %s; the run stops after round %d", why, state.round)
                return "privacy_budget"
        return None

    def after(self, record: RoundRecord, state: ServerState) -> str | None:
        return None
