"""Run a whole simulation: from a Config (the CLI) or from Python objects (the API), with one code path."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .client import ClientApp
from .config import Config, to_toml
from .data.examples import Dataset, Examples
from .data.partition import Partition, make_partition
from .data.registry import load_dataset
from .errors import CheckpointError, ConfigError
from .local import LossFn, evaluate
from .loop import Fleet, StopRule, run_loop
from .models import model_factory
from .params import from_model, load_into
from .report import plot_curves
from .sim import AppList, LocalFleet, make_fleet
from .sim.ray_fleet import RayFleet
from .store import RunDir, load_checkpoint, load_model_file, save_checkpoint, save_model
from .strategies import LocalSGD, Strategy, make_strategy
from .types import RoundRecord, ServerState

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a run returns: the final server state and model, the per-round history and why it stopped."""

    state: ServerState
    model: nn.Module
    history: list[dict[str, Any]]
    stop_reason: str
    metrics: dict[str, float]
    seconds: float
    out: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict)


def initial_params(model_fn: Callable[[], nn.Module], seed: int) -> dict[str, torch.Tensor]:
    """The seeded initial global model (the global torch RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return from_model(model_fn())


def build_apps(data: Dataset, partition: Partition, strategy: Strategy, model_fn: Callable[[], nn.Module],
               loss_fn: LossFn) -> list[ClientApp]:
    """One client app per partition entry, each holding index views into the shared arrays."""
    tx, ty = (data.x_train, data.y_train) if partition.test_source == "train" else (data.x_test, data.y_test)
    apps = [ClientApp(c, strategy, model_fn, loss_fn,
                      train=Examples(data.x_train, data.y_train, torch.as_tensor(partition.train[c])),
                      test=Examples(tx, ty, torch.as_tensor(partition.test[c])))
            for c in range(partition.num_clients)]
    return apps


def build_fleet(data: Dataset, partition: Partition, strategy: Strategy, model_fn: Callable[[], nn.Module],
                loss_fn: LossFn, *, executor: str = "sequential", engine: str = "local",
                ray_address: str | None = None, workers: int | None = None,
                state_dir: str | Path | None = None) -> LocalFleet | RayFleet:
    """The simulation fleet over a partition: local (with an executor) or on Ray."""
    return make_fleet(AppList(build_apps(data, partition, strategy, model_fn, loss_fn)), executor=executor,
                      engine=engine, ray_address=ray_address, workers=workers, state_dir=state_dir)


def simulate(model_fn: Callable[[], nn.Module], data: Dataset, partition: Partition, strategy: Strategy, *,
             rounds: int, seed: int = 0, loss_fn: LossFn = F.cross_entropy, eval_every: int = 1,
             federated_eval: bool = True, target_accuracy: float | None = None, patience: int | None = None,
             out: str | Path | None = None, checkpoint_every: int = 10,
             on_round: Callable[[RoundRecord, ServerState], None] | None = None,
             model_meta: dict[str, Any] | None = None, config_toml: str | None = None,
             executor: str = "auto", engine: str = "local", ray_address: str | None = None,
             workers: int | None = None, state_dir: str | Path | None = None) -> RunResult:
    """Federated training of `model_fn()` over `partition` of `data` with `strategy`.

    With `out`, the run directory gets config.toml (when given), partition.json, metrics.jsonl,
    checkpoints/round_NNNN.safetensors, model.safetensors, summary.json and curves.png.
    `executor` (auto, sequential, vectorized, processes, processes-vectorized) and `engine` (local, ray)
    choose how clients run; every choice gives the same result within float tolerance.
    """
    t0 = time.perf_counter()
    fleet = build_fleet(data, partition, strategy, model_fn, loss_fn, executor=executor, engine=engine,
                        ray_address=ray_address, workers=workers, state_dir=state_dir)
    try:
        return train(fleet, model_fn, strategy, test=Examples.all(data.x_test, data.y_test),
                     partition_json=partition.to_json(), rounds=rounds, seed=seed, loss_fn=loss_fn,
                     eval_every=eval_every, federated_eval=federated_eval, target_accuracy=target_accuracy,
                     patience=patience, out=out, checkpoint_every=checkpoint_every, on_round=on_round,
                     model_meta=model_meta, config_toml=config_toml, t0=t0)
    finally:
        fleet.close()


def train(fleet: Fleet, model_fn: Callable[[], nn.Module], strategy: Strategy, *, test: Examples | None,
          partition_json: dict | None, rounds: int, seed: int, loss_fn: LossFn = F.cross_entropy,
          eval_every: int = 1, federated_eval: bool = True, target_accuracy: float | None = None,
          patience: int | None = None, out: str | Path | None = None, checkpoint_every: int = 10,
          on_round: Callable[[RoundRecord, ServerState], None] | None = None,
          model_meta: dict[str, Any] | None = None, config_toml: str | None = None,
          t0: float | None = None, resume: bool = False, min_updates: int = 0, retries: int = 0,
          deadline: float | None = None) -> RunResult:
    """The round loop over any fleet (simulated or networked) with the run directory and summary.

    With `resume`, the run continues in `out` from its latest checkpoint (its metrics history is kept up to
    that round), which gives the same final model as an uninterrupted run when the same clients reply.
    """
    t0 = time.perf_counter() if t0 is None else t0
    workspace = model_fn()
    evaluator = (lambda params: evaluate(workspace, params, test, loss_fn)) if test is not None and len(test) \
        else None
    run = RunDir(out) if out is not None else None
    meta = {"strategy": strategy.name, **(model_meta or {})}
    if resume:
        if run is None:
            raise CheckpointError("resuming needs the run directory (out)")
        state, _ = load_checkpoint(run.latest_checkpoint())
        run.continue_from(state.round)
        log.info("resuming %s from round %d", run.path, state.round)
    else:
        state = strategy.init(initial_params(model_fn, seed), seed)
        if run is not None:
            if config_toml is not None:
                run.write_text("config.toml", config_toml)
            if partition_json is not None:
                run.write_json("partition.json", partition_json)
            save_checkpoint(run.checkpoint_path(0), state, meta)

    def record(rec: RoundRecord, st: ServerState) -> None:
        if run is not None:
            run.append_record(rec)
            if st.round % checkpoint_every == 0 and not rec.failed:
                save_checkpoint(run.checkpoint_path(st.round), st, meta)
        if on_round is not None:
            on_round(rec, st)

    stop = StopRule(rounds, target_accuracy, patience)
    result = run_loop(strategy, fleet, state, stop, evaluate=evaluator, eval_every=eval_every,
                      federated_eval=federated_eval, on_round=record, deadline=deadline, min_updates=min_updates,
                      retries=retries)
    final = result.state
    model = model_fn()
    load_into(model, final.params)
    seconds = time.perf_counter() - t0
    summary = {"rounds": final.round, "stop_reason": result.stop_reason,
               "accuracy": result.final_metrics.get("accuracy"), "loss": result.final_metrics.get("loss"),
               **{k: v for k, v in result.final_metrics.items() if k not in ("accuracy", "loss")},
               "seconds": round(seconds, 3), "executor": getattr(fleet, "describe", lambda: "custom")()}
    history = list(run.records) if run is not None else [r.to_json() for r in result.records]
    if run is not None:
        save_checkpoint(run.checkpoint_path(final.round), final, meta)
        save_model(run.path / "model.safetensors", final.params, meta)
        summary["seconds"] = round(time.perf_counter() - t0, 3)
        run.write_json("summary.json", summary)
        plot_curves(history, run.path / "curves.png")
    return RunResult(final, model, history, result.stop_reason, result.final_metrics, seconds,
                     Path(out) if out is not None else None, summary)


def strategy_from_config(cfg: Config) -> Strategy:
    s, c = cfg.strategy, cfg.client
    local = LocalSGD(epochs=c.epochs, batch_size=None if c.batch_size == "full" else c.batch_size, lr=c.lr,
                     momentum=c.momentum, weight_decay=c.weight_decay)
    extra = {"mu": s.mu} if s.name == "fedprox" else {}
    return make_strategy(s.name, clients_per_round=s.clients_per_round, fraction=s.fraction,
                         sampling=s.sampling, weighting=s.weighting, server_lr=s.server_lr,
                         server_momentum=s.server_momentum, local=local, **extra)


def load_data(cfg: Config) -> Dataset:
    d = cfg.data
    return load_dataset(d.name, d.path, seed=cfg.seed, test_fraction=d.test_fraction, split=d.split,
                        label_column=d.label_column, test_path=d.test_path, alpha=d.alpha, beta=d.beta,
                        num_users=d.num_users)


def partition_from_config(cfg: Config, data: Dataset) -> Partition:
    p = cfg.partition
    return make_partition(data, p.scheme, p.num_clients, cfg.seed, alpha=p.alpha,
                          shards_per_client=p.shards_per_client, local_test_fraction=p.local_test_fraction)


def run_config(cfg: Config, out: str | Path | None = None,
               on_round: Callable[[RoundRecord, ServerState], None] | None = None) -> RunResult:
    """Everything `fedloop run` does after parsing: data, partition, model, strategy, loop, outputs."""
    data = load_data(cfg)
    partition = partition_from_config(cfg, data)
    spec = data.spec()
    model_fn = model_factory(cfg.model.name, spec)
    return simulate(model_fn, data, partition, strategy_from_config(cfg), rounds=cfg.rounds, seed=cfg.seed,
                    eval_every=cfg.eval.every, federated_eval=cfg.eval.federated,
                    target_accuracy=cfg.stop.target_accuracy, patience=cfg.stop.patience, out=out,
                    checkpoint_every=cfg.checkpoint.every, on_round=on_round,
                    model_meta={"model": cfg.model.name, "spec": spec, "dataset": data.name},
                    config_toml=to_toml(cfg), executor=cfg.sim.executor, engine=cfg.sim.engine,
                    ray_address=cfg.sim.ray_address, workers=cfg.sim.workers, state_dir=cfg.sim.state_dir)


def load_model(run_dir: str | Path, model_fn: Callable[[], nn.Module] | None = None) -> nn.Module:
    """The trained model of a run directory (zoo models are rebuilt from the file; pass model_fn for
    one's own architecture)."""
    path = Path(run_dir) / "model.safetensors"
    params, meta = load_model_file(path)
    if model_fn is None:
        if "model" not in meta:
            raise CheckpointError(f"{path}: the run used a custom model; pass model_fn to load_model")
        try:
            model_fn = model_factory(meta["model"], meta["spec"])
        except ConfigError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
    model = model_fn()
    load_into(model, params)
    model.eval()
    return model
