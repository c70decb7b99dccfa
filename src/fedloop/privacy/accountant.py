"""The privacy accountant: Google's dp-accounting (RDP or PLD), composed from the mechanism each released round
actually ran. fedloop only describes releases as dp-accounting events; every bound is dp-accounting's.

A release is a Gaussian sum query: noise of standard deviation z * C added to a sum of contributions each clipped
to L2 norm C, over a sample of the population:
  poisson  each member included independently with probability q (add/remove-one adjacency: sensitivity C, so the
           event is PoissonSampled(q, Gaussian(z)));
  fixed    k members drawn uniformly without replacement from N (replace-one adjacency, Wang et al. 2019: replacing
           one member moves the sum by up to 2C, so the event is SampledWithoutReplacement(N, k, Gaussian(z / 2)));
  none     no sampling (replace-one: Gaussian(z / 2)), as in local DP, where any two inputs are neighbours (the
           multiplier z / 2 is relative to the sensitivity 2C, so dp-accounting sees a plain Gaussian event).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import dp_accounting
import torch
from dp_accounting import pld, rdp

from ..errors import ConfigError, PrivacyBudgetExhausted

logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting warns per RDP order it leaves out of a bound

SamplingKind = Literal["poisson", "fixed", "none"]
AccountantKind = Literal["rdp", "pld"]
_CODES: dict[str, int] = {"poisson": 0, "fixed": 1, "none": 2}


@dataclass(frozen=True)
class Release:
    """One kind of release: noise multiplier z over a sample (`rate` q for poisson; `sample` k of `population` N
    for fixed), composed `steps` times per round (DP-SGD's local steps; 1 otherwise)."""

    noise_multiplier: float
    sampling: SamplingKind = "none"
    rate: float = 1.0
    population: int = 1
    sample: int = 1
    steps: int = 1

    def event(self) -> dp_accounting.DpEvent:
        z = self.noise_multiplier
        if self.sampling == "poisson":
            one: dp_accounting.DpEvent = dp_accounting.PoissonSampledDpEvent(
                self.rate, dp_accounting.GaussianDpEvent(z))
        elif self.sampling == "fixed" and self.sample < self.population:
            one = dp_accounting.SampledWithoutReplacementDpEvent(self.population, self.sample,
                                                                  dp_accounting.GaussianDpEvent(z / 2))
        else:
            one = dp_accounting.GaussianDpEvent(z / 2)
        return one if self.steps == 1 else dp_accounting.SelfComposedDpEvent(one, self.steps)

    @property
    def relation(self) -> dp_accounting.NeighboringRelation:
        """Replace-one only where dp-accounting's event needs it (sampling without replacement); elsewhere the
        Gaussian's multiplier is already relative to the replace-one sensitivity 2C, and dp-accounting's PLD would
        double a replace-one Gaussian's sensitivity again."""
        rel = dp_accounting.NeighboringRelation
        return rel.REPLACE_ONE if self.sampling == "fixed" and self.sample < self.population else \
            rel.ADD_OR_REMOVE_ONE

    def row(self) -> list[float]:
        return [float(_CODES[self.sampling]), self.noise_multiplier, self.rate, float(self.population),
                float(self.sample), float(self.steps)]

    @staticmethod
    def from_row(row: Sequence[float]) -> Release:
        kind = next(k for k, v in _CODES.items() if v == int(row[0]))
        return Release(float(row[1]), kind, float(row[2]), int(row[3]), int(row[4]), int(row[5]))  # type: ignore[arg-type]


History = list[tuple[Release, int]]
"""Releases in the order they happened, run-length encoded: (release, how many times in a row)."""


def append(history: History, release: Release, count: int = 1) -> History:
    """`history` with `release` composed `count` more times."""
    if history and history[-1][0] == release:
        return [*history[:-1], (release, history[-1][1] + count)]
    return [*history, (release, count)]


def history_to_tensor(history: History) -> torch.Tensor:
    """The history as a float64 tensor (one row per run: the release's fields, then its count), for checkpoints."""
    return torch.tensor([[*r.row(), float(c)] for r, c in history], dtype=torch.float64).reshape(-1, 7)


def history_from_tensor(t: torch.Tensor | None) -> History:
    if t is None:
        return []
    return [(Release.from_row(row[:6]), int(row[6])) for row in t.tolist()]


@functools.cache
def _rdp_of(release: Release) -> tuple[float, ...]:
    """The RDP curve (at dp-accounting's default orders) of one release, from dp-accounting."""
    acc = rdp.RdpAccountant(neighboring_relation=release.relation)
    acc.compose(release.event())
    return tuple(float(v) for v in acc.rdp)


def epsilon(history: History, delta: float, kind: AccountantKind = "rdp") -> float:
    """The epsilon at `delta` of every release in `history` composed (0 when there is none)."""
    if not history:
        return 0.0
    if kind == "pld":
        return _pld_epsilon(tuple(history), delta)
    orders = rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS
    total = [0.0] * len(orders)
    for release, count in history:
        total = [t + count * r for t, r in zip(total, _rdp_of(release), strict=True)]
    eps, _ = rdp.rdp_privacy_accountant.compute_epsilon(orders, total, delta)
    return float(eps)


@functools.lru_cache(maxsize=64)
def _pld_epsilon(history: tuple[tuple[Release, int], ...], delta: float) -> float:
    relations = {r.relation for r, _ in history}
    acc = pld.PLDAccountant(neighboring_relation=relations.pop())
    acc.compose(dp_accounting.ComposedDpEvent([dp_accounting.SelfComposedDpEvent(r.event(), c)
                                               for r, c in history]))
    return float(acc.get_epsilon(delta))


def within_budget(eps: float, max_epsilon: float | None, delta: float, round_: int, whose: str = "") -> None:
    """Refuse to release round `round_` when it brings epsilon (`whose`: "a client's " for per-client accounting)
    above max_epsilon."""
    if max_epsilon is not None and eps > max_epsilon:
        raise PrivacyBudgetExhausted(f"round {round_} would bring {whose}epsilon to {eps:.4g} > privacy.max_epsilon "
                                     f"= {max_epsilon:g} (delta {delta:g}); nothing of it is released")


def calibrate(release: Release, rounds: int, delta: float, target: float,
              kind: AccountantKind = "rdp") -> float:
    """The smallest noise multiplier z for which `rounds` releases like `release` (its z replaced) stay within
    epsilon `target` at `delta`; a ConfigError naming the target when no z up to 1,000 reaches it."""
    def events(z: float) -> dp_accounting.DpEvent:
        return dp_accounting.SelfComposedDpEvent(replace(release, noise_multiplier=z).event(), rounds)

    def fresh() -> dp_accounting.PrivacyAccountant:
        if kind == "pld":
            return pld.PLDAccountant(neighboring_relation=release.relation)
        return rdp.RdpAccountant(neighboring_relation=release.relation)

    top = 1000.0
    worst = fresh().compose(events(top)).get_epsilon(delta)
    if worst > target:
        raise ConfigError(f"privacy.target_epsilon = {target:g} cannot be reached in {rounds} rounds at delta "
                          f"{delta:g}: even noise multiplier {top:g} gives epsilon {worst:.3g}")
    z = dp_accounting.calibrate_dp_mechanism(fresh, events, target, delta,
                                             dp_accounting.ExplicitBracketInterval(1e-3, top), tol=1e-4)
    return float(z)


def finite(value: float) -> float | None:
    """epsilon as a JSON-safe number (None when unbounded)."""
    return value if math.isfinite(value) else None
