"""gather_results: poll many tasks and fetch every success's result in batches.

Polling is ``iter_statuses`` (the one bulk scheduler, the client's one budget). Successes are
queued per kind and fetched through the batch endpoints as soon as ``chunk_size`` of a kind
have finished, while polling goes on; the remainder goes out when polling ends. So 1,000
finished tasks cost 10 result requests, not 1,000, and most of them are already fetched when
the last task finishes. Run ids a batch answer leaves out are fetched one by one, so each such
slot gets either its result or the API's own error for that run (usually ``NotFoundError``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import anyio
import anyio.abc

from .._budget import concurrency_of
from .._errors import CambError, WaitTimeoutError, is_fatal
from .._models import (
    DubbingOutcome,
    StatusResult,
    TaskKind,
    TranscriptionResult,
    TranslationResult,
    TTSResult,
)
from .._taskgroup import create_task_group
from .._validation import DEFAULT_CHUNK_SIZE, check_chunk_size, check_task_id
from ._handle import TaskHandle, run_id_of
from ._policy import PolicyArg
from ._stream import StatusIterator, iter_statuses

if TYPE_CHECKING:
    from .._client import AsyncCambClient

__all__ = ["gather_results"]


R = TypeVar("R")


@overload
async def gather_results(
    client: AsyncCambClient,
    tasks: Iterable[TaskHandle[R]],
    *,
    kind: None = None,
    timeout: float | None = None,
    policy: PolicyArg = None,
    return_exceptions: Literal[False] = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_update: Callable[[StatusResult], object] | None = None,
) -> list[R]: ...


@overload
async def gather_results(
    client: AsyncCambClient,
    tasks: Iterable[TaskHandle[R]],
    *,
    kind: None = None,
    timeout: float | None = None,
    policy: PolicyArg = None,
    return_exceptions: bool,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_update: Callable[[StatusResult], object] | None = None,
) -> list[R | CambError | ValueError]: ...


@overload
async def gather_results(
    client: AsyncCambClient,
    tasks: Iterable[str],
    *,
    kind: Literal[TaskKind.DUB, "dub"],
    timeout: float | None = None,
    policy: PolicyArg = None,
    return_exceptions: Literal[False] = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_update: Callable[[StatusResult], object] | None = None,
) -> list[DubbingOutcome]: ...


@overload
async def gather_results(
    client: AsyncCambClient,
    tasks: Iterable[str],
    *,
    kind: Literal[TaskKind.DUB, "dub"],
    timeout: float | None = None,
    policy: PolicyArg = None,
    return_exceptions: bool,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_update: Callable[[StatusResult], object] | None = None,
) -> list[DubbingOutcome | CambError | ValueError]: ...


@overload
async def gather_results(
    client: AsyncCambClient,
    tasks: Iterable[str],
    *,
    kind: Literal[TaskKind.TTS, "tts"],
    timeout: float | None = None,
    policy: PolicyArg = None,
    return_exceptions: Literal[False] = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_update: Callable[[StatusResult], object] | None = None,
) -> list[TTSResult]: ...


@overload
async def gather_results(
    client: AsyncCambClient,
    tasks: Iterable[str],
    *,
    kind: Literal[TaskKind.TTS, "tts"],
    timeout: float | None = None,
    policy: PolicyArg = None,
    return_exceptions: bool,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_update: Callable[[StatusResult], object] | None = None,
) -> list[TTSResult | CambError | ValueError]: ...


@overload
async def gather_results(
    client: AsyncCambClient,
    tasks: Iterable[str],
    *,
    kind: Literal[TaskKind.TRANSLATION, "translate"],
    timeout: float | None = None,
    policy: PolicyArg = None,
    return_exceptions: Literal[False] = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_update: Callable[[StatusResult], object] | None = None,
) -> list[TranslationResult]: ...


@overload
async def gather_results(
    client: AsyncCambClient,
    tasks: Iterable[str],
    *,
    kind: Literal[TaskKind.TRANSLATION, "translate"],
    timeout: float | None = None,
    policy: PolicyArg = None,
    return_exceptions: bool,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_update: Callable[[StatusResult], object] | None = None,
) -> list[TranslationResult | CambError | ValueError]: ...


@overload
async def gather_results(
    client: AsyncCambClient,
    tasks: Iterable[str],
    *,
    kind: Literal[TaskKind.TRANSCRIPTION, "transcribe"],
    timeout: float | None = None,
    policy: PolicyArg = None,
    return_exceptions: Literal[False] = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_update: Callable[[StatusResult], object] | None = None,
) -> list[TranscriptionResult]: ...


@overload
async def gather_results(
    client: AsyncCambClient,
    tasks: Iterable[str],
    *,
    kind: Literal[TaskKind.TRANSCRIPTION, "transcribe"],
    timeout: float | None = None,
    policy: PolicyArg = None,
    return_exceptions: bool,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_update: Callable[[StatusResult], object] | None = None,
) -> list[TranscriptionResult | CambError | ValueError]: ...


@overload
async def gather_results(
    client: AsyncCambClient,
    tasks: Iterable[str | TaskHandle[Any]],
    *,
    kind: TaskKind | str | None = None,
    timeout: float | None = None,
    policy: PolicyArg = None,
    return_exceptions: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_update: Callable[[StatusResult], object] | None = None,
) -> list[Any]: ...


async def gather_results(
    client: AsyncCambClient,
    tasks: Iterable[str | TaskHandle[Any]],
    *,
    kind: TaskKind | str | None = None,
    timeout: float | None = None,
    policy: PolicyArg = None,
    return_exceptions: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_update: Callable[[StatusResult], object] | None = None,
) -> list[Any]:
    """Wait for many tasks and return their typed results in input order.

    ``tasks``, ``kind``, ``policy`` and ``on_update`` are as for ``gather_statuses``;
    ``timeout`` bounds the polling. A task that ended ERROR/TIMEOUT/PAYMENT_REQUIRED yields
    ``TaskFailedError``; one still unfinished at the deadline yields ``WaitTimeoutError``
    (its ``last`` is the last observed status). With ``return_exceptions=True`` those errors
    (and a task's own request or result errors) fill the task's slot; otherwise the first one
    observed stops everything and is raised, like ``gather_statuses``.
    ``AuthenticationError`` always raises. Results are fetched ``chunk_size`` run ids a
    request, per kind, while the other tasks are still being polled.

    Typed by the handles: ``gather_results(client, [client.tts.task(i) for i in ids])`` is
    a ``list[TTSResult]``, and so is ``gather_results(client, ids, kind="tts")``.

    Args:
        client: the client whose budget the polls and fetches share.
        tasks: ``TaskHandle`` objects, or task ids with ``kind``.
        kind: the kind of every task id.
        timeout: deadline of the polling, in seconds.
        policy: a ``PollPolicy`` or ``{kind: PollPolicy}``.
        return_exceptions: put a task's error (``TaskFailedError``, ``WaitTimeoutError``,
            a request error, or the ``ValueError`` that refused its id) in its slot.
        chunk_size: run ids per batch-result request.
        on_update: called with every observed status (may be async).
    """
    chunk_size = check_chunk_size(chunk_size)
    if isinstance(tasks, (str, bytes)):
        raise TypeError("tasks must be an iterable of task ids or handles, not one string")
    items = list(tasks)
    default_kind = None if kind is None else client.resource(kind).kind
    if not return_exceptions:  # a bad id fails the call before any request, as elsewhere
        for task in items:
            if isinstance(task, str):
                check_task_id(task)
    gatherer = _Gatherer(client, chunk_size, return_exceptions)
    statuses = iter_statuses(
        client,
        items,
        kind=kind,
        wait=True,
        timeout=timeout,
        policy=policy,
        return_exceptions=True,
        on_update=on_update,
    )
    await gatherer.run(statuses)
    return gatherer.slots(items, default_kind)


class _Gatherer:
    """One ``gather_results`` call: statuses in, batched result fetches out, slots filled."""

    def __init__(self, client: AsyncCambClient, chunk_size: int, return_exceptions: bool) -> None:
        self.client = client
        self.chunk_size = chunk_size
        self.return_exceptions = return_exceptions
        self.outcomes: dict[Hashable, Any] = {}  # (kind, task_id) -> error or (kind, run_id)
        self.fetched: dict[TaskKind, dict[int, Any]] = {}
        self.queued: dict[TaskKind, dict[int, None]] = {}
        self.failures: list[BaseException] = []

    async def run(self, statuses: StatusIterator[Any]) -> None:
        """Poll to the end, fetching each kind's results ``chunk_size`` run ids at a time."""
        failures = self.failures
        async with create_task_group() as tg:
            try:
                async with statuses:
                    async for item in statuses:
                        if not self.take(item, tg):
                            break
            except Exception as exc:  # bad input, auth error: raised as itself after the group
                failures.append(exc)
            if failures:
                tg.cancel_scope.cancel()
            else:
                for result_kind, batch in self.queued.items():
                    tg.start_soon(self.fetch, result_kind, list(batch), tg.cancel_scope)
        if failures:
            raise failures[0]

    def take(self, item: StatusResult | BaseException, tg: anyio.abc.TaskGroup) -> bool:
        """Record one polled outcome; False when the call must stop (``failures`` says why)."""
        return_exceptions, outcomes = self.return_exceptions, self.outcomes
        if isinstance(item, BaseException):
            if (
                not isinstance(item, (CambError, ValueError))
                or is_fatal(item)
                or not return_exceptions
            ):  # ValueError: a refused task id
                self.failures.append(item)
                return False
            # The poller sets kind and task_id on every error it reports.
            outcomes[(getattr(item, "kind", None), getattr(item, "task_id", None))] = item
            return True
        key = (item.kind, item.task_id)
        try:
            run_id = _run_id(item, self.client._redact)
        except CambError as exc:
            if not return_exceptions:
                self.failures.append(exc)
                return False
            outcomes[key] = exc
            return True
        outcomes[key] = (item.kind, run_id)
        batch = self.queued.setdefault(item.kind, {})
        batch[run_id] = None
        if len(batch) >= self.chunk_size:
            del self.queued[item.kind]
            tg.start_soon(self.fetch, item.kind, list(batch), tg.cancel_scope)
        return True

    async def fetch(
        self, result_kind: TaskKind, run_ids: list[int], scope: anyio.CancelScope
    ) -> None:
        try:
            got = await _fetch_kind(
                self.client, result_kind, run_ids, self.chunk_size, self.return_exceptions
            )
        except Exception as exc:  # one error, not an ExceptionGroup, reaches the caller
            self.failures.append(exc)
            scope.cancel()
            return
        self.fetched.setdefault(result_kind, {}).update(got)

    def slots(self, items: list[str | TaskHandle[Any]], default_kind: TaskKind | None) -> list[Any]:
        """Each task's result or error, in input order."""
        out: list[Any] = []
        for task in items:
            if isinstance(task, TaskHandle):
                slot_key: tuple[TaskKind | None, str] = (task.kind, task.task_id)
            else:
                assert default_kind is not None  # iter_statuses refused ids without a kind
                slot_key = (default_kind, task)
            slot = self.outcomes[slot_key]
            if isinstance(slot, tuple):
                slot = self.fetched[slot[0]][slot[1]]
            out.append(slot)
        return out


