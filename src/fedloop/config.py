"""Validated run configuration: TOML files and `--set section.key=value` overrides.

The sections that configure fedloop's parts are derived from the dataclasses that are those parts, so their
defaults are the only defaults: [strategy] from the Sampler and the strategies' own fields, [client] from
LocalSGD, [aggregator], [server_opt] and [[transforms]] from the aggregators, server optimizers and transforms,
[eval], [stop] and [checkpoint] from the run options, [sim] from SimOptions and [server] from ServerOptions. This
module reads and checks types; the dataclasses check values (in __post_init__) when build.validate builds them
(build.load_config reads, checks and resolves a file). Every problem becomes one ConfigError naming the file, the
key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from .aggregators import AGGREGATORS
from .attacks import AttackOptions
from .client import LocalSGD
from .data.partition import SCHEMES
from .data.registry import DATASETS
from .device import NAMES as DEVICE_NAMES
from .errors import ConfigError
from .heterogeneity import Heterogeneity
from .models import MODELS
from .privacy.options import PrivacyOptions
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
from .transforms import TRANSFORMS

DatasetName = Literal[DATASETS]  # type: ignore[valid-type]
SchemeName = Literal[SCHEMES]  # type: ignore[valid-type]
ModelName = Literal[MODELS]  # type: ignore[valid-type]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _fields(cls: type, optional: bool = False, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A dataclass's fields as pydantic field definitions: its types and defaults (or None: unset)."""
    hints = get_type_hints(cls)
    out: dict[str, Any] = {}
    own = list(cls.__dict__.get("__annotations__", {}))
    for f in sorted(dataclasses.fields(cls), key=lambda f: own.index(f.name) if f.name in own else len(own)):
        if f.name in skip or not f.init:
            continue
        out[f.name] = (hints[f.name] | None, None) if optional else (hints[f.name], field_default(f))
    return out


def field_default(f: dataclasses.Field) -> Any:
    """A dataclass field's default value (a fresh one from its factory)."""
    if callable(f.default_factory):
        return f.default_factory()
    return f.default


def section(name: str, *classes: type, optional: bool = False, extra: dict[str, Any] | None = None) -> type:
    """A config section with the fields of `classes` (the first to define a field wins)."""
    fields: dict[str, Any] = dict(extra or {})
    for cls in classes:
        fields.update({k: v for k, v in _fields(cls, optional).items() if k not in fields})
    return create_model(name, __base__=_Section, **fields)


def choice_section(name: str, registry: dict[str, type], required: bool = False) -> type:
    """A section for one of several classes: `name` picks the class (unset: the strategy's own), and the union of
    their fields may be set (each checked against the chosen class when it is built)."""
    names = Literal[tuple(registry)]  # type: ignore[valid-type]
    return section(name, *registry.values(), optional=True,
                   extra={"name": (names, ...) if required else (names | None, None)})


_BASE_FIELDS = frozenset(f.name for f in dataclasses.fields(Strategy))
OWN_FIELDS: dict[str, set[str]] = {
    name: {f.name for f in dataclasses.fields(cls)} - _BASE_FIELDS for name, cls in STRATEGIES.items()}
"""Each strategy's own hyperparameters (e.g. FedProx's mu), which [strategy] holds next to the sampler's."""

if TYPE_CHECKING:
    class _Built(_Section):
        """What a type checker sees of a section built at import time: fields of any type."""

        def __init__(self, **values: Any) -> None: ...

        def __getattr__(self, name: str) -> Any: ...

    StrategySection: TypeAlias = _Built
    ClientSection: TypeAlias = _Built
    AggregatorSection: TypeAlias = _Built
    ServerOptSection: TypeAlias = _Built
    TransformSection: TypeAlias = _Built
    EvalSection: TypeAlias = _Built
    StopSection: TypeAlias = _Built
    CheckpointSection: TypeAlias = _Built
    LogSection: TypeAlias = _Built
    SimSection: TypeAlias = _Built
    ServerSection: TypeAlias = _Built
    PrivacySection: TypeAlias = _Built
    AttackSection: TypeAlias = _Built
    SecAggSection: TypeAlias = _Built
    HeterogeneitySection: TypeAlias = _Built
    TrackingSection: TypeAlias = _Built
    AsyncSection: TypeAlias = _Built
