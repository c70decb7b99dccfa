"""Which strategies a privacy mechanism's analysis covers: the accountant bounds what the mechanism releases, so a
strategy that releases anything else derived from client data (extras that bypass clipping and noise, a client
selection driven by the clients' losses) is refused at start-up with the reason."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..strategies.base import Strategy
    from ..transforms import Transform


def unsupported(strategy: Strategy, transform: Transform, *, extras_ok: bool = False) -> str | None:
    """Why `transform`'s guarantee would not hold for `strategy` (None when it holds).

    `extras_ok`: the mechanism protects everything a client computes (DP-SGD: extras derived from the privatized
    local training are post-processing)."""
    from ..strategies.base import Strategy

    cls = type(strategy)
    if cls.configure is not Strategy.configure or cls.follow_up is not Strategy.follow_up:
        return "its rounds ask clients for more than one private update (e.g. losses that steer selection), " \
               "which the accountant does not cover"
    if not extras_ok and (cls.aggregate_extras is not Strategy.aggregate_extras
                          or cls.client_finish is not Strategy.client_finish):
        return "its clients send extras (e.g. control variates) that are neither clipped nor noised"
    private = [t for t in strategy.transforms if getattr(t, "private", False)]
    if len(private) > 1:
        return "a strategy takes one privacy mechanism: " + ", ".join(t.name for t in private)
    if strategy.transforms[-1] is not transform:
        return "the privacy mechanism must be the last transform, so that its noise is added to the reduced sum " \
               "and its clipping applies to what the client uploads"
    return None


def check_accounting(obj: Any) -> None:
    """The checks every mechanism's accounting fields share: clip and noise positive, delta in (0, 1), a positive
    budget when one is set, and secure_noise a bool."""
    from .. import checks

    checks.one_of(obj, "secure_noise", (True, False))
    checks.positive(obj, "clip", "noise_multiplier")
    checks.in_range(obj, "delta", 0.0, 1.0, low_open=True)
    if obj.max_epsilon is not None:
        checks.positive(obj, "max_epsilon")
