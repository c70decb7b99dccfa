"""From a validated Config to the objects it describes: the strategy with its parts, the data, the partition, the
model factory and the run's options. The simulator, the server and the client process all build from here, so a
config means the same thing in every mode."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn
from torch.nn import functional as F

from .aggregators import AGGREGATORS
from .aggregators.base import check_round_size
from .app import App, load_app
from .asynchronous import refusal
from .attacks import AttackOptions
from .attacks.options import UPDATE_ATTACKS
from .client import LocalSGD, LossFn
from .config import (
    OWN_FIELDS,
    AggregatorSection,
    Config,
    ServerOptSection,
    async_section,
    default_of,
    read_raw,
    to_toml,
    typed,
)
from .data.examples import Dataset
from .data.partition import Partition, make_partition
from .data.registry import data_source, load_dataset
from .device import resolve as resolve_device
from .errors import ConfigError, DataError
from .heterogeneity import Heterogeneity
from .loop import RoundPolicy
from .models import model_factory
from .privacy.options import PrivacyOptions, calibrate_noise, privatize
from .progress import LogOptions
from .run import CheckpointOptions, EvalOptions, RunOptions, StopOptions
from .sampling import Sampler
from .secagg.options import SecAggOptions
from .server_opt import SERVER_OPTIMIZERS
from .server_options import ServerOptions
from .sim.clock import AsyncOptions
from .sim.engines import SimOptions
from .strategies import STRATEGIES, Strategy
from .tracking import TrackingOptions
from .tracking import observers as tracking_observers
from .transforms import TRANSFORMS

log = logging.getLogger(__name__)


def _in_section(exc: ConfigError, where: str) -> ConfigError:
    """The error of a dataclass field, named by its config key."""
    if exc.key is None:
        return exc
    name = f"{where}.{exc.key}" if where else exc.key
    return ConfigError(f"{name} = {exc.value!r}: {exc.rule}", exc.key, exc.value, exc.rule)


def make(where: str, cls: Callable[..., Any], /, **values: Any) -> Any:
    """cls(**values), with a value error named by its config key."""
    try:
        return cls(**values)
    except ConfigError as exc:
        raise _in_section(exc, where) from None


def _values(section: Any) -> dict[str, Any]:
    return section.model_dump()


def choose(where: str, registry: dict[str, type], values: dict[str, Any], default: Any = None) -> Any:
    """The part a choice section names (or `default`, the strategy's own), with the keys that are set applied."""
    name = values.pop("name", None)
    given = {k: v for k, v in values.items() if v is not None}
    cls = registry[name] if name is not None else type(default)
    allowed = [f.name for f in dataclasses.fields(cls)]
    for key in given:
        if key not in allowed:
            raise ConfigError(f"{where}.{key} does not apply to {where}.name = {getattr(cls, 'name', cls)!r} "
                              f"(its keys: {', '.join(allowed)})")
    base = _asdict(default) if type(default) is cls else {}
    return make(where, cls, **{**base, **given})


def strategy_from_config(cfg: Config, calibrating: bool = False) -> Strategy:
    """The strategy the config describes, made private as [privacy] says (`calibrating`: with a stand-in noise
    multiplier, only to check the combination or calibrate it)."""
    s = _values(cfg.strategy)
    name = s.pop("name")
    cls = STRATEGIES[name]
    sampler = make("strategy", Sampler, **{f.name: s.pop(f.name) for f in dataclasses.fields(Sampler)})
    for key, value in s.items():
        if value is not None and key not in OWN_FIELDS[name]:
            mine = ", ".join(sorted(OWN_FIELDS[name])) or "none"
            raise ConfigError(f"strategy.{key} = {value!r} does not apply to strategy.name = {name!r} (its own keys: "
                              f"{mine}; every strategy takes {', '.join(f.name for f in dataclasses.fields(Sampler))})")
    own = {k: v for k, v in s.items() if k in OWN_FIELDS[name] and v is not None}
    parts: dict[str, Any] = {
        "sampler": sampler,
        "aggregator": choose("aggregator", AGGREGATORS, _values(cfg.aggregator), default_of(cls, "aggregator")),
        "server_opt": choose("server_opt", SERVER_OPTIMIZERS, _values(cfg.server_opt),
                             default_of(cls, "server_opt")),
        "transforms": tuple(choose(f"transforms[{i}]", TRANSFORMS, _values(t)) for i, t in enumerate(cfg.transforms)),
    }
    if isinstance(default_of(cls, "local"), LocalSGD):
        parts["local"] = make("client", LocalSGD, **_values(cfg.client))
    try:
        strategy = cls(**parts, **own)
    except ConfigError as exc:
        if exc.key == "server_opt":
            raise ConfigError(f"server_opt.name = {parts['server_opt'].name!r}: {exc.rule}") from None
        raise _in_section(exc, "strategy") from None
    options = privacy_options(cfg)
    if options.mode != "none" and options.noise_multiplier is None and not calibrating:
        raise ConfigError("privacy.target_epsilon: calibrate the noise multiplier first (build.calibrated)")
    secure = secagg_options(cfg)
    if options.mode == "distributed" and not secure.enabled:
        raise ConfigError("privacy.mode = 'distributed' adds its noise inside secure aggregation: set "
                          "secagg.enabled = true")
    if secure.enabled:
        try:
            strategy = dataclasses.replace(strategy, secure=secure)
        except ConfigError as exc:
            raise ConfigError(f"secagg.enabled = true: {exc}") from None
    return privatize(strategy, options, 1.0 if calibrating and options.noise_multiplier is None else None)


def secagg_options(cfg: Config) -> SecAggOptions:
    return make("secagg", SecAggOptions, **_values(cfg.secagg))


def attack_options(cfg: Config) -> AttackOptions:
    return make("attack", AttackOptions, **_values(cfg.attack))


def privacy_options(cfg: Config) -> PrivacyOptions:
    return make("privacy", PrivacyOptions, **_values(cfg.privacy))


def calibrated(cfg: Config, population: int, sizes: Sequence[int] = ()) -> Config:
    """The config with privacy.noise_multiplier set: calibrated by dp-accounting to spend privacy.target_epsilon
    in the config's rounds over `population` clients (of these example counts), when only the target is given."""
    options = privacy_options(cfg)
    if options.mode == "none" or options.noise_multiplier is not None:
        return cfg
    z = calibrate_noise(strategy_from_config(cfg, calibrating=True), options, cfg.rounds, population, sizes)
    return cfg.model_copy(update={"privacy": cfg.privacy.model_copy(update={"noise_multiplier": z})})


def run_options(cfg: Config, **more: Any) -> RunOptions:
    """The run's options from [eval], [stop], [checkpoint], [heterogeneity], seed and rounds (and `more`: out,
    observers, ...); with an `out`, [tracking]'s observers join the observers."""
    tracking = make("tracking", TrackingOptions, **_values(cfg.tracking))
    if more.get("out") is not None and tracking.backends:
        more["observers"] = (*more.get("observers", ()), *tracking_observers(tracking, more["out"], to_toml(cfg)))
    return make("", RunOptions, rounds=cfg.rounds, seed=cfg.seed, device=cfg.device,
                eval=make("eval", EvalOptions, **_values(cfg.eval)),
                stop=make("stop", StopOptions, **_values(cfg.stop)),
                checkpoint=make("checkpoint", CheckpointOptions, **_values(cfg.checkpoint)),
                heterogeneity=make("heterogeneity", Heterogeneity, **_values(cfg.heterogeneity)), **more)


def async_options(cfg: Config) -> AsyncOptions:
    return make("async", AsyncOptions, **_values(async_section(cfg)))


def sim_options(cfg: Config) -> SimOptions:
    return make("sim", SimOptions, **_values(cfg.sim))


def server_options(cfg: Config) -> ServerOptions:
    values = _values(cfg.server)
    if values["round_deadline"] is None:  # unset: the server's default deadline
        del values["round_deadline"]
    return make("server", ServerOptions, **values)


def simulation_policy(cfg: Config) -> RoundPolicy:
    """A simulation's round policy: [server] min_updates and retries, and round_deadline when it is set (a
    simulation has none by default: it repeats to the bit only when no share is cut by the clock)."""
    server = cfg.server
    return RoundPolicy(server.round_deadline, server.min_updates, server.retries)


def log_options(cfg: Config) -> LogOptions:
    return make("log", LogOptions, **_values(cfg.log))


def round_policy(options: ServerOptions) -> RoundPolicy:
    return RoundPolicy(options.round_deadline, options.min_updates, options.retries)


def _asdict(part: Any) -> dict[str, Any]:
    return dataclasses.asdict(part)


def resolve(cfg: Config, source: str) -> Config:
    """Check every value by building the parts; fill in the parts the config chose implicitly (the strategy's own
    server optimizer and its hyperparameters) so the resolved config says everything that ran."""
    try:
        strategy = strategy_from_config(cfg, calibrating=True)
        run_options(cfg)
        sim_options(cfg)
        async_options(cfg)
        server_options(cfg)
        attack_options(cfg)
        log_options(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    opt = strategy.server_opt
    strategy_section = cfg.strategy.model_copy(update={
        k: (getattr(strategy, k) if k in OWN_FIELDS[strategy.name] else None)
        for k in set().union(*OWN_FIELDS.values())})
    return cfg.model_copy(update={
        "strategy": strategy_section,
        "server_opt": ServerOptSection(name=opt.name, **_asdict(opt)),
        "aggregator": AggregatorSection(name=strategy.aggregator.name, **_asdict(strategy.aggregator))})


def validate(raw: dict[str, Any], source: str = "config") -> Config:
    """A Config from plain data, every problem one ConfigError; the result is resolved (the chosen parts' values
    filled in, as the resolved config.toml of a run shows them)."""
    return resolve(typed(raw, source), source)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a TOML config (or the embedded default when path is None), apply overrides, check and resolve it."""
    return validate(*read_raw(path, overrides))


def check_runnable(cfg: Config, deployed: bool = False, resuming: bool = False) -> None:
    """What can be known wrong before a run directory is created or any data read: where the data come from, and
    a round size that the sampler can never give or that the aggregator's assumption refuses (a simulation's
    rounds draw from partition.num_clients clients; a server's from the clients that join)."""
    make("tracking", TrackingOptions, **_values(cfg.tracking)).check_installed()
    resolve_device(cfg.device)
    app = app_from_config(cfg)
    if app is not None and app.load_data is not None:
        if cfg.data.path is None:
            raise ConfigError(f"data.path: app {cfg.app.ref!r} reads its data from a path; set data.path")
    else:
        data_source(cfg.data.name, cfg.data.path)
    strategy = strategy_from_config(cfg, calibrating=True)
    sampler = strategy.sampler
    if strategy.secure is not None:
        check_secure(cfg, strategy.secure)
    if strategy.slots(1) is not None and (why := refusal(strategy, cfg.eval.federated,
                                                          cfg.heterogeneity.stragglers)) is not None:
        raise ConfigError(why)
    if deployed and (clock := async_options(cfg)).enabled:
        raise ConfigError(f"async.duration = {clock.duration!r} sets the simulator's virtual clock; a deployment's "
                          "clients take the time they take: leave [async] out")
    if deployed:
        if sampler.clients_per_round is not None and sampler.fraction is None:
            check_round_size(strategy.aggregator, sampler.clients_per_round, "strategy.clients_per_round is")
            if strategy.secure is not None:
                check_secure_round(strategy.secure, sampler.clients_per_round, "strategy.clients_per_round is")
        return
    deadline = cfg.server.round_deadline
    if deadline is not None and cfg.sim.engine == "local" and cfg.sim.executor not in ("processes",
                                                                                       "processes-vectorized"):
        if not resuming:
            raise ConfigError(f"server.round_deadline = {deadline}: a simulation can stop waiting for worker "
                              f"processes or Ray actors, not for sim.executor = {cfg.sim.executor!r}, which trains "
                              "in this process; set sim.executor = 'processes' or sim.engine = 'ray', or leave the "
                              "deadline out")
        # a run directory of an earlier version, whose config.toml always held the server's 120 s
        log.warning("server.round_deadline = %s has no effect on sim.executor = %r, which trains in this process",
                    deadline, cfg.sim.executor)
    clients = cfg.partition.num_clients
    if sampler.clients_per_round is not None and sampler.fraction is None and sampler.clients_per_round > clients:
        raise ConfigError(f"strategy.clients_per_round = {sampler.clients_per_round}: the run has {clients} clients "
                          f"(partition.num_clients); at most {clients}")
    if not sampler.poisson:  # a Poisson round's size varies: each round is checked as it comes
        check_round_size(strategy.aggregator, sampler.num_selected(clients),
                         f"{cfg.partition.num_clients} clients with this sampler give rounds of")
        if strategy.secure is not None:
            check_secure_round(strategy.secure, sampler.num_selected(clients),
                               f"{cfg.partition.num_clients} clients with this sampler give rounds of")


def check_secure(cfg: Config, options: SecAggOptions) -> None:
    """ConfigError for the server checks and simulated attacks that need each client's plain update, which secure
    aggregation hides."""
    if cfg.server.max_update_norm is not None:
        raise ConfigError(f"server.max_update_norm = {cfg.server.max_update_norm}: the server checks each update's "
                          "norm, which secure aggregation hides from it; clients clip to secagg.clip_range instead")
    if cfg.attack.kind in UPDATE_ATTACKS and cfg.attack.fraction > 0:
        raise ConfigError(f"attack.kind = {cfg.attack.kind!r}: it rewrites plain updates on their way to the server, "
                          "which under secure aggregation receives only masked ones")


def check_secure_round(options: SecAggOptions, size: int, what: str) -> None:
    """ConfigError when rounds of `size` clients cannot run SecAgg+ with these options."""
    if (why := options.unfit(size)) is not None:
        raise ConfigError(f"{what} {size} clients: {why}")


def app_from_config(cfg: Config) -> App | None:
    """The user's App the config names ([app] ref), imported once."""
    return load_app(cfg.app.ref) if cfg.app.ref else None


def load_data(cfg: Config) -> Dataset:
    """The config's dataset: read by the App's load_data from data.path when the App has one, else by the reader
    data.name names."""
    app = app_from_config(cfg)
    d = cfg.data
    if app is not None and app.load_data is not None:
        if d.path is None:
            raise ConfigError(f"data.path: app {cfg.app.ref!r} reads its data from a path; set data.path")
        return read_with(app, d.path)
    return load_dataset(d.name, d.path, seed=cfg.seed, test_fraction=d.test_fraction, split=d.split,
                        label_column=d.label_column, test_path=d.test_path, alpha=d.alpha, beta=d.beta,
                        num_users=d.num_users)


def read_with(app: App, path: str) -> Dataset:
    """The App's data at `path`; a DataError naming the path when its reader fails."""
    assert app.load_data is not None
    try:
        data = app.load_data(path)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's reader failed: say where and why
        raise DataError(f"{path}: the app's load_data failed ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, Dataset):
        raise DataError(f"{path}: the app's load_data returned a {type(data).__name__}, not a fedloop.Dataset")
    return data


def partition_from_config(cfg: Config, data: Dataset) -> Partition:
    p = cfg.partition
    return make_partition(data, p.scheme, p.num_clients, cfg.seed, alpha=p.alpha,
                          shards_per_client=p.shards_per_client, classes_per_client=p.classes_per_client,
                          local_test_fraction=p.local_test_fraction, balance=p.balance)


def model_fn_from_config(cfg: Config, spec: dict) -> Callable[[], nn.Module]:
    """The App's model factory, or the zoo model [model] names for data of this spec."""
    app = app_from_config(cfg)
    return app.model_fn if app is not None else model_factory(cfg.model.name, spec)


def loss_from_config(cfg: Config) -> LossFn:
    app = app_from_config(cfg)
    return app.loss_fn if app is not None else F.cross_entropy


def model_meta(cfg: Config, spec: dict, dataset: str) -> dict:
    """How model.safetensors can be rebuilt: the zoo model and its data's spec (an App's model is the user's: its
    file says so, and load_model then needs its model_fn)."""
    if cfg.app.ref:
        return {"app": cfg.app.ref, "dataset": dataset}
    return {"model": cfg.model.name, "spec": spec, "dataset": dataset}
