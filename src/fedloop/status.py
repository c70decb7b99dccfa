"""What a run directory says about its run, running or finished: `fedloop status` (and the dashboard) read it from
the files a run writes (config.toml, metrics.jsonl, summary.json) and the lock its writer holds (.lock), so the
status of a run never needs the process that runs it."""

from __future__ import annotations

import fcntl
import json
import os
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, FedloopError
from .store import read_metrics

FINISHED = ("rounds", "target_accuracy", "patience")
"""Stop reasons of a run that ended as it should."""
SHOWN = ("accuracy", "loss", "fed_accuracy", "fed_personal_accuracy", "train_loss")
"""The last round's metrics a status shows, where the run has them."""
ETA_ROUNDS = 5
"""The ETA is the mean time of this many last rounds times the rounds left."""


@dataclass(frozen=True)
class RunStatus:
    """A run directory's state. `status`: running (its writer holds the lock), finished, interrupted, diverged,
    privacy_budget, or stopped (no writer and no summary: the process ended without writing its last files)."""

    run_dir: str
    status: str
    round: int
    rounds: int | None
    strategy: str | None
    dataset: str | None
    pid: int | None = None
    elapsed_seconds: float = 0.0
    eta_seconds: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    epsilon: float | None = None
    max_epsilon: float | None = None
    delta: float | None = None
    failures: int = 0
    """Clients that failed in the newest round (completed or not)."""
    failed_clients: list[dict[str, Any]] = field(default_factory=list)
    failed_attempts: int = 0
    """Attempts of the round in progress that failed (retried rounds)."""
    stop_reason: str | None = None
    updated_seconds_ago: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def writer_pid(run_dir: Path) -> int | None:
    """The pid of the process that holds the run directory's lock (it is writing the run), or None."""
    lock = run_dir / ".lock"
    if not lock.is_file():
        return None
    fd = os.open(lock, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = lock.read_text().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def read_status(run_dir: str | Path) -> RunStatus:
    """The status of the run in `run_dir`; a FedloopError names a directory that is missing or holds no run."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ConfigError(f"{path}: no such run directory")
    if not (path / "config.toml").is_file() and not (path / "metrics.jsonl").is_file():
        raise ConfigError(f"{path}: not a fedloop run directory (it has no config.toml and no metrics.jsonl)")
    config = _config(path)
    rows = read_metrics(path) if (path / "metrics.jsonl").is_file() else []
    done = [r for r in rows if not r.get("failed")]
    summary = _json(path / "summary.json")
    pid = writer_pid(path)
    stop = summary.get("stop_reason") if summary and pid is None else None
    status = "running" if pid is not None else ("finished" if stop in FINISHED else stop or "stopped")
    last = rows[-1] if rows else {}
    rounds = config.get("rounds")
    current = done[-1]["round"] if done else 0
    eta = None
    if status == "running" and isinstance(rounds, int) and done:
        recent = [r["seconds"] for r in done[-ETA_ROUNDS:] if isinstance(r.get("seconds"), int | float)]
        eta = sum(recent) / len(recent) * max(rounds - current, 0) if recent else None
    with_eps = [r for r in done if isinstance(r.get("epsilon"), int | float)]
    privacy = config.get("privacy", {}) if isinstance(config.get("privacy"), dict) else {}
    metrics_file = path / "metrics.jsonl"
    return RunStatus(
        run_dir=str(path), status=status, round=current, rounds=rounds if isinstance(rounds, int) else None,
        strategy=_get(config, "strategy", "name"), dataset=_get(config, "data", "name"), pid=pid,
        elapsed_seconds=round(sum(float(r.get("seconds", 0.0)) for r in rows), 3), eta_seconds=eta,
        metrics={k: done[-1][k] for k in SHOWN if done and isinstance(done[-1].get(k), int | float)},
        epsilon=with_eps[-1]["epsilon"] if with_eps else None, max_epsilon=privacy.get("max_epsilon"),
        delta=privacy.get("delta") if with_eps else None, failures=int(last.get("failures", 0)),
        failed_clients=list(last.get("failed_clients", []))[:5],
        failed_attempts=len(rows) - (rows.index(done[-1]) + 1 if done else 0), stop_reason=stop,
        updated_seconds_ago=round(time.time() - metrics_file.stat().st_mtime, 1) if metrics_file.is_file() else None)


def _config(path: Path) -> dict[str, Any]:
    file = path / "config.toml"
    if not file.is_file():
        return {}
    try:
        return tomllib.loads(file.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: not a readable TOML config ({exc})") from None


def _json(file: Path) -> dict[str, Any] | None:
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FedloopError(f"{file}: not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else None


def _get(config: dict[str, Any], section: str, key: str) -> str | None:
    value = config.get(section, {}).get(key) if isinstance(config.get(section), dict) else None
    return value if isinstance(value, str) else None


def describe(s: RunStatus) -> list[tuple[str, str]]:
    """The status as (label, value) lines, for the terminal."""
    rounds = f"{s.round} of {s.rounds}" if s.rounds is not None else str(s.round)
    lines = [("run", s.run_dir), ("status", s.status + (f" (pid {s.pid})" if s.pid and s.pid > 0 else "")),
             ("algorithm", f"{s.strategy or '?'} on {s.dataset or '?'}"), ("round", rounds),
             ("elapsed", _duration(s.elapsed_seconds))]
    if s.eta_seconds is not None:
        lines.append(("eta", _duration(s.eta_seconds)))
    lines += [(k, f"{v:.4f}") for k, v in s.metrics.items()]
    if s.epsilon is not None:
        budget = f" of max {s.max_epsilon:g}" if s.max_epsilon is not None else ""
        lines.append(("epsilon", f"{s.epsilon:.4g}{budget} (delta {s.delta:g})" if s.delta else f"{s.epsilon:.4g}"))
    lines.append(("failures", f"{s.failures} in the newest round" + (
        ": " + "; ".join(f"client {f.get('client')}: {f.get('reason')}" for f in s.failed_clients)
        if s.failed_clients else "")))
    if s.failed_attempts:
        lines.append(("retrying", f"{s.failed_attempts} failed attempt(s) of round {s.round + 1}"))
    if s.updated_seconds_ago is not None:
        lines.append(("updated", f"{_duration(s.updated_seconds_ago)} ago"))
    return lines


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else (f"{m}m {sec:02d}s" if m else f"{sec}s")
