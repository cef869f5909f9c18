"""One worker of a fleet watch list (``RedisWatchList.run``): claim, poll, settle, renew."""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING

import anyio
import anyio.abc

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup


from ._errors import AuthenticationError, CambError, ClientClosedError, is_transient
from ._models import StatusResult, TaskKind
from ._redis_conn import _FAILURES
from ._redis_watch_model import _Claimed, _result_json, _text, _unwrap
from .polling._policy import DEFAULT_POLICIES, PollPolicy

if TYPE_CHECKING:
    from ._client import AsyncCambClient
    from ._redis_watch import RedisWatchList

__all__ = ["_Worker"]


class _Worker:
    """One ``RedisWatchList.run``: a claimer, pollers, a settler and a lease renewer."""

    def __init__(
        self,
        watch: RedisWatchList,
        client: AsyncCambClient,
        *,
        policy: PollPolicy | Mapping[TaskKind | str, PollPolicy] | None,
        concurrency: int | None,
        until_empty: bool,
    ) -> None:
        self.watch = watch
        self.client = client
        policies = dict(DEFAULT_POLICIES)
        if isinstance(policy, PollPolicy):
            policies = dict.fromkeys(TaskKind, policy)
        elif isinstance(policy, Mapping):
            for key, value in policy.items():
                if not isinstance(value, PollPolicy):
                    raise TypeError("policy mapping values must be PollPolicy objects")
                policies[TaskKind(key)] = value
        elif policy is not None:
            raise TypeError("policy must be a PollPolicy or a mapping of kind -> PollPolicy")
        # Bound to the client: an adaptive policy then schedules by the client's
        # CompletionStats (e.g. warm-started from a saved snapshot) or its fallback.
        self.policies = {kind: p._bind(client, kind) for kind, p in policies.items()}
        n = (
            concurrency
            if concurrency is not None
            else getattr(client.budget, "max_concurrency", 16)
        )
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError("concurrency must be an integer >= 1")
        self.n = n
        self.until_empty = until_empty
        self.token = uuid.uuid4().hex
        self.queue: deque[_Claimed] = deque()
        self.held: dict[str, _Claimed] = {}  # leased to us, not yet settled
        self.in_flight = 0
        self.lost: set[str] = set()
        self.reschedule: list[tuple[_Claimed, float]] = []
        self.done: list[tuple[_Claimed, str, str]] = []  # (task, result JSON, error)
        self.claim_wake = anyio.Event()
        self.work_wake = anyio.Event()
        self.settle_wake = anyio.Event()
        self.finished = False
        # A poll starts only while its lease has at least this much left (a request that
        # starts later could arrive after the lease expired and another worker took over).
        self.margin = min(5.0, watch.lease_ttl / 3)

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self.group = tg
                tg.start_soon(self._claimer)
                tg.start_soon(self._settler)
                tg.start_soon(self._renewer)
                for _ in range(self.n):
                    tg.start_soon(self._poller)
        except BaseExceptionGroup as group:
            raise _unwrap(group) from None
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2 * self.watch.redis_timeout):
                await self._hand_over()

    async def _hand_over(self) -> None:
        """Leaving: send what we know, give back what we hold and have not polled."""
        watch = self.watch
        with contextlib.suppress(*_FAILURES):
            if self.reschedule or self.done:
                await self._settle_once()
            unsettled = [m for m in self.held if m not in self.lost]
            if unsettled:
                await watch._call(["release", self.token, *unsettled])
                self.held.clear()

    async def _claimer(self) -> None:
        watch = self.watch
        capacity = 2 * self.n
        while True:
            want = capacity - len(self.queue) - self.in_flight
            if want <= 0:
                self.claim_wake = anyio.Event()
                await self.claim_wake.wait()
                continue
            reply = await watch._call_or_wait(["claim", self.token, want, watch.lease_ttl])
            now_redis, wait, tracked, rows = reply
            now_redis, wait = float(_text(now_redis)), float(_text(wait))
            local = anyio.current_time()
            for i in range(0, len(rows), 3):
                member, added, polls = _text(rows[i]), float(_text(rows[i + 1])), _text(rows[i + 2])
                p, _, e = polls.partition(":")
                task = _Claimed(
                    member, max(0.0, now_redis - added), local, int(p or 0), int(e or 0)
                )
                self.held[member] = task
                self.queue.append(task)
            if rows:
                self.work_wake.set()
                self.work_wake = anyio.Event()
            if len(rows) // 3 >= want:
                continue  # more may be due
            if (
                self.until_empty
                and int(tracked) == 0
                and not self.queue
                and self.in_flight == 0
                and not self.held
            ):
                self.finished = True
                self.group.cancel_scope.cancel()
                return
            delay = watch.idle_interval if wait < 0 else min(wait, watch.idle_interval)
            self.claim_wake = anyio.Event()
            with anyio.move_on_after(max(delay, 0.005)):
                await self.claim_wake.wait()

    async def _poller(self) -> None:
        client = self.client
        resources = client._resources
        budget = client.budget
        ttl = self.watch.lease_ttl
        while True:
            if not self.queue:
                await self.work_wake.wait()
                continue
            task = self.queue.popleft()
            self.in_flight += 1
            try:
                await budget.acquire()
                if task.member in self.lost or anyio.current_time() - task.at > ttl - self.margin:
                    # The lease may be gone: leave the task to whoever holds it now.
                    budget.release()
                    self._drop(task)
                    continue
                try:
                    result = await resources[task.kind]._fetch_status(
                        task.task_id, preacquired=True
                    )
                except CambError as exc:
                    if isinstance(exc, (AuthenticationError, ClientClosedError)):
                        raise
                    self._failed(task, exc)
                else:
                    self.watch.polls += 1
                    self._observed(task, result)
            finally:
                self.in_flight -= 1
                self.claim_wake.set()

    def _drop(self, task: _Claimed) -> None:
        self.held.pop(task.member, None)
        self.lost.discard(task.member)
        self.watch.leases_lost += 1

    def _age(self, task: _Claimed) -> float:
        return task.age0 + anyio.current_time() - task.at

    def _observed(self, task: _Claimed, result: StatusResult) -> None:
        if result.is_terminal:
            self.done.append((task, _result_json(result), ""))
        else:
            task.polls += 1
            task.errors = 0
            policy = self.policies[task.kind]
            self.reschedule.append((task, policy.next_interval(task.polls, self._age(task))))
        self.settle_wake.set()

    def _failed(self, task: _Claimed, exc: CambError) -> None:
        policy = self.policies[task.kind]
        if is_transient(exc) and task.errors < policy.max_errors:
            task.errors += 1
            self.reschedule.append(
                (task, policy.next_interval(task.polls + task.errors, self._age(task)))
            )
        else:
            error = f"{type(exc).__name__}: {exc}"[:500]
            self.done.append((task, "", error))
        self.settle_wake.set()

    async def _settler(self) -> None:
        while True:
            if not self.reschedule and not self.done:
                self.settle_wake = anyio.Event()
                await self.settle_wake.wait()
            await anyio.sleep(0.005)  # gather what lands together into one call
            await self._settle_once(wait=True)

    async def _settle_once(self, *, wait: bool = False) -> None:
        resched, self.reschedule = self.reschedule[:500], self.reschedule[500:]
        done, self.done = self.done[:500], self.done[500:]
        args: list[str | float | int] = [
            "settle",
            self.token,
            self.watch.max_events or 0,
            len(resched),
        ]
        for task, delay in resched:
            args += [task.member, round(delay, 4), f"{task.polls}:{task.errors}"]
        args.append(len(done))
        for task, result, error in done:
            args += [task.member, task.kind.value, task.task_id, result, error]
        try:
            if wait:
                reply = await self.watch._call_or_wait(args)
            else:
                reply = await self.watch._call(args)
        except BaseException:
            self.reschedule[:0] = resched
            self.done[:0] = done
            raise
        self.watch.events_written += int(reply[1])
        for task, _ in resched:
            self.held.pop(task.member, None)
        for task, _, _ in done:
            self.held.pop(task.member, None)
        if self.until_empty and done:
            self.claim_wake.set()

    async def _renewer(self) -> None:
        watch = self.watch
        while True:
            await anyio.sleep(watch.lease_ttl / 3)
            members = [
                m
                for m, task in self.held.items()
                if anyio.current_time() - task.at < watch.lease_ttl
            ]
            if not members:
                continue
            started = anyio.current_time()
            try:
                lost = await watch._call(["renew", self.token, watch.lease_ttl, *members])
            except _FAILURES as exc:
                watch._failed(exc, waiting=watch.on_redis_error == "wait")
                if watch.on_redis_error == "raise":
                    raise watch._unavailable(exc) from None
                continue
            watch._back()
            lost_set = {_text(m) for m in lost}
            for m in members:
                task = self.held.get(m)
                if task is None:
                    continue
                if m in lost_set:
                    self.lost.add(m)
                else:
                    task.at = started
