"""The strategy: a frozen dataclass composed of parts (DESIGN.md, "Core abstractions") — a sampler, a local-training
spec (the client half), an aggregator and a server optimizer — plus a chain of transforms. A new algorithm swaps a
part or overrides one of the few methods below; it does no I/O and never sees threads, sockets, clocks or files.

Server half:
  init            the initial server state
  configure       the round's first exchange (normally its fit tasks)
  follow_up       the next exchange of a multi-stage round, from the replies to the last one ([] when done)
  refuse          the strategy's check of an update's claims (FedNova's normaliser)
  weigh           an accepted update as the aggregator takes it (FedBuff scales a stale one)
  slots           (concurrency, buffer size) of an asynchronous strategy (FedBuff); None: synchronous rounds
  aggregate_extras  strategy-specific reduction of the updates' extras (SCAFFOLD's control-variate deltas)
  apply           server state + aggregate -> new server state (the server optimizer's step)
Client half (run by the client app in every mode):
  client_program  local training declared as an SGDProgram, which every executor can batch
  client_train    for training that is not an SGDProgram: overriding it makes the clients train one at a time
  client_finish   after training: the update to send and the client's new persistent state
  client_evaluate metrics on a client's local split (personal models add theirs)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np

from .. import checks
from ..aggregators import Aggregator, WeightedMean
from ..client.evaluate import evaluate
from ..client.state import ClientState
from ..client.training import ClientContext, FullGradient, LocalSGD, LocalSpec, SGDProgram, Trained, train_program
from ..data.examples import Examples
from ..errors import ConfigError
from ..fleet import MESSAGES, STAGES
from ..heterogeneity import MAX_STEPS
from ..params import clone
from ..randomness import SecretStream, secret
from ..sampling import Sampler, round_rng, task_seeds
from ..secagg.options import SecAggOptions
from ..server_opt import SGD, ServerOptimizer
from ..transforms import Transform, own_state
from ..types import Aggregate, Broadcast, ClientInfo, ConfigValue, Reply, ServerState, Task, TaskKind, Update


@dataclass(frozen=True)
class Strategy:
    """The composed strategy; `name` is what configs call it, `requires` the fleet capabilities it needs."""

    name: ClassVar[str] = "custom"
    requires: ClassVar[frozenset[str]] = frozenset()

    sampler: Sampler = field(default_factory=Sampler)
    local: LocalSpec = field(default_factory=LocalSGD)
    aggregator: Aggregator = field(default_factory=WeightedMean)
    server_opt: ServerOptimizer = field(default_factory=SGD)
    transforms: tuple[Transform, ...] = ()
    secure: SecAggOptions | None = None
    """Secure aggregation (SecAgg+): the server gets only the sum of each round's updates (secagg/)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "transforms", tuple(self.transforms))
        parts = (("sampler", isinstance(self.sampler, Sampler), "a Sampler"),
                 ("local", isinstance(self.local, LocalSGD | FullGradient), "a LocalSGD or FullGradient"),
                 ("aggregator", callable(getattr(self.aggregator, "apply", None)), "an aggregator (init, apply)"),
                 ("server_opt", callable(getattr(self.server_opt, "step", None)), "a server optimizer (init, step)"),
                 ("transforms", all(isinstance(t, Transform) for t in self.transforms), "a tuple of Transforms"),
                 ("secure", self.secure is None or isinstance(self.secure, SecAggOptions), "SecAggOptions or None"))
        for part, ok, what in parts:
            if not ok:
                checks.fail(self, part, f"expected {what}")
        for transform in self.transforms:
            if (why := transform.check(self)) is not None:
                raise ConfigError(f"{transform.name} cannot be used with strategy {self.name!r}: {why}",
                                  key="transforms", value=transform.name, rule=why)
        if self.secure is not None and not self.secure.enabled:
            object.__setattr__(self, "secure", None)
        if self.sampler.over_selection and (self.secure is not None or self.sampling_is_private):
            why = ("secure aggregation's stages need the same clients throughout" if self.secure is not None else
                   "central DP's sampling analysis assumes the clients drawn are the clients counted, not the "
                   "fastest of them")
            raise ConfigError(f"strategy.over_selection = {self.sampler.over_selection}: {why}",
                              key="over_selection", value=self.sampler.over_selection, rule=why)
        if self.secure is not None and (why := self.insecure_part()) is not None:
            raise ConfigError(f"secure aggregation cannot be used with {why}", key="secure", value=True, rule=why)

    def insecure_part(self) -> str | None:
        """The part of this strategy that needs what secure aggregation hides (each client's plain update), or
        None when every part works on the sum alone."""
        agg = self.aggregator
        if not isinstance(agg, WeightedMean):
            return (f"aggregator {agg.name!r}: it is not a (weighted) sum, and secure aggregation gives the server "
                    "the sum of the updates only")
        if agg.fixed_denominator is not None:
            return "a fixed denominator (central DP's): use privacy.mode = 'distributed' under secure aggregation"
        if type(self).aggregate_extras is not Strategy.aggregate_extras:
            return (f"strategy {self.name!r}: it reduces extras of each update (e.g. control variates), which "
                    "secure aggregation does not carry")
        for t in self.transforms:
            if type(t).server_update is not Transform.server_update or getattr(t, "reads_updates", False):
                return (f"transform {t.name!r}: it checks or accounts for each client's update on the server, which "
                        "secure aggregation hides")
        return None

    @property
    def needs(self) -> frozenset[str]:
        """The fleet capabilities a run of this strategy needs (secure aggregation's stages and messages
        included)."""
        return self.requires | (frozenset({STAGES, MESSAGES}) if self.secure is not None else frozenset())

    # --- server half ---
    def init(self, params: Mapping, seed: int) -> ServerState:
        params = clone(params)
        transform_state = {f"{i}/{k}": v for i, t in enumerate(self.transforms) for k, v in t.init(params).items()}
        return ServerState(round=0, params=params, opt_state=self.server_opt.init(params), seed=seed,
                           agg_state=self.aggregator.init(params), transform_state=transform_state)

    def broadcast(self, state: ServerState, stage: str = "fit") -> Broadcast:
        """What the tasks of one exchange share: the global params, and for fit tasks the strategy's extras."""
        return Broadcast(state.round, state.params, state.extras if stage == "fit" else {}, stage)

    def tasks(self, state: ServerState, chosen: Sequence[ClientInfo], kind: TaskKind = "fit",
              stage: str | None = None, config: Mapping[str, ConfigValue] | None = None) -> list[Task]:
        """Tasks of round state.round + 1 for `chosen`, sharing one broadcast, each seeded by its client."""
        r = state.round + 1
        shared = self.broadcast(state, stage or kind)
        seeds = task_seeds(state.seed, r, [c.client_id for c in chosen]).tolist()
        config = dict(config or {})
        if kind == "fit":
            for i, transform in enumerate(self.transforms):
                config.update(transform.task_config(own_state(state.transform_state, i)))
        return [Task(c.client_id, r, kind, shared, s, config) for c, s in zip(chosen, seeds, strict=True)]

    def configure(self, state: ServerState, clients: Sequence[ClientInfo]) -> list[Task]:
        """The first exchange of round state.round + 1: fit tasks for the sampler's draw."""
        return self.tasks(state, self.sampler.select(clients, self.sampling_draws(state)))

    @property
    def sampling_is_private(self) -> bool:
        """Whether a transform's guarantee rests on who was asked (central DP's amplification by sampling)."""
        return any(getattr(t, "secret_sampling", False) for t in self.transforms)

    def sampling_draws(self, state: ServerState) -> np.random.Generator | SecretStream:
        """Where the round's client sampling draws from: the server's secret stream when a transform's guarantee
        rests on who was asked, else the round's seeded generator."""
        return secret() if self.sampling_is_private else round_rng(state.seed, state.round + 1)

    def follow_up(self, state: ServerState, clients: Sequence[ClientInfo], tasks: Sequence[Task],
                  replies: Sequence[Reply]) -> list[Task]:
        """The round's next exchange after `tasks` got `replies`; [] once these replies hold the round's updates."""
        return []

    def refuse(self, update: Update) -> str | None:
        """Why the server cannot use `update` (e.g. an extra out of its possible range), or None. The strategy's
        own check of what a client claims, before the transforms screen the update."""
        return None

    def weigh(self, update: Update, state: ServerState) -> Update:
        """An accepted update as the aggregator takes it (FedBuff scales it by its staleness)."""
        return update

    def slots(self, population: int) -> tuple[int, int] | None:
        """(concurrency, buffer size) of an asynchronous strategy among `population` available clients; None for
        synchronous rounds."""
        return None

    def aggregate_extras(self, updates: Sequence[Update]) -> dict:
        return {}

    def apply(self, state: ServerState, agg: Aggregate) -> ServerState:
        """W <- server_opt.step(W, aggregate): W - lr * aggregate for plain SGD."""
        params, opt_state = self.server_opt.step(state.params, agg.params, state.opt_state)
        return replace(state, round=state.round + 1, params=params, opt_state=opt_state, agg_state=agg.agg_state,
                       transform_state=agg.transform_state)

    # --- client half ---
    def client_program(self, task: Task, state: ClientState) -> SGDProgram:
        return self.local.program()

    def training_program(self, task: Task, state: ClientState) -> SGDProgram:
        """The program a client runs: the strategy's client_program, then each transform's program step (DP-SGD's
        per-example clipping and noise), stopped after the task's max_steps when it has some (a straggler's partial
        work, heterogeneity.py)."""
        program = self.client_program(task, state)
        for transform in self.transforms:
            program = transform.program(task, program)
        if (cap := task.config.get(MAX_STEPS)) is not None:
            if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
                raise ValueError(f"task config {MAX_STEPS} = {cap!r}: expected an integer >= 1")
            program = replace(program, max_steps=cap)
        return program

    def client_train(self, task: Task, ctx: ClientContext) -> Trained:
        return train_program(self.training_program(task, ctx.state), task, ctx)

    def client_finish(self, task: Task, trained: Trained, state: ClientState) -> tuple[Update, ClientState]:
        """The update to send and the client's new state (the same object when it did not change)."""
        update = Update(task.client_id, task.round, trained.update, trained.num_examples, trained.metrics,
                        version=task.broadcast.version)
        return update, state

    def client_evaluate(self, task: Task, ctx: ClientContext, data: Examples) -> dict[str, float]:
        """Metrics of the task's params on `data` (a client's local split); a strategy with personal models adds
        theirs (Ditto's personal_* metrics)."""
        return evaluate(ctx.model, task.params, data, ctx.loss_fn)

    @property
    def evaluates_state(self) -> bool:
        """Whether client_evaluate reads the client's state (personal models): only then is it loaded for an
        evaluation."""
        return type(self).client_evaluate is not Strategy.client_evaluate

    def unbatchable_reason(self) -> str | None:
        """Why this strategy's clients cannot train as one batch (None when they can)."""
        if type(self).client_train is not Strategy.client_train:
            return f"strategy {self.name!r} trains its clients with its own client_train"
        return None


def require_mean(strategy: Strategy, why: str, weighting: str | None = None, private_ok: bool = True) -> None:
    """Refuse an aggregator that is not a plain weighted mean (of the given weighting), a fixed denominator, or
    (unless `private_ok`) a privacy mechanism: the parts a strategy's server step is derived for. `why` says what
    the strategy's analysis needs."""
    agg = strategy.aggregator
    if not isinstance(agg, WeightedMean) or agg.fixed_denominator is not None:
        checks.fail(strategy, "aggregator", f"{why}: expected the plain mean (aggregator.name = 'mean')")
    assert isinstance(agg, WeightedMean)  # checks.fail raised otherwise
    if weighting is not None and agg.weighting != weighting:
        checks.fail(strategy, "aggregator", f"{why}: expected aggregator.weighting = {weighting!r}")
    if not private_ok and (private := [t.name for t in strategy.transforms if getattr(t, "private", False)]):
        raise ConfigError(f"strategy {strategy.name!r} cannot be used with {', '.join(private)}: {why}, and no "
                          "privacy mechanism's analysis covers that", key="transforms", value=private[0], rule=why)
