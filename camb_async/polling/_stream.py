"""The bulk calls: ``iter_statuses`` streams each task the moment it is terminal (an anyio
memory object stream fed by the scheduler), ``gather_statuses`` collects them in input order."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._models import StatusResult, TaskKind
from .._taskgroup import EXCEPTION_GROUP, lone_exception
from ._policy import PolicyArg
from ._scheduler import _Poller, make_poller

if TYPE_CHECKING:
    from .._client import AsyncCambClient
    from .._errors import CambError
    from ._handle import TaskHandle

__all__ = ["StatusIterator", "gather_statuses", "iter_statuses"]

#: own error, or the ``ValueError`` that refused its id before any request.
T_co = TypeVar("T_co", covariant=True)


@overload
async def gather_statuses(
    client: AsyncCambClient,
    tasks: Iterable[str | TaskHandle[Any]],
    *,
    kind: TaskKind | str | None = None,
    wait: bool = True,
    timeout: float | None = None,
    policy: PolicyArg = None,
    return_exceptions: Literal[False] = False,
    on_update: Callable[[StatusResult], object] | None = None,
) -> list[StatusResult]: ...


@overload
async def gather_statuses(
    client: AsyncCambClient,
    tasks: Iterable[str | TaskHandle[Any]],
    *,
    kind: TaskKind | str | None = None,
    wait: bool = True,
    timeout: float | None = None,
    policy: PolicyArg = None,
    return_exceptions: bool,
    on_update: Callable[[StatusResult], object] | None = None,
) -> list[StatusResult | CambError | ValueError]: ...


async def gather_statuses(
    client: AsyncCambClient,
    tasks: Iterable[str | TaskHandle[Any]],
    *,
    kind: TaskKind | str | None = None,
    wait: bool = True,
    timeout: float | None = None,
    policy: PolicyArg = None,
    return_exceptions: bool = False,
    on_update: Callable[[StatusResult], object] | None = None,
) -> list[StatusResult] | list[StatusResult | CambError | ValueError]:
    """Poll many tasks under the client's budget; return their statuses in input order.

    ``tasks`` are task ids (``kind`` required) or ``TaskHandle``s (kinds may mix). A repeated
    task fills every one of its slots but is polled once. ``policy`` is one ``PollPolicy``
    for every task, or a mapping ``{kind: PollPolicy}`` (kinds left out keep their defaults).
    ``wait=False`` takes one snapshot each. ``timeout`` is an overall deadline: tasks still
    pending then come back with their last observed status (``PENDING`` if they were never
    reached), not as an error; a task whose next poll would come after the deadline is polled
    once more just before it (budget permitting).
    ``return_exceptions=True`` puts a task's own error (404, 422, retries exhausted) in its
    slot; otherwise the first one cancels the rest and is raised. ``AuthenticationError``
    always raises at once, and so does ``APIConnectionError`` when the server answered nothing
    at all (unreachable: no task's own error, so never put in a slot); tasks are re-polled
    after connection failures only while the server answers something. ``on_update`` sees
    every observed status (it may be async).

    Args:
        client: the client whose budget the polls share.
        tasks: task ids (with ``kind``) or ``TaskHandle`` objects.
        kind: the kind of every task id.
        wait: poll until terminal; ``False`` takes one snapshot each.
        timeout: overall deadline in seconds.
        policy: a ``PollPolicy`` or ``{kind: PollPolicy}``.
        return_exceptions: put a task's own error (a ``CambError``, or the ``ValueError``
            that refused its id) in its slot instead of raising it.
        on_update: called with every observed status (may be async).
    """
    poller = await make_poller(
        client,
        tasks,
        kind=kind,
        wait=wait,
        policy=policy,
        return_exceptions=return_exceptions,
        on_update=on_update,
        timeout=timeout,
    )
    with anyio.move_on_at(poller.deadline):
        await poller.run()
    if poller.fatal is not None:
        raise poller.fatal
    outcomes: list[Any] = await poller.outcomes()
    return outcomes


@overload
def iter_statuses(
    client: AsyncCambClient,
    tasks: Iterable[str | TaskHandle[Any]],
    *,
    kind: TaskKind | str | None = None,
    wait: bool = True,
    timeout: float | None = None,
    policy: PolicyArg = None,
    return_exceptions: Literal[False] = False,
    on_update: Callable[[StatusResult], object] | None = None,
) -> StatusIterator[StatusResult]: ...


@overload
def iter_statuses(
    client: AsyncCambClient,
    tasks: Iterable[str | TaskHandle[Any]],
    *,
    kind: TaskKind | str | None = None,
    wait: bool = True,
    timeout: float | None = None,
    policy: PolicyArg = None,
    return_exceptions: bool,
    on_update: Callable[[StatusResult], object] | None = None,
) -> StatusIterator[StatusResult | CambError | ValueError]: ...


def iter_statuses(
    client: AsyncCambClient,
    tasks: Iterable[str | TaskHandle[Any]],
    *,
    kind: TaskKind | str | None = None,
    wait: bool = True,
    timeout: float | None = None,
    policy: PolicyArg = None,
    return_exceptions: bool = False,
    on_update: Callable[[StatusResult], object] | None = None,
) -> StatusIterator[Any]:
    """Like ``gather_statuses``, but yield each task's final status the moment it is known.

    With ``wait=False`` every snapshot is yielded as it arrives. A repeated task is yielded
    once. With ``return_exceptions=True`` a failed task's error is yielded in its place (its
    ``task_id`` and ``kind`` attributes say which task). Inputs are checked on the first
    ``__anext__``. Prefer ``async with iter_statuses(...) as stream: async for r in stream``:
    polling goes on while you handle each item. A bare ``async for`` works too and leaving it
    early is always safe (no ``aclosing`` needed); see ``StatusIterator``.

    Args:
        client: the client whose budget the polls share.
        tasks: task ids (with ``kind``) or ``TaskHandle`` objects.
        kind: the kind of every task id.
        wait: poll until terminal; ``False`` yields every snapshot.
        timeout: overall deadline in seconds.
        policy: a ``PollPolicy`` or ``{kind: PollPolicy}``.
        return_exceptions: yield a task's own error in its place instead of raising it.
        on_update: called with every observed status (may be async).
    """
    return StatusIterator(
        client,
        tasks,
        kind=kind,
        wait=wait,
        timeout=timeout,
        policy=policy,
        return_exceptions=return_exceptions,
        on_update=on_update,
    )


class StatusIterator(Generic[T_co]):
    """The async iterator ``iter_statuses`` returns. Two ways to use it:

    ``async with iter_statuses(...) as stream: async for r in stream: ...`` — the fast way:
    the workers run in a task group owned by the ``async with`` block, polling on while the
    caller handles each item; leaving the block (normally, by ``break`` or by an exception)
    stops them.

    ``async for r in iter_statuses(...)`` alone — always safe, a little slower: each
    ``__anext__`` runs the workers until at least one result is ready, lets the polls already
    in flight land (their results are buffered, none lost), and returns with nothing left
    running. Why not an async generator: it would hold the task group open across ``yield``,
    and an early ``break`` then leaves a cancel scope open in the caller's task (on asyncio,
    closed later from another task). Polling pauses while the caller handles an item; the
    per-task schedule and the deadline are absolute, so nothing drifts.

    Yields ``StatusResult``; with ``return_exceptions=True`` also a failed task's error
    (``CambError``, or ``ValueError`` for a refused id). Made by ``iter_statuses``.

    Args:
        client: the client whose budget the polls share.
        tasks: task ids or handles.
        timeout: overall deadline in seconds.
        **kwargs: the other arguments of ``iter_statuses``.
    """

    __slots__ = (
        "_args",
        "_client",
        "_poller",
        "_buffer",
        "_deadline",
        "_done",
        "_timeout",
        "_group",
        "_receive",
        "_raised",
        "_last_time",
        "_driving",
    )

    def __init__(
        self,
        client: AsyncCambClient,
        tasks: Iterable[str | TaskHandle[Any]],
        *,
        timeout: float | None,
        **kwargs: Any,
    ) -> None:
        self._client = client
        self._args = (tasks, kwargs)
        self._timeout = timeout
        self._poller: _Poller | None = None
        self._buffer: deque[Any] = deque()
        self._deadline = math.inf
        self._done = False
        self._group: anyio.abc.TaskGroup | None = None
        self._receive: MemoryObjectReceiveStream[Any] | None = None
        self._raised = False
        self._last_time = 0.0
        #: ``async with`` mode: the scope of the polling alone, which ``aclose()`` cancels.
        #: Never the group's own scope: that one also covers the caller's code in the block.
        self._driving: anyio.CancelScope | None = None

    def __aiter__(self) -> StatusIterator[T_co]:
        """The iterator itself."""
        return self

    async def _start(self) -> _Poller:
        tasks, kwargs = self._args
        poller = self._poller = await make_poller(
            self._client, tasks, timeout=self._timeout, **kwargs
        )
        self._deadline = poller.deadline
        return poller

    async def __anext__(self) -> T_co:
        """The next final status (or error), as soon as it is known."""
        if self._receive is not None:
            if self._done:
                raise StopAsyncIteration
            item: T_co = await self._next_streamed(self._receive)
            return item
        buffer = self._buffer
        while not buffer:
            if self._done:
                raise StopAsyncIteration
            poller = self._poller
            if poller is None:
                poller = await self._start()
                poller.emit = self._emit
            poller.stopping = False
            with anyio.move_on_after(self._deadline - anyio.current_time()) as scope:
                await poller.run(final=False)
            self._last_time = anyio.current_time()
            if poller.fatal is not None:
                self._finish()
                raise poller.fatal
            if scope.cancelled_caught:  # the overall deadline: report everyone left
                self._finish()  # censor first: emit_unfinished marks them done
                await poller.emit_unfinished()
            elif not poller.stopping:  # ran to the end: every task reported
                self._finish()
        first: T_co = buffer.popleft()
        return first

    async def _next_streamed(self, receive: MemoryObjectReceiveStream[Any]) -> Any:
        try:
            return await receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._done = True
            poller = self._poller
            if poller is not None and poller.fatal is not None and not self._raised:
                self._raised = True
                raise poller.fatal from None
            raise StopAsyncIteration from None

    def _emit(self, item: Any) -> None:
        self._buffer.append(item)
        poller = self._poller
        if poller is not None and not poller.stopping:
            poller.stop()  # hand this item over once the in-flight polls land

    def _finish(self, now: float | None = None) -> None:
        if not self._done:
            self._done = True
            if self._poller is not None:
                self._poller._censor_unfinished(now)

    async def aclose(self) -> None:
        """Stop: no further polls, no further items."""
        self._buffer.clear()
        if self._group is not None:  # `async with` mode: the run's own end reports the rest
            self._done = True  # __anext__ yields nothing more; the block's exit frees the rest
            if self._driving is not None:
                self._driving.cancel()
        else:
            self._finish()

    def __del__(self) -> None:
        # A bare `async for` left by `break`: nothing runs, but tasks still pending must be
        # reported to the completion statistics as "ran at least this long" (as of the last
        # item), or the estimator would count them as running forever.
        if not self._done and self._poller is not None and self._group is None:
            self._finish(self._last_time)

    async def __aenter__(self) -> StatusIterator[T_co]:
        """Start polling in a task group owned by this block (the fast mode)."""
        if self._poller is not None or self._group is not None:
            raise RuntimeError("enter iter_statuses(...) with `async with` before iterating it")
        poller = await self._start()
        send, receive = anyio.create_memory_object_stream[Any](math.inf)
        poller.emit = send.send_nowait
        group = anyio.create_task_group()
        await group.__aenter__()
        self._group, self._receive = group, receive
        self._driving = anyio.CancelScope()
        group.start_soon(self._drive, poller, send, self._driving)
        return self

    async def _drive(
        self, poller: _Poller, send: MemoryObjectSendStream[Any], driving: anyio.CancelScope
    ) -> None:
        # Never raises (a fatal error is stored and raised by __anext__), so nothing from
        # here can cancel the caller's code inside the ``async with`` block.
        with send, driving:
            with anyio.move_on_after(self._deadline - anyio.current_time()):
                await poller.run()
            if poller.fatal is None and not self._done:
                await poller.emit_unfinished()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Stop polling; nothing keeps running after the block."""
        group, self._group = self._group, None
        try:
            if group is not None:
                group.cancel_scope.cancel()
                # A cancellation goes to the group, whose scope absorbs it if it is its own
                # (an enclosing scope's passes on); anything else leaves the block as itself,
                # not wrapped in an exception group.
                try:
                    if isinstance(exc, anyio.get_cancelled_exc_class()):
                        return await group.__aexit__(exc_type, exc, tb)
                    await group.__aexit__(None, None, None)
                except EXCEPTION_GROUP as wrapped:  # e.g. Ctrl-C delivered while we waited
                    lone = lone_exception(wrapped)
                    if lone is None:
                        raise
                    raise lone from None
            return None
        finally:
            if self._receive is not None:
                self._receive.close()
            self._done = True
