"""Value checks for the frozen dataclasses that make up a strategy and a run: each part validates itself in
`__post_init__`, so a bad hyperparameter fails where it is written (API or config), with one message."""

from __future__ import annotations

import math
from typing import Any, get_args

from .errors import ConfigError


def fail(obj: object, name: str, rule: str) -> None:
    """Raise ConfigError naming the class, the field, its value and the rule it breaks."""
    value = getattr(obj, name)
    raise ConfigError(f"{type(obj).__name__}.{name} = {value!r}: {rule}", key=name, value=value, rule=rule)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def positive(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not _number(value) or value <= 0:
            fail(obj, name, "must be a number greater than 0")


def at_least(obj: object, name: str, low: int, optional: bool = False) -> None:
    value = getattr(obj, name)
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        fail(obj, name, f"must be an integer of at least {low}" + (" (or unset)" if optional else ""))


def in_range(obj: object, name: str, low: float, high: float, *, high_open: bool = True,
             low_open: bool = False, optional: bool = False) -> None:
    """low <= value < high (or <= high, or low < value), as the flags say."""
    value = getattr(obj, name)
    if optional and value is None:
        return
    ok = _number(value) and (value > low if low_open else value >= low) and \
        (value < high if high_open else value <= high)
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        fail(obj, name, f"must be in {lo}{low}, {high}{hi}")


def one_of(obj: object, name: str, allowed: Any) -> None:
    """`allowed` is a Literal type or a collection of values."""
    values = get_args(allowed) or tuple(allowed)
    if getattr(obj, name) not in values:
        fail(obj, name, "allowed: " + ", ".join(repr(v) for v in values))
