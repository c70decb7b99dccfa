"""The [privacy] section and how it turns a strategy into a private one: the mechanism as the last transform, the
aggregator a plain sum for central DP, Poisson sampling when asked for, and the noise multiplier calibrated by
dp-accounting when a target epsilon is given instead."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from .. import checks
from ..aggregators import WeightedMean
from ..errors import ConfigError
from ..strategies.base import Strategy
from ..transforms import Transform
from .accountant import AccountantKind, Release, calibrate
from .central import CentralDP
from .distributed import DistributedDP
from .dpsgd import DPSGD, client_release
from .local import LocalDP

Mode = Literal["none", "central", "local", "dp-sgd", "distributed"]


@dataclass(frozen=True)
class PrivacyOptions:
    """Differential privacy for a run (config section [privacy]); see the README's privacy section for what each
    mode protects from whom."""

    mode: Mode = "none"
    clip: float = 1.0
    clipping: Literal["fixed", "adaptive"] = "fixed"
    target_quantile: float = 0.5
    clip_lr: float = 0.2
    count_stddev: float | None = None
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    max_epsilon: float | None = None
    sampling: Literal["fixed", "poisson"] = "fixed"
    where: Literal["client", "server"] = "client"
    denominator: Literal["expected", "actual"] = "expected"
    accountant: AccountantKind = "rdp"
    secure_noise: bool = True
    """DP noise and DP sampling from the drawing party's own secret stream (fedloop/randomness.py). False draws them
    from the run's seed: reproducible bits for research, and no privacy against anyone who has the seed."""

    def __post_init__(self) -> None:
        checks.one_of(self, "mode", Mode)
        checks.one_of(self, "secure_noise", (True, False))
        checks.positive(self, "clip")
        checks.one_of(self, "clipping", ("fixed", "adaptive"))
        checks.in_range(self, "delta", 0.0, 1.0, low_open=True)
        checks.one_of(self, "sampling", ("fixed", "poisson"))
        checks.one_of(self, "where", ("client", "server"))
        checks.one_of(self, "denominator", ("expected", "actual"))
        checks.one_of(self, "accountant", ("rdp", "pld"))
        for name in ("noise_multiplier", "target_epsilon", "max_epsilon", "count_stddev"):
            if getattr(self, name) is not None:
                checks.positive(self, name)
        if self.mode == "none":
            return
        if self.noise_multiplier is None and self.target_epsilon is None:
            checks.fail(self, "noise_multiplier", f"mode {self.mode!r} needs noise_multiplier or target_epsilon")
        if self.clipping == "adaptive" and self.mode != "central":
            checks.fail(self, "clipping", "adaptive clipping is part of central DP (mode = 'central')")
        if self.mode == "distributed" and self.accountant != "rdp":
            checks.fail(self, "accountant", "distributed DP's bound (Kairouz et al. 2021) is an RDP curve; use 'rdp'")
        if self.mode == "dp-sgd" and self.accountant == "pld":
            checks.fail(self, "accountant", "DP-SGD samples batches without replacement, which only the RDP "
                                            "accountant analyses in dp-accounting; use 'rdp'")
        if self.max_epsilon is not None and self.target_epsilon is not None and \
                self.target_epsilon > self.max_epsilon:
            checks.fail(self, "target_epsilon", f"is above max_epsilon = {self.max_epsilon:g}")

    def mechanism(self, z: float) -> Transform:
        """The privacy transform with noise multiplier z."""
        if self.mode == "central":
            return CentralDP(self.clip, z, self.where, self.denominator, self.clipping, self.target_quantile,
                             self.clip_lr, self.count_stddev, self.delta, self.accountant, self.max_epsilon,
                             self.secure_noise)
        if self.mode == "local":
            return LocalDP(self.clip, z, self.delta, self.accountant, self.max_epsilon, self.secure_noise)
        if self.mode == "dp-sgd":
            return DPSGD(self.clip, z, self.delta, self.max_epsilon, self.secure_noise)
        if self.mode == "distributed":
            return DistributedDP(self.clip, z, self.delta, self.max_epsilon, self.secure_noise)
        raise ConfigError(f"privacy.mode = {self.mode!r} has no mechanism")


def privatize(strategy: Strategy, options: PrivacyOptions, noise_multiplier: float | None = None) -> Strategy:
    """`strategy` with the privacy `options` ask for (the strategy itself for mode 'none'); a ConfigError naming
    the key when the combination is one the analysis does not cover."""
    sampler = replace(strategy.sampler, poisson=True) if options.sampling == "poisson" else strategy.sampler
    if options.mode == "none":
        return replace(strategy, sampler=sampler)
    z = noise_multiplier or options.noise_multiplier
    if z is None:
        raise ConfigError("privacy.target_epsilon: the noise multiplier has not been calibrated yet")
    aggregator = strategy.aggregator
    if options.mode in ("central", "distributed"):
        if not isinstance(aggregator, WeightedMean):
            raise ConfigError(f"privacy.mode = {options.mode!r} needs the weighted-mean aggregator (it adds noise to a "
                              f"sum); aggregator {aggregator.name!r} is not a sum")
        # central DP: the plain sum (its transform noises it, then divides); distributed DP: the survivors' mean
        aggregator = WeightedMean("uniform", 1.0 if options.mode == "central" else None)
    try:
        return replace(strategy, sampler=sampler, aggregator=aggregator,
                       transforms=(*strategy.transforms, options.mechanism(z)))
    except ConfigError as exc:
        raise ConfigError(f"privacy.mode = {options.mode!r}: {exc}") from None


def planned_release(strategy: Strategy, options: PrivacyOptions, z: float, population: int,
                    sizes: Sequence[int] = ()) -> Release:
    """One round of the run as the accountant will see it (for DP-SGD: the client with the fewest examples)."""
    sampler = strategy.sampler
    if options.mode == "central":
        if options.sampling == "poisson":
            return Release(z, "poisson", rate=sampler.rate(population), population=population)
        return Release(z, "fixed", population=population, sample=sampler.num_selected(population))
    if options.mode == "local":
        return Release(z, "none")
    if options.mode == "distributed":  # every round counts for every client: a Gaussian sum, add/remove-one
        return Release(z, "poisson", rate=1.0, population=population)
    if not sizes:
        raise ConfigError("privacy.target_epsilon: DP-SGD calibration needs the clients' example counts")
    return client_release(z, strategy.local.program(), min(sizes))


def calibrate_noise(strategy: Strategy, options: PrivacyOptions, rounds: int, population: int,
                    sizes: Sequence[int] = ()) -> float:
    """The noise multiplier that spends options.target_epsilon in `rounds` rounds (dp-accounting's calibration)."""
    assert options.target_epsilon is not None
    kind: AccountantKind = "rdp" if options.mode == "dp-sgd" else options.accountant
    return calibrate(planned_release(strategy, options, 1.0, population, sizes), rounds, options.delta,
                     options.target_epsilon, kind)
