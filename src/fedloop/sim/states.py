"""Where clients' persistent state (e.g. control variates) lives between their tasks: memory or disk."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file, save

from ..errors import CheckpointError
from ..store import atomic_write_bytes


class StateStore(Protocol):
    def get(self, client_id: int) -> dict[str, torch.Tensor] | None: ...

    def put(self, client_id: int, state: dict[str, torch.Tensor]) -> None: ...


class MemoryStates:
    """Client states in a dict: only clients that have state take memory."""

    def __init__(self) -> None:
        self._states: dict[int, dict[str, torch.Tensor]] = {}

    def get(self, client_id: int) -> dict[str, torch.Tensor] | None:
        return self._states.get(client_id)

    def put(self, client_id: int, state: dict[str, torch.Tensor]) -> None:
        self._states[client_id] = state

    def __len__(self) -> int:
        return len(self._states)


class DiskStates:
    """One safetensors file per client under `directory`, written atomically; nothing is kept in memory."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, client_id: int) -> Path:
        return self.directory / f"client_{client_id}.safetensors"

    def get(self, client_id: int) -> dict[str, torch.Tensor] | None:
        path = self.path(client_id)
        if not path.exists():
            return None
        try:
            return dict(load_file(path))
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a damaged file
            raise CheckpointError(f"{path}: cannot read client state ({exc})") from None

    def put(self, client_id: int, state: dict[str, torch.Tensor]) -> None:
        tensors = {k: v.detach().contiguous() for k, v in state.items()}
        atomic_write_bytes(self.path(client_id), save(tensors))

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("client_*.safetensors"))
