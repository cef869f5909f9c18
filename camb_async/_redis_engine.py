"""The machinery of ``RedisRateBudget``: its state, the Lua script calls, the courier that
hands released leases and penalties to Redis, and what happens when Redis fails. The public
class (``camb_async.redis.RedisRateBudget``) adds the checked constructor, ``from_url``, the
``Budget`` protocol and the lifecycle."""

from __future__ import annotations

import contextlib
import importlib.resources
import itertools
import logging
import math
import sys
import uuid
from collections import deque
from typing import Any, Literal

import anyio
import anyio.abc
import anyio.lowlevel

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

from ._budget import DEFAULT_MAX_CONCURRENCY, RateBudget
from ._redis_conn import (
    _CONFIG_ERRORS,
    _FAILURES,
    RedisBudgetUnavailableError,
    RedisClient,
    RedisReplyError,
    _client_is_open,
    _error_name,
    _first_failure,
    _reply_code,
)

__all__ = ["OnRedisError"]

logger: logging.Logger = logging.getLogger("camb_async")

OnRedisError = Literal["wait", "local", "raise"]

_SCRIPT = importlib.resources.files(__package__).joinpath("redis_budget.lua").read_text("utf-8")


class _FleetEngine:
    """State and Redis calls of a fleet budget (see the module docstring)."""

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
    _fallback: RateBudget | None

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
        self._redis = redis
        self._script = redis.register_script(_SCRIPT)
        self.redis_timeout = float(redis_timeout)
        self.give_back_timeout = float(give_back_timeout)
        # The client is held open by `async with budget:` (_session); outside it, each call
        # opens it for itself, one at a time (_opening, _opened_by_call).
        self._session: contextlib.AsyncExitStack | None = None
        self._opening = anyio.Lock()
        self._opened_by_call = False
        self._secrets: tuple[str, ...] = ()  # redacted from every message (set by from_url)
        self.name = name
        tag = f"{key_prefix}:{{{name}}}"  # one hash tag: all keys on one Redis Cluster slot
        self._keys = (f"{tag}:log", f"{tag}:state", f"{tag}:leases", f"{tag}:revoked")
        self._rate = float(rate)
        self._window = window * (1.0 + margin)
        self.smooth = smooth
        self.fleet_concurrency = max_concurrency
        if local_concurrency is None:
            local_concurrency = min(max_concurrency or DEFAULT_MAX_CONCURRENCY,
                                    DEFAULT_MAX_CONCURRENCY)
        self.max_concurrency = local_concurrency
        self.on_redis_error: OnRedisError = on_redis_error
        self.fleet_size = fleet_size
        self.decrease = decrease
        self.recovery = recovery if recovery is not None else self._rate / 10.0
        self.min_rate = min(min_rate, self._rate)
        self.default_pause = default_pause
        self.max_pause = max_pause
        self.lease_ttl = float(lease_ttl)
        self.retry_interval = float(retry_interval)
        self.poll_interval = float(poll_interval)
        self.reset_hold = self._window if reset_hold is None else float(reset_hold)
        self._state_ttl = float(state_ttl)
        self._init_local_state()
        if on_redis_error == "local":
            assert fleet_size is not None
            self._fallback = RateBudget(self._rate / fleet_size, 1 << 30, window=window,
                                        margin=margin, decrease=decrease, min_rate=min_rate,
                                        default_pause=default_pause, max_pause=max_pause)

    def _init_local_state(self) -> None:
        """The bookkeeping of this process: leases, penalties, Redis availability, figures."""
        self._clock = anyio.current_time
        self._sem = anyio.Semaphore(self.max_concurrency)
        self._token = uuid.uuid4().hex[:12]
        self._seq = itertools.count()
        # Local bookkeeping (times on this process' clock).
        self._recent: deque[tuple[float, str]] = deque()  # our starts of the last window
        self._held: list[str] = []  # Redis leases of our requests in flight
        self._unleased = 0  # our requests in flight that hold no Redis lease
        self._released: list[str] = []  # leases to hand back with the next call
        # Acquires given up (cancelled, failed) that Redis may have granted: (when, member).
        self._revoked: deque[tuple[float, str]] = deque()
        self._pending_pause_until: float | None = None  # a 429 not yet told to Redis
        self._paused_until = -math.inf
        self._renewed_at = -math.inf
        self._wake: anyio.Event | None = None
        self._courier_wake: anyio.Event | None = None
        self._group: anyio.abc.TaskGroup | None = None
        self._waiting_for_slot = 0
        # Redis availability.
        self._down = False
        self._next_try = -math.inf
        self._last_error: BaseException | None = None
        self._backfill = False
        self._probation_until = -math.inf
        self._fallback = None
        self._local_from = -math.inf
        # Figures for monitoring and the benchmarks.
        self.grants = 0
        self.local_grants = 0
        self.pauses = 0
        self.redis_errors = 0
        self.outages = 0
        self.resets_seen = 0
        self.redis_calls = 0
        self.give_backs = 0

    # ------------------------------------------------------------------ internals

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _unavailable(self, exc: BaseException, detail: str = "") -> RedisBudgetUnavailableError:
        """The ``CambError`` for a failed call: names the Redis error, never a secret."""
        kind = _error_name(exc)
        text = self._redact(str(exc))
        if not text.startswith(kind):
            text = f"{kind}: {text}" if text else kind
        message = f"Redis for rate budget {self.name!r} is unavailable: {text}{detail}"
        cls = RedisBudgetUnavailableError if _reply_code(exc) is None else RedisReplyError
        return cls(message[:500], redis_error=kind)

    async def _run_script(self, args: list[str | float | int]) -> Any:
        """One run of the script within ``redis_timeout``, the client opened if need be."""
        with anyio.fail_after(self.redis_timeout):
            if not self._opened_by_call and _client_is_open(self._redis):
                # Held open by `async with budget:` or by its owner.
                return await self._script(keys=self._keys, args=args)
            async with self._opening:  # coredis: one opener of a client at a time
                self._opened_by_call = True
                try:
                    async with self._redis:
                        return await self._script(keys=self._keys, args=args)
                except BaseExceptionGroup as group:  # the client's task group wraps it
                    raise _first_failure(group) from None
                finally:
                    self._opened_by_call = False

    def _has_outbox(self) -> bool:
        return bool(self._released) or bool(self._revoked) \
            or self._pending_pause_until is not None

    def _wake_up(self) -> None:
        event, self._wake = self._wake, None
        if event is not None:
            event.set()
        courier = self._courier_wake
        if courier is not None:
            courier.set()

    async def _sleep(self, delay: float) -> None:
        """Sleep up to ``delay`` seconds; a penalty (or a release we wait for) cuts it short."""
        if delay <= 0:
            await anyio.lowlevel.checkpoint()
            return
        event = self._wake
        if event is None:
            event = self._wake = anyio.Event()
        with anyio.move_on_after(delay):
            await event.wait()

    def _record(self, member: str, now: float) -> None:
        recent = self._recent
        recent.append((now, member))
        edge = now - self._window
        while recent and recent[0][0] <= edge:
            recent.popleft()

    async def _take(self) -> None:
        clock = self._clock
        local_share_taken = False
        while True:
            now = clock()
            if now < self._paused_until and not self._has_outbox():
                await self._sleep(self._paused_until - now)
                continue
            if self._down and now < self._next_try:
                if self.on_redis_error == "raise":  # known down: don't wait for a timeout
                    assert self._last_error is not None
                    raise self._unavailable(
                        self._last_error, f" (next try in {self._next_try - now:.2f}s)")
                if self._fallback is not None:  # "local": our share, until the next try
                    if now < self._local_from:
                        await self._sleep(self._local_from - now)
                        continue
                    await self._take_local()
                    return
                await self._sleep(self._next_try - now)  # "wait"
                continue
            if (now < self._probation_until and self._fallback is not None
                    and not local_share_taken):
                # Just back on Redis: processes still on their fallback don't show in the
                # log yet, so keep to our local share as well for a while.
                await self._fallback.acquire()
                self._fallback.release()
                local_share_taken = True
            member = f"{self._token}:{next(self._seq)}"
            try:
                granted, wait, reason = await self._call(acquire=True, member=member)
            except BaseException as exc:
                # Cancelled, timed out or failed after the script may have reached Redis:
                # whatever it granted under `member` goes back before we return.
                # (An error reply means the script did not run, or stopped before granting.)
                outage = isinstance(exc, _FAILURES) and not isinstance(exc, _CONFIG_ERRORS)
                if outage:
                    self._failed(exc)
                if _reply_code(exc) is None:
                    await self._give_back(member)
                if isinstance(exc, _CONFIG_ERRORS):  # not an outage: say so at once
                    raise self._unavailable(exc) from exc
                if not outage:
                    raise
                if self.on_redis_error == "raise":
                    raise self._unavailable(exc) from exc
                continue
            if granted:
                now = clock()
                self._record(member, now)
                if self.fleet_concurrency is not None:
                    self._held.append(member)
                    if len(self._held) == 1 and self._courier_wake is not None:
                        self._courier_wake.set()  # it idles while no lease is held: renew
                else:
                    self._unleased += 1
                self.grants += 1
                return
            if reason == "concurrency":
                self._waiting_for_slot += 1
                try:
                    await self._sleep(min(wait, self.poll_interval))
                finally:
                    self._waiting_for_slot -= 1
            else:
                await self._sleep(wait)

    async def _give_back(self, member: str) -> None:
        """Tell Redis to take back what it may have granted under ``member``.

        Shielded and bounded by ``give_back_timeout``; if Redis cannot be told in time, the
        member stays in the outbox and the next call of this process (or ``lease_ttl``) takes
        care of it. The tombstone it leaves in Redis refuses a grant still queued there.
        """
        self._revoked.append((self._clock(), member))
        self.give_backs += 1
        with (anyio.CancelScope(shield=True), anyio.move_on_after(self.give_back_timeout),
              contextlib.suppress(*_FAILURES)):
            await self._call(acquire=False, member="")

    async def _take_local(self) -> None:
        assert self._fallback is not None
        await self._fallback.acquire()
        self._fallback.release()
        member = f"{self._token}:{next(self._seq)}"
        self._record(member, self._clock())
        self._unleased += 1
        self.local_grants += 1

    def _failed(self, exc: BaseException) -> None:
        self.redis_errors += 1
        self._last_error = exc
        now = self._clock()
        self._next_try = now + self.retry_interval
        self._backfill = True
        if not self._down:
            self._down = True
            self.outages += 1
            # The fleet may have spent the whole rate in the window before Redis went away,
            # and the fallback cannot know: its first start waits until that window is over.
            self._local_from = now + self._window
            behaviour = {"wait": "waiting for it",
                         "local": f"falling back to a local share of {self._rate}/"
                                  f"{self.fleet_size} requests/s",
                         "raise": "raising"}[self.on_redis_error]
            logger.warning("rate budget %r: Redis unavailable (%s); %s", self.name,
                           _error_name(exc), behaviour)

    async def _call(self, *, acquire: bool, member: str) -> tuple[bool, float, str]:
        """One run of the script, carrying the outbox; on failure the outbox is put back."""
        now = self._clock()
        # Take the outbox: a concurrent call (the courier, another acquirer) must not send
        # the same items, nor drop items added while we wait for Redis.
        released, self._released = self._released, []
        # A give-back older than a lease is moot: whatever it was granted has expired.
        revoked = [(at, m) for at, m in self._revoked if now - at < self.lease_ttl]
        self._revoked.clear()
        pending, self._pending_pause_until = self._pending_pause_until, None
        renew: list[str] = []
        if self._held and now - self._renewed_at >= self.lease_ttl / 3:
            renew = list(self._held)
        backfill: list[str | float] = []
        if self._backfill:
            edge = now - self._window
            for started, m in self._recent:
                if started > edge:
                    backfill += [m, now - started]
        args: list[str | float | int] = [
            1 if acquire else 0,
            self._rate,
            self._window,
            self.fleet_concurrency or 0,
            self.lease_ttl,
            member,
            -1 if pending is None else max(0.0, pending - now),
            self.decrease,
            self.recovery,
            self.min_rate,
            self.reset_hold,
            self._state_ttl,
            self._window * self.smooth,
            len(revoked), *(m for _, m in revoked),
            len(released), *released,
            len(renew), *renew,
            len(backfill) // 2, *backfill,
        ]
        self.redis_calls += 1
        try:
            reply = await self._run_script(args)
        except BaseException:
            self._released[:0] = released
            self._revoked.extendleft(reversed(revoked))
            if pending is not None and (self._pending_pause_until is None
                                        or pending > self._pending_pause_until):
                self._pending_pause_until = pending
            raise
        if renew:
            self._renewed_at = now
        # Back only when a grant went through: a call with nothing to write (the courier's,
        # a give-back) also succeeds on a Redis that refuses writes (OOM, a replica).
        if self._down and acquire:
            self._down = False
            logger.info("rate budget %r: Redis is back", self.name)
            if self._fallback is not None:
                self._probation_until = self._clock() + self.retry_interval + self._window
        self._backfill = False
        granted, wait, reason, fresh = reply
        if isinstance(reason, bytes):
            reason = reason.decode()
        if isinstance(wait, bytes):
            wait = wait.decode()
        if fresh:
            self.resets_seen += 1
            logger.info("rate budget %r: no state in Redis (first use, or Redis lost its "
                        "data); holding the fleet for %.2fs", self.name, self.reset_hold)
        return bool(granted), float(wait), str(reason)

    async def _courier(self) -> None:
        """Inside ``async with``: carry releases and penalties to Redis even while idle.

        Runs only within the ``async with`` block that started it. It waits a moment after
        being woken, so that a busy process' own ``acquire`` calls usually carry the outbox
        first and the courier adds no Redis calls; it also renews the leases of long requests.
        """
        while True:
            event = self._courier_wake = anyio.Event()
            if not self._has_outbox():
                renew_in = (self._renewed_at + self.lease_ttl / 3 - self._clock()
                            if self._held else math.inf)
                with anyio.move_on_after(max(renew_in, 0.0)):
                    await event.wait()
            await anyio.sleep(min(self.poll_interval, 0.01))
            renew_due = bool(self._held) and (
                self._clock() - self._renewed_at >= self.lease_ttl / 3)
            if not self._has_outbox() and not renew_due:
                continue  # an acquire carried it already
            try:
                await self._call(acquire=False, member="")
            except _FAILURES as exc:
                self._failed(exc)
                await anyio.sleep(self.retry_interval)
