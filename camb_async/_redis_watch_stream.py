"""Completion events of a fleet watch list, read through a Redis consumer group."""

from __future__ import annotations

import contextlib
import math
import sys
from collections import deque
from typing import TYPE_CHECKING

import anyio
import anyio.abc

if sys.version_info < (3, 11):
    pass


from ._redis_watch_model import RedisWatchUnavailableError, WatchEvent, _event, _text

if TYPE_CHECKING:
    from ._redis_watch import RedisWatchList

__all__ = ["CompletionStream"]


class CompletionStream:
    """The async iterator of ``RedisWatchList.completions`` (also an async context manager:
    leaving it without an exception acknowledges the last event)."""

    def __init__(
        self, watch: RedisWatchList, group: str, consumer: str, batch: int, claim_idle: float
    ) -> None:
        self._watch = watch
        self.group = group
        self.consumer = consumer
        self._batch = batch
        self._claim_idle_ms = int(claim_idle * 1000)
        self._claim_every = min(claim_idle / 2, 5.0)
        self._next_claim = -math.inf
        self._claim_cursor = "0-0"
        self._from = "0"  # our own pending entries first, then new ones (">")
        self._buffer: deque[WatchEvent] = deque()
        self._acks: list[str] = []
        self._last: str | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        #: Events delivered by this stream (redeliveries included).
        self.delivered = 0

    def __aiter__(self) -> CompletionStream:
        return self

    async def __anext__(self) -> WatchEvent:
        """The next event; acknowledges the previous one (its loop body succeeded)."""
        if self._last is not None:
            self._acks.append(self._last)
            self._last = None
        watch = self._watch
        idle = 0.005
        while not self._buffer:
            claim = anyio.current_time() >= self._next_claim
            reply = await watch._call_or_wait(
                [
                    "read",
                    self.group,
                    self.consumer,
                    self._batch,
                    self._from,
                    "1" if claim else "0",
                    self._claim_idle_ms,
                    self._claim_cursor,
                    *self._acks,
                ]
            )
            self._acks.clear()
            entries, cursor = reply
            if claim:
                self._claim_cursor = _text(cursor)
                if self._claim_cursor == "0-0":
                    self._next_claim = anyio.current_time() + self._claim_every
            for entry in entries:
                if not entry or entry[1] is None:
                    continue
                entry_id, flat = _text(entry[0]), entry[1]
                fields = (
                    {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}
                    if isinstance(flat, list)
                    else {_text(k): _text(v) for k, v in dict(flat).items()}
                )
                self._buffer.append(_event(entry_id, fields))
            if self._from != ">":
                if entries:
                    self._from = self._buffer[-1].id if self._buffer else self._from
                else:
                    self._from = ">"
                    continue
            if not self._buffer:
                await anyio.sleep(idle)
                idle = min(idle * 2, watch.idle_interval)
        event = self._buffer.popleft()
        self._last = event.id
        self.delivered += 1
        return event

    async def ack(self) -> None:
        """Acknowledge the last event delivered now (and any acks not yet sent)."""
        if self._last is not None:
            self._acks.append(self._last)
            self._last = None
        if self._acks:
            acks, self._acks = self._acks, []
            try:
                await self._watch._call_or_raise(
                    ["read", self.group, self.consumer, 0, ">", "0", 0, "0-0", *acks]
                )
            except BaseException:
                self._acks[:0] = acks
                raise

    async def aclose(self) -> None:
        """Stop reading: acknowledge the last event (the caller is done with it)."""
        with (
            anyio.CancelScope(shield=True),
            anyio.move_on_after(self._watch.redis_timeout),
            contextlib.suppress(RedisWatchUnavailableError),
        ):
            await self.ack()
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

    async def __aenter__(self) -> CompletionStream:
        """Hold the Redis client open while reading."""
        stack = contextlib.AsyncExitStack()
        await self._watch._enter_implicitly(stack)
        self._stack = stack
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is None:
            await self.aclose()
            return
        self._last = None  # the body failed on it: it stays pending, delivered again
        with (
            anyio.CancelScope(shield=True),
            anyio.move_on_after(self._watch.redis_timeout),
            contextlib.suppress(RedisWatchUnavailableError),
        ):
            await self.ack()  # the events before it succeeded
        if self._stack is not None:
            stack, self._stack = self._stack, None
            with anyio.CancelScope(shield=True):
                await stack.aclose()