def _run_id(status: StatusResult, redact: Callable[[str], str]) -> int:
    """The run id to fetch, or the error for the task's slot (kind and task_id set)."""
    try:
        if not status.is_terminal:
            raise WaitTimeoutError(
                f"{status.kind.value} task {status.task_id!r} not finished before the "
                f"deadline (last status: {status.raw_status})",
                status,
            )
        return run_id_of(status, redact)
    except CambError as exc:
        exc.kind, exc.task_id = status.kind, status.task_id
        raise


async def _fetch_kind(
    client: AsyncCambClient,
    kind: TaskKind,
    run_ids: list[int],
    chunk_size: int,
    return_exceptions: bool,
) -> dict[int, Any]:
    """Batch-fetch one kind's results; fetch singly whatever the batch answers left out."""
    resource = client.resource(kind)
    got = await resource._fetch_batches(run_ids, chunk_size, collect_errors=return_exceptions)
    missing = [r for r in run_ids if r not in got]
    if not missing:
        return got
    limit = anyio.CapacityLimiter(max(1, concurrency_of(client.budget)))

    async def one(run_id: int, scope: anyio.CancelScope) -> None:
        async with limit:
            try:
                got[run_id] = await resource._result(run_id)
            except Exception as exc:  # stored, then raised alone: never an ExceptionGroup
                if return_exceptions and isinstance(exc, CambError) and not is_fatal(exc):
                    got[run_id] = exc
                    return
                errors.append(exc)
                scope.cancel()

    errors: list[BaseException] = []
    async with create_task_group() as tg:
        for run_id in missing:
            tg.start_soon(one, run_id, tg.cancel_scope)
    if errors:
        raise errors[0]
    return got
