"""gather_results: poll many tasks, then fetch every success's result in batches.

Polling is ``gather_statuses`` (one scheduler, one budget). Results then go through the batch
endpoints, ``chunk_size`` run ids a request, so 1,000 finished tasks cost 10 result requests,
not 1,000. Run ids a batch answer leaves out are fetched one by one, so each such slot gets
either its result or the API's own error for that run (usually ``NotFoundError``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import anyio

from ._errors import CambError, WaitTimeoutError
from ._handle import run_id_of
from ._models import StatusResult, TaskKind
from ._polling import PollPolicy, _fatal, gather_statuses
from ._resources import DEFAULT_CHUNK_SIZE, check_chunk_size

if TYPE_CHECKING:
    from ._client import AsyncCambClient
    from ._handle import TaskHandle

__all__ = ["gather_results"]


async def gather_results(
    client: AsyncCambClient,
    tasks: Iterable[str | TaskHandle],
    *,
    kind: TaskKind | str | None = None,
    timeout: float | None = None,
    policy: PollPolicy | None = None,
    return_exceptions: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_update: Callable[[StatusResult], object] | None = None,
) -> list[Any]:
    """Wait for many tasks, then return their typed results in input order.

    ``tasks``, ``kind``, ``policy`` and ``on_update`` are as for ``gather_statuses``;
    ``timeout`` bounds the polling. A task that ended ERROR/TIMEOUT/PAYMENT_REQUIRED yields
    ``TaskFailedError``; one still unfinished at the deadline yields ``WaitTimeoutError``
    (its ``last`` is the last observed status). With ``return_exceptions=True`` those errors
    (and a task's own request errors) fill the task's slot; otherwise the first one in input
    order is raised, and no results are fetched. ``AuthenticationError`` always raises.
    """
    chunk_size = check_chunk_size(chunk_size)
    statuses = await gather_statuses(
        client, tasks, kind=kind, wait=True, timeout=timeout, policy=policy,
        return_exceptions=return_exceptions, on_update=on_update,
    )
    slots: list[Any] = []
    wanted: dict[TaskKind, dict[int, None]] = {}
    for outcome in statuses:
        if isinstance(outcome, BaseException):
            slots.append(outcome)
            continue
        try:
            run_id = _run_id(outcome)
        except CambError as exc:
            if not return_exceptions:
                raise
            slots.append(exc)
            continue
        slots.append((outcome.kind, run_id))
        wanted.setdefault(outcome.kind, {})[run_id] = None

    fetched: dict[TaskKind, dict[int, Any]] = {}

    async def fetch(kind: TaskKind, run_ids: list[int]) -> None:
        fetched[kind] = await _fetch_kind(client, kind, run_ids, chunk_size, return_exceptions)

    failures: list[BaseException] = []

    async def guarded(kind: TaskKind, run_ids: list[int], scope: anyio.CancelScope) -> None:
        try:
            await fetch(kind, run_ids)
        except CambError as exc:  # one error, not an ExceptionGroup, reaches the caller
            failures.append(exc)
            scope.cancel()

    async with anyio.create_task_group() as tg:
        for result_kind, ids in wanted.items():
            tg.start_soon(guarded, result_kind, list(ids), tg.cancel_scope)
    if failures:
        raise failures[0]

    out: list[Any] = []
    for slot in slots:
        if isinstance(slot, tuple):
            result_kind, run_id = slot
            slot = fetched[result_kind][run_id]
            if isinstance(slot, BaseException) and not return_exceptions:
                raise slot
        out.append(slot)
    return out


def _run_id(status: StatusResult) -> int:
    """The run id to fetch, or the error for the task's slot (kind and task_id set)."""
    try:
        if not status.is_terminal:
            raise WaitTimeoutError(
                f"{status.kind.value} task {status.task_id!r} not finished before the "
                f"deadline (last status: {status.raw_status})",
                status,
            )
        return run_id_of(status)
    except CambError as exc:
        exc.kind, exc.task_id = status.kind, status.task_id
        raise


async def _fetch_kind(client: AsyncCambClient, kind: TaskKind, run_ids: list[int],
                      chunk_size: int, return_exceptions: bool) -> dict[int, Any]:
    """Batch-fetch one kind's results; fetch singly whatever the batch answers left out."""
    resource = client.resource(kind)
    got = await resource._fetch_batches(run_ids, chunk_size,
                                        collect_errors=return_exceptions)
    missing = [r for r in run_ids if r not in got]
    if not missing:
        return got
    limit = anyio.CapacityLimiter(max(1, getattr(client.budget, "max_concurrency", 16)))

    async def one(run_id: int, scope: anyio.CancelScope) -> None:
        async with limit:
            try:
                got[run_id] = await resource._result(run_id)
            except CambError as exc:
                if return_exceptions and not _fatal(exc):
                    got[run_id] = exc
                    return
                errors.append(exc)
                scope.cancel()

    errors: list[BaseException] = []
    async with anyio.create_task_group() as tg:
        for run_id in missing:
            tg.start_soon(one, run_id, tg.cancel_scope)
    if errors:
        raise errors[0]
    return got
