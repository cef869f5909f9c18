"""RedisRateBudget: one rate budget for a fleet of processes that share an API key.

An API key's rate limit belongs to the key, not to a process. ``RedisRateBudget`` keeps the
budget's state in Redis so that every process (and every host) draws from the same one, with
the meaning of ``RateBudget``: at most ``rate`` requests *start* in any 1-second window, now
counted across the whole fleet.

How (and why)
-------------
* One Lua script does everything, atomically: Redis runs scripts one at a time, so there is no
  read-modify-write race between processes. The limiter is a sliding-window log (a sorted set
  of start times), exact like ``RateBudget``'s, not a token bucket that lets ``2 * rate``
  through across a window edge.
* Time is Redis's ``TIME``, read inside the script: hosts' clocks may disagree, Redis's is one
  clock for everyone. Local clocks only measure how long to sleep.
* ``margin`` (default 10 %) widens the window: a request admitted by Redis still has to travel
  to the API, and processes (and the server) on a busy host may be descheduled for tens of
  milliseconds between admission and counting; that jitter makes the server count more than
  ``rate``. Measured on a 2-core machine at load 5-9 (3 workers, 100 req/s): with 5 % the
  server's busiest second held 102 in about one run in three, with 10 % 105 once in about
  ten runs. Raise it for overloaded hosts or long, jittery paths to the API.
* ``smooth`` (default 0.1) spreads the starts: at most ``rate * smooth`` (at least one) in
  any ``smooth`` of a window. The server counts *arrivals*: a burst of ``rate`` starts queues
  at a busy server and is counted spread over the next second, where it adds to the next
  second's starts. Spread starts don't queue. The rate over a window is unchanged; a burst
  of requests takes up to a window to start instead of starting at once. ``smooth=0``
  switches this off.
* A 429 seen by any process pauses the whole fleet for its Retry-After and cuts the shared
  rate multiplicatively (once per window), recovering additively: the AIMD of ``RateBudget``,
  stored in Redis.
* ``max_concurrency`` (optional) caps requests in flight across the fleet with *leases* that
  expire after ``lease_ttl`` seconds, so the slots of a crashed worker come back by themselves.
  ``local_concurrency`` caps this process with a local semaphore, Redis or not.

``penalize`` and ``release`` are synchronous (the ``Budget`` protocol), so they cannot talk to
Redis. Both record locally instead: the process pauses itself at once, wakes any of its own
tasks waiting in ``acquire``, and the next Redis call this process makes carries the penalty
(the *rest* of the pause, not the whole Retry-After again) and the released leases to Redis.
Who makes that call: any ``acquire`` of this process (a busy process calls Redis every few
milliseconds), ``flush()``, and - inside ``async with budget:`` - a small courier task that
the block owns (it cannot outlive the block) and that carries them within ~10 ms even when
the process is otherwise idle, and renews the leases of long requests. Without ``async with``
nothing runs in the background: an idle process' released leases stay taken until its next
call, ``aclose()`` or ``lease_ttl``, and a 429 reaches the fleet with its next ``acquire``.

Redis unavailable (``on_redis_error``), never silently unlimited. Unavailable means any failed
call: no connection, a timeout (``redis_timeout``, 3 s by default, bounds every call), or an
error reply (OOM, READONLY, MASTERDOWN, BUSY, LOADING, CLUSTERDOWN, max clients reached, ...).
Only credentials that Redis refuses (WRONGPASS, NOAUTH, NOPERM) are not waited out: a
misconfiguration, raised at once as ``RedisReplyError``. No exception of the Redis client
escapes; the ones raised are ``CambError`` subclasses that name the Redis error.

* ``"wait"`` (default): no request starts until Redis answers again; Redis is retried every
  ``retry_interval`` seconds. Safe with any fleet size; requests are delayed, not failed.
* ``"local"``: each process falls back to a local ``RateBudget`` of ``rate / fleet_size``
  (``fleet_size`` is then required), so the fleet stays within ``rate`` if every process
  loses Redis together. Its first local start waits one window after Redis was found gone
  (the fleet may have spent the whole rate just before). For ``retry_interval + window``
  after Redis returns, a process obeys both Redis and its local share, so that processes
  still on their fallback and the ones back on Redis cannot add up to more than ``rate``.
* ``"raise"``: ``acquire`` raises ``RedisBudgetUnavailableError`` (a ``CambError``;
  ``RedisReplyError`` for an error reply), with the Redis error in ``redis_error``.

When Redis comes back, each process re-adds its own starts of the last window to the log (same
members, so nothing is counted twice). If Redis lost its data (a restart without persistence)
the script finds no state and holds the fleet for ``reset_hold`` seconds (default: one window)
before admitting anyone, because starts made just before the loss are no longer in the log.
Redis cannot tell a loss from first use, so the first use of a budget name waits that long too.
The same re-adding covers a Cluster failover: a promoted replica may lack the last starts the
old master had not replicated yet; every process saw the failover as an outage and re-adds its
own, so the log is whole again after one call per process.

No lease outlives its holder: each ``acquire`` sends a member chosen here. An ``acquire`` that
is cancelled, or fails, after its script may have reached Redis gives back whatever was granted
under that member (its start and its lease) before it returns, shielded and within
``give_back_timeout``; if Redis cannot be told in time, the next call of this process carries
it. A tombstone makes Redis refuse that member if its script is still queued behind a slow
command, so the next ``acquire`` proceeds at once.

The Redis client is coredis (anyio: one code path on asyncio and trio), with the script in
``redis_budget.lua`` beside this module. coredis clients are async context managers: inside
``async with budget:`` the budget holds its client open (pooled, multiplexed connections);
outside it, each Redis call opens the client for that call (a new connection each time, one
call at a time), unless the caller's own client is already open. A Redis Cluster works the
same (``from_url(..., cluster=True)`` or a ``coredis.RedisCluster``): a budget's keys share
one hash tag, so the script runs on one slot. A Sentinel-managed client
(``Sentinel(...).primary_for(service)``) is passed to the constructor like any other.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from typing import Any

import anyio

from ._redis_conn import (
    _FAILURES,
    RedisBudgetUnavailableError,
    RedisClient,
    RedisReplyError,
    _client_is_open,
    open_client,
    url_secrets,
)
from ._redis_engine import OnRedisError, _FleetEngine
from ._redis_watch import (
    RedisWatchList,
    RedisWatchReplyError,
    RedisWatchUnavailableError,
    WatchEvent,
    WatchStats,
)
from ._validation import is_int, is_number

__all__ = ["RedisBudgetUnavailableError", "RedisRateBudget", "RedisReplyError", "RedisWatchList",
           "RedisWatchReplyError", "RedisWatchUnavailableError", "WatchEvent", "WatchStats"]


def _check_arguments(
    *,
    rate: Any,
    name: Any,
    max_concurrency: Any,
    local_concurrency: Any,
    on_redis_error: Any,
    fleet_size: Any,
    window: Any,
    margin: Any,
    smooth: Any,
    decrease: Any,
    lease_ttl: Any,
    retry_interval: Any,
    poll_interval: Any,
    key_prefix: Any,
    redis_timeout: Any,
    give_back_timeout: Any,
    recovery: Any,
    min_rate: Any,
    default_pause: Any,
    max_pause: Any,
    reset_hold: Any,
    state_ttl: Any,
) -> None:
    """The checks of ``RedisRateBudget``'s arguments (messages are part of the contract)."""
    if not is_number(rate):
        raise TypeError("rate must be a number of requests per second")
    if not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"rate must be > 0 requests/s, got {rate}")
    if not isinstance(name, str) or not name:
        raise ValueError("name must be a non-empty string (the budget's key in Redis)")
    if "{" in name or "}" in name or "{" in key_prefix or "}" in key_prefix:
        raise ValueError("name and key_prefix may not contain braces: they make the keys' "
                         "hash tag (one Redis Cluster slot)")
    for label, value in (("max_concurrency", max_concurrency),
                         ("local_concurrency", local_concurrency),
                         ("fleet_size", fleet_size)):
        if value is not None and (not is_int(value)
                                  or value < 1):
            raise ValueError(f"{label} must be an integer >= 1 or None, got {value!r}")
    if on_redis_error not in ("wait", "local", "raise"):
        raise ValueError(
            f"on_redis_error must be 'wait', 'local' or 'raise', got {on_redis_error!r}"
        )
    if on_redis_error == "local" and fleet_size is None:
        raise ValueError(
            "on_redis_error='local' needs fleet_size=N: each process then falls back to "
            "rate / N, so that N processes together stay within the rate"
        )
    if not 0 < decrease < 1:
        raise ValueError("decrease must be between 0 and 1")
    if window <= 0 or margin < 0 or lease_ttl <= 0 or retry_interval <= 0 \
            or poll_interval <= 0 or redis_timeout <= 0 or give_back_timeout <= 0:
        raise ValueError("window, lease_ttl, retry_interval, poll_interval, redis_timeout "
                         "and give_back_timeout must be > 0, margin >= 0")
    # NaN passes every comparison above as False (then every acquire waited forever),
    # and an infinite one is no setting: each must be a finite number in range.
    for label, setting, least in (
            ("window", window, 0.0), ("lease_ttl", lease_ttl, 0.0),
            ("retry_interval", retry_interval, 0.0), ("poll_interval", poll_interval, 0.0),
            ("redis_timeout", redis_timeout, 0.0),
            ("give_back_timeout", give_back_timeout, 0.0), ("state_ttl", state_ttl, 0.0),
            ("margin", margin, None), ("min_rate", min_rate, None),
            ("default_pause", default_pause, None), ("max_pause", max_pause, None),
            ("recovery", recovery, None), ("reset_hold", reset_hold, None)):
        if setting is None and label in ("recovery", "reset_hold"):
            continue
        if (not is_number(setting) or not math.isfinite(setting) or setting < 0
                or (least is not None and setting <= least)):
            raise ValueError(f"{label} must be a finite number "
                             f"{'> 0' if least is not None else '>= 0'}, got {setting!r}")
    if not 0 <= smooth <= 1:
        raise ValueError(f"smooth must be between 0 and 1, got {smooth}")


