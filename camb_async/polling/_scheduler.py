"""PollPolicy and the bulk scheduler behind gather_statuses / iter_statuses.

Not a coroutine per task: one heap of ``(next_due, seq, task)`` and a fixed pool of workers
(as many as the budget allows in flight) inside one task group. A worker takes the heap's
top once it is due *and* the budget has granted a start, so when the budget is the
bottleneck requests go out in due order; tasks never polled yet are due at the start and so
sort ahead of tasks being re-polled. Tracked tasks are small slotted objects (no generator,
no coroutine, no timer each), which is what lets 100,000 of them fit in ~0.5 KB apiece.
"""

from __future__ import annotations

import builtins
import heapq
import importlib
import inspect
import itertools
import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

import anyio
import anyio.abc
import anyio.lowlevel
import attrs
import backoff
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ._errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    CambError,
    ClientClosedError,
    InternalServerError,
    RateLimitError,
)
from ._models import DurationHint, StatusResult, TaskKind, TaskStatus
from ._resources import check_task_id

if TYPE_CHECKING:
    from ._adaptive import AdaptivePollPolicy
    from ._client import AsyncCambClient
    from ._handle import TaskHandle

__all__ = ["PollPolicy", "StatusIterator", "gather_statuses", "is_transient", "iter_statuses"]

_rng = random.Random()


