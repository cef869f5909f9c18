"""PollPolicy and the bulk scheduler behind gather_statuses / iter_statuses.

Not a coroutine per task: one heap of ``(next_due, index)`` and a fixed pool of workers
(as many as the budget allows in flight) inside one task group. A worker takes the heap's
top once it is due *and* the budget has granted a start, so when the budget is the
bottleneck requests go out in due order; tasks never polled yet are due at the start and so
sort ahead of tasks being re-polled. Tracked tasks are small slotted objects (no generator,
no coroutine, no timer each), which is what lets 100,000 of them fit in ~0.5 KB apiece.
Each is the one object per task the garbage collector walks while polling: a heap entry names
its task by its index in ``_Poller.unique`` (a tuple of a float and an int is not tracked;
ties go in input order), and ids are deduplicated per kind (no ``(kind, id)`` key tuples).
Full collections are what stalls the event loop of a large bulk call (benchmarks/README.md).
"""


from __future__ import annotations

import heapq
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

from .._budget import RateBudget, concurrency_of
from .._errors import CambError, ClientClosedError, is_fatal, is_transient, unanswered
from .._models import DurationHint, StatusResult, TaskKind, TaskStatus
from .._taskgroup import create_task_group
from .._validation import check_task_id, is_number
from ._handle import TaskHandle
from ._policy import PolicyArg, PollPolicy, final_poll_time, next_poll_delay

if TYPE_CHECKING:
    from .._client import AsyncCambClient

__all__ = ["make_poller"]


def _for_task(exc: ValueError, kind: TaskKind, task_id: str) -> ValueError:
    """``exc`` with ``kind`` and ``task_id`` set, like a ``CambError`` reported for a task."""
    exc.kind, exc.task_id = kind, task_id  # type: ignore[attr-defined]
    return exc




class _Task:
    """One tracked task. Slotted and small: 100,000 of these must be cheap."""

    __slots__ = ("kind", "task_id", "policy", "first_seen", "polls", "errors", "last", "error",
                 "done", "hint", "index")

    def __init__(self, kind: TaskKind, task_id: str, policy: PollPolicy, first_seen: float,
                 hint: DurationHint | None = None) -> None:
        self.kind = kind
        self.task_id = task_id
        self.policy = policy
        self.first_seen = first_seen
        self.hint = hint
        self.polls = 0
        self.errors = 0
        self.last: StatusResult | None = None
        self.error: BaseException | None = None
        self.done = False
        self.index = -1  # in _Poller.unique, which its heap entries name

    def outcome(self) -> StatusResult | BaseException:
        if self.error is not None:
            return self.error
        if self.last is not None:
            return self.last
        # Never polled before the deadline: as far as anyone knows it is still pending.
        return StatusResult(self.kind, self.task_id, TaskStatus.PENDING, TaskStatus.PENDING.value)


class _CreatedTask(_Task):
    """A task whose ``first_seen`` is its creation time (a handle from ``create()``).

    The class is the flag, so it costs no memory: completion statistics treat its duration
    as observed, not as left-truncated.
    """

    __slots__ = ()


_CHUNK = 1024  # tasks prepared or reported between checkpoints, to keep the loop responsive
#: A task counts as due this close to its time: timers fire a hair early, floats round.
_DUE_SLACK = 1e-9


