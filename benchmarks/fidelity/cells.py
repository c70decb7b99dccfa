"""The fidelity harness's shared part: a cell is one run of fedloop through its public config, written as one JSON
file when it ends. A finished cell is skipped; a cell whose run was interrupted resumes from its last checkpoint
(its run directory is kept beside the JSON until the cell is done).

Each table script lists its cells (a name and the --set overrides of the paper's protocol) and its published
numbers; `python benchmarks/fidelity/report.py` prints every table beside them."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedloop.build import load_config
from fedloop.experiment import run_config
from fedloop.store import atomic_write_text

RESULTS = Path(__file__).resolve().parent.parent / "results" / "fidelity"


@dataclass(frozen=True)
class Cell:
    table: str
    name: str
    settings: tuple[str, ...]
    """`--set` overrides of the embedded default config: the whole protocol of the cell."""

    @property
    def path(self) -> Path:
        return RESULTS / self.table / f"{self.name}.json"

    @property
    def run_dir(self) -> Path:
        return RESULTS / self.table / "runs" / self.name


def rounds_of(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []
    return [json.loads(line) for line in lines if line.strip()]


def run(cell: Cell, summarise: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> dict[str, Any]:
    """The cell's result: read from its JSON when it is done with the same settings, else run (or resumed) and
    written."""
    if cell.path.exists():
        done = json.loads(cell.path.read_text())
        if done.get("settings") == list(cell.settings):
            return done  # a cell whose protocol changed since runs again
    cfg = load_config(None, list(cell.settings))
    resume = (cell.run_dir / "checkpoints").is_dir() and any((cell.run_dir / "checkpoints").iterdir())
    seconds_before = sum(r.get("seconds", 0.0) for r in rounds_of(cell.run_dir)) if resume else 0.0
    start = time.perf_counter()
    run_config(cfg, cell.run_dir, resume=resume, overwrite=not resume)
    rounds = [r for r in rounds_of(cell.run_dir) if not r.get("failed")]
    out = {"table": cell.table, "cell": cell.name, "settings": list(cell.settings), "rounds": len(rounds),
           "wall_seconds": round(time.perf_counter() - start + seconds_before, 1), "resumed": resume,
           "threads": os.environ.get("OMP_NUM_THREADS"), **summarise(rounds)}
    cell.path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cell.path, json.dumps(out, indent=1) + "\n")
    shutil.rmtree(cell.run_dir)
    return out


def run_all(cells: Sequence[Cell], summarise: Callable[[list[dict[str, Any]]], dict[str, Any]],
            only: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Every cell (or those whose name contains one of `only`), in order, each printed as it ends."""
    out = []
    for cell in cells:
        if only and not any(o in cell.name for o in only):
            continue
        done = cell.path.exists() and json.loads(cell.path.read_text()).get("settings") == list(cell.settings)
        result = run(cell, summarise)
        print(f"{cell.table}/{cell.name}: {'done before' if done else 'ran'} "
              f"{json.dumps({k: v for k, v in result.items() if k not in ('settings', 'curve')})}", flush=True)
        out.append(result)
    return out


def best_accuracy(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Best and final test accuracy over the rounds, and the curve."""
    curve = [r["accuracy"] for r in rounds if "accuracy" in r]
    return {"best_accuracy": max(curve, default=None), "final_accuracy": curve[-1] if curve else None,
            "curve": [round(a, 4) for a in curve]}


def cli(doc: str, cells_of: Callable[[argparse.Namespace], list[Cell]],
        summarise: Callable[[list[dict[str, Any]]], dict[str, Any]],
        more: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """A table script's command line: --only (cells whose name contains one of these), --seed, and `more` flags."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=(), help="only cells whose name contains one of these")
    ap.add_argument("--seed", type=int, default=0)
    if more is not None:
        more(ap)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    run_all(cells_of(args), summarise, args.only)
