"""RedisWatchList: a durable watch list for a fleet of workers, on Redis.

A web tier ``add``s tasks it created; any number of worker processes ``run`` the list (claim
due tasks with a lease, poll them through their client, under its budget, reschedule or
complete them); consumers read completion events through a Redis consumer group. All state is
in Redis, so a worker or a consumer can die at any moment and lose nothing.

How (and why)
-------------
* One Lua script (``redis_watch.lua``), one operation per call, so every step is atomic:
  *claim* (the due tasks move from the ``due`` sorted set to ``leases`` with an expiry and an
  owner), *settle* (a polled task goes back to ``due`` at its next poll time, if its lease is
  still this worker's; a terminal one becomes an event on the ``events`` stream and is
  forgotten, in the same step), *renew*, *release*, *add*, *stats*, *read*.
* A lease that expires (its worker was killed, or stalled past ``lease_ttl``) makes the task
  due again on the next claim by anyone. A worker renews the leases it holds every
  ``lease_ttl / 3`` and does not start a poll whose lease may have run out, so no two workers
  poll a task within one lease.
* A terminal status is recorded once: the settle step writes the event only while the task is
  still tracked, so a retried call or a late worker adds no second event.
* Times are Redis's clock; the poll schedule is the kind's ``PollPolicy`` (``policy=`` of
  ``run``), computed from the task's age since ``add``. Adaptive statistics are not shared
  through Redis, nor learned by the workers (a task's polls are spread over several workers,
  so no one of them sees its whole life): an adaptive policy schedules by the client's
  ``CompletionStats`` as given (a warm start from a snapshot) or else by its fallback. This
  keeps every Redis call O(tasks touched).
* Consumers: ``XREADGROUP`` (and ``XAUTOCLAIM`` for entries idle longer than ``claim_idle``:
  a dead consumer's) inside the same script, which also acknowledges the previous event.
* Redis failures are handled as ``RedisRateBudget`` handles them: no exception of the Redis
  client escapes; ``on_redis_error="wait"`` retries every ``retry_interval`` (results a worker
  could not hand over are kept and sent when Redis is back), ``"raise"`` raises
  ``RedisWatchUnavailableError`` (a ``CambError``). Credentials Redis refuses raise
  ``RedisWatchReplyError`` at once.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
import math
import sys
import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

import anyio
import anyio.abc

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

import coredis
import coredis.exceptions
import coredis.retry

from ._models import TaskKind
from ._redis_conn import (
    _CONFIG_ERRORS,
    _FAILURES,
    _error_name,
    _first_failure,
    _reply_code,
    _tls_defaults,
)
from ._redis_watch_model import (
    RedisWatchReplyError,
    RedisWatchUnavailableError,
    WatchEvent,
    WatchStats,
    _entry,
    _text,
)
from ._redis_watch_stream import CompletionStream
from ._redis_watch_worker import _Worker
from .polling._policy import PollPolicy

if TYPE_CHECKING:
    from ._client import AsyncCambClient

__all__ = ["RedisWatchList", "RedisWatchReplyError", "RedisWatchUnavailableError", "WatchEvent",
           "WatchStats"]

logger = logging.getLogger("camb_async")

_SCRIPT = importlib.resources.files(__package__).joinpath("redis_watch.lua").read_text("utf-8")

class RedisWatchList:
    """A durable list of tasks to watch, shared by a fleet through Redis.

    Build it with ``from_url`` or around a coredis client of your own (standalone, Cluster
    or Sentinel-managed, as for ``RedisRateBudget``). Every process that uses ``name`` sees
    the same list. ``async with watch:`` holds the Redis client open (recommended in
    long-running processes); without it each call opens the client for itself.

    Args:
        redis: a coredis ``Redis`` or ``RedisCluster`` client.
        name: the list's name: its keys share the hash tag ``{name}``.
        lease_ttl: seconds a claimed task stays a worker's (renewed while it works on it).
        on_redis_error: ``"wait"`` (workers and consumers wait for Redis, retrying every
            ``retry_interval``) or ``"raise"`` (they raise ``RedisWatchUnavailableError``).
            ``add`` and ``stats`` always raise.
        retry_interval: seconds between tries while Redis is unavailable.
        redis_timeout: bound on every Redis call, in seconds.
        idle_interval: longest sleep of an idle worker or consumer between looks at Redis
            (tasks added by other processes are seen within it).
        max_events: trim the event stream to about this many entries (``None``: never;
            trimming may drop events a group has not read yet).
        key_prefix: prefix of the keys (``{key_prefix}:watch:{{name}}:...``).
    """

    def __init__(
        self,
        redis: coredis.Redis[Any] | coredis.RedisCluster[Any],
        *,
        name: str,
        lease_ttl: float = 30.0,
        on_redis_error: Literal["wait", "raise"] = "wait",
        retry_interval: float = 1.0,
        redis_timeout: float = 3.0,
        idle_interval: float = 0.25,
        max_events: int | None = None,
        key_prefix: str = "camb-async",
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("name must be a non-empty string (the watch list's key in Redis)")
        if "{" in name or "}" in name or "{" in key_prefix or "}" in key_prefix:
            raise ValueError("name and key_prefix may not contain braces: they make the keys' "
                             "hash tag (one Redis Cluster slot)")
        if on_redis_error not in ("wait", "raise"):
            raise ValueError(f"on_redis_error must be 'wait' or 'raise', got {on_redis_error!r}")
        for label, value in (("lease_ttl", lease_ttl), ("retry_interval", retry_interval),
                             ("redis_timeout", redis_timeout), ("idle_interval", idle_interval)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value > 0):
                raise ValueError(f"{label} must be a positive number of seconds, got {value!r}")
        if max_events is not None and (isinstance(max_events, bool)
                                       or not isinstance(max_events, int) or max_events < 1):
            raise ValueError("max_events must be an integer >= 1 or None")
        self._redis = redis
        self._script = redis.register_script(_SCRIPT)
        self.name = name
        tag = f"{key_prefix}:watch:{{{name}}}"
        self._keys = tuple(f"{tag}:{k}" for k in (
            "tasks", "due", "leases", "owners", "polls", "events", "counts"))
        self.lease_ttl = float(lease_ttl)
        self.on_redis_error = on_redis_error
        self.retry_interval = float(retry_interval)
        self.redis_timeout = float(redis_timeout)
        self.idle_interval = float(idle_interval)
        self.max_events = max_events
        self._secrets: tuple[str, ...] = ()
        self._session: contextlib.AsyncExitStack | None = None
        self._opening = anyio.Lock()
        self._opened_by_call = False
        #: The client was opened by a run() or completions() of one task, not `async with`.
        self._implicit = False
        self._down = False
        # Figures for monitoring and the benchmarks (this process).
        self.polls = 0
        self.events_written = 0
        self.redis_errors = 0
        self.leases_lost = 0

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        name: str,
        cluster: bool = False,
        redis_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> RedisWatchList:
        """A watch list on the Redis at ``url`` (``redis://``, ``rediss://`` or ``unix://``).

        Args:
            url: the Redis URL; ``rediss://`` takes coredis' ``ssl_*`` query parameters, and
                the server's name is checked, as for ``RedisRateBudget.from_url``.
            name: the list's name (every process of the fleet uses the same).
            cluster: ``url`` is any node of a Redis Cluster.
            redis_options: more keyword arguments for coredis' ``from_url``.
            options: the other keyword arguments of ``RedisWatchList``.
        """
        scheme = urlsplit(url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"unsupported Redis URL scheme {scheme!r}")
        if cluster and scheme == "unix":
            raise ValueError("a Redis Cluster is reached over TCP (redis:// or rediss://)")
        kwargs: dict[str, Any] = {"stream_timeout": 2.0, "connect_timeout": 1.0,
                                  "decode_components": True, "decode_responses": True}
        if not cluster:
            kwargs["retry_policy"] = coredis.retry.ConstantRetryPolicy(
                (coredis.exceptions.ConnectionError,), retries=1, delay=0)
        kwargs.update(redis_options or {})
        client: coredis.Redis[Any] | coredis.RedisCluster[Any]
        if cluster:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Use coredis.connection.TCPLocation",
                                        DeprecationWarning)
                client = coredis.RedisCluster.from_url(_tls_defaults(url), **kwargs)
        else:
            client = coredis.Redis.from_url(_tls_defaults(url), **kwargs)
        watch = cls(client, name=name, **options)
        parts = urlsplit(url)
        watch._secrets = tuple(s for s in (parts.password,
                                           parts.password and unquote(parts.password)) if s)
        return watch

    def __repr__(self) -> str:
        return (f"RedisWatchList(name={self.name!r}, lease_ttl={self.lease_ttl}, "
                f"on_redis_error={self.on_redis_error!r})")

    # ------------------------------------------------------------------ web tier

    async def add(self, kind: TaskKind | str, task_id: str,
                  meta: Mapping[str, str] | None = None) -> bool:
        """Track a task until it ends; True if it was added, False if already tracked.

        Args:
            kind: the task's kind (``"dub"``, ``"tts"``, ``"translate"``, ``"transcribe"``).
            task_id: its id.
            meta: a small ``str -> str`` map carried to its completion event (a user id,
                what to do next); at most 4 KB as JSON. Adding a tracked task again keeps
                its first ``meta``.

        Raises ``RedisWatchUnavailableError`` if Redis cannot be used.
        """
        return await self.add_many([(kind, task_id, meta)]) == 1

    async def add_many(self, tasks: Iterable[tuple[TaskKind | str, str]
                                             | tuple[TaskKind | str, str,
                                                     Mapping[str, str] | None]],
                       *, first_poll_in: float = 0.0) -> int:
        """Track many tasks in a few calls; returns how many were not tracked already.

        Args:
            tasks: ``(kind, task_id)`` or ``(kind, task_id, meta)`` tuples.
            first_poll_in: seconds before the first poll of each (0: due at once).
        """
        args: list[str | float | int] = []
        for item in tasks:
            member, meta = _entry(item)
            args += [member, meta, max(0.0, float(first_poll_in))]
        added = 0
        for start in range(0, len(args), 3000):  # 1,000 tasks a call: Redis stays responsive
            chunk = args[start:start + 3000]
            reply = await self._call_or_raise(["add", len(chunk) // 3, *chunk])
            added += int(reply)
        return added

    async def stats(self) -> WatchStats:
        """Counts of the list now (see ``WatchStats``); raises ``RedisWatchUnavailableError``
        if Redis cannot be used."""
        tracked, due, leased, completed, added, events, oldest = await self._call_or_raise(
            ["stats"])
        return WatchStats(tracked=int(tracked), due=int(due), leased=int(leased),
                          completed=int(completed), added=int(added), events=int(events),
                          oldest_due_age=round(float(_text(oldest)), 3))

    # ------------------------------------------------------------------ workers

    async def run(
        self,
        client: AsyncCambClient,
        *,
        policy: PollPolicy | Mapping[TaskKind | str, PollPolicy] | None = None,
        concurrency: int | None = None,
        until_empty: bool = False,
    ) -> None:
        """Poll the list's due tasks through ``client`` until cancelled.

        Claims due tasks with a lease, polls each (under ``client``'s budget: normally a
        ``RedisRateBudget`` of the same fleet), then reschedules it by its kind's policy or,
        if it ended, writes its completion event and forgets it, atomically. On the way out
        (cancelled, or an error) the results it holds are handed over and the leases of
        tasks it did not poll are given back, within a couple of seconds.

        Args:
            client: an open ``AsyncCambClient``.
            policy: one ``PollPolicy`` or one per kind (default: each kind's default).
            concurrency: polls in flight in this process (default: the budget's
                ``max_concurrency``).
            until_empty: return once the list tracks no task (a batch job, a test).

        Raises ``AuthenticationError`` (every poll would fail alike), and with
        ``on_redis_error="raise"`` ``RedisWatchUnavailableError``.
        """
        worker = _Worker(self, client, policy=policy, concurrency=concurrency,
                         until_empty=until_empty)
        async with contextlib.AsyncExitStack() as stack:
            await self._enter_implicitly(stack)
            await worker.run()

    # ------------------------------------------------------------------ consumers

    def completions(self, *, group: str, consumer: str, batch: int = 32,
                    claim_idle: float = 60.0) -> CompletionStream:
        """Completion events through the consumer group ``group``, as ``consumer``.

        Each event is acknowledged when the next one is requested, or on leaving
        ``async with`` without an exception: an event whose loop body raised stays pending,
        and is delivered again (to ``consumer`` when it reads again, or to another consumer
        of the group once it has been idle ``claim_idle`` seconds). Delivery is at least
        once: a consumer that dies after its body's work but before the ack repeats it.

        Use as ``async with watch.completions(group=..., consumer=...) as events:
        async for event in events: ...``. A bare ``async for`` works too, but a ``break``
        out of it then leaves the last event unacknowledged (delivered again).

        Args:
            group: the consumer group (created, reading from the stream's start, if new).
            consumer: this consumer's name within the group (stable across restarts: its
                own pending events are delivered first).
            batch: events read per Redis call.
            claim_idle: seconds after which another consumer's unacknowledged event is
                taken over.
        """
        if not group or not consumer:
            raise ValueError("group and consumer must be non-empty strings")
        if batch < 1 or claim_idle <= 0:
            raise ValueError("batch must be >= 1 and claim_idle > 0")
        return CompletionStream(self, group, consumer, batch, claim_idle)

    # ------------------------------------------------------------------ lifecycle

    async def aclose(self) -> None:
        """Release the Redis client held open by ``async with`` (idempotent)."""
        session, self._session = self._session, None
        if session is not None:
            await session.aclose()

    async def __aenter__(self) -> RedisWatchList:
        """Hold the Redis client open for the block."""
        if self._session is not None:
            raise RuntimeError("this RedisWatchList is already in use by an `async with`")
        session = contextlib.AsyncExitStack()
        await session.__aenter__()
        try:
            async with self._opening:
                if not self._client_is_open():
                    await session.enter_async_context(self._redis)
        except BaseException:
            await session.aclose()
            raise
        self._session = session
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ internals

    async def _enter_implicitly(self, stack: contextlib.AsyncExitStack) -> None:
        """Open the client for one ``run()`` or ``completions()`` not inside ``async with``.

        The connection pool belongs to the task that opens it: a second user in another task
        would be cut off (or corrupt its cancel scopes) when the first one stops. So sharing
        a watch list between tasks needs ``async with watch:``, and a second implicit user is
        told so rather than left to fail later.
        """
        if self._implicit:
            raise RuntimeError(
                "this RedisWatchList is already used by a run() or completions() of another "
                "task: hold it open with `async with watch:` to share it between tasks")
        if self._session is None and not self._client_is_open():
            await stack.enter_async_context(self)
            self._implicit = True

            def done() -> None:
                self._implicit = False

            stack.callback(done)

    def _client_is_open(self) -> bool:
        try:
            self._redis.connection_pool.task_group  # noqa: B018 - raises unless open
        except RuntimeError:
            return False
        return True

    def _unavailable(self, exc: BaseException) -> RedisWatchUnavailableError:
        kind = _error_name(exc)
        text = str(exc)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        if not text.startswith(kind):
            text = f"{kind}: {text}" if text else kind
        message = f"Redis for watch list {self.name!r} is unavailable: {text}"
        cls = RedisWatchUnavailableError if _reply_code(exc) is None else RedisWatchReplyError
        return cls(message[:500], redis_error=kind)

    async def _call(self, args: list[str | float | int]) -> Any:
        """One run of the script within ``redis_timeout``; raw failures propagate."""
        with anyio.fail_after(self.redis_timeout):
            if not self._opened_by_call and self._client_is_open():
                return await self._script(keys=self._keys, args=args)
            async with self._opening:
                self._opened_by_call = True
                try:
                    async with self._redis:
                        return await self._script(keys=self._keys, args=args)
                except BaseExceptionGroup as group:
                    raise _first_failure(group) from None
                finally:
                    self._opened_by_call = False

    def _failed(self, exc: BaseException, waiting: bool = False) -> None:
        """Count a failure and log the start of an outage, saying whether the caller waits
        for Redis (``waiting``) or is about to get the error."""
        self.redis_errors += 1
        if not self._down:
            self._down = True
            logger.warning("watch list %r: Redis unavailable (%s); %s", self.name,
                           _error_name(exc), "waiting for it" if waiting else "raising")

    def _back(self) -> None:
        if self._down:
            self._down = False
            logger.info("watch list %r: Redis is back", self.name)

    async def _call_or_raise(self, args: list[str | float | int]) -> Any:
        """A call whose failure is the caller's to handle: a ``CambError``."""
        try:
            reply = await self._call(args)
        except _FAILURES as exc:
            self._failed(exc)
            raise self._unavailable(exc) from None
        self._back()
        return reply

    async def _call_or_wait(self, args: list[str | float | int]) -> Any:
        """A call that waits out an outage (``"wait"``) or raises (``"raise"``)."""
        while True:
            try:
                reply = await self._call(args)
            except _FAILURES as exc:
                raising = self.on_redis_error == "raise" or isinstance(exc, _CONFIG_ERRORS)
                self._failed(exc, waiting=not raising)
                if raising:
                    raise self._unavailable(exc) from None
                await anyio.sleep(self.retry_interval)
                continue
            self._back()
            return reply


