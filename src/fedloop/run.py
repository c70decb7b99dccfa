"""A run around the round loop, over any fleet: its options (one RunOptions for every mode), its start (a new
initial model or a checkpoint), its observers and stop conditions, and its result."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from . import checks, interrupts
from . import device as devices
from .client import LossFn, RoundStates, evaluate
from .data.examples import Examples
from .fleet import Fleet
from .heterogeneity import Heterogeneity
from .loop import LoopResult, RoundPolicy, run_loop
from .observers import Checkpointer, Observer, RunDirWriter
from .params import from_model, load_into
from .stops import Diverged, MaxRounds, Patience, StopCondition, TargetAccuracy
from .store import RunDir, load_client_states, prepare_run_dir
from .strategies import Strategy
from .transforms import own_state
from .types import Params, RunResult, ServerState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalOptions:
    """Centralized evaluation on the held-out test set every `every` rounds (and always at the end), and with
    `federated` also on every client's local test split."""

    every: int = 1
    federated: bool = True
    fine_tune_steps: int = 0
    """Federated evaluation also measures each client's model after this many local SGD steps from the global one
    (fine_tuned_* metrics; 0: not measured)."""
    federated_split: Literal["test", "train"] = "test"
    """The clients' split that federated evaluation measures: "train" gives the global training objective
    sum_k n_k F_k(w) / n as fed_loss (the FedProx paper's training loss)."""

    def __post_init__(self) -> None:
        checks.at_least(self, "every", 1)
        checks.at_least(self, "fine_tune_steps", 0)
        checks.one_of(self, "federated_split", ("test", "train"))

    def task_config(self) -> dict[str, int | str]:
        """What every evaluate task carries."""
        out: dict[str, int | str] = {"fine_tune_steps": self.fine_tune_steps} if self.fine_tune_steps else {}
        if self.federated_split != "test":
            out["split"] = self.federated_split
        return out


@dataclass(frozen=True)
class StopOptions:
    """Conditions that may end a run before its rounds: test accuracy reaching `target_accuracy` (federated
    accuracy without a central test set), or `patience` evaluations without improvement of the evaluation loss."""

    target_accuracy: float | None = None
    patience: int | None = None

    def __post_init__(self) -> None:
        checks.in_range(self, "target_accuracy", 0.0, 1.0, low_open=True, high_open=False, optional=True)
        checks.at_least(self, "patience", 1, optional=True)


@dataclass(frozen=True)
class CheckpointOptions:
    """A checkpoint of the full server state every `every` rounds (the initial and the last always)."""

    every: int = 10

    def __post_init__(self) -> None:
        checks.at_least(self, "every", 1)


@dataclass(frozen=True)
class RunOptions:
    """Everything about a run that is not the strategy, the model or the fleet, for simulation and deployment."""

    rounds: int = 40
    seed: int = 0
    device: str = "auto"
    """Where clients train and the server evaluates: "auto" (CUDA when there is one, else the CPU), "cpu", "cuda",
    "cuda:N" or "mps" (fedloop/device.py). Aggregation and the server's state stay on the CPU."""
    eval: EvalOptions = field(default_factory=EvalOptions)
    stop: StopOptions = field(default_factory=StopOptions)
    checkpoint: CheckpointOptions = field(default_factory=CheckpointOptions)
    policy: RoundPolicy = field(default_factory=RoundPolicy)
    heterogeneity: Heterogeneity = field(default_factory=Heterogeneity)
    """System heterogeneity to simulate: availability and stragglers (heterogeneity.py)."""
    out: str | Path | None = None
    """The run directory (None: write nothing)."""
    resume: bool = False
    """Continue the run in `out` from its latest checkpoint."""
    overwrite: bool = False
    """Clear a previous run from `out` first (without it, or resume, an `out` that holds a run is refused)."""
    observers: tuple[Observer, ...] = ()
    stops: tuple[StopCondition, ...] = ()
    """Stop conditions besides the rounds, target accuracy and patience."""

    def __post_init__(self) -> None:
        checks.at_least(self, "rounds", 1)
        if not devices.NAMES.match(self.device):
            checks.fail(self, "device", devices.EXPECTED)
        if self.resume and self.out is None:
            checks.fail(self, "resume", "resuming needs the run directory (out)")
        if self.resume and self.overwrite:
            checks.fail(self, "overwrite", "a run is either resumed or overwritten")

    def stop_conditions(self) -> list[StopCondition]:
        stops: list[StopCondition] = [MaxRounds(self.rounds), Diverged()]
        if self.stop.target_accuracy is not None:
            stops.append(TargetAccuracy(self.stop.target_accuracy))
        if self.stop.patience is not None:
            stops.append(Patience(self.stop.patience))
        return stops + list(self.stops)


