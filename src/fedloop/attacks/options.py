"""The [attack] section: which clients turn malicious and how (a test and benchmark tool: it makes a simulation,
or a client process started with --attack, behave as the attacks of the literature do)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .. import checks

Kind = Literal["none", "sign_flip", "gaussian", "scaled", "label_flip", "alie", "ipm", "backdoor", "nan", "zero"]
UPDATE_ATTACKS = ("sign_flip", "gaussian", "scaled", "alie", "ipm", "nan", "zero")
"""Attacks on what a malicious client uploads; label_flip and backdoor poison its training data instead."""


@dataclass(frozen=True)
class AttackOptions:
    """`fraction` of the clients (a fixed set drawn from `seed`) attack every round they are asked.

    sign_flip sends -scale x its update; gaussian sends N(0, stddev^2) noise; scaled sends its update times `scale`
    (default: the number of clients in the round, model replacement as in Bagdasaryan et al. 2020); label_flip
    trains on labels c -> C - 1 - c; alie (Baruch et al. 2019) sends the honest mean minus z x their standard
    deviation per coordinate (z from the round's n and f unless set); ipm (Xie et al. 2020) sends -epsilon x the
    honest mean; backdoor trains with a pixel-pattern trigger on `poison_fraction` of its rows relabelled
    `target` (optionally boosted by `scale`); nan and zero are benign faults. alie and ipm collude: they see the
    round's honest updates, as their papers assume.
    """

    kind: Kind = "none"
    fraction: float = 0.2
    scale: float | None = None
    stddev: float = 1.0
    z: float | None = None
    epsilon: float = 0.5
    target: int = 0
    poison_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        checks.one_of(self, "kind", Kind)
        checks.in_range(self, "fraction", 0.0, 1.0, high_open=True)
        for name in ("scale", "z"):
            if getattr(self, name) is not None:
                checks.positive(self, name)
        checks.positive(self, "stddev", "epsilon")
        checks.at_least(self, "target", 0)
        checks.in_range(self, "poison_fraction", 0.0, 1.0, low_open=True, high_open=False)

    def malicious(self, client_ids: Sequence[int]) -> frozenset[int]:
        """The attacking clients: round(fraction x population) of them, fixed for the run by `seed`."""
        if self.kind == "none":
            return frozenset()
        ordered = sorted(client_ids)
        k = round(self.fraction * len(ordered))
        rng = np.random.default_rng([self.seed, 0xA77AC])
        return frozenset(ordered[i] for i in rng.choice(len(ordered), size=k, replace=False).tolist())