else:
    StrategySection = create_model(
        "StrategySection", __base__=_Section, name=(Literal[tuple(STRATEGIES)], "fedavg"), **_fields(Sampler),
        **{k: v for cls in STRATEGIES.values() for k, v in _fields(cls, optional=True, skip=_BASE_FIELDS).items()})
    ClientSection = section("ClientSection", LocalSGD)
    AggregatorSection = choice_section("AggregatorSection", AGGREGATORS)
    ServerOptSection = choice_section("ServerOptSection", SERVER_OPTIMIZERS)
    TransformSection = choice_section("TransformSection", TRANSFORMS, required=True)
    EvalSection = section("EvalSection", EvalOptions)
    StopSection = section("StopSection", StopOptions)
    CheckpointSection = section("CheckpointSection", CheckpointOptions)
    LogSection = section("LogSection", LogOptions)
    SimSection = section("SimSection", SimOptions)
    ServerSection = section("ServerSection", ServerOptions,  # unset: a server's default, no deadline in a simulation
                            extra={"round_deadline": (float | None, None)})
    PrivacySection = section("PrivacySection", PrivacyOptions)
    AttackSection = section("AttackSection", AttackOptions)
    SecAggSection = section("SecAggSection", SecAggOptions)
    HeterogeneitySection = section("HeterogeneitySection", Heterogeneity)
    TrackingSection = section("TrackingSection", TrackingOptions)
    AsyncSection = section("AsyncSection", AsyncOptions)

MOVED = {"server_lr": ("server_opt", "lr"), "server_momentum": ("server_opt", "momentum"),
         "weighting": ("aggregator", "weighting")}
"""[strategy] keys of earlier versions and where they live now; configs that use them keep working."""


class DataConfig(_Section):
    name: DatasetName = "digits"
    path: str | None = None
    test_path: str | None = None
    test_fraction: float = Field(0.2, gt=0, lt=1)
    split: str = "balanced"
    label_column: str = "label"
    alpha: float = Field(1.0, ge=0)
    beta: float = Field(1.0, ge=0)
    num_users: int = Field(30, ge=1)


class PartitionConfig(_Section):
    scheme: SchemeName = "dirichlet"
    num_clients: int = Field(20, ge=1)
    alpha: float = Field(0.5, gt=0)
    shards_per_client: int = Field(2, ge=1)
    classes_per_client: int = Field(2, ge=1)
    balance: bool = False
    local_test_fraction: float = Field(0.1, ge=0, lt=1)


class ModelConfig(_Section):
    name: ModelName = "mlp"


class AppConfig(_Section):
    ref: str | None = Field(None, pattern=r"^[^:]+:[A-Za-z_][A-Za-z0-9_]*$")
    """The user's own model, loss and data reader ("package.module:name" or "file.py:name"; see fedloop.App)."""


def default_of(cls: type, name: str) -> Any:
    """The default of dataclass `cls`'s field `name`."""
    return next(field_default(f) for f in dataclasses.fields(cls) if f.name == name)


