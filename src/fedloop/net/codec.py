"""Params on the wire: safetensors bytes, encoded once per round and streamed in chunks under gRPC's
message limit (uploads are checked as they are read back from the spool: see spool.py)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from safetensors.torch import load, save

from ..errors import TransportError
from ..types import ConfigValue, Params, TaskKind
from . import fedloop_pb2 as pb

PROTOCOL = 5
"""The wire protocol's version (fedloop.proto); client and server refuse each other's other versions."""

TASK_KINDS: dict[TaskKind, pb.TaskKind] = {"fit": pb.TASK_FIT, "evaluate": pb.TASK_EVALUATE, "secagg": pb.TASK_SECAGG}
KIND_NAMES: dict[pb.TaskKind, TaskKind] = {v: k for k, v in TASK_KINDS.items()}

CHUNK_BYTES = 128 << 10
"""128 KiB per upload message: any model size streams under gRPC's message limit, and the server's memory stays
flat in the number of clients (with 1 MiB messages, TLS receive buffers fragmented the heap; with 512 KiB, 1,000
clients uploading at once took the server from 674 MB to 1,000 MB: benchmarks/RESULTS.md)."""

DOWNLOAD_CHUNK_BYTES = 512 << 10
"""512 KiB per download message: a quarter of the per-message work of CHUNK_BYTES for the server, which sends the
same pre-serialized messages to every client (codec.Download), and no more server memory (only the receiver buffers
a message whole)."""


EXTRAS = "extras/"
"""Name prefix of a task's or update's strategy extras (e.g. SCAFFOLD's control variates) on the wire;
model params are attribute paths ("net.0.weight") and never contain a slash."""


def encode(params: Params, extras: Params | None = None) -> bytes:
    tensors = {k: v.detach().contiguous() for k, v in params.items()}
    tensors.update({EXTRAS + k: v.detach().contiguous() for k, v in (extras or {}).items()})
    return save(tensors)


@dataclass(frozen=True)
class Download:
    """A broadcast as its download streams it: the TaskChunk messages of its encoded bytes, serialized once and
    written as they are to every client of the broadcast (no copy or protobuf work per client)."""

    size: int
    messages: tuple[bytes, ...]


def encode_download(params: Params, extras: Params | None = None) -> Download:
    data = encode(params, extras)
    return Download(len(data), tuple(pb.TaskChunk(data=part).SerializeToString()
                                     for part in chunks(data, DOWNLOAD_CHUNK_BYTES)))


def split_extras(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(params, extras) of decoded wire tensors."""
    params = {k: v for k, v in tensors.items() if not k.startswith(EXTRAS)}
    return params, {k[len(EXTRAS):]: v for k, v in tensors.items() if k.startswith(EXTRAS)}


def chunks(data: bytes, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield bytes(view[start:start + size])


def decode(data: bytes, what: str) -> dict[str, torch.Tensor]:
    try:
        return dict(load(data))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for bad bytes
        raise TransportError(f"{what}: not valid safetensors bytes ({exc})") from None



def config_to_proto(config: Mapping[str, ConfigValue]) -> dict[str, pb.ConfigValue]:
    """A task's config map as protobuf values (bool before int: a bool is an int in Python)."""
    out = {}
    for key, v in config.items():
        if isinstance(v, bool):
            out[key] = pb.ConfigValue(flag=v)
        elif isinstance(v, int):
            out[key] = pb.ConfigValue(integer=v)
        elif isinstance(v, float):
            out[key] = pb.ConfigValue(number=v)
        elif isinstance(v, str):
            out[key] = pb.ConfigValue(text=v)
        elif isinstance(v, bytes):
            out[key] = pb.ConfigValue(data=v)
        else:
            raise TypeError(f"task config {key!r}: {type(v).__name__} values cannot travel")
    return out


def config_from_proto(config: Mapping[str, pb.ConfigValue]) -> dict[str, ConfigValue]:
    out: dict[str, ConfigValue] = {}
    for key, v in config.items():
        which = v.WhichOneof("value")
        if which is None:
            raise TransportError(f"task config {key!r} has no value")
        out[key] = getattr(v, which)
    return out
