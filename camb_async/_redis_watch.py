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
import json
import logging
import math
import sys
import uuid
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

import anyio
import anyio.abc
import attrs

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

import coredis
import coredis.exceptions
import coredis.retry

from ._errors import AuthenticationError, CambError, ClientClosedError, is_transient
from ._models import ModelError, StatusResult, TaskKind, parse_status
from ._redis_conn import _error_name, _reply_code, _tls_defaults
from ._validation import check_task_id
from .polling._policy import DEFAULT_POLICIES, PollPolicy

if TYPE_CHECKING:
    from ._client import AsyncCambClient

__all__ = ["RedisWatchList", "RedisWatchReplyError", "RedisWatchUnavailableError", "WatchEvent",
           "WatchStats"]

logger = logging.getLogger("camb_async")

_SCRIPT = importlib.resources.files(__package__).joinpath("redis_watch.lua").read_text("utf-8")

_FAILURES: tuple[type[Exception], ...] = (
    coredis.exceptions.RedisError,
    OSError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)
_CONFIG_ERRORS = (coredis.exceptions.AuthenticationError, coredis.exceptions.AuthorizationError)

#: ``meta`` is carried in every event: keep it small.
MAX_META_BYTES = 4096


class RedisWatchUnavailableError(CambError):
    """The watch list could not use Redis (and ``on_redis_error="raise"``, or a call such as
    ``add`` or ``stats`` that reports to its caller).

    ``redis_error`` names what went wrong: the code of Redis's error reply (``"OOM"``,
    ``"READONLY"``...) or the kind of failure (``"ConnectionError"``, ``"TimeoutError"``).
    """

    def __init__(self, message: str, *, redis_error: str = "") -> None:
        super().__init__(message)
        self.redis_error = redis_error


class RedisWatchReplyError(RedisWatchUnavailableError):
    """Redis answered with an error (``redis_error`` is its code); raised at once, whatever
    ``on_redis_error``, when Redis refuses the credentials (WRONGPASS, NOAUTH, NOPERM)."""


@attrs.frozen(kw_only=True, slots=True)
class WatchStats:
    """A snapshot of a watch list (``RedisWatchList.stats()``).

    ``tracked``: tasks not yet terminal; ``due``: of those, waiting for a worker now (expired
    leases included); ``leased``: being polled by a live worker; ``completed``: events ever
    written; ``added``: tasks ever added; ``events``: entries in the stream;
    ``oldest_due_age``: seconds the longest-waiting due task has waited (0: none waits).
    """

    tracked: int
    due: int
    leased: int
    completed: int
    added: int
    events: int
    oldest_due_age: float

    def as_dict(self) -> dict[str, float]:
        """The figures as a plain dict (for JSON)."""
        return attrs.asdict(self)


@attrs.frozen(kw_only=True, slots=True)
class WatchEvent:
    """A task of the watch list ended: its final ``StatusResult`` and the ``meta`` given to
    ``add``.

    ``result`` is ``None`` only when the task could not be checked (a 404, 422, or transient
    errors beyond its policy's ``max_errors``); ``error`` then names the ``CambError``.
    ``added`` and ``completed`` are Redis times (Unix seconds) of the ``add`` and of the poll
    that saw the end; ``id`` is the stream entry's id. Unpacks as ``result, meta = event``.
    """

    id: str
    kind: TaskKind
    task_id: str
    result: StatusResult | None
    meta: dict[str, str]
    error: str | None = None
    added: float = 0.0
    completed: float = 0.0

    def __iter__(self) -> Iterator[Any]:
        """``result, meta = event``."""
        return iter((self.result, self.meta))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _member(kind: TaskKind, task_id: str) -> str:
    return f"{kind.value}:{task_id}"


def _split(member: str) -> tuple[TaskKind, str]:
    kind, _, task_id = member.partition(":")
    return TaskKind(kind), task_id


def _meta_json(meta: Mapping[str, str] | None) -> str:
    if meta is None:
        return "{}"
    if not isinstance(meta, Mapping):
        raise TypeError("meta must be a mapping of str to str")
    for key, value in meta.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError("meta must map str to str")
    text = json.dumps(dict(meta), separators=(",", ":"), ensure_ascii=False)
    if len(text.encode()) > MAX_META_BYTES:
        raise ValueError(f"meta is larger than {MAX_META_BYTES} bytes as JSON: keep it small "
                         "(ids, not payloads)")
    return text


def _result_json(result: StatusResult) -> str:
    return json.dumps({"status": result.raw_status, "run_id": result.run_id,
                       "message": result.message,
                       "exception_reason": result.exception_reason},
                      separators=(",", ":"), ensure_ascii=False)


def _event(entry_id: str, fields: Mapping[str, str]) -> WatchEvent:
    kind, task_id = TaskKind(fields.get("kind", "")), fields.get("task_id", "")
    result: StatusResult | None = None
    error = fields.get("error") or None
    if fields.get("result"):
        try:
            result = parse_status(kind, task_id, json.loads(fields["result"]))
        except (ValueError, ModelError) as exc:
            error = f"unreadable event: {exc}"
    try:
        meta = json.loads(fields.get("meta") or "{}")
    except ValueError:
        meta = {}
    return WatchEvent(id=entry_id, kind=kind, task_id=task_id, result=result,
                      meta=meta if isinstance(meta, dict) else {}, error=error,
                      added=float(fields.get("added") or 0.0),
                      completed=float(fields.get("completed") or 0.0))