class Config(_Section):
    seed: int = default_of(RunOptions, "seed")
    rounds: int = default_of(RunOptions, "rounds")
    device: str = Field(default_of(RunOptions, "device"), pattern=DEVICE_NAMES.pattern)
    data: DataConfig = Field(default_factory=lambda: DataConfig())
    partition: PartitionConfig = Field(default_factory=lambda: PartitionConfig())
    model: ModelConfig = Field(default_factory=lambda: ModelConfig())
    app: AppConfig = Field(default_factory=lambda: AppConfig())
    strategy: StrategySection = Field(default_factory=StrategySection)
    client: ClientSection = Field(default_factory=ClientSection)
    aggregator: AggregatorSection = Field(default_factory=AggregatorSection)
    server_opt: ServerOptSection = Field(default_factory=ServerOptSection)
    transforms: list[TransformSection] = Field(default_factory=list)
    privacy: PrivacySection = Field(default_factory=PrivacySection)
    secagg: SecAggSection = Field(default_factory=SecAggSection)
    heterogeneity: HeterogeneitySection = Field(default_factory=HeterogeneitySection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    attack: AttackSection = Field(default_factory=AttackSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    stop: StopSection = Field(default_factory=StopSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    log: LogSection = Field(default_factory=LogSection)
    sim: SimSection = Field(default_factory=SimSection)
    server: ServerSection = Field(default_factory=ServerSection)


if not TYPE_CHECKING:  # [async]: a keyword in Python, so the field is added by name (read it with async_section)
    Config = create_model("Config", __base__=Config, **{"async": (AsyncSection, Field(default_factory=AsyncSection))})


def async_section(cfg: Config) -> Any:
    """The config's [async] section."""
    return getattr(cfg, "async")


def _describe(err: Any, source: str) -> str:
    key = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("literal[", "int", "float", "function-")))
    value = err.get("input")
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        return f"{source}: unknown key {key!r}"
    if err["type"] == "literal_error":
        return f"{source}: {key} = {value!r} is not allowed; {msg[0].lower() + msg[1:]}"
    if err["type"] == "missing":
        return f"{source}: {key} is required"
    return f"{source}: {key} = {value!r}: {msg}"


def _move_keys(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """Move [strategy] keys of earlier versions (server_lr, server_momentum, weighting) to their sections."""
    strategy = raw.get("strategy")
    if not isinstance(strategy, dict) or not set(MOVED) & set(strategy):
        return raw
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for old, (where, key) in MOVED.items():
        if old in out["strategy"]:
            target = out.setdefault(where, {})
            if not isinstance(target, dict):
                continue  # pydantic reports the section's type
            if key in target:
                raise ConfigError(f"{source}: strategy.{old} and {where}.{key} are one setting; keep {where}.{key}")
            target[key] = out["strategy"].pop(old)
    return out


def typed(raw: dict[str, Any], source: str = "config") -> Config:
    """A Config from plain data with its types checked (values are checked when build.validate builds the parts);
    every problem becomes one ConfigError."""
    raw = _move_keys(raw, source)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        seen, lines = set(), []
        for err in exc.errors():
            line = _describe(err, source)
            if line not in seen:
                seen.add(line)
                lines.append(line)
        raise ConfigError("\n".join(lines)) from None


def parse_value(text: str) -> Any:
    """A --set value as TOML (numbers, booleans, strings, arrays, inline tables); bare words are strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` overrides to a raw config dict (validated afterwards with the file)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        node = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {p!r} is a value, not a section")
            node = nxt
        node[parts[-1]] = parse_value(text.strip())
    return out


def read_raw(path: str | Path | None = None, overrides: list[str] | None = None) -> tuple[dict[str, Any], str]:
    """A TOML config's plain data (the embedded default's when path is None) with overrides applied, and how to
    name its source in errors."""
    raw: dict[str, Any] = {}
    source = "default config"
    if path is not None:
        source = str(path)
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    if overrides:
        raw = apply_overrides(raw, overrides)
        source += " with --set"
    return raw, source


def to_toml(cfg: Config) -> str:
    """The resolved config as TOML (None values are left out: they mean "not set")."""
    data = cfg.model_dump(exclude_none=True)
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict | list)]
    for name, values in data.items():
        if isinstance(values, dict):
            lines.append(f"\n[{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    for name, items in data.items():
        if isinstance(items, list):
            for item in items:
                lines.append(f"\n[[{name}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


COMPUTATION = ("seed", "data", "partition", "model", "app", "strategy", "client", "aggregator", "server_opt",
               "transforms", "privacy", "secagg", "attack", "heterogeneity", "async", "sim.executor", "sim.engine",
               "sim.workers")
"""What changes a run's arithmetic: a resumed run must keep all of it (its rounds, evaluation, stop conditions and
checkpoints may change)."""


def differences(a: Config, b: Config, keys: tuple[str, ...] = COMPUTATION) -> list[str]:
    """The dotted keys among `keys` (sections or section.key) whose values differ between two configs."""
    def flat(cfg: Config) -> dict[str, Any]:
        data = cfg.model_dump(mode="json")
        out: dict[str, Any] = {}
        for key in keys:
            section, _, name = key.partition(".")
            value = data[section]
            if name:
                out[key] = value.get(name)
            elif isinstance(value, dict):
                out.update({f"{section}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return out

    fa, fb = flat(a), flat(b)
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))
