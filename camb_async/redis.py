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

Redis unavailable (``on_redis_error``), never silently unlimited:

* ``"wait"`` (default): no request starts until Redis answers again; Redis is retried every
  ``retry_interval`` seconds. Safe with any fleet size; requests are delayed, not failed.
* ``"local"``: each process falls back to a local ``RateBudget`` of ``rate / fleet_size``
  (``fleet_size`` is then required), so the fleet stays within ``rate`` if every process
  loses Redis together. Its first local start waits one window after Redis was found gone
  (the fleet may have spent the whole rate just before). For ``retry_interval + window``
  after Redis returns, a process obeys both Redis and its local share, so that processes
  still on their fallback and the ones back on Redis cannot add up to more than ``rate``.
* ``"raise"``: ``acquire`` raises ``RedisBudgetUnavailableError`` (a ``CambError``).

When Redis comes back, each process re-adds its own starts of the last window to the log (same
members, so nothing is counted twice). If Redis lost its data (a restart without persistence)
the script finds no state and holds the fleet for ``reset_hold`` seconds (default: one window)
before admitting anyone, because starts made just before the loss are no longer in the log.
Redis cannot tell a loss from first use, so the first use of a budget name waits that long too.

asyncio and trio: on asyncio the budget uses redis-py's asyncio client. redis-py cannot run
on trio, so there a budget made by ``from_url`` talks to Redis itself (``_AnyioRedis``: the
two commands it needs, EVALSHA and EVAL, in RESP2 over one anyio connection; ``redis://``,
``rediss://`` and ``unix://`` URLs, with password, user and db). A budget built around a
redis-py client object raises ``RuntimeError`` on trio.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import uuid
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.abc
import anyio.lowlevel
import sniffio

from ._budget import RateBudget
from ._errors import CambError

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisBudgetUnavailableError", "RedisRateBudget", "RedisReplyError"]

logger = logging.getLogger("camb_async")

OnRedisError = Literal["wait", "local", "raise"]

# KEYS: 1 start log (zset: member -> start time), 2 state (hash), 3 leases (zset: member ->
# expiry). ARGV: see RedisRateBudget._call. Floats go out as strings: Redis would truncate a
# Lua number to an integer reply, and Lua's own number-to-string keeps only 14 digits.
_SCRIPT = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local log, state, leases = KEYS[1], KEYS[2], KEYS[3]
local acquire = ARGV[1] == '1'
local max_rate = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local max_conc = tonumber(ARGV[4])
local lease_ttl = tonumber(ARGV[5])
local member = ARGV[6]
local pause = tonumber(ARGV[7])
local decrease = tonumber(ARGV[8])
local recovery = tonumber(ARGV[9])
local min_rate = tonumber(ARGV[10])
local reset_hold = tonumber(ARGV[11])
local state_ttl = math.floor(tonumber(ARGV[12]) * 1000)
local sub_w = tonumber(ARGV[13])
local function f(x) return string.format('%.6f', x) end

local i = 14
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('ZREM', leases, ARGV[i]); i = i + 1 end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('ZADD', leases, 'XX', f(now + lease_ttl), ARGV[i]); i = i + 1 end
-- The key outlives its longest lease (renewed ones included), never the other way round.
if n > 0 then redis.call('PEXPIRE', leases, math.ceil(lease_ttl * 1000) + 1000) end

local fresh = 0
local paused_until, rate_at_cut, cut_at
local dirty = false
local v = redis.call('HMGET', state, 'paused_until', 'rate_at_cut', 'cut_at')
if v[1] then
  paused_until, rate_at_cut, cut_at = tonumber(v[1]), tonumber(v[2]), tonumber(v[3])
else
  -- No state: first use, or Redis lost its data. Starts made just before a loss are gone
  -- from the log, so nobody starts until they have aged out.
  fresh = 1
  paused_until, rate_at_cut, cut_at = now + reset_hold, max_rate, 0
  dirty = true
end

local function current_rate()
  if rate_at_cut >= max_rate then return max_rate end
  local r = rate_at_cut + recovery * math.max(0, now - cut_at)
  if r >= max_rate then return max_rate end
  return r
end

if pause >= 0 then
  if now + pause > paused_until then paused_until = now + pause end
  redis.call('HINCRBY', state, 'pauses', 1)
  if now - cut_at >= window then
    rate_at_cut = math.max(min_rate, current_rate() * decrease)
    cut_at = now + pause
    redis.call('HINCRBY', state, 'cuts', 1)
  end
  dirty = true
end

n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local age = tonumber(ARGV[i + 1])
  if age < window then redis.call('ZADD', log, 'NX', f(now - age), ARGV[i]) end
  i = i + 2
end
if n > 0 then redis.call('PEXPIRE', log, math.ceil(window * 1000) + 1000) end

if dirty then
  redis.call('HSET', state, 'paused_until', f(paused_until), 'rate_at_cut', f(rate_at_cut),
             'cut_at', f(cut_at))
end
redis.call('PEXPIRE', state, state_ttl)

if not acquire then return {0, '0', 'flushed', fresh} end
if now < paused_until then return {0, f(paused_until - now), 'paused', fresh} end

if max_conc > 0 then
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', f(now))
  if redis.call('ZCARD', leases) >= max_conc then
    local first = redis.call('ZRANGE', leases, 0, 0, 'WITHSCORES')
    return {0, f(tonumber(first[2]) - now), 'concurrency', fresh}
  end
end

local edge = now - window
redis.call('ZREMRANGEBYSCORE', log, '-inf', f(edge))
local count = redis.call('ZCARD', log)
local limit = math.max(1, math.floor(current_rate()))
if count >= limit then
  -- The (count - limit)-th oldest start must leave the window before we may start.
  local e = redis.call('ZRANGE', log, count - limit, count - limit, 'WITHSCORES')
  return {0, f(tonumber(e[2]) - edge), 'rate', fresh}
end
if sub_w > 0 then
  -- Spread the starts: at most limit * sub_w / window of them in any sub_w seconds.
  local sub_limit = math.max(1, math.ceil(limit * sub_w / window))
  if redis.call('ZCOUNT', log, '(' .. f(now - sub_w), '+inf') >= sub_limit then
    local e = redis.call('ZRANGE', log, count - sub_limit, count - sub_limit, 'WITHSCORES')
    return {0, f(tonumber(e[2]) + sub_w - now), 'rate', fresh}
  end
end
redis.call('ZADD', log, f(now), member)
redis.call('PEXPIRE', log, math.ceil(window * 1000) + 1000)
if max_conc > 0 then
  redis.call('ZADD', leases, f(now + lease_ttl), member)
  redis.call('PEXPIRE', leases, math.ceil(lease_ttl * 1000) + 1000)
end
return {1, '0', 'ok', fresh}
"""


_SCRIPT_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest()

_ASYNCIO_ONLY = (
    "this RedisRateBudget wraps a redis-py client, which needs asyncio's event loop; on trio "
    "build it with RedisRateBudget.from_url(...), which then speaks to Redis over anyio"
)


class RedisBudgetUnavailableError(CambError):
    """Redis could not be reached and ``on_redis_error="raise"`` was chosen."""


class RedisReplyError(Exception):
    """Redis answered a command with an error (a bug or a misconfiguration, not an outage)."""


class _AnyioRedis:
    """The few Redis commands the budget needs, over anyio streams: for trio.

    redis-py's asyncio client needs asyncio's loop; this speaks RESP2 itself over one
    connection (calls are serialized: each is one short script run). Connection problems are
    raised as ``ConnectionError`` / ``TimeoutError``, which the budget reads as "Redis is
    unavailable"; the next call reconnects.
    """

    def __init__(self, url: str, *, socket_timeout: float = 2.0,
                 socket_connect_timeout: float = 1.0) -> None:
        from urllib.parse import parse_qs, unquote, urlsplit

        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r}")
        self._tls = parts.scheme == "rediss"
        self._unix = parts.path if parts.scheme == "unix" else None
        self._host = parts.hostname or "localhost"
        self._port = parts.port or 6379
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        query = parse_qs(parts.query)
        db = query.get("db", [""])[0]
        if not db and parts.scheme != "unix":
            db = parts.path.lstrip("/")
        self._db = int(db) if db else 0
        self._timeout = socket_timeout
        self._connect_timeout = socket_connect_timeout
        self._stream: anyio.abc.ByteStream | None = None
        self._buffer = bytearray()
        self._lock = anyio.Lock()

    async def run_script(self, script: str, sha: str, keys: tuple[str, ...],
                         args: list[str | float | int]) -> Any:
        async with self._lock:
            try:
                return await self._command("EVALSHA", sha, len(keys), *keys, *args)
            except RedisReplyError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
            return await self._command("EVAL", script, len(keys), *keys, *args)

    async def aclose(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _connect(self) -> anyio.abc.ByteStream:
        stream: anyio.abc.ByteStream
        with anyio.fail_after(self._connect_timeout):
            if self._unix is not None:
                stream = await anyio.connect_unix(self._unix)
            elif self._tls:
                import ssl

                stream = await anyio.connect_tcp(self._host, self._port,
                                                 ssl_context=ssl.create_default_context(),
                                                 tls_standard_compatible=False)
            else:
                stream = await anyio.connect_tcp(self._host, self._port)
        self._stream = stream
        self._buffer.clear()
        try:
            if self._password is not None:
                auth = ([self._username] if self._username else []) + [self._password]
                await self._exchange("AUTH", *auth)
            if self._db:
                await self._exchange("SELECT", self._db)
        except BaseException:
            await self.aclose()
            raise
        return stream

    async def _command(self, *parts: str | float | int) -> Any:
        try:
            if self._stream is None:
                with anyio.fail_after(self._connect_timeout + self._timeout):
                    await self._connect()
            return await self._exchange(*parts)
        except RedisReplyError:
            raise
        except TimeoutError:
            await self.aclose()
            raise
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError,
                anyio.EndOfStream, ValueError) as exc:
            await self.aclose()
            raise ConnectionError(f"Redis connection failed: {exc!r}") from exc
        except BaseException:  # cancelled mid-reply: the connection's state is unknown
            await self.aclose()
            raise

    async def _exchange(self, *parts: str | float | int) -> Any:
        stream = self._stream
        assert stream is not None
        out = bytearray(b"*%d\r\n" % len(parts))
        for part in parts:
            data = part.encode() if isinstance(part, str) else repr(part).encode()
            out += b"$%d\r\n%s\r\n" % (len(data), data)
        with anyio.fail_after(self._timeout):
            await stream.send(bytes(out))
            return await self._reply()

    async def _line(self) -> bytes:
        buffer = self._buffer
        while True:
            end = buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(buffer[:end])
                del buffer[:end + 2]
                return line
            assert self._stream is not None
            buffer += await self._stream.receive()

    async def _exactly(self, n: int) -> bytes:
        buffer = self._buffer
        while len(buffer) < n + 2:
            assert self._stream is not None
            buffer += await self._stream.receive()
        data = bytes(buffer[:n])
        del buffer[:n + 2]
        return data

    async def _reply(self) -> Any:
        line = await self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RedisReplyError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else await self._exactly(size)
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [await self._reply() for _ in range(size)]
        raise ValueError(f"not a RESP2 reply: {line[:40]!r}")


def _redis_down_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "Redis is unreachable", as opposed to a bug or a misconfiguration."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)


class RedisRateBudget:
    """A ``Budget`` whose rate (and optionally concurrency) is shared through Redis.

    Build it with ``from_url``; use it as ``async with`` (or call ``aclose()``) so that the
    leases and penalty this process still holds reach Redis and the connections close. Pass it
    as ``AsyncCambClient(budget=...)``. All processes sharing ``name`` must use the same
    ``rate`` and ``window``. See the module docstring for the semantics and failure modes.

    ``max_concurrency`` is the *fleet-wide* in-flight limit (``None``: none). The attribute of
    that name, which the client and the bulk poller read, is this process' own limit
    (``local_concurrency``); the fleet limit is ``fleet_concurrency``.
    """

    def __init__(
        self,
        redis: Redis,
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
    ) -> None:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)):
            raise TypeError("rate must be a number of requests per second")
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError(f"rate must be > 0 requests/s, got {rate}")
        if not isinstance(name, str) or not name:
            raise ValueError("name must be a non-empty string (the budget's key in Redis)")
        for label, value in (("max_concurrency", max_concurrency),
                             ("local_concurrency", local_concurrency),
                             ("fleet_size", fleet_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
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
                or poll_interval <= 0:
            raise ValueError("window, lease_ttl, retry_interval and poll_interval must be > 0, "
                             "margin >= 0")
        self._redis = redis
        self._script = redis.register_script(_SCRIPT)
        # Set by from_url: on trio the budget speaks to Redis itself (see _AnyioRedis).
        self._url: str | None = None
        self._anyio_options: dict[str, float] = {}
        self._anyio_redis: _AnyioRedis | None = None
        self.name = name
        tag = f"{key_prefix}:{{{name}}}"  # one hash tag: all keys on one Redis Cluster slot
        self._keys = (f"{tag}:log", f"{tag}:state", f"{tag}:leases")
        self._rate = float(rate)
        self._window = window * (1.0 + margin)
        if not 0 <= smooth <= 1:
            raise ValueError(f"smooth must be between 0 and 1, got {smooth}")
        self.smooth = smooth
        self.fleet_concurrency = max_concurrency
        if local_concurrency is None:
            local_concurrency = min(max_concurrency or 16, 16)
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
        self._clock = anyio.current_time
        self._sem = anyio.Semaphore(local_concurrency)
        self._token = uuid.uuid4().hex[:12]
        self._seq = itertools.count()
        # Local bookkeeping (times on this process' clock).
        self._recent: deque[tuple[float, str]] = deque()  # our starts of the last window
        self._held: list[str] = []  # Redis leases of our requests in flight
        self._unleased = 0  # our requests in flight that hold no Redis lease
        self._released: list[str] = []  # leases to hand back with the next call
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
        self._backfill = False
        self._probation_until = -math.inf
        self._fallback: RateBudget | None = None
        self._local_from = -math.inf
        if on_redis_error == "local":
            assert fleet_size is not None
            self._fallback = RateBudget(self._rate / fleet_size, 1 << 30, window=window,
                                        margin=margin, decrease=decrease, min_rate=min_rate,
                                        default_pause=default_pause, max_pause=max_pause)
        # Figures for monitoring and the benchmarks.
        self.grants = 0
        self.local_grants = 0
        self.pauses = 0
        self.redis_errors = 0
        self.outages = 0
        self.resets_seen = 0
        self.redis_calls = 0

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        rate: float,
        name: str,
        max_concurrency: int | None = None,
        redis_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> RedisRateBudget:
        """A budget on the Redis at ``url`` (``redis://``, ``rediss://`` or ``unix://``).

        ``redis_options`` go to ``redis.asyncio.from_url``. By default a call that gets no
        answer within 2 s (1 s to connect) counts as "Redis unavailable", and a failed call is
        retried once at once (a pooled connection may be stale after a Redis restart) rather
        than with redis-py's default ten backoff retries, so that ``on_redis_error`` acts.
        ``options`` are the other keyword arguments of ``RedisRateBudget``.
        """
        try:
            import redis.asyncio
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise ImportError(
                "RedisRateBudget needs redis-py: pip install 'camb-async[redis]'"
            ) from exc
        kwargs: dict[str, Any] = {
            "socket_timeout": 2.0,
            "socket_connect_timeout": 1.0,
            "retry": Retry(NoBackoff(), 1),
        }
        kwargs.update(redis_options or {})
        client = redis.asyncio.from_url(url, **kwargs)
        budget = cls(client, rate=rate, name=name, max_concurrency=max_concurrency, **options)
        budget._url = url
        budget._anyio_options = {k: float(kwargs[k])
                                 for k in ("socket_timeout", "socket_connect_timeout")
                                 if kwargs.get(k) is not None}
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
        """False from a failed Redis call until the next successful one."""
        return not self._down

    # ------------------------------------------------------------------ the Budget protocol

    async def acquire(self) -> None:
        self._check_backend()
        await self._sem.acquire()
        try:
            await self._take()
        except BaseException:
            self._sem.release()
            raise

    def release(self) -> None:
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
        except _redis_down_errors() as exc:
            self._failed(exc)

    async def aclose(self) -> None:
        """Flush (within ``poll_interval`` + 1 s at most), then close the Redis connections."""
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(self.poll_interval + 1.0):
                await self.flush()
            if self._anyio_redis is not None:
                await self._anyio_redis.aclose()
            if sniffio.current_async_library() == "asyncio":
                await self._redis.aclose()

    async def __aenter__(self) -> RedisRateBudget:
        """Start the courier (see ``_courier``) for the duration of the block."""
        self._check_backend()
        if self._group is not None:
            raise RuntimeError("this RedisRateBudget is already in use by an `async with`")
        group = anyio.create_task_group()
        await group.__aenter__()
        self._group = group
        group.start_soon(self._courier)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        group, self._group = self._group, None
        try:
            if group is not None:
                group.cancel_scope.cancel()
                await group.__aexit__(None, None, None)
        finally:
            await self.aclose()

    # ------------------------------------------------------------------ internals

    def _check_backend(self) -> None:
        if self._url is None and sniffio.current_async_library() != "asyncio":
            raise RuntimeError(_ASYNCIO_ONLY)

    async def _run_script(self, args: list[str | float | int]) -> Any:
        if sniffio.current_async_library() == "asyncio":
            from redis.exceptions import AuthenticationError, AuthorizationError

            try:
                return await self._script(keys=self._keys, args=args)
            except (AuthenticationError, AuthorizationError) as exc:
                # redis-py files these under ConnectionError; they are configuration errors,
                # not an outage to wait out.
                raise RedisReplyError(str(exc)) from exc
        client = self._anyio_redis
        if client is None:
            assert self._url is not None
            client = self._anyio_redis = _AnyioRedis(self._url, **self._anyio_options)
        return await client.run_script(_SCRIPT, _SCRIPT_SHA, self._keys, args)

    def _has_outbox(self) -> bool:
        return bool(self._released) or self._pending_pause_until is not None

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
                    raise RedisBudgetUnavailableError(
                        f"Redis for rate budget {self.name!r} is unavailable "
                        f"(next try in {self._next_try - now:.2f}s)"
                    )
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
            except _redis_down_errors() as exc:
                self._failed(exc)
                if self.on_redis_error == "raise":
                    raise RedisBudgetUnavailableError(
                        f"Redis for rate budget {self.name!r} is unavailable: {exc}"
                    ) from exc
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
                           type(exc).__name__, behaviour)

    async def _call(self, *, acquire: bool, member: str) -> tuple[bool, float, str]:
        """One run of the script, carrying the outbox; on failure the outbox is put back."""
        now = self._clock()
        # Take the outbox: a concurrent call (the courier, another acquirer) must not send
        # the same items, nor drop items added while we wait for Redis.
        released, self._released = self._released, []
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
            len(released), *released,
            len(renew), *renew,
            len(backfill) // 2, *backfill,
        ]
        self.redis_calls += 1
        try:
            reply = await self._run_script(args)
        except BaseException:
            self._released[:0] = released
            if pending is not None and (self._pending_pause_until is None
                                        or pending > self._pending_pause_until):
                self._pending_pause_until = pending
            raise
        if renew:
            self._renewed_at = now
        if self._down:
            self._down = False
            logger.info("rate budget %r: Redis is back", self.name)
            if self._fallback is not None:
                self._probation_until = self._clock() + self.retry_interval + self._window
        self._backfill = False
        granted, wait, reason, fresh = reply
        if isinstance(reason, bytes):
            reason = reason.decode()
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
            except _redis_down_errors() as exc:
                self._failed(exc)
                await anyio.sleep(self.retry_interval)
