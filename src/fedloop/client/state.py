"""A client's persistent state (e.g. SCAFFOLD's control variate), kept with the round it came from, in memory
or on disk, in every mode: simulation, worker processes and the deployed client process alike.

The server may run a round again: a failed round is retried, and a server resumed from its checkpoint redoes the
round it lost. A client that already answered such a round must start it again from the state it started with,
not from the state its lost reply produced; so the record of a client keeps both.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file, save

from ..errors import CheckpointError
from ..store import atomic_write_bytes

log = logging.getLogger(__name__)

ClientState = Mapping[str, torch.Tensor]


class StateStore(Protocol):
    def get(self, client_id: int) -> dict[str, torch.Tensor] | None: ...

    def put(self, client_id: int, record: dict[str, torch.Tensor]) -> None: ...

    def ids(self) -> list[int]:
        """The clients that have a record."""
        ...

    def clear(self) -> None: ...


class MemoryStates:
    """Records in a dict: only clients that have state take memory."""

    def __init__(self) -> None:
        self._records: dict[int, dict[str, torch.Tensor]] = {}

    def get(self, client_id: int) -> dict[str, torch.Tensor] | None:
        return self._records.get(client_id)

    def put(self, client_id: int, record: dict[str, torch.Tensor]) -> None:
        self._records[client_id] = record

    def ids(self) -> list[int]:
        return sorted(self._records)

    def clear(self) -> None:
        self._records.clear()

    def __len__(self) -> int:
        return len(self._records)


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

    def put(self, client_id: int, record: dict[str, torch.Tensor]) -> None:
        tensors = {k: v.detach().contiguous() for k, v in record.items()}
        atomic_write_bytes(self.path(client_id), save(tensors))

    def ids(self) -> list[int]:
        return sorted(int(p.stem[len("client_"):]) for p in self.directory.glob("client_*.safetensors"))

    def clear(self) -> None:
        for p in self.directory.glob("client_*.safetensors"):
            p.unlink()

    def __len__(self) -> int:
        return len(self.ids())


class RoundStates:
    """The state a client starts each fit round with, over a StateStore: a record holds the round of the client's
    last committed fit and its state before and after it."""

    def __init__(self, store: StateStore | None = None):
        self.store: StateStore = store if store is not None else MemoryStates()

    def start(self, client_id: int, round_: int) -> dict[str, torch.Tensor]:
        record = self.store.get(client_id)
        if record is None:
            return {}
        last = int(record["round"])
        if round_ < last:
            log.warning("client %d: round %d is older than round %d, which its state comes from; the server lost "
                        "rounds, so the client continues from its newest state", client_id, round_, last)
        which = "before/" if round_ == last else "after/"
        return {k[len(which):]: v for k, v in record.items() if k.startswith(which)}

    def commit(self, client_id: int, round_: int, before: ClientState, after: ClientState) -> None:
        record = {"round": torch.tensor(round_, dtype=torch.int64)}
        record.update({f"before/{k}": v for k, v in before.items()})
        record.update({f"after/{k}": v for k, v in after.items()})
        self.store.put(client_id, record)

    def export(self) -> dict[str, torch.Tensor]:
        """Every client's record as one flat mapping ("<client id>/<key>"), for a checkpoint."""
        out = {}
        for cid in self.store.ids():
            out.update({f"{cid}/{k}": v for k, v in (self.store.get(cid) or {}).items()})
        return out

    def restore(self, flat: dict[str, torch.Tensor]) -> None:
        """Replace every record with those of an export."""
        records: dict[int, dict[str, torch.Tensor]] = {}
        for key, v in flat.items():
            client, name = key.split("/", 1)
            records.setdefault(int(client), {})[name] = v
        self.store.clear()
        for cid, record in records.items():
            self.store.put(cid, record)

    def latest(self, client_id: int) -> dict[str, torch.Tensor]:
        """The newest state of a client (after its last committed round)."""
        record = self.store.get(client_id)
        return {} if record is None else {k[6:]: v for k, v in record.items() if k.startswith("after/")}
