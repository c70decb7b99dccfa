"""Distributed DP under secure aggregation: the distributed discrete Gaussian (Kairouz, Liu and Steinke, ICML 2021).

Each client clips its update to L2 norm C, quantises it in secure aggregation's ring and adds discrete Gaussian noise
N_Z(0, sigma_c^2) per coordinate before masking (secagg/vector.py), with sigma_c = z C scale / sqrt(t + 1) for the
round's threshold t: any round that is not aborted has at least t + 1 survivors, so its sum carries at least the
noise of central DP at noise multiplier z. No party ever sees an un-noised sum, and the server sees only the sum.

The epsilon of a round is the paper's bound for the noise that reached the sum, from the m survivors: with
Delta = C scale + sqrt(d) (one client's largest contribution in ring units, rounding included),
s = Delta / (sigma_c sqrt(m)) and tau = 10 sum_{k=1}^{m-1} exp(-2 pi^2 sigma_c^2 k / (k + 1)), the sum is
RDP of order alpha with min(alpha s^2 / 2 + tau d, alpha / 2 (s + sqrt(d) tau)^2) (their Theorem 1 through the RDP
form of their Proposition 14, without its L1 term), under add/remove-one adjacency of a client. Rounds compose by
adding their RDP curves; dp-accounting converts the total to (epsilon, delta). No amplification by sampling is
claimed: every round counts for every client, whether it was asked or not, so the epsilon is an upper bound for
any client selection that does not look at the data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from dp_accounting import rdp

from .. import checks
from ..errors import AggregationError
from ..transforms import RoundInfo, Transform, clip_to_norm
from ..types import Params, Task
from . import accountant
from .support import check_accounting, unsupported

if TYPE_CHECKING:
    from ..strategies.base import Strategy

ORDERS = tuple(float(a) for a in rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS)


def inflation(sigma: float, clients: int) -> float:
    """tau of Kairouz et al.'s Theorem 1: how far a sum of `clients` discrete Gaussians of scale sigma is from one
    discrete Gaussian (negligible once sigma is above a few units)."""
    return 10 * sum(math.exp(-2 * math.pi ** 2 * sigma ** 2 * k / (k + 1)) for k in range(1, clients))


def round_rdp(sensitivity: float, sigma: float, clients: int, dimension: int,
              orders: Sequence[float] = ORDERS) -> np.ndarray:
    """The RDP curve of one round's sum of `clients` clients' discrete Gaussian noise of scale sigma each, for a
    contribution of L2 norm at most `sensitivity` (both in the same integer units) in `dimension` coordinates."""
    s = sensitivity / (sigma * math.sqrt(clients))
    tau = inflation(sigma, clients)
    a = np.asarray(orders, dtype=np.float64)
    return np.minimum(a * s * s / 2 + tau * dimension, a / 2 * (s + math.sqrt(dimension) * tau) ** 2)


def epsilon_of(rdp_curve: np.ndarray, delta: float) -> float:
    """(epsilon at delta) of an RDP curve over ORDERS, by dp-accounting's conversion."""
    if not rdp_curve.any():
        return 0.0
    eps, _ = rdp.rdp_privacy_accountant.compute_epsilon(ORDERS, rdp_curve.tolist(), delta)
    return float(eps)


@dataclass(frozen=True)
class DistributedDP(Transform):
    name: ClassVar[str] = "distributed_dp"
    private: ClassVar[bool] = True
    clip: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5
    max_epsilon: float | None = None
    secure_noise: bool = True
    """Always True: every client draws its noise from its own secret stream (secagg/client.py)."""

    def __post_init__(self) -> None:
        check_accounting(self)
        if not self.secure_noise:
            checks.fail(self, "secure_noise", "distributed DP's noise always comes from each client's own secret "
                                              "stream; seeded noise is not offered for it")

    def check(self, strategy: Strategy) -> str | None:
        if (why := unsupported(strategy, self)) is not None:
            return why
        if strategy.secure is None:
            return "distributed DP adds its noise inside secure aggregation: set secagg.enabled = true"
        if getattr(strategy.aggregator, "weighting", None) != "uniform":
            return "distributed DP needs the uniform mean (each client's contribution bounded by the clip norm)"
        return None

    def client_noise(self) -> tuple[float, float]:
        return self.noise_multiplier, self.clip

    def init(self, params: Params) -> dict[str, torch.Tensor]:
        return {"rdp": torch.zeros(len(ORDERS), dtype=torch.float64), "rounds": torch.zeros((), dtype=torch.int64),
                "worst_s": torch.tensor(1.0 / self.noise_multiplier, dtype=torch.float64)}

    def client(self, task: Task, update: dict[str, torch.Tensor], seed: int
               ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        clipped, _, _ = clip_to_norm(update, self.clip)
        return dict(clipped), {}

    def server_aggregate(self, params: dict[str, torch.Tensor], state: dict[str, torch.Tensor], seed: int,
                         info: RoundInfo
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, float]]:
        if info.secure is None or info.secure.spec is None:
            if not info.updates:  # nobody was asked: no client's data was touched, nothing is released
                return params, state, {}
            raise AggregationError("distributed DP's noise is added inside secure aggregation, which this round "
                                   "did not run")
        spec, m = info.secure.spec, info.secure.num_clients
        this = round_rdp(spec.sensitivity, spec.noise_stddev, m, spec.size)
        total = state["rdp"].numpy() + this
        eps = epsilon_of(total, self.delta)
        accountant.within_budget(eps, self.max_epsilon, self.delta, info.round)
        worst = spec.sensitivity / (spec.noise_stddev * math.sqrt(spec.threshold + 1))
        new = {"rdp": torch.from_numpy(total), "rounds": state["rounds"] + 1,
               "worst_s": torch.tensor(worst, dtype=torch.float64)}
        s = spec.sensitivity / (spec.noise_stddev * math.sqrt(m))
        return params, new, {"epsilon": eps, "epsilon_round": epsilon_of(this, self.delta),
                             "noise_multiplier_effective": 1.0 / s}

    def exhausted(self, state: Mapping[str, torch.Tensor]) -> str | None:
        if self.max_epsilon is None:
            return None
        s = float(state["worst_s"])  # the next round with the fewest survivors a round can finish with
        a = np.asarray(ORDERS)
        eps = epsilon_of(state["rdp"].numpy() + a * s * s / 2, self.delta)
        return None if eps <= self.max_epsilon else f"another round could bring epsilon to {eps:.4g}"

    def summary(self, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        return {"mode": "distributed", "epsilon": accountant.finite(epsilon_of(state["rdp"].numpy(), self.delta)),
                "delta": self.delta, "accountant": "rdp (distributed discrete Gaussian bound)",
                "noise_multiplier": self.noise_multiplier, "clip_norm": self.clip,
                "released_rounds": int(state["rounds"]), "secure_noise": True}
