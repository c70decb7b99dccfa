"""The user's own code: an App names a model factory, its loss, and a reader of the user's data, so that
`fedloop run`, `fedloop server` and `fedloop client` run the user's model on the user's data (`--app REF`, or
`[app] ref` in the config), as `fedloop.simulate` does when given the same App.

A reference is "package.module:name" (importable) or "path/to/file.py:name"; `name` is an App, or a function
returning one. The server and every client load their own copy of the code; the server checks at join that a
client's model has the same params (names, shapes, dtypes), by a digest.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from torch import nn
from torch.nn import functional as F

from .client import LossFn
from .data.examples import Dataset
from .errors import ConfigError
from .params import named_tensors


@dataclass(frozen=True)
class App:
    """A model factory, its loss, and optionally a reader of the user's data: `load_data(path)` returns the Dataset
    at `path` (a client's own data; the server's held-out data at its data.path)."""

    model_fn: Callable[[], nn.Module]
    loss_fn: LossFn = field(default=F.cross_entropy)
    load_data: Callable[[str], Dataset] | None = None


FILE_MODULE = "fedloop_app_"
"""The prefix of the names under which apps read from files are imported."""


def file_modules() -> list[ModuleType]:
    """The modules imported from files by load_app (pickled by value where the name cannot be imported)."""
    return [m for name, m in list(sys.modules.items()) if name.startswith(FILE_MODULE)]


@functools.cache
def load_app(ref: str) -> App:
    """The App a reference names (imported once per process); ConfigError naming the reference and what is wrong."""
    where, _, name = ref.rpartition(":")
    if not where or not name:
        raise ConfigError(f"app {ref!r}: expected 'package.module:name' or 'path/to/file.py:name'")
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise ConfigError(f"app {ref!r}: {path} is not a file")
            key = FILE_MODULE + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
            spec = importlib.util.spec_from_file_location(key, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[key] = module  # picklable by worker processes that fork from here
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's module failed to import: say which and why
        raise ConfigError(f"app {ref!r}: cannot import {where} ({type(exc).__name__}: {exc})") from None
    obj = getattr(module, name, None)
    if obj is None:
        raise ConfigError(f"app {ref!r}: {where} has no {name!r}")
    app = obj() if callable(obj) and not isinstance(obj, App) else obj
    if not isinstance(app, App):
        raise ConfigError(f"app {ref!r}: {name} is a {type(app).__name__}, not a fedloop.App")
    return app


def model_digest(model_fn: Callable[[], nn.Module]) -> str:
    """A digest of a model's params (names, shapes, dtypes, in order): equal models have equal digests."""
    text = ";".join(f"{n}:{tuple(t.shape)}:{t.dtype}" for n, t in named_tensors(model_fn()))
    return hashlib.sha256(text.encode()).hexdigest()
