"""The run directory: atomic writes of configs, metrics, checkpoints (safetensors) and the final model; and the
small CSV files a config names (traces, tables)."""

from __future__ import annotations

import csv
import fcntl
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .errors import CheckpointError, ConfigError
from .types import RoundRecord, ServerState


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()
"""The process's umask, read once at import (reading it means setting it)."""


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over `path`. The file gets `mode`, or the
    normal permissions of a new file (0666 less the umask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~UMASK if mode is None else mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def csv_rows(path: str | Path, key: str, header: tuple[str, ...]) -> list[tuple[int, list[str]]]:
    """The non-blank rows of a small CSV file (a trace or table the config names by `key`) with their line numbers,
    without a first row that is `header` (case-insensitive; () keeps every row); a file that cannot be read is a
    ConfigError naming the key and the path. The caller converts each row and names the line of a bad one."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{key} = {str(path)!r}: cannot read it ({exc.strerror or exc})") from None
    rows = [(line, row) for line, row in enumerate(csv.reader(text.splitlines()), 1) if row]
    if header and rows and rows[0][0] == 1 and [c.strip().lower() for c in rows[0][1]] == list(header):
        rows = rows[1:]
    return rows


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def json_safe(obj: Any, where: str = "") -> tuple[Any, list[str]]:
    """`obj` with every NaN or infinite float replaced by None (standard JSON has no such literals), and the keys
    where that happened."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None, [where]
    if isinstance(obj, dict):
        out, bad = {}, []
        for k, v in obj.items():
            out[k], more = json_safe(v, f"{where}.{k}" if where else str(k))
            bad += more
        return out, bad
    if isinstance(obj, list | tuple):
        pairs = [json_safe(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return [v for v, _ in pairs], [b for _, more in pairs for b in more]
    return obj, []


def dumps(obj: dict[str, Any], **kw: Any) -> str:
    """Standard JSON of a dict: non-finite numbers become null, listed under "nonfinite"."""
    safe, bad = json_safe(obj)
    if bad:
        safe["nonfinite"] = bad
    return json.dumps(safe, allow_nan=False, **kw)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, (dumps(obj, indent=2) if isinstance(obj, dict) else json.dumps(obj, indent=2)) + "\n")


METADATA_KEY = "fedloop"
"""The one metadata key of fedloop's safetensors files: its value is canonical JSON (sorted keys), so a file's bytes
depend on its content only (safetensors writes several metadata keys in an order that varies between processes)."""


def _save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str]) -> None:
    canonical = json.dumps(metadata, sort_keys=True, separators=(",", ":"))
    atomic_write_bytes(path, save({k: v.detach().contiguous() for k, v in tensors.items()},
                                  metadata={METADATA_KEY: canonical}))


CHECKPOINT_SECTIONS = (("params", "params"), ("opt", "opt_state"), ("extras", "extras"), ("agg", "agg_state"),
                       ("transform", "transform_state"))
"""Tensor name prefix in a checkpoint -> ServerState field."""


def save_checkpoint(path: Path, state: ServerState, meta: Mapping[str, Any] | None = None,
                    clients: Mapping[str, torch.Tensor] | None = None) -> None:
    """The whole server state in one safetensors file; tensor order and scalars live in its metadata. A simulation
    adds its clients' persistent states (`clients`), so that a resumed run continues them exactly."""
    tensors, order = {}, {}
    for prefix, attr in CHECKPOINT_SECTIONS:
        part = getattr(state, attr)
        tensors.update({f"{prefix}/{k}": v for k, v in part.items()})
        order[prefix] = list(part)
    tensors.update({f"clients/{k}": v for k, v in (clients or {}).items()})
    metadata = {"format": "fedloop.server_state/2", "round": str(state.round), "seed": str(state.seed),
                "order": json.dumps(order), "meta": json.dumps(dict(meta or {}))}
    if state.excluded:
        metadata["excluded"] = json.dumps(list(state.excluded))
    _save_tensors(path, tensors, metadata)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        tensors = load_file(path)
        with safe_open(path, "pt") as f:
            metadata = f.metadata() or {}
        if METADATA_KEY in metadata:  # files of earlier versions hold the keys directly
            metadata = json.loads(metadata[METADATA_KEY])
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    return tensors, metadata


