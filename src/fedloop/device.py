"""Where tensors live: the run's device (config `device`), resolved once, and the moves between it and the CPU.

Clients train and evaluate on the device: their workspace model, their data (each shared array moved once per
process) and, while a task runs, the broadcast and their state. Everything that leaves a client is on the CPU: its
update crosses the wire, the checkpoint and the state store as CPU tensors, and the server aggregates there (a
reduction over updates that arrive one by one, whose cost is memory traffic, and a deployment's server needs no
GPU), so a model trained on a GPU loads on a CPU and a resumed run may change device. On the CPU every move here
is the identity: a CPU run does exactly what it did before devices existed.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch

from .data.examples import Examples
from .errors import ConfigError
from .types import Params, Task

CPU = torch.device("cpu")

NAMES = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
"""What `device` may say."""
EXPECTED = "expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
"""What a name that NAMES refuses is told."""


def resolve(name: str, key: str = "device") -> torch.device:
    """The device `name` stands for on this machine ("auto": CUDA device 0 when there is one, else the CPU); a
    ConfigError naming `key` when it is not here."""
    if not NAMES.match(name):
        raise ConfigError(f"{key} = {name!r}: {EXPECTED}")
    if name == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else CPU
    if name == "cpu":
        return CPU
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{key} = 'mps': this machine has no Apple MPS device (torch.backends.mps."
                              "is_available() is False); use 'cpu' or 'auto'")
        return torch.device("mps")
    index = int(name.partition(":")[2] or 0)
    if not torch.cuda.is_available():
        raise ConfigError(f"{key} = {name!r}: this machine has no CUDA device (torch.cuda.is_available() is False, "
                          f"PyTorch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use 'cpu' or "
                          "'auto'")
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"{key} = {name!r}: this machine has {count} CUDA device{'s' * (count != 1)} "
                          f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})")
    return torch.device("cuda", index)


def name_of(device: torch.device) -> str:
    """The device as config `device` writes it ("cpu", "cuda:0", "mps")."""
    return str(device) if device.type != "cuda" or device.index is not None else "cuda:0"


def chosen(name: str) -> str:
    """What a config's `device` resolves to, as the resolved config.toml says it: "auto" becomes "cuda" (every
    CUDA device: worker processes and Ray actors spread over them) or "cpu"; a ConfigError when it is not here."""
    device = resolve(name)
    return ("cuda" if device.type == "cuda" else name_of(device)) if name == "auto" else name


def spread(name: str) -> tuple[torch.device, ...]:
    """The devices worker processes spread over: every CUDA device for "auto" and "cuda" (one process trains on
    the first), else the one device `name` names."""
    device = resolve(name)
    if device.type == "cuda" and name in ("auto", "cuda"):
        return tuple(torch.device("cuda", i) for i in range(torch.cuda.device_count()))
    return (device,)


def on_cpu(device: torch.device) -> bool:
    return device.type == "cpu"


def to_device(tensors: Params, device: torch.device) -> Params:
    """The tensors on `device`: the same mapping when they are there already (always, on the CPU)."""
    if all(t.device == device for t in tensors.values()):
        return tensors
    return {k: t.to(device) for k, t in tensors.items()}


def to_cpu(tensors: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """The tensors on the CPU, the same mapping when they are there already: what leaves a client."""
    if all(t.device.type == "cpu" for t in tensors.values()):
        return tensors
    return {k: t.cpu() for k, t in tensors.items()}


class _Moved:
    """The last few objects moved to a device, by the identity of their source (held, so it is not reused): a
    broadcast or a shared data array moves once per process, not once per client."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[tuple[int, torch.device], tuple[Any, Any]] = OrderedDict()

    def get(self, source: Any, device: torch.device, move: Any) -> Any:
        key = (id(source), device)
        hit = self._items.get(key)
        if hit is not None and hit[0] is source:
            self._items.move_to_end(key)
            return hit[1]
        moved = move()
        self._items[key] = (source, moved)
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return moved


_BROADCASTS = _Moved(4)  # a round's fit and evaluate broadcasts, and a retry's
_ARRAYS = _Moved(8)  # a dataset's train and test arrays


def place_task(task: Task, device: torch.device) -> Task:
    """The task with its broadcast's params and extras on `device` (moved once per broadcast and device; a
    broadcast is built on the CPU, so a CPU client takes the task as it is)."""
    if device.type == "cpu":
        return task
    b = task.broadcast
    placed = _BROADCASTS.get(b, device, lambda: replace(b, params=to_device(b.params, device),
                                                        extras=to_device(b.extras, device)))
    return replace(task, broadcast=placed)


def place_examples(data: Examples, device: torch.device) -> Examples:
    """The rows on `device`: the shared arrays move once per process (the row index stays on the CPU, where the
    batch orders are drawn)."""
    if data.x.device == device and data.y.device == device:
        return data
    return Examples(_ARRAYS.get(data.x, device, lambda: data.x.to(device)),
                    _ARRAYS.get(data.y, device, lambda: data.y.to(device)), data.index)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a timing's end; nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """The global generators of the CPU and of `device` seeded for a block (a client's random layers: dropout),
    and restored after it. Only those two: torch.manual_seed would also queue a seed for every accelerator type
    PyTorch knows, each capturing a stack trace while CUDA is not started, about 0.3 ms per client."""
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed(seed)
        yield


def free_memory(device: torch.device) -> int | None:
    """Bytes free on a CUDA device (None elsewhere: the host's memory bounds the work there)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def deterministic_algorithms() -> None:
    """PyTorch's deterministic algorithms, with the fixed cuBLAS workspace they need (set before CUDA starts): for a
    run on an accelerator (`deterministic`), and for the rest of a worker process there (a spawned worker, a Ray
    actor), whose operations without a deterministic implementation PyTorch logs rather than summary.json."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


NONDETERMINISTIC = re.compile(r"does not have a deterministic implementation")


@contextmanager
def deterministic(device: torch.device) -> Iterator[list[str]]:
    """On an accelerator, PyTorch's deterministic algorithms for the block (and cuBLAS's fixed workspace, which
    they need); yields the list of operations that ran without a deterministic implementation (PyTorch's warnings,
    one entry per operation), for summary.json. A CPU run is deterministic already: nothing changes there."""
    ran: list[str] = []
    if on_cpu(device):
        yield ran
        return
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def record(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
                   line: str | None = None) -> None:
            text = str(message)
            if NONDETERMINISTIC.search(text):
                op = text.split(" does not have")[0].strip()
                if op not in ran:
                    ran.append(op)
                return
            shown(message, category, filename, lineno, file, line)

        warnings.filterwarnings("always", message=".*does not have a deterministic implementation")
        warnings.showwarning = record
        deterministic_algorithms()
        try:
            yield ran
        finally:
            torch.use_deterministic_algorithms(before[0], warn_only=before[1])
