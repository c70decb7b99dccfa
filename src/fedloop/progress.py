"""What a run says while it runs, wherever its output goes: in a terminal, a live progress bar with log lines
printed above it (never into it); elsewhere (CI, nohup, a pipe, and always for the server), one plain line per
round on stdout; and the same lines, with every log line, in the run directory's log.txt."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn

from . import checks
from .observers import Observer
from .types import RoundRecord, ServerState

ROUNDS = logging.getLogger("fedloop.rounds")
"""Where the per-round lines go: stdout when there is no live bar, and log.txt."""

SHOWN = ("loss", "accuracy", "fed_loss", "fed_accuracy", "epsilon")
PLAIN = "%(levelname)s %(name)s: %(message)s"
STAMPED = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def round_line(record: RoundRecord) -> str:
    """round N: clients, failures, train loss, evaluation metrics, seconds."""
    parts = [f"round {record.round}: {record.updates} updates, {len(record.failures)} failures"]
    if record.train_loss is not None:
        parts.append(f"train_loss {record.train_loss:.4f}")
    parts += [f"{k} {v:.4f}" for k, v in record.metrics.items() if k in SHOWN and v is not None]
    parts.append(f"{record.seconds:.2f} s")
    return ", ".join(parts) + (" (failed; retried)" if record.failed else "")


class RoundLines(Observer):
    """One line per round (failed attempts included)."""

    def round(self, record: RoundRecord, state: ServerState) -> None:
        ROUNDS.info(round_line(record))


class ProgressBar(Observer):
    """The live bar of `fedloop run` in a terminal: rounds done, train loss, the latest test loss and accuracy,
    ETA; it fits 80 columns."""

    def __init__(self, progress: Progress, total: int):
        self.progress = progress
        self.bar = progress.add_task("rounds", total=total, status="")
        self.latest: dict[str, float] = {}

    def round(self, record: RoundRecord, state: ServerState) -> None:
        self.latest.update({k: v for k, v in record.metrics.items() if k in ("loss", "accuracy") and v is not None})
        parts = [f"train {record.train_loss:.3f}" if record.train_loss is not None else "no updates"]
        parts += [f"{'acc' if k == 'accuracy' else k} {v:.3f}" for k, v in self.latest.items()]
        self.progress.update(self.bar, completed=state.round, status="  ".join(parts))


def columns() -> list[ProgressColumn | str]:
    return [TextColumn("round"), MofNCompleteColumn(), BarColumn(bar_width=12), TextColumn("{task.fields[status]}"),
            TextColumn("ETA"), TimeRemainingColumn()]


def setup_logging(level: str, console: Console, live: bool, rounds: bool = True) -> None:
    """fedloop's log lines at `level` on stderr (above the live bar when there is one); round lines on stdout
    when `rounds` and no bar shows them."""
    root = logging.getLogger()
    root.handlers.clear()
    handler: logging.Handler
    if live:
        handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(PLAIN))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("fedloop").setLevel(level.upper())
    ROUNDS.propagate = False
    ROUNDS.handlers.clear()
    ROUNDS.setLevel(logging.INFO)
    if rounds and not live:
        out = logging.StreamHandler(sys.stdout)
        out.setFormatter(logging.Formatter("%(message)s"))
        ROUNDS.addHandler(out)


@dataclass(frozen=True)
class LogOptions:
    """The run directory's log.txt is rotated (to log.txt.1, .2, ...) when it reaches `max_bytes`, keeping
    `backups` earlier files: whatever anyone makes the server log, the log takes at most (backups + 1) * max_bytes."""

    max_bytes: int = 10 << 20
    backups: int = 4

    def __post_init__(self) -> None:
        checks.at_least(self, "max_bytes", 1 << 16)
        checks.at_least(self, "backups", 1)


@contextmanager
def log_to(run_dir: Path, options: LogOptions = LogOptions()) -> Iterator[None]:
    """Every log line and round line of this process also to RUN_DIR/log.txt (appended: a resumed run adds to it,
    rotated as `options` say), until the block ends."""
    handler = logging.handlers.RotatingFileHandler(Path(run_dir) / "log.txt", maxBytes=options.max_bytes,
                                                   backupCount=options.backups, encoding="utf-8")
    handler.setFormatter(logging.Formatter(STAMPED))
    logging.getLogger().addHandler(handler)
    ROUNDS.addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        ROUNDS.removeHandler(handler)
        handler.close()


def new_progress(console: Console, live: bool) -> Progress:
    return Progress(*columns(), console=console, disable=not live)
