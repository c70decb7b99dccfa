"""The [secagg] section: secure aggregation for a run, and the neighbour graph's degree and threshold it implies.

Defaults follow Bell et al. (CCS 2020): a neighbour graph of logarithmic degree, k = the smallest even number at
least 3 log2 n (the complete graph when that is n - 1 or more, as for rounds of up to about 20 clients), and a
threshold of a majority of a client's neighbours, t = k // 2 + 1. The threshold is what the guarantees rest on: a
client's input stays hidden unless t of its neighbours collude with the server (the server then holds both of its
secrets), and a round survives as long as every survivor keeps t neighbours (k - t of a client's neighbours may
drop)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import checks


@dataclass(frozen=True)
class SecAggOptions:
    """Secure aggregation (SecAgg+): the server learns the sum of a round's updates and nothing else of any one."""

    enabled: bool = False
    neighbours: int | None = None
    """The neighbour graph's degree k (even; None: from the round's size, see the module docstring)."""
    threshold: int | None = None
    """Shares needed to rebuild a client's secret (None: k // 2 + 1)."""
    bits: int = 32
    """The ring Z_{2^bits} that updates are summed in: 4 bytes per coordinate up to 32 bits, 8 above."""
    clip_range: float = 1.0
    """Each update coordinate is clipped to [-clip_range, clip_range] before it is quantised."""

    def __post_init__(self) -> None:
        checks.one_of(self, "enabled", (True, False))
        checks.at_least(self, "bits", 8)
        if self.bits > 62:
            checks.fail(self, "bits", "must be at most 62 (ring residues travel as 64-bit words)")
        checks.positive(self, "clip_range")
        if self.neighbours is not None:
            checks.at_least(self, "neighbours", 2)
            if self.neighbours % 2:
                checks.fail(self, "neighbours", "the neighbour graph (a Harary graph) needs an even degree")
        if self.threshold is not None:
            checks.at_least(self, "threshold", 2)
            if self.neighbours is not None and self.threshold > self.neighbours:
                checks.fail(self, "threshold", f"is above neighbours = {self.neighbours}: a client's secret "
                                               "could never be rebuilt")

    def degree(self, n: int) -> int:
        """The neighbour graph's degree in a round of n clients (n - 1: the complete graph)."""
        k = self.neighbours if self.neighbours is not None else 2 * math.ceil(1.5 * math.log2(max(n, 2)))
        return min(k, n - 1)

    def threshold_for(self, n: int) -> int:
        """The shares needed in a round of n clients."""
        return self.threshold if self.threshold is not None else self.degree(n) // 2 + 1

    def unfit(self, n: int) -> str | None:
        """Why a round of n clients cannot run SecAgg+ with these options, or None."""
        degree, threshold = self.degree(n), self.threshold_for(n)
        if n < 3 or threshold > degree:
            return (f"secure aggregation needs rounds of at least 3 clients, each with at least secagg.threshold = "
                    f"{threshold} neighbours (a round of {n} gives {max(degree, 0)})")
        return None