class _Poller:
    def __init__(
        self,
        client: AsyncCambClient,
        tasks: Iterable[str | TaskHandle[Any]],
        *,
        kind: TaskKind | str | None,
        wait: bool,
        policy: PolicyArg,
        return_exceptions: bool,
        on_update: Callable[[StatusResult], object] | None,
    ) -> None:
        if isinstance(tasks, (str, bytes)):
            raise TypeError("tasks must be an iterable of task ids or handles, not one string")
        kind_policies: dict[TaskKind, PollPolicy] = {}
        if isinstance(policy, Mapping):
            for key, value in policy.items():
                if not isinstance(value, PollPolicy):
                    raise TypeError("policy mapping values must be PollPolicy objects")
                kind_policies[client.resource(key).kind] = value
            policy = None
        elif policy is not None and not isinstance(policy, PollPolicy):
            raise TypeError("policy must be a PollPolicy or a mapping of kind -> PollPolicy")
        self.kind_policies = kind_policies
        self.client = client
        self.wait = wait
        self.return_exceptions = return_exceptions
        self.on_update = on_update
        self.emit: Callable[[StatusResult | BaseException], None] | None = None
        self.default_kind = None if kind is None else client.resource(kind).kind
        self.policy = policy
        self.stats = client.completion_stats
        self._handle_type = TaskHandle
        self._raw = tasks
        self.order: list[_Task] = []
        self.unique: list[_Task] = []
        self.heap: list[tuple[float, int]] = []  # (due, index in unique)
        #: Tasks whose id was refused (``return_exceptions=True``): reported when a run starts.
        self.refused: list[_Task] = []
        self.in_flight = 0
        self.fatal: BaseException | None = None
        self.stopping = False
        #: The caller's deadline, and the last-chance poll before it (see final_poll_time).
        self.deadline = math.inf
        self.final_at = math.inf
        self._acquiring: anyio.CancelScope | None = None
        self._wake: anyio.Event | None = None
        self._lock = anyio.Lock(fast_acquire=True)

    async def prepare(self) -> None:
        """Validate every input and build the heap, before any request is sent."""
        client = self.client
        now = anyio.current_time()
        by_kind: dict[TaskKind, dict[str, _Task]] = {}  # no (kind, id) tuple per task
        policies: dict[TaskKind, PollPolicy] = {}
        handle_type = self._handle_type
        order = self.order
        for count, item in enumerate(self._raw, 1):
            if isinstance(item, handle_type):
                # A with_options view and its client share one pool and budget: either's
                # handles may be polled through the other.
                if (item._client._parent or item._client) is not (client._parent or client):
                    raise ValueError(
                        f"handle for task {item.task_id!r} belongs to another AsyncCambClient"
                    )
                kind, task_id = item.kind, item.task_id
                created = item.created_at
                first_seen = now if created is None else created
                hint = item.hint
            elif isinstance(item, str):
                if self.default_kind is None:
                    raise TypeError("task ids need kind=...; or pass TaskHandles")
                kind, task_id, first_seen = self.default_kind, item, now
                created = hint = None
            else:
                raise TypeError(
                    f"tasks must be task id strings or TaskHandles, got {type(item).__name__}"
                )
            by_id = by_kind.get(kind)
            if by_id is None:
                by_id = by_kind[kind] = {}
            task = by_id.get(task_id)
            if task is None:
                try:
                    check_task_id(task_id)  # validates the id before any request
                except ValueError as exc:
                    if not self.return_exceptions:
                        raise
                    # Its own slot's error; the id is never sent, the others are polled.
                    task = by_id[task_id] = _Task(kind, task_id, PollPolicy.for_kind(kind), now)
                    task.error = _for_task(exc, kind, task_id)
                    self.refused.append(task)
                    order.append(task)
                    continue
                policy = policies.get(kind)
                if policy is None:
                    chosen = (self.kind_policies.get(kind) or self.policy
                              or PollPolicy.for_kind(kind))
                    policy = policies[kind] = chosen._bind(client, kind)
                if created is None:
                    task = by_id[task_id] = _Task(kind, task_id, policy, first_seen, hint)
                    due = now
                else:
                    task = by_id[task_id] = _CreatedTask(kind, task_id, policy, first_seen, hint)
                    due = now + next_poll_delay(policy.first_interval(now - first_seen, hint),
                                                self.final_at)
                task.index = len(self.unique)
                self.unique.append(task)
                self.heap.append((due, task.index))
            order.append(task)
            if count % _CHUNK == 0:
                await anyio.lowlevel.checkpoint()
        heapq.heapify(self.heap)  # first polls may be deferred (learned policies)

    async def run(self, *, final: bool = True) -> None:
        """Poll until every task is done, ``stopping`` is set (``iter_statuses`` between
        items: in-flight polls finish, no new one starts) or the caller's deadline; never
        raises from workers. ``final=False``: more runs follow, so don't report unfinished
        tasks to the completion statistics yet."""
        refused, self.refused = self.refused, []
        for task in refused:
            self._finish(task)
        n_workers = max(1, min(concurrency_of(self.client.budget),
                               len(self.unique)))
        scopes = self.client._scopes  # aclose() cancels these: workers between polls too
        try:
            async with create_task_group() as tg:
                scopes.add(tg.cancel_scope)
                for _ in range(n_workers):
                    tg.start_soon(self._worker, tg.cancel_scope)
        finally:
            scopes.discard(tg.cancel_scope)
            if final:
                self._censor_unfinished()
        if self.client.closed and self.fatal is None and not all(t.done for t in self.unique):
            self.fatal = ClientClosedError("the AsyncCambClient was closed while polling")

    def _censor_unfinished(self, now: float | None = None) -> None:
        """Tasks still pending when watching stops ran at least this long: tell the stats."""
        if not self.wait:
            return
        stats = self.stats
        now = anyio.current_time() if now is None else now
        for task in self.unique:
            if not task.done and task.polls and task.error is None:
                stats.abandoned(task.kind, task.first_seen, now - task.first_seen, task.hint)

    async def outcomes(self) -> list[StatusResult | BaseException]:
        """Every input slot's outcome, built in chunks so 100,000 don't stall the loop."""
        order = self.order
        out: list[StatusResult | BaseException] = []
        for start in range(0, len(order), _CHUNK):
            out.extend([task.outcome() for task in order[start:start + _CHUNK]])
            if start + _CHUNK < len(order):
                await anyio.lowlevel.checkpoint()
        return out

    # -------------------------------------------------------------- worker side

    async def _worker(self, group: anyio.CancelScope) -> None:
        client = self.client
        resources = client._resources
        try:
            while True:
                # One checkpoint per poll, whatever the budget and the transport do (an
                # in-process transport answers without waiting; _try_acquire takes none).
                await anyio.lowlevel.checkpoint()
                task = await self._take()
                if task is None:
                    return
                answers = client._answers
                try:
                    # aclose() cancels this worker's group (run): no scope per attempt.
                    result = await resources[task.kind]._fetch_status(
                        task.task_id, preacquired=True, in_client_scope=True)
                except CambError as exc:
                    self._failed(task, exc, answers)
                except anyio.get_cancelled_exc_class():
                    # Cancelled mid-poll (deadline, caller, a fatal error elsewhere): put the
                    # task back, due now, so a later run polls it and nothing is lost.
                    self._schedule(task, 0.0)
                    raise
                else:
                    await self._observed(task, result)
                finally:
                    self.in_flight -= 1
                    self._notify()
        except BaseException as exc:  # fatal: stop everything, re-raised by the caller
            if not isinstance(exc, anyio.get_cancelled_exc_class()):
                if self.fatal is None:
                    self.fatal = exc
                group.cancel()
                return
            raise

    def _ready(self) -> _Task | None:
        """The top task, if it is due and the budget grants a slot without waiting."""
        heap = self.heap
        if heap and heap[0][0] - anyio.current_time() <= _DUE_SLACK:
            budget = self.client.budget
            if isinstance(budget, RateBudget) and budget._try_acquire():
                return self._pop()
        return None

    def _pop(self) -> _Task:
        """Take the top task (its budget slot is held): it is in flight now."""
        self.in_flight += 1
        return self.unique[heapq.heappop(self.heap)[1]]

    async def _take(self) -> _Task | None:
        # The common case without the lock: nobody is waiting in _take and the top task is
        # ready. Nothing here awaits, so no other worker can run in between: the same as
        # taking it under the lock.
        if not self.stopping and not self._lock.locked():
            task = self._ready()
            if task is not None:
                return task
        async with self._lock:
            heap = self.heap
            while True:
                if self.stopping:
                    return None
                if not heap:
                    if self.in_flight == 0:
                        return None
                    await self._sleep_until_woken(math.inf)
                    continue
                delay = heap[0][0] - anyio.current_time()
                if delay > _DUE_SLACK:
                    await self._sleep_until_woken(delay)
                    continue
                task = self._ready()
                if task is not None:
                    return task
                # Interruptible: iter_statuses stops the run when a result is ready, and a
                # wait for the budget (pacing, a 429 pause) must not hold it back.
                acquiring = self._acquiring = anyio.CancelScope()
                with acquiring:
                    await self.client.budget.acquire()
                self._acquiring = None
                if acquiring.cancelled_caught:
                    return None
                if self.stopping:
                    self.client.budget.release()
                    return None
                # Anything pushed while we waited for the budget is due no earlier: take the top.
                return self._pop()

    async def _sleep_until_woken(self, delay: float) -> None:
        event = self._wake = anyio.Event()
        with anyio.move_on_after(delay):
            await event.wait()

    def stop(self) -> None:
        """Start no further polls; the ones in flight land (``iter_statuses`` between items)."""
        self.stopping = True
        self._notify()
        if self._acquiring is not None:
            self._acquiring.cancel()

    def _notify(self) -> None:
        event = self._wake
        if event is not None:
            self._wake = None
            event.set()

    def _schedule(self, task: _Task, delay: float) -> None:
        now = anyio.current_time()
        due = now + delay
        final_at = self.final_at
        if due > final_at > now:  # the schedule would skip the deadline: one last poll
            due = final_at
        heapq.heappush(self.heap, (due, task.index))

    async def _observed(self, task: _Task, result: StatusResult) -> None:
        task.polls += 1
        task.errors = 0
        task.last = result
        # The task's fate first, the callback second: a callback that awaits is a cancellation
        # point, and a task popped from the heap must never be left neither done nor scheduled.
        if result.is_terminal:
            if self.wait:
                self._learn(task)
            self._finish(task)
        elif not self.wait:
            self._finish(task)
        else:
            age = anyio.current_time() - task.first_seen
            if task.polls == 1:
                self.stats.started(task.kind, task.first_seen, task.hint)
            self._schedule(task, task.policy.next_interval(task.polls, age, task.hint))
        if self.on_update is not None:
            ret = self.on_update(result)
            if inspect.isawaitable(ret):
                await ret

    def _learn(self, task: _Task) -> None:
        """Report a completion: it happened after the previous poll and by this one."""
        hi = anyio.current_time() - task.first_seen
        polls = task.polls
        lo = 0.0 if polls == 1 else max(
            hi - task.policy._previous_gap(polls, hi, task.hint), 0.0)
        self.stats.completed(task.kind, task.first_seen, lo, hi, hint=task.hint,
                             known_start=type(task) is _CreatedTask, tracked=polls > 1)

    def _failed(self, task: _Task, exc: CambError, answers: int) -> None:
        if is_fatal(exc) or unanswered(exc, self.client, answers):
            raise exc  # the whole call fails, return_exceptions or not
        if is_transient(exc) and task.errors < task.policy.max_errors:
            task.errors += 1
            age = anyio.current_time() - task.first_seen
            self._schedule(task, task.policy.next_interval(task.polls + task.errors, age,
                                                           task.hint))
            return
        exc.kind, exc.task_id = task.kind, task.task_id
        if task.polls and self.wait:
            self.stats.forget(task.kind, task.first_seen, task.hint)
        if not self.return_exceptions:
            task.done = True  # not reported as abandoned by _censor_unfinished
            raise exc
        task.error = exc
        self._finish(task)

    def _finish(self, task: _Task) -> None:
        task.done = True
        if self.emit is not None:
            self.emit(task.outcome())

    async def emit_unfinished(self) -> None:
        """After the deadline: report every task not done with its last observed status."""
        if self.emit is None:
            return
        for count, task in enumerate(self.unique, 1):
            if not task.done:
                task.done = True
                self.emit(task.outcome())
            if count % _CHUNK == 0:
                await anyio.lowlevel.checkpoint()


async def make_poller(
    client: AsyncCambClient,
    tasks: Iterable[str | TaskHandle[Any]],
    *,
    kind: TaskKind | str | None,
    wait: bool,
    policy: PolicyArg,
    return_exceptions: bool,
    on_update: Callable[[StatusResult], object] | None,
    timeout: float | None,
) -> _Poller:
    if client.closed:
        raise ClientClosedError("this AsyncCambClient is closed")
    if timeout is not None and (
        not is_number(timeout) or timeout < 0
    ):
        raise ValueError(f"timeout must be a non-negative number of seconds, got {timeout!r}")
    poller = _Poller(client, tasks, kind=kind, wait=wait, policy=policy,
                     return_exceptions=return_exceptions, on_update=on_update)
    if timeout is not None:
        now = anyio.current_time()
        poller.deadline = now + timeout
        if wait:
            poller.final_at = final_poll_time(timeout, now)
    await poller.prepare()
    return poller


#: What a bulk call puts in a failed task's slot with ``return_exceptions=True``: the task's