def _first_failure(group: BaseExceptionGroup[BaseException]) -> BaseException:
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(reversed(exc.exceptions))
        else:
            leaves.append(exc)
    if not all(isinstance(exc, Exception) for exc in leaves):
        return group
    return next((exc for exc in leaves if isinstance(exc, _FAILURES)), group)


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that ended a worker (not a group of it and the cancellations it caused)."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    errors = [exc for exc in leaves if isinstance(exc, Exception)]
    if len(errors) == len(leaves):
        return next((exc for exc in errors if isinstance(exc, CambError)), errors[0])
    return group


class _Claimed:
    """A task this worker holds a lease on."""

    __slots__ = ("member", "kind", "task_id", "age0", "at", "polls", "errors")

    def __init__(self, member: str, age0: float, at: float, polls: int, errors: int) -> None:
        self.member = member
        self.kind, self.task_id = _split(member)
        self.age0 = age0  # the task's age (Redis time) when claimed
        self.at = at  # when claimed, on this process' clock
        self.polls = polls
        self.errors = errors


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
            kind, task_id = TaskKind(item[0]), check_task_id(item[1])
            meta = item[2] if len(item) > 2 else None
            args += [_member(kind, task_id), _meta_json(meta), max(0.0, float(first_poll_in))]
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
            if self._session is None and not self._client_is_open():
                await stack.enter_async_context(self)
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

    def _failed(self, exc: BaseException) -> None:
        self.redis_errors += 1
        if not self._down:
            self._down = True
            logger.warning("watch list %r: Redis unavailable (%s); %s", self.name,
                           _error_name(exc),
                           "waiting for it" if self.on_redis_error == "wait" else "raising")

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
                self._failed(exc)
                if self.on_redis_error == "raise" or isinstance(exc, _CONFIG_ERRORS):
                    raise self._unavailable(exc) from None
                await anyio.sleep(self.retry_interval)
                continue
            self._back()
            return reply


class _Worker:
    """One ``RedisWatchList.run``: a claimer, pollers, a settler and a lease renewer."""

    def __init__(self, watch: RedisWatchList, client: AsyncCambClient, *,
                 policy: PollPolicy | Mapping[TaskKind | str, PollPolicy] | None,
                 concurrency: int | None, until_empty: bool) -> None:
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
        n = concurrency if concurrency is not None else getattr(client.budget,
                                                                "max_concurrency", 16)
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
            with anyio.CancelScope(shield=True), anyio.move_on_after(
                    2 * self.watch.redis_timeout):
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
                task = _Claimed(member, max(0.0, now_redis - added), local, int(p or 0),
                                int(e or 0))
                self.held[member] = task
                self.queue.append(task)
            if rows:
                self.work_wake.set()
                self.work_wake = anyio.Event()
            if len(rows) // 3 >= want:
                continue  # more may be due
            if (self.until_empty and int(tracked) == 0 and not self.queue
                    and self.in_flight == 0 and not self.held):
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
                if (task.member in self.lost
                        or anyio.current_time() - task.at > ttl - self.margin):
                    # The lease may be gone: leave the task to whoever holds it now.
                    budget.release()
                    self._drop(task)
                    continue
                try:
                    result = await resources[task.kind]._fetch_status(task.task_id,
                                                                      preacquired=True)
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
                (task, policy.next_interval(task.polls + task.errors, self._age(task))))
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
        args: list[str | float | int] = ["settle", self.token, self.watch.max_events or 0,
                                         len(resched)]
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
            members = [m for m, task in self.held.items()
                       if anyio.current_time() - task.at < watch.lease_ttl]
            if not members:
                continue
            started = anyio.current_time()
            try:
                lost = await watch._call(["renew", self.token, watch.lease_ttl, *members])
            except _FAILURES as exc:
                watch._failed(exc)
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


class CompletionStream:
    """The async iterator of ``RedisWatchList.completions`` (also an async context manager:
    leaving it without an exception acknowledges the last event)."""

    def __init__(self, watch: RedisWatchList, group: str, consumer: str, batch: int,
                 claim_idle: float) -> None:
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
                ["read", self.group, self.consumer, self._batch, self._from,
                 "1" if claim else "0", self._claim_idle_ms, self._claim_cursor, *self._acks])
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
                fields = ({_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}
                          if isinstance(flat, list) else
                          {_text(k): _text(v) for k, v in dict(flat).items()})
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
                    ["read", self.group, self.consumer, 0, ">", "0", 0, "0-0", *acks])
            except BaseException:
                self._acks[:0] = acks
                raise

    async def aclose(self) -> None:
        """Stop reading: acknowledge the last event (the caller is done with it)."""
        with (anyio.CancelScope(shield=True), anyio.move_on_after(self._watch.redis_timeout),
              contextlib.suppress(RedisWatchUnavailableError)):
            await self.ack()
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()

    async def __aenter__(self) -> CompletionStream:
        """Hold the Redis client open while reading."""
        stack = contextlib.AsyncExitStack()
        if self._watch._session is None and not self._watch._client_is_open():
            await stack.enter_async_context(self._watch)
        self._stack = stack
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is None:
            await self.aclose()
            return
        self._last = None  # the body failed on it: it stays pending, delivered again
        with (anyio.CancelScope(shield=True), anyio.move_on_after(self._watch.redis_timeout),
              contextlib.suppress(RedisWatchUnavailableError)):
            await self.ack()  # the events before it succeeded
        if self._stack is not None:
            stack, self._stack = self._stack, None
            with anyio.CancelScope(shield=True):
                await stack.aclose()

