"""A virtual-time asyncio event loop: the asyncio twin of trio's MockClock(autojump_threshold=0).

When the loop has nothing ready to run, instead of blocking in the selector it jumps its
clock to the next timer. Tests with only in-process I/O (httpx.ASGITransport) therefore
run minutes of backoff in milliseconds, deterministically.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any, cast


class _AutojumpSelector:
    def __init__(self, loop: VirtualTimeLoop, inner: selectors.BaseSelector) -> None:
        self._loop = loop
        self._inner = inner

    def select(self, timeout: float | None = None) -> list[Any]:
        events = self._inner.select(0)
        if events or timeout is None or timeout <= 0:
            if not events and timeout is None:
                return self._inner.select(None)  # nothing scheduled at all: genuinely wait
            return events
        self._loop.advance(timeout)
        return []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__()
        self._virtual_now = 0.0
        this = cast(Any, self)  # _selector: an untyped internal of SelectorEventLoop
        this._selector = _AutojumpSelector(self, this._selector)

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        # A nanosecond past the timer, so float rounding can never leave it "not yet due".
        self._virtual_now += seconds + 1e-9