def _positive(name: str) -> Callable[[Any, Any, float], None]:
    def check(_: Any, __: Any, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number")
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")

    return check


@attrs.frozen(kw_only=True, slots=True)
class PollPolicy:
    """When to poll a task again: exponential from ``initial`` by ``factor`` up to
    ``max_interval`` seconds, each interval scaled by a random factor in
    ``[1 - jitter, 1 + jitter]`` so that thousands of tasks created together spread out.

    ``max_errors`` is how many polls in a row may fail transiently (each after the client's
    own request retries) before the task is reported as failed. The schedule itself comes
    from ``backoff.expo`` (used as pure math; sleeping is anyio's).
    """

    initial: float = attrs.field(default=1.0, validator=_positive("initial"))
    factor: float = attrs.field(default=2.0, validator=_positive("factor"))
    max_interval: float = attrs.field(default=30.0, validator=_positive("max_interval"))
    jitter: float = 0.1
    max_errors: int = 5
    _schedule: tuple[float, ...] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if self.factor < 1:
            raise ValueError(f"factor must be >= 1, got {self.factor}")
        if self.max_interval < self.initial:
            raise ValueError("max_interval must be >= initial")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")
        if isinstance(self.max_errors, bool) or not isinstance(self.max_errors, int) or (
            self.max_errors < 0
        ):
            raise ValueError("max_errors must be an integer >= 0")
        waits = backoff.expo(base=self.factor, factor=self.initial, max_value=self.max_interval)
        next(waits)  # prime: backoff's generators start with a bare yield
        schedule = list(itertools.islice(waits, 64))
        # Past the cap, or after 64 steps of a slow factor, the last value repeats forever.
        if self.max_interval in schedule:
            schedule = schedule[: schedule.index(self.max_interval) + 1]
        object.__setattr__(self, "_schedule", tuple(schedule))

    def next_interval(self, polls: int, age: float = 0.0,
                      hint: DurationHint | None = None) -> float:
        """Seconds to wait after the ``polls``-th poll (1-based) of a task ``age`` seconds old
        (``hint``: what is known of its input size; plain policies ignore it)."""
        schedule = self._schedule
        base = schedule[polls - 1] if polls <= len(schedule) else schedule[-1]
        if self.jitter:
            return base * (1.0 + self.jitter * (2.0 * _rng.random() - 1.0))
        return base

    @classmethod
    def for_kind(cls, kind: TaskKind) -> PollPolicy:
        """The default policy of a task kind (see ``DEFAULT_POLICIES``)."""
        return DEFAULT_POLICIES[TaskKind(kind)]

    @classmethod
    def adaptive(
        cls,
        max_delay: float = 30.0,
        *,
        request_cost: float | None = None,
        min_interval: float = 0.5,
        min_samples: int = 20,
        fallback: PollPolicy | None = None,
        tail: float = 0.01,
        jitter: float = 0.1,
        max_errors: int = 5,
        p95_delay: float | None = None,
        delay_quantile: float = 0.95,
    ) -> AdaptivePollPolicy:
        """A policy that learns each kind's durations (per client) and polls where
        completion is likely; see ``camb_async._adaptive.AdaptivePollPolicy``.

        ``p95_delay=D`` switches to quantile mode: the fewest requests such that
        ``delay_quantile`` (0.95) of completions are seen within ``D`` seconds; the other 5 %
        are the tasks finishing in the kind's dead start or far tail, where polling every
        ``D`` would cost the most for the least (gaps there reach ``max(max_delay, D)``, and
        the first poll may wait longer). Both modes use a task's ``DurationHint``, once
        learned, to expect its duration from its size.

        ``max_delay`` bounds every gap between polls (so any completion is seen within it);
        ``request_cost`` (default ``max_delay / 15``: about the requests of a fixed
        ``max_delay`` sleep, for about half its mean delay) is the mean delay, in seconds, one
        request is worth. Until a kind has ``min_samples`` completions, ``fallback`` (default:
        the kind's default policy, capped at ``max_delay``) is used. ``tail`` (0.01) lets
        ``max_delay`` be exceeded with about that probability, so gaps may stretch where the
        task is unlikely to finish (a long job's first minutes); ``tail=0`` makes it hard.

        Args:
            max_delay: longest gap between polls, in seconds.
            request_cost: the mean delay (seconds) one request is worth.
            min_interval: shortest gap between polls.
            min_samples: completions a kind needs before its durations are used.
            fallback: the policy until then (default: the kind's, capped at ``max_delay``).
            tail: probability with which ``max_delay`` may be exceeded.
            jitter: relative random spread of each gap.
            max_errors: transient errors in a row tolerated per task.
            p95_delay: quantile mode: completions seen within this many seconds.
            delay_quantile: the share of completions ``p95_delay`` covers.
        """
        from ._adaptive import AdaptivePollPolicy

        return AdaptivePollPolicy(
            initial=min(1.0, max_delay), factor=2.0, max_interval=max_delay, jitter=jitter,
            max_errors=max_errors, max_delay=max_delay, request_cost=request_cost,
            min_interval=min_interval, min_samples=min_samples, fallback=fallback, tail=tail,
            p95_delay=p95_delay, delay_quantile=delay_quantile,
        )

    # Hooks for policies that learn (``AdaptivePollPolicy``); plain policies learn nothing.

    def _bind(self, client: AsyncCambClient, kind: TaskKind) -> PollPolicy:
        """The policy to use for ``kind`` on ``client`` (adaptive ones attach its stats)."""
        return self

    def first_interval(self, age: float, hint: DurationHint | None = None) -> float:
        """Seconds to wait before the first poll of a task known to be ``age`` seconds old."""
        return 0.0

    def _previous_gap(self, polls: int, age: float, hint: DurationHint | None = None
                      ) -> float:
        """About how long before the ``polls``-th poll the previous one was (no jitter)."""
        schedule = self._schedule
        return schedule[polls - 2] if polls - 1 <= len(schedule) else schedule[-1]


#: Per-kind defaults, from the API's own status pages: TTS is quick (the example polls every
#: 5 s); translation "1-2 s at first, doubling, capped at 10-15 s"; transcription "every 15 s,
#: growing to 60 s for long audio"; dubbing "exponential backoff" from a 15 s example sleep.
#: The first waits are shorter than the pages' fixed sleeps so short jobs are seen promptly;
#: the caps are the pages'.
DEFAULT_POLICIES: dict[TaskKind, PollPolicy] = {
    TaskKind.TTS: PollPolicy(initial=1.0, factor=1.5, max_interval=5.0),
    TaskKind.TRANSLATION: PollPolicy(initial=1.0, factor=2.0, max_interval=10.0),
    TaskKind.TRANSCRIPTION: PollPolicy(initial=5.0, factor=1.5, max_interval=60.0),
    TaskKind.DUB: PollPolicy(initial=10.0, factor=1.5, max_interval=60.0),
}


#: What ``policy=`` accepts in the bulk calls: one policy, or one per kind.
PolicyArg = PollPolicy | Mapping[TaskKind, PollPolicy] | Mapping[str, PollPolicy] | None


#: The last-chance poll before a caller's deadline goes out this long before it (at most a
#: tenth of the timeout), so that it lands in time: the deadline itself stays hard.
_FINAL_POLL_LEAD = 1.0


def final_poll_time(timeout: float | None, now: float) -> float:
    """When to poll a task one last time if its schedule would skip past the deadline of a
    ``timeout`` starting ``now``: without it, a dub task done at 0.3 s and a 10 s deadline
    would be reported PENDING because dub's next poll is due at ~10 s."""
    if timeout is None:
        return math.inf
    return now + timeout - min(_FINAL_POLL_LEAD, 0.1 * timeout)


def next_poll_delay(delay: float, final_at: float) -> float:
    """``delay``, or the wait until ``final_at`` if the poll would come after it."""
    if final_at != math.inf:
        now = anyio.current_time()
        if now + delay > final_at > now:
            return final_at - now
    return delay


def is_transient(exc: BaseException) -> bool:
    """Errors worth another poll later: throttling, 5xx, no answer, or a garbled 2xx answer."""
    if isinstance(exc, (RateLimitError, InternalServerError, APIConnectionError)):
        return True
    return isinstance(exc, APIError) and exc.status_code < 300


def _for_task(exc: ValueError, kind: TaskKind, task_id: str) -> ValueError:
    """``exc`` with ``kind`` and ``task_id`` set, like a ``CambError`` reported for a task."""
    exc.kind, exc.task_id = kind, task_id  # type: ignore[attr-defined]
    return exc


def unanswered(exc: BaseException, client: AsyncCambClient, answers: int) -> bool:
    """A poll that got no usable answer while the server answered nothing at all (neither
    this poll's attempts nor any other request of the client) since it started, when
    ``client._answers`` was ``answers``: the server is unreachable (refused, down, a black
    hole), which is no task's own problem. Re-polling every task on its schedule would take
    minutes to say so; the call fails at once instead, retries of the request path done."""
    return isinstance(exc, APIConnectionError) and client._answers == answers


#: BaseExceptionGroup (built in from Python 3.11; anyio's ``exceptiongroup`` backport before).
EXCEPTION_GROUP: type[BaseException] = (
    getattr(builtins, "BaseExceptionGroup", None)
    or importlib.import_module("exceptiongroup").BaseExceptionGroup)


def lone_exception(group: BaseException) -> BaseException | None:
    """The one exception inside a task group's exception group, or None if it holds more.

    Trio's nurseries wrap even a lone exception, e.g. a ``KeyboardInterrupt`` trio delivers to
    the main task while it waits on a task group; ``except KeyboardInterrupt`` would miss it.
    Our calls re-raise it alone, as on asyncio.
    """
    exc = group
    while isinstance(exc, EXCEPTION_GROUP):
        members = exc.exceptions  # type: ignore[attr-defined]
        if len(members) != 1:
            return None
        exc = members[0]
    return exc


class _UnwrappingTaskGroup:
    """An anyio task group that re-raises a lone exception as itself (see lone_exception)."""

    __slots__ = ("_group",)

    def __init__(self) -> None:
        self._group = anyio.create_task_group()

    async def __aenter__(self) -> anyio.abc.TaskGroup:
        return await self._group.__aenter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        try:
            return await self._group.__aexit__(exc_type, exc, tb)
        except EXCEPTION_GROUP as group:
            lone = lone_exception(group)
            if lone is None:
                raise
            raise lone from None


def create_task_group() -> _UnwrappingTaskGroup:
    """``anyio.create_task_group()`` for our calls: a lone exception leaves it unwrapped."""
    return _UnwrappingTaskGroup()


def _fatal(exc: BaseException) -> bool:
    """Errors that end the whole call at once: every other request would fail the same way."""
    return isinstance(exc, (AuthenticationError, ClientClosedError))


# ----------------------------------------------------------------------------- scheduler


class _Task:
    """One tracked task. Slotted and small: 100,000 of these must be cheap."""

    __slots__ = ("kind", "task_id", "policy", "first_seen", "polls", "errors", "last", "error",
                 "done", "hint")

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
        from ._handle import TaskHandle

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
        self.heap: list[tuple[float, int, _Task]] = []
        #: Tasks whose id was refused (``return_exceptions=True``): reported when a run starts.
        self.refused: list[_Task] = []
        self.seq = itertools.count()
        self.in_flight = 0
        self.fatal: BaseException | None = None
        self.stopping = False
        #: The caller's deadline, and the last-chance poll before it (see final_poll_time).
        self.deadline = math.inf
        self.final_at = math.inf
        self._acquiring: anyio.CancelScope | None = None
        self._wake: anyio.Event | None = None
        self._lock = anyio.Lock()

    async def prepare(self) -> None:
        """Validate every input and build the heap, before any request is sent."""
        client = self.client
        now = anyio.current_time()
        by_key: dict[tuple[TaskKind, str], _Task] = {}
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
            key = (kind, task_id)
            task = by_key.get(key)
            if task is None:
                try:
                    check_task_id(task_id)  # validates the id before any request
                except ValueError as exc:
                    if not self.return_exceptions:
                        raise
                    # Its own slot's error; the id is never sent, the others are polled.
                    task = by_key[key] = _Task(kind, task_id, PollPolicy.for_kind(kind), now)
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
                    task = by_key[key] = _Task(kind, task_id, policy, first_seen, hint)
                    due = now
                else:
                    task = by_key[key] = _CreatedTask(kind, task_id, policy, first_seen, hint)
                    due = now + next_poll_delay(policy.first_interval(now - first_seen, hint),
                                                self.final_at)
                self.unique.append(task)
                self.heap.append((due, next(self.seq), task))
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
        n_workers = max(1, min(getattr(self.client.budget, "max_concurrency", 16),
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
                task = await self._take()
                if task is None:
                    return
                answers = client._answers
                try:
                    result = await resources[task.kind]._fetch_status(task.task_id,
                                                                      preacquired=True)
                except CambError as exc:
                    self._failed(task, exc, answers)
                except anyio.get_cancelled_exc_class():
                    # Cancelled mid-poll (deadline, caller, a fatal error elsewhere): put the
                    # task back, due now, so a later run polls it and nothing is lost.
                    heapq.heappush(self.heap, (anyio.current_time(), next(self.seq), task))
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

    async def _take(self) -> _Task | None:
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
                if delay > 1e-9:  # slack for timers firing a hair early / float rounding
                    await self._sleep_until_woken(delay)
                    continue
                # Interruptible: iter_statuses stops the run when a result is ready, and a
                # wait for the budget (pacing, a 429 pause) must not hold that result back.
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
                task = heapq.heappop(heap)[2]
                self.in_flight += 1
                return task

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
        heapq.heappush(self.heap, (due, next(self.seq), task))

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
        if _fatal(exc) or unanswered(exc, self.client, answers):
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


async def _make_poller(
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
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0
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
    poller = await _make_poller(client, tasks, kind=kind, wait=wait, policy=policy,
                                return_exceptions=return_exceptions, on_update=on_update,
                                timeout=timeout)
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
    return StatusIterator(client, tasks, kind=kind, wait=wait, timeout=timeout, policy=policy,
                          return_exceptions=return_exceptions, on_update=on_update)


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

    __slots__ = ("_args", "_client", "_poller", "_buffer", "_deadline", "_done", "_timeout",
                 "_group", "_receive", "_raised", "_last_time", "_driving")

    def __init__(self, client: AsyncCambClient, tasks: Iterable[str | TaskHandle[Any]], *,
                 timeout: float | None, **kwargs: Any) -> None:
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
        poller = self._poller = await _make_poller(self._client, tasks, timeout=self._timeout,
                                                   **kwargs)
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

    async def _drive(self, poller: _Poller, send: MemoryObjectSendStream[Any],
                     driving: anyio.CancelScope) -> None:
        # Never raises (a fatal error is stored and raised by __anext__), so nothing from
        # here can cancel the caller's code inside the ``async with`` block.
        with send, driving:
            with anyio.move_on_after(self._deadline - anyio.current_time()):
                await poller.run()
            if poller.fatal is None and not self._done:
                await poller.emit_unfinished()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> bool | None:
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
