"""Central (user-level) differential privacy: DP-FedAvg (McMahan et al. 2018) with fixed or adaptive quantile
clipping (Andrew et al. 2021). Each client's update is clipped to L2 norm C over all its tensors; the server adds
N(0, (z_u C)^2) to the sum of the round's clipped updates and divides by the expected number of clients (the
unbiased estimator) or by the number that replied. With adaptive clipping, each client also reports whether its
update was within C; the server noises that count (standard deviation sigma_b), and moves C towards the target
quantile of the update norms, C <- C exp(-lr (b - gamma)). The update noise z_u is chosen so that the two releases
together cost what one Gaussian release of noise multiplier z costs: z_u^-2 + (2 sigma_b)^-2 = z^-2.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

from .. import checks
from ..errors import ConfigError
from ..randomness import draws, noise_like
from ..transforms import RoundInfo, Transform, clip_to_norm, over_clip_norm
from ..types import ConfigValue, Params, Task, Update
from . import accountant
from .accountant import AccountantKind, Release
from .support import check_accounting, unsupported

if TYPE_CHECKING:
    from ..strategies.base import Strategy

CLIP_KEY = "dp_clip"
"""The task-config entry that carries the round's clip norm to the clients."""


@dataclass(frozen=True)
class CentralDP(Transform):
    """DP-FedAvg's clipping and noise, with its accountant. `noise_multiplier` is z, the multiplier the accountant
    sees; `where` says who clips ("client": the server never sees an unclipped update and rejects one above C)."""

    name: ClassVar[str] = "central_dp"
    private: ClassVar[bool] = True
    clip: float = 1.0
    noise_multiplier: float = 1.0
    where: Literal["client", "server"] = "client"
    denominator: Literal["expected", "actual"] = "expected"
    clipping: Literal["fixed", "adaptive"] = "fixed"
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    count_stddev: float | None = None
    """sigma_b, the noise on the count of unclipped updates (default: the expected clients / 20)."""
    delta: float = 1e-5
    accountant: AccountantKind = "rdp"
    max_epsilon: float | None = None
    secure_noise: bool = True
    """The noise, the count noise and the client sampling from the server's own secret stream
    (fedloop/randomness.py); False: from the run's seed, so anyone with the config can remove the noise and knows
    who took part (research runs only)."""

    def __post_init__(self) -> None:
        check_accounting(self)
        checks.positive(self, "clip_lr")
        checks.one_of(self, "where", ("client", "server"))
        checks.one_of(self, "denominator", ("expected", "actual"))
        checks.one_of(self, "clipping", ("fixed", "adaptive"))
        checks.in_range(self, "target_quantile", 0.0, 1.0, low_open=True, high_open=True)
        if self.count_stddev is not None:
            checks.positive(self, "count_stddev")
        checks.one_of(self, "accountant", ("rdp", "pld"))

    def check(self, strategy: Strategy) -> str | None:
        if (why := unsupported(strategy, self)) is not None:
            return why
        agg = strategy.aggregator
        if getattr(agg, "weighting", None) != "uniform" or getattr(agg, "fixed_denominator", None) != 1.0:
            return ("central DP adds noise to the sum of the clipped updates, so the aggregator must be the plain "
                    "sum: WeightedMean(weighting='uniform', fixed_denominator=1.0) (privacy.privatize sets it)")
        if self.accountant == "pld" and not strategy.sampler.poisson:
            return ("dp-accounting's PLD accountant has no analysis of fixed-size sampling without replacement; "
                    "use accountant 'rdp' or Poisson sampling")
        return None

    @property
    def secret_sampling(self) -> bool:
        """Whether the round's clients are drawn from the server's secret stream: the amplification by sampling
        that the accountant counts holds only if no one can tell who was asked."""
        return self.secure_noise

    def init(self, params: Params) -> dict[str, torch.Tensor]:
        return {"clip": torch.tensor(self.clip, dtype=torch.float64), "history": accountant.history_to_tensor([])}

    def _clip_now(self, state: Mapping[str, torch.Tensor]) -> float:
        return float(state["clip"]) if "clip" in state else self.clip

    def task_config(self, state: Mapping[str, torch.Tensor]) -> dict[str, ConfigValue]:
        return {CLIP_KEY: self._clip_now(state)} if self.where == "client" else {}

    def client(self, task: Task, update: dict[str, torch.Tensor], seed: int
               ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        if self.where != "client":
            return update, {}
        bound = task.config.get(CLIP_KEY, self.clip)
        if not isinstance(bound, int | float) or isinstance(bound, bool) or not bound > 0:
            raise ValueError(f"the task's clip norm {bound!r} is not a positive number")
        clipped, _, scaled = clip_to_norm(update, float(bound))
        return dict(clipped), {"_clipped": float(scaled)}

    def server_update(self, update: Update, state: Mapping[str, torch.Tensor]) -> Update | str:
        bound = self._clip_now(state)
        if self.where == "server":
            try:
                clipped, _, scaled = clip_to_norm(update.params, bound)
            except ValueError as exc:
                return str(exc)
            return replace(update, params=clipped, metrics={**update.metrics, "_clipped": float(scaled)})
        if (why := over_clip_norm(update.params, bound)) is not None:
            return why
        if self.clipping == "adaptive" and update.metrics.get("_clipped") not in (0.0, 1.0):
            return "the update does not say whether it was clipped (adaptive clipping needs it)"
        return update

    def release(self, info: RoundInfo) -> Release:
        """What this round releases, as the accountant sees it."""
        if info.sampling == "poisson":
            return Release(self.noise_multiplier, "poisson", rate=info.expected / max(info.population, 1),
                           population=info.population)
        return Release(self.noise_multiplier, "fixed", population=info.population, sample=round(info.expected))

    def update_noise(self, expected: float) -> tuple[float, float]:
        """(z_u, sigma_b): the noise multipliers of the update sum and of the unclipped count this round."""
        if self.clipping == "fixed":
            return self.noise_multiplier, 0.0
        sigma_b = self.count_stddev if self.count_stddev is not None else expected / 20
        rest = self.noise_multiplier ** -2 - (2 * sigma_b) ** -2
        if rest <= 0:
            raise ConfigError(f"privacy.noise_multiplier = {self.noise_multiplier:g} is not below the count noise "
                              f"2 x {sigma_b:g} = {2 * sigma_b:g} that adaptive clipping spends (the update noise "
                              f"z_u needs z_u^-2 + (2 sigma_b)^-2 = z^-2); raise privacy.count_stddev above "
                              f"{self.noise_multiplier / 2:g} or lower the noise multiplier")
        return rest ** -0.5, sigma_b

    def server_aggregate(self, params: dict[str, torch.Tensor], state: dict[str, torch.Tensor], seed: int,
                         info: RoundInfo
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, float]]:
        history = accountant.append(accountant.history_from_tensor(state.get("history")), self.release(info))
        eps = accountant.epsilon(history, self.delta, self.accountant)
        accountant.within_budget(eps, self.max_epsilon, self.delta, info.round)
        bound = self._clip_now(state)
        z_u, sigma_b = self.update_noise(info.expected)
        source = draws(self.secure_noise, seed)
        denominator = info.expected if self.denominator == "expected" else float(max(len(info.updates), 1))
        noise = noise_like(source, params, z_u * bound)
        out = {k: (v + noise[k]) / denominator for k, v in params.items()}
        new_state = {"clip": torch.tensor(bound, dtype=torch.float64),
                     "history": accountant.history_to_tensor(history)}
        metrics = {"epsilon": eps, "clip_norm": bound}
        if self.clipping == "adaptive":
            unclipped = sum(1.0 - float(u.metrics.get("_clipped", 0.0)) for u in info.updates)
            noisy = unclipped + sigma_b * float(source.gaussian((), torch.float64))
            fraction = noisy / max(info.expected, 1e-12)
            new_state["clip"] = torch.tensor(bound * math.exp(-self.clip_lr * (fraction - self.target_quantile)),
                                             dtype=torch.float64)
            metrics["unclipped_fraction"] = fraction  # noised: part of the accounted release
        return out, new_state, metrics

    def exhausted(self, state: Mapping[str, torch.Tensor]) -> str | None:
        """The budget is spent when one more round like the last would exceed max_epsilon."""
        history = accountant.history_from_tensor(state.get("history"))
        if self.max_epsilon is None or not history:
            return None
        eps = accountant.epsilon(accountant.append(history, history[-1][0]), self.delta, self.accountant)
        return None if eps <= self.max_epsilon else f"another round would spend epsilon {eps:.4g}"

    def summary(self, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        history = accountant.history_from_tensor(state.get("history"))
        return {"mode": "central", "epsilon": accountant.finite(accountant.epsilon(history, self.delta,
                                                                                   self.accountant)),
                "delta": self.delta, "accountant": self.accountant, "noise_multiplier": self.noise_multiplier,
                "clipping": self.clipping, "clip_norm": self._clip_now(state),
                "released_rounds": sum(c for _, c in history), "secure_noise": self.secure_noise}