class RedisRateBudget(_FleetEngine):
    """A ``Budget`` whose rate (and optionally concurrency) is shared through Redis.

    Build it with ``from_url``, or around a coredis client of your own (standalone, Cluster or
    Sentinel-managed). Use it as ``async with`` (or call ``aclose()``) so that the leases and
    penalty this process still holds reach Redis. Pass it as ``AsyncCambClient(budget=...)``.
    All processes sharing ``name`` must use the same ``rate`` and ``window``. See the module
    docstring for the semantics and failure modes.

    ``max_concurrency`` is the *fleet-wide* in-flight limit (``None``: none). The attribute of
    that name, which the client and the bulk poller read, is this process' own limit
    (``local_concurrency``); the fleet limit is ``fleet_concurrency``.
    """

    # Declared here too (the state lives in _FleetEngine): the public class's own attributes.
    redis_timeout: float
    give_back_timeout: float
    recovery: float
    min_rate: float
    lease_ttl: float
    retry_interval: float
    poll_interval: float
    reset_hold: float
    grants: int
    local_grants: int
    pauses: int
    redis_errors: int
    outages: int
    resets_seen: int
    redis_calls: int
    give_backs: int

    def __init__(
        self,
        redis: RedisClient,
        *,
        rate: float,
        name: str,
        max_concurrency: int | None = None,
        local_concurrency: int | None = None,
        on_redis_error: OnRedisError = "wait",
        fleet_size: int | None = None,
        window: float = 1.0,
        margin: float = 0.1,
        smooth: float = 0.1,
        decrease: float = 0.5,
        recovery: float | None = None,
        min_rate: float = 1.0,
        default_pause: float = 1.0,
        max_pause: float = 60.0,
        lease_ttl: float = 60.0,
        retry_interval: float = 1.0,
        poll_interval: float = 0.05,
        reset_hold: float | None = None,
        key_prefix: str = "camb-async",
        state_ttl: float = 24 * 3600.0,
        redis_timeout: float = 3.0,
        give_back_timeout: float = 1.0,
    ) -> None:
        _check_arguments(
            rate=rate,
            name=name,
            max_concurrency=max_concurrency,
            local_concurrency=local_concurrency,
            on_redis_error=on_redis_error,
            fleet_size=fleet_size,
            window=window,
            margin=margin,
            smooth=smooth,
            decrease=decrease,
            lease_ttl=lease_ttl,
            retry_interval=retry_interval,
            poll_interval=poll_interval,
            key_prefix=key_prefix,
            redis_timeout=redis_timeout,
            give_back_timeout=give_back_timeout,
            recovery=recovery,
            min_rate=min_rate,
            default_pause=default_pause,
            max_pause=max_pause,
            reset_hold=reset_hold,
            state_ttl=state_ttl,
        )
        super().__init__(
            redis,
            rate=rate,
            name=name,
            max_concurrency=max_concurrency,
            local_concurrency=local_concurrency,
            on_redis_error=on_redis_error,
            fleet_size=fleet_size,
            window=window,
            margin=margin,
            smooth=smooth,
            decrease=decrease,
            recovery=recovery,
            min_rate=min_rate,
            default_pause=default_pause,
            max_pause=max_pause,
            lease_ttl=lease_ttl,
            retry_interval=retry_interval,
            poll_interval=poll_interval,
            reset_hold=reset_hold,
            key_prefix=key_prefix,
            state_ttl=state_ttl,
            redis_timeout=redis_timeout,
            give_back_timeout=give_back_timeout,
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        rate: float,
        name: str,
        max_concurrency: int | None = None,
        cluster: bool = False,
        redis_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> RedisRateBudget:
        """A budget on the Redis at ``url`` (``redis://``, ``rediss://`` or ``unix://``).

        ``cluster=True``: ``url`` is any node of a Redis Cluster (the others are discovered).
        ``rediss://`` takes coredis' TLS parameters in the query string (``ssl_ca_certs``,
        ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``, ``ssl_check_hostname``, checked
        by default here) or an ``ssl_context`` in ``redis_options``. ``redis_options`` go to
        coredis' ``from_url``; by default a reply takes at most 2 s and a connection 1 s, and
        a call whose connection broke is retried once at once (a pooled connection may have
        died with a Redis restart), so that ``on_redis_error`` acts rather than client retries.
        ``options`` are the other keyword arguments of ``RedisRateBudget``.
        """
        client = open_client(url, cluster=cluster, redis_options=redis_options)
        budget = cls(client, rate=rate, name=name, max_concurrency=max_concurrency, **options)
        budget._secrets = url_secrets(url)
        return budget

    def __repr__(self) -> str:
        return (f"RedisRateBudget(name={self.name!r}, rate={self._rate}, "
                f"max_concurrency={self.fleet_concurrency}, "
                f"local_concurrency={self.max_concurrency}, "
                f"on_redis_error={self.on_redis_error!r})")

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def in_flight(self) -> int:
        """Requests of this process in flight."""
        return self.max_concurrency - int(self._sem.value)

    @property
    def redis_available(self) -> bool:
        """False from a failed Redis call until Redis next grants a request (a call with
        nothing to write succeeds on a Redis that refuses writes, and does not count)."""
        return not self._down

    # ------------------------------------------------------------------ the Budget protocol

    async def acquire(self) -> None:
        """Wait until one request may start, fleet-wide."""
        await self._sem.acquire()
        try:
            await self._take()
        except BaseException:
            self._sem.release()
            raise

    def release(self) -> None:
        """Give back the lease of one ``acquire``."""
        if self._unleased:
            self._unleased -= 1
        elif self._held:
            self._released.append(self._held.pop())
            if self._waiting_for_slot:
                self._wake_up()  # a task of ours waits for a fleet slot: hand this one back
            elif self._courier_wake is not None:
                self._courier_wake.set()
        self._sem.release()

    def penalize(self, retry_after: float | None) -> None:
        """Pause this process now; the next Redis call pauses the fleet (see module doc)."""
        now = self._clock()
        pause = self.default_pause if retry_after is None else retry_after
        pause = min(max(pause, 0.0), self.max_pause)
        until = now + pause
        self.pauses += 1
        self._paused_until = max(self._paused_until, until)
        if self._pending_pause_until is None or until > self._pending_pause_until:
            self._pending_pause_until = until
        if self._fallback is not None:
            self._fallback.penalize(retry_after)
        self._wake_up()

    # ------------------------------------------------------------------ lifecycle

    async def flush(self) -> None:
        """Hand this process' released leases and pending penalty to Redis now."""
        if not self._has_outbox():
            return
        try:
            await self._call(acquire=False, member="")
        except _FAILURES as exc:
            self._failed(exc)

    async def aclose(self) -> None:
        """Flush (within ``poll_interval`` + 1 s at most); the budget stays usable."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.poll_interval + 1.0):
            await self.flush()

    @property
    def entered(self) -> bool:
        """Whether an ``async with`` of this budget is open (``AsyncCambClient``'s
        ``async with`` enters the budget's when it is not)."""
        return self._session is not None

    async def __aenter__(self) -> RedisRateBudget:
        """Hold the Redis client open and run the courier (see ``_courier``) for the block."""
        if self._session is not None:
            raise RuntimeError("this RedisRateBudget is already in use by an `async with`")
        session = contextlib.AsyncExitStack()
        await session.__aenter__()
        try:
            async with self._opening:  # no call of ours holds it open for itself now
                if not _client_is_open(self._redis):  # else its owner holds it open for us
                    await session.enter_async_context(self._redis)
            group = await session.enter_async_context(anyio.create_task_group())
            self._group = group
            group.start_soon(self._courier)
        except BaseException:
            self._group = None
            await session.aclose()
            raise
        self._session = session
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        session, self._session = self._session, None
        group, self._group = self._group, None
        try:
            if group is not None:
                group.cancel_scope.cancel()
            if session is not None:
                await session.aclose()
        finally:
            # After the client's own tasks: if this block is being cancelled, they are too,
            # while a call opened here, shielded, is not.
            await self.aclose()

