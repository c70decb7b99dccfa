"""Validated run configuration: TOML files and `--set section.key=value` overrides.

Every problem becomes a ConfigError naming the key, the value and what is allowed.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .data.partition import SCHEMES
from .data.registry import DATASETS
from .errors import ConfigError
from .models import MODELS

DatasetName = Literal[DATASETS]  # type: ignore[valid-type]
SchemeName = Literal[SCHEMES]  # type: ignore[valid-type]
ModelName = Literal[MODELS]  # type: ignore[valid-type]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
    local_test_fraction: float = Field(0.1, ge=0, lt=1)


class ModelConfig(_Section):
    name: ModelName = "mlp"


class StrategyConfig(_Section):
    name: Literal["fedavg", "fedsgd", "fedprox", "scaffold"] = "fedavg"
    clients_per_round: int | None = Field(10, ge=1)
    fraction: float | None = Field(None, gt=0, le=1)
    sampling: Literal["uniform", "samples"] = "uniform"
    server_lr: float = Field(1.0, gt=0)
    server_momentum: float = Field(0.0, ge=0, lt=1)
    weighting: Literal["samples", "uniform"] = "samples"
    mu: float = Field(0.01, ge=0, description="FedProx's proximal weight (fedprox only)")


class ClientConfig(_Section):
    epochs: int = Field(5, ge=1)
    batch_size: int | Literal["full"] = 10
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)

    @field_validator("batch_size")
    @classmethod
    def _positive_batch(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError('must be a positive integer or "full"')
        return v


class EvalConfig(_Section):
    every: int = Field(1, ge=1)
    federated: bool = True


class StopConfig(_Section):
    target_accuracy: float | None = Field(None, gt=0, le=1)
    patience: int | None = Field(None, ge=1)


class SimConfig(_Section):
    executor: Literal["auto", "sequential", "vectorized", "processes", "processes-vectorized"] = "auto"
    engine: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    workers: int | None = Field(None, ge=1)
    state_dir: str | None = None


class ServerConfig(_Section):
    address: str = "127.0.0.1:50051"
    min_clients: int = Field(2, ge=1)
    join_timeout: float = Field(600.0, gt=0)
    round_deadline: float = Field(120.0, gt=0)
    min_updates: int = Field(1, ge=1)
    retries: int = Field(3, ge=0)


class CheckpointConfig(_Section):
    every: int = Field(10, ge=1)


class Config(_Section):
    seed: int = 0
    rounds: int = Field(40, ge=1)
    data: DataConfig = Field(default_factory=DataConfig)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    client: ClientConfig = Field(default_factory=ClientConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    stop: StopConfig = Field(default_factory=StopConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    sim: SimConfig = Field(default_factory=SimConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)


def _describe(err: dict, source: str) -> str:
    key = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("literal[", "int", "float")))
    value = err.get("input")
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        return f"{source}: unknown key {key!r}"
    if err["type"] == "literal_error":
        return f"{source}: {key} = {value!r} is not allowed; {msg[0].lower() + msg[1:]}"
    return f"{source}: {key} = {value!r}: {msg}"


def validate(raw: dict[str, Any], source: str = "config") -> Config:
    """Build a Config from plain data, turning every validation problem into one ConfigError."""
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
    """A --set value as TOML (numbers, booleans, strings, arrays); bare words are strings."""
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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a TOML config (or the embedded default when path is None) and apply overrides."""
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
    return validate(raw, source)


def to_toml(cfg: Config) -> str:
    """The resolved config as TOML (None values are left out: they mean "not set")."""
    data = cfg.model_dump(exclude_none=True)
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, values in data.items():
        if isinstance(values, dict):
            lines.append(f"\n[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")