def initial_params(model_fn: Callable[[], nn.Module], seed: int) -> dict[str, torch.Tensor]:
    """The seeded initial global model (the global torch RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return from_model(model_fn())


def privacy_summary(strategy: Strategy, state: ServerState) -> dict[str, Any]:
    """epsilon and delta of the run (from its privacy transform's accountant), and the mechanism's details."""
    for i, transform in enumerate(strategy.transforms):
        if getattr(transform, "private", False):
            details = transform.summary(own_state(state.transform_state, i))
            return {"epsilon": details["epsilon"], "delta": details["delta"],
                    "secure_noise": details["secure_noise"], "privacy": details}
    return {}


def say_where_the_noise_comes_from(strategy: Strategy) -> None:
    """One line at start: what a private run's noise protects against, or that it protects nothing."""
    for transform in strategy.transforms:
        if getattr(transform, "private", False):
            if getattr(transform, "secure_noise", True):
                log.info("privacy: DP noise and sampling come from each party's secret random stream; runs with the "
                         "same seed give different models")
            else:
                log.warning("privacy.secure_noise = false: the DP noise and sampling are drawn from the run's seed, "
                            "so this run is NOT private against the server or anyone who has the seed (research "
                            "setting: same seed, same bits)")


def train(fleet: Fleet, model_fn: Callable[[], nn.Module], strategy: Strategy, options: RunOptions, *,
          test: Examples | None = None, loss_fn: LossFn = F.cross_entropy, partition_json: dict | None = None,
          model_meta: dict[str, Any] | None = None, config_toml: str | None = None,
          extra_metrics: Callable[[nn.Module], dict[str, float]] | None = None) -> RunResult:
    """Federated training over any fleet (simulated or networked), with the run directory and summary.

    With options.resume the run continues in options.out from its latest checkpoint (its metrics history is kept
    up to that round); it ends with the same model as an uninterrupted run when the same clients reply.
    """
    t0 = time.perf_counter()
    run_dir = None
    if options.out is not None:
        run_dir = RunDir(prepare_run_dir(options.out, resume=options.resume, overwrite=options.overwrite))
    try:
        return _train(fleet, model_fn, strategy, options, run_dir, t0, test, loss_fn, partition_json, model_meta,
                      config_toml, extra_metrics)
    finally:
        if run_dir is not None:
            run_dir.release()


def _train(fleet: Fleet, model_fn: Callable[[], nn.Module], strategy: Strategy, options: RunOptions,
           run_dir: RunDir | None, t0: float, test: Examples | None, loss_fn: LossFn, partition_json: dict | None,
           model_meta: dict[str, Any] | None, config_toml: str | None,
           extra_metrics: Callable[[nn.Module], dict[str, float]] | None = None) -> RunResult:
    device = devices.resolve(options.device)
    workspace = model_fn().to(device)
    if test is not None:
        test = devices.place_examples(test, device)
    evaluator = (lambda params: evaluate(workspace, params, test, loss_fn)) if test is not None and len(test) \
        else None
    if evaluator is not None and extra_metrics is not None:
        central = evaluator

        def evaluator(params: Params) -> dict[str, float]:
            metrics = central(params)
            load_into(workspace, params)
            return {**metrics, **extra_metrics(workspace)}
    meta = {"strategy": strategy.name, **(model_meta or {})}
    say_where_the_noise_comes_from(strategy)
    client_states: RoundStates | None = getattr(fleet, "states", None)  # a simulation's; deployed clients keep theirs
    if options.resume:
        assert run_dir is not None  # RunOptions checks it
        path, state = run_dir.load_latest()
        if client_states is not None:
            client_states.restore(load_client_states(path))
        log.info("resuming %s from round %d", run_dir.path, state.round)
    else:
        state = strategy.init(initial_params(model_fn, options.seed), options.seed)
    observers: list[Observer] = []
    if run_dir is not None:
        observers += [RunDirWriter(run_dir, meta, config_toml, partition_json),
                      Checkpointer(run_dir, options.checkpoint.every, meta,
                                   client_states.export if client_states is not None else None)]
    observers += options.observers
    for o in observers:
        o.start(state, options.resume)
    if options.resume and run_dir is not None and (restart := getattr(fleet, "restart_at", None)) is not None:
        restart(next((r["virtual_time"] for r in reversed(run_dir.records) if "virtual_time" in r), 0.0))
    with devices.deterministic(device) as nondeterministic:
        result = run_loop(strategy, fleet, state, options.stop_conditions(), evaluator=evaluator,
                          eval_every=options.eval.every, federated_eval=options.eval.federated,
                          eval_config=options.eval.task_config(), policy=options.policy,
                          heterogeneity=options.heterogeneity,
                          observers=observers)
    where: dict[str, Any] = {"device": devices.name_of(device)}
    if not devices.on_cpu(device):
        where["nondeterministic_ops"] = nondeterministic
    with interrupts.held():  # a stop request while the files are written waits until they are
        return _finish(result, fleet, model_fn, strategy, options, run_dir, t0, observers, where)


def _finish(result: LoopResult, fleet: Fleet, model_fn: Callable[[], nn.Module], strategy: Strategy,
            options: RunOptions, run_dir: RunDir | None, t0: float, observers: list[Observer],
            where: dict[str, Any]) -> RunResult:
    """The run's model (on the CPU), summary and end-of-run files from the loop's result; `where` says the device
    and, on an accelerator, the operations that ran without a deterministic implementation."""
    final = result.state
    model = model_fn()
    load_into(model, final.params)
    seconds = time.perf_counter() - t0
    summary = {"rounds": final.round, "stop_reason": result.stop_reason,
               "accuracy": result.final_metrics.get("accuracy"), "loss": result.final_metrics.get("loss"),
               **{k: v for k, v in result.final_metrics.items() if k not in ("accuracy", "loss")},
               "seconds": round(seconds, 3), "executor": fleet.describe(), **where,
               **privacy_summary(strategy, final)}
    if final.excluded:
        summary["excluded"] = list(final.excluded)
    history = run_dir.records if run_dir is not None else [r.to_json() for r in result.records]
    outcome = RunResult(final, model, history, result.stop_reason, result.final_metrics, seconds,
                        Path(options.out) if options.out is not None else None, summary)
    for o in observers:
        o.end(outcome)
    return outcome

