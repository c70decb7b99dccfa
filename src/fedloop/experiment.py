"""A whole simulation, from a Config (the CLI) or from Python objects (the API), with one code path."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .app import App, load_app
from .attacks import AttackFleet, AttackOptions, backdoor_success, poisoned
from .attacks.options import UPDATE_ATTACKS
from .build import (
    async_options,
    attack_options,
    calibrated,
    load_config,
    load_data,
    loss_from_config,
    model_fn_from_config,
    model_meta,
    partition_from_config,
    run_options,
    sim_options,
    simulation_policy,
    strategy_from_config,
)
from .client import ClientApp, LossFn
from .config import Config, differences, to_toml
from .data.examples import Dataset, Examples
from .data.partition import Partition
from .device import CPU, spread
from .device import chosen as chosen_device
from .device import resolve as resolve_device
from .errors import CheckpointError, ConfigError
from .models import model_factory
from .observers import Observer
from .params import load_into
from .run import RunOptions, train
from .sim import AppList, LocalFleet, SimOptions, make_fleet
from .sim.clock import Durations, VirtualClock
from .store import load_model_file
from .strategies import Strategy
from .types import RunResult

log = logging.getLogger(__name__)


Poison = Callable[[int, Examples], Examples]
"""(client id, its training rows) -> the rows it trains on (a malicious client's poisoned copy)."""


def build_apps(data: Dataset, partition: Partition, strategy: Strategy, model_fn: Callable[[], nn.Module],
               loss_fn: LossFn, poison: Poison | None = None, device: torch.device = CPU) -> list[ClientApp]:
    """One client app per partition entry, each holding index views into the shared arrays (on the CPU: each
    process that trains moves the arrays to `device` once)."""
    tx, ty = (data.x_train, data.y_train) if partition.test_source == "train" else (data.x_test, data.y_test)
    apps = []
    for c in range(partition.num_clients):
        train = Examples(data.x_train, data.y_train, torch.as_tensor(partition.train[c]))
        apps.append(ClientApp(c, strategy, model_fn, loss_fn, train=poison(c, train) if poison else train,
                              test=Examples(tx, ty, torch.as_tensor(partition.test[c])), device=device))
    return apps


def build_fleet(data: Dataset, partition: Partition, strategy: Strategy, model_fn: Callable[[], nn.Module],
                loss_fn: LossFn = F.cross_entropy, sim: SimOptions = SimOptions(executor="sequential"),
                poison: Poison | None = None, device: str = "cpu") -> LocalFleet:
    """The simulation fleet over a partition, its clients on `device` (a config's `device`: worker processes and
    Ray actors spread over every CUDA device for "auto" and "cuda")."""
    apps = build_apps(data, partition, strategy, model_fn, loss_fn, poison, resolve_device(device))
    return make_fleet(AppList(apps), sim, spread(device))


def attacked(cfg: Config, data: Dataset, partition: Partition
             ) -> tuple[AttackOptions, frozenset[int], Poison | None, Callable[[nn.Module], dict] | None]:
    """The config's attack: its malicious clients, how their data are poisoned, and the backdoor's metric."""
    attack = attack_options(cfg)
    bad = attack.malicious(range(partition.num_clients))
    if attack.kind == "none":
        return attack, bad, None, None
    high = float(data.x_train.max())
    if attack.kind == "backdoor" and not 0 <= attack.target < data.num_classes:
        raise ConfigError(f"attack.target = {attack.target}: the data have classes 0..{data.num_classes - 1}")

    def poison(c: int, rows: Examples) -> Examples:
        return poisoned(rows, attack, data.num_classes, c, high) if c in bad else rows

    metric = None
    if attack.kind == "backdoor":
        def metric(model: nn.Module) -> dict:
            return {"backdoor_success": backdoor_success(model, data.x_test, data.y_test, attack.target, high)}
    log.info("attack %s: clients %s are malicious", attack.kind, sorted(bad))
    return attack, bad, poison, metric


def simulate(model_fn: Callable[[], nn.Module] | App, data: Dataset, partition: Partition, strategy: Strategy,
             options: RunOptions = RunOptions(), *, loss_fn: LossFn | None = None, sim: SimOptions = SimOptions(),
             model_meta: dict[str, Any] | None = None, config_toml: str | None = None) -> RunResult:
    """Federated training of `model_fn()` over `partition` of `data` with `strategy` (an App gives the model
    factory and the loss, as it does for `fedloop server` and `fedloop client`).

    With options.out, the run directory gets config.toml (when given), partition.json, metrics.jsonl,
    checkpoints/round_NNNN.safetensors, model.safetensors, summary.json and curves.png. `sim` chooses how clients
    run (executor, engine); every choice gives the same result within float tolerance. options.device says where
    clients train and the server evaluates ("auto": CUDA when there is one).
    """
    if isinstance(model_fn, App):
        loss_fn = loss_fn or model_fn.loss_fn
        model_fn = model_fn.model_fn
    loss_fn = loss_fn or F.cross_entropy
    fleet = build_fleet(data, partition, strategy, model_fn, loss_fn, sim, device=options.device)
    try:
        return train(fleet, model_fn, strategy, options, test=Examples.all(data.x_test, data.y_test),
                     loss_fn=loss_fn, partition_json=partition_json(data, partition), model_meta=model_meta,
                     config_toml=config_toml)
    finally:
        fleet.close()


def partition_json(data: Dataset, partition: Partition) -> dict:
    """partition.json, with the label counts when the data are labelled by class."""
    return partition.to_json(data.y_train.numpy(), data.num_classes)


def run_config(cfg: Config, out: str | Path | None = None, observers: tuple[Observer, ...] = (), *,
               resume: bool = False, overwrite: bool = False) -> RunResult:
    """Everything `fedloop run` does after parsing: data, partition, model, strategy, fleet, loop, outputs. The
    resolved config.toml names the executor that ran (what `auto` chose), so running it repeats the run. With
    `resume`, the run continues the one in `out`, whose config must agree in everything that changes the
    computation (its rounds may grow)."""
    if resume:
        if out is None:
            raise ConfigError("resuming needs the run directory")
        saved = load_config(Path(out) / "config.toml")
        if cfg.sim.executor == "auto":  # compare what it resolves to, once the fleet is built
            cfg = cfg.model_copy(update={"sim": cfg.sim.model_copy(update={"executor": saved.sim.executor})})
        if cfg.privacy.noise_multiplier is None and cfg.privacy.target_epsilon == saved.privacy.target_epsilon:
            cfg = cfg.model_copy(update={"privacy": cfg.privacy.model_copy(
                update={"noise_multiplier": saved.privacy.noise_multiplier})})  # the calibration it ran with
        if changed := differences(cfg, saved):
            raise ConfigError(f"{out}: cannot resume with a config that changes the computation: "
                              f"{', '.join(changed)} differ from its config.toml")
    data = load_data(cfg)
    partition = partition_from_config(cfg, data)
    cfg = calibrated(cfg, partition.num_clients, [len(t) for t in partition.train])
    spec = data.spec()
    model_fn = model_fn_from_config(cfg, spec)
    loss_fn = loss_from_config(cfg)
    strategy = strategy_from_config(cfg)
    attack, bad, poison, metric = attacked(cfg, data, partition)
    cfg = cfg.model_copy(update={"device": chosen_device(cfg.device)})  # what "auto" chose: config.toml says it
    fleet: Any = build_fleet(data, partition, strategy, model_fn, loss_fn, sim_options(cfg), poison, cfg.device)
    if attack.kind in UPDATE_ATTACKS:
        fleet = AttackFleet(fleet, attack, bad)
    if (clock := async_options(cfg)).enabled:
        fleet = VirtualClock(fleet, Durations(clock, cfg.seed))
    try:
        if cfg.sim.engine == "local":
            cfg = cfg.model_copy(update={"sim": cfg.sim.model_copy(update={"executor": fleet.chosen})})
        return train(fleet, model_fn, strategy,
                     run_options(cfg, out=out, observers=observers, resume=resume, overwrite=overwrite,
                                 policy=simulation_policy(cfg)),
                     test=Examples.all(data.x_test, data.y_test), loss_fn=loss_fn,
                     partition_json=partition_json(data, partition), model_meta=model_meta(cfg, spec, data.name),
                     config_toml=to_toml(cfg), extra_metrics=metric)
    finally:
        fleet.close()


def load_model(run_dir: str | Path, model_fn: Callable[[], nn.Module] | App | None = None) -> nn.Module:
    """The trained model of a run directory (zoo models are rebuilt from the file, an App's from its reference when
    it can be imported here; pass model_fn or the App for one's own architecture)."""
    path = Path(run_dir) / "model.safetensors"
    params, meta = load_model_file(path)
    if isinstance(model_fn, App):
        model_fn = model_fn.model_fn
    if model_fn is None:
        try:
            if "app" in meta:
                model_fn = load_app(meta["app"]).model_fn
            elif "model" in meta:
                model_fn = model_factory(meta["model"], meta["spec"])
            else:
                raise ConfigError("the run used a custom model; pass model_fn to load_model")
        except ConfigError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
    model = model_fn()
    load_into(model, params)
    model.eval()
    return model
