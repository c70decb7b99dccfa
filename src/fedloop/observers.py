"""Observers: what a run does with its events besides training — the run-directory writer and the checkpointer
here, the command line's progress display, later a dashboard. Each gets the run's start, every round record
(failed attempts included) with the state after it, and the run's result, in the order they are given."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .report import plot_curves, run_title
from .store import RunDir, save_checkpoint, save_model
from .types import RoundRecord, RunResult, ServerState


class Observer:
    """The shared base: every event is ignored, so an observer overrides only the ones it needs."""

    def start(self, state: ServerState, resumed: bool) -> None:
        pass

    def round(self, record: RoundRecord, state: ServerState) -> None:
        pass

    def end(self, result: RunResult) -> None:
        pass


class RunDirWriter(Observer):
    """config.toml and partition.json at the start, one metrics.jsonl line per round, and at the end
    model.safetensors, summary.json and curves.png."""

    def __init__(self, run: RunDir, meta: dict[str, Any], config_toml: str | None = None,
                 partition_json: dict | None = None):
        self.run = run
        self.meta = meta
        self.config_toml = config_toml
        self.partition_json = partition_json

    def start(self, state: ServerState, resumed: bool) -> None:
        if self.config_toml is not None:  # a resumed run's may hold more rounds
            self.run.write_text("config.toml", self.config_toml)
        if resumed:
            self.run.start_records(after_round=state.round)
            return
        if self.partition_json is not None:
            self.run.write_json("partition.json", self.partition_json)
        self.run.start_records()

    def round(self, record: RoundRecord, state: ServerState) -> None:
        self.run.append_record(record)

    def end(self, result: RunResult) -> None:
        save_model(self.run.path / "model.safetensors", result.state.params, self.meta)
        self.run.write_json("summary.json", result.summary)
        plot_curves(self.run.records, self.run.path / "curves.png", run_title(self.meta))


class Checkpointer(Observer):
    """The full server state in checkpoints/round_NNNN.safetensors: the initial state, every `every` completed
    rounds, and the last; with `clients` (a simulation's client states, flat), those too."""

    def __init__(self, run: RunDir, every: int, meta: dict[str, Any],
                 clients: Callable[[], dict[str, torch.Tensor]] | None = None):
        self.run = run
        self.every = every
        self.meta = meta
        self.clients = clients

    def save(self, state: ServerState) -> None:
        save_checkpoint(self.run.checkpoint_path(state.round), state, self.meta,
                        self.clients() if self.clients is not None else None)

    def start(self, state: ServerState, resumed: bool) -> None:
        if not resumed:
            self.save(state)

    def round(self, record: RoundRecord, state: ServerState) -> None:
        if not record.failed and state.round % self.every == 0:
            self.save(state)

    def end(self, result: RunResult) -> None:
        self.save(result.state)