def load_checkpoint(path: Path) -> tuple[ServerState, dict[str, Any]]:
    """Inverse of save_checkpoint: the exact ServerState (same names, order, dtypes, values) and its meta. Files of
    format 1 (before the aggregator and transform states) read as states without them."""
    tensors, md = _read_safetensors(path)
    if md.get("format") not in ("fedloop.server_state/1", "fedloop.server_state/2"):
        raise CheckpointError(f"{path}: not a fedloop server-state checkpoint")
    order = json.loads(md["order"])
    parts = {attr: {k: tensors[f"{prefix}/{k}"] for k in order.get(prefix, [])}
             for prefix, attr in CHECKPOINT_SECTIONS}
    state = ServerState(round=int(md["round"]), seed=int(md["seed"]),
                        excluded=tuple(int(c) for c in json.loads(md.get("excluded", "[]"))), **parts)
    return state, json.loads(md.get("meta", "{}"))


def load_client_states(path: Path) -> dict[str, torch.Tensor]:
    """The clients' persistent states a simulation's checkpoint carries (empty when there are none)."""
    tensors, _ = _read_safetensors(path)
    return {k[len("clients/"):]: v for k, v in tensors.items() if k.startswith("clients/")}


def save_model(path: Path, params: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """The final model: plain named tensors (loadable by any safetensors reader) plus how to rebuild it."""
    _save_tensors(path, params, {"format": "fedloop.model/1", "order": json.dumps(list(params)),
                                 "meta": json.dumps(dict(meta))})


def load_model_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, md = _read_safetensors(path)
    if md.get("format") != "fedloop.model/1":
        raise CheckpointError(f"{path}: not a fedloop model file")
    return {k: tensors[k] for k in json.loads(md["order"])}, json.loads(md.get("meta", "{}"))


RUN_MARKERS = ("config.toml", "metrics.jsonl", "summary.json", "checkpoints", "run_id", ".lock")
"""What only a fedloop run directory holds: --overwrite clears nothing else."""


def prepare_run_dir(path: str | Path, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Make sure `path` can be this run's directory before anything runs, so no run mixes its files into another's
    and no run fails late: a new run needs an empty or missing directory (or `overwrite`, which clears a previous
    run's), a resumed one an existing run directory, and both a writable one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path}: exists and is not a directory")
    if path.resolve() in _HELD:
        return path  # this process prepared it already and writes it
    held = [p for p in path.iterdir() if p.name != ".lock"] if path.is_dir() else []
    if resume:
        if not held:
            raise CheckpointError(f"{path}: no run to resume here")
    elif held and not overwrite:
        raise ConfigError(f"{path}: already holds a run; --resume continues it, --overwrite replaces it")
    elif held:
        if not any((path / m).exists() for m in RUN_MARKERS):
            raise ConfigError(f"{path}: is not empty and is not a fedloop run directory; refusing to clear it")
        RunDir(path).acquire()
        for p in held:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the run directory ({exc.strerror})") from None
    RunDir(path).acquire()
    return path


@contextmanager
def run_directory(path: str | Path, *, resume: bool = False, overwrite: bool = False) -> Iterator[Path]:
    """prepare_run_dir for the body; when the body fails before the run's first round is recorded, the directory is
    left as it was found (removed when it was made here), so the same command can simply be run again."""
    path = Path(path)
    existed = path.exists()
    prepare_run_dir(path, resume=resume, overwrite=overwrite)
    try:
        yield path
    except BaseException:
        if not resume and not _has_rounds(path):
            _discard(path, existed)
        raise


def _has_rounds(path: Path) -> bool:
    metrics = path / "metrics.jsonl"
    return metrics.is_file() and metrics.stat().st_size > 0


def _discard(path: Path, existed: bool) -> None:
    """Remove what a run that never reached a round wrote (its lock and log included)."""
    RunDir(path).release()
    if not existed:
        shutil.rmtree(path, ignore_errors=True)
        return
    for p in path.iterdir():
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


_HELD: dict[Path, int] = {}
"""Run directories this process writes, with the descriptor that holds each one's lock."""


class RunDir:
    """Where one run writes its outputs: every file is replaced atomically, except metrics.jsonl, to which each
    round appends one line (flushed to disk), so a crash loses at most the line being written."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._records: list[dict[str, Any]] = []

    def checkpoint_path(self, round_: int) -> Path:
        return self.path / "checkpoints" / f"round_{round_:04d}.safetensors"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def records(self) -> list[dict[str, Any]]:
        return list(self._records)

    def start_records(self, after_round: int | None = None) -> None:
        """Begin metrics.jsonl: empty for a new run, or holding the records of rounds up to `after_round` (resuming
        after a stop; later ones, written after the checkpoint resumed from, are dropped)."""
        rows = read_metrics(self.path) if after_round is not None and self.metrics_path.is_file() else []
        self._records = [r for r in rows if r["round"] <= after_round] if after_round is not None else []
        atomic_write_text(self.metrics_path, "".join(dumps(r) + "\n" for r in self._records))

    def acquire(self) -> None:
        """Become the directory's one writer, for the life of this process (a second writer, in any process, gets a
        CheckpointError naming the holder's pid); temporary files an interrupted atomic write left are removed."""
        key = self.path.resolve()
        if key in _HELD:
            return
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CheckpointError(f"{self.path}: another process (pid {holder}) is writing this run directory") \
                from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _HELD[key] = fd
        for tmp in [*self.path.glob(".*.tmp"), *self.path.glob("checkpoints/.*.tmp")]:
            tmp.unlink(missing_ok=True)

    def release(self) -> None:
        """Stop being the directory's writer."""
        fd = _HELD.pop(self.path.resolve(), None)
        if fd is not None:
            os.close(fd)

    def latest_checkpoint(self) -> Path:
        found = sorted(self.path.glob("checkpoints/round_*.safetensors"))
        if not found:
            raise CheckpointError(f"{self.path}: no checkpoints/round_NNNN.safetensors to resume from")
        return found[-1]

    def load_latest(self) -> tuple[Path, ServerState]:
        """The newest checkpoint and its state. One that cannot be read is an error naming it and, when there is
        one, the newest earlier checkpoint that reads, and how to resume from it (nothing is removed here)."""
        path = self.latest_checkpoint()
        try:
            return path, load_checkpoint(path)[0]
        except CheckpointError as exc:
            for older in sorted(self.path.glob("checkpoints/round_*.safetensors"), reverse=True):
                if older >= path:
                    continue
                try:
                    state, _ = load_checkpoint(older)
                except CheckpointError:
                    continue
                raise CheckpointError(f"{exc}; the previous checkpoint {older.name} (round {state.round}) reads: "
                                      f"move {path.name} (and any later one) out of {path.parent} and --resume "
                                      f"again to continue from round {state.round}, losing the rounds after it") \
                    from None
            raise

    def append_record(self, record: RoundRecord) -> None:
        line = dumps(record.to_json())
        self._records.append(json.loads(line))
        with open(self.metrics_path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_json(self.path / name, obj)

    def write_text(self, name: str, text: str) -> None:
        atomic_write_text(self.path / name, text)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl; a last line cut short by a crash is left out."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; is {run_dir} a fedloop run directory?")
    text = path.read_text()
    lines = text.splitlines()
    rows = []
    for i, line in enumerate(lines, start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                if i == len(lines) and not text.endswith("\n"):
                    break  # torn by a crash mid-write
                raise CheckpointError(f"{path}:{i}: not valid JSON ({exc})") from None
    return rows
