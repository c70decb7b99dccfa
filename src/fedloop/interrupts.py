"""Stop requests held back while a round's files and state complete, so an interrupted run directory never holds
a round that its summary, model and checkpoint do not."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

HELD = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def held() -> Iterator[None]:
    """Run the block without SIGINT/SIGTERM interrupting it; one that arrives meanwhile is delivered to the handler
    that was in place when the block ends. Outside the main thread (where Python runs no handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    before = {s: signal.signal(s, lambda signum, frame: arrived.append(signum)) for s in HELD}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        if arrived:
            signal.raise_signal(arrived[0])
