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
import importlib.resources
import itertools
import logging
import math
import sys
import uuid
import warnings
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeAlias
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import anyio
import anyio.abc
import anyio.lowlevel

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

from ._budget import RateBudget
from ._errors import CambError

try:
    import coredis
    import coredis.exceptions
    import coredis.parser
    import coredis.retry
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "camb_async.redis needs coredis: pip install 'camb-async[redis]'"
    ) from exc

__all__ = ["RedisBudgetUnavailableError", "RedisRateBudget", "RedisReplyError", "RedisWatchList",
           "RedisWatchReplyError", "RedisWatchUnavailableError", "WatchEvent", "WatchStats"]

logger: logging.Logger = logging.getLogger("camb_async")

OnRedisError = Literal["wait", "local", "raise"]

#: A coredis client: standalone, Cluster, or Sentinel-managed (``Sentinel.primary_for``).
RedisClient: TypeAlias = "coredis.Redis[Any] | coredis.RedisCluster[Any]"

_SCRIPT = importlib.resources.files(__package__).joinpath("redis_budget.lua").read_text("utf-8")

#: What a failed call may raise: coredis' errors (connection, protocol, error replies,
#: Cluster routing), timeouts and socket errors, and anyio's stream errors.
_FAILURES: tuple[type[Exception], ...] = (
    coredis.exceptions.RedisError,
    OSError,  # TimeoutError and ConnectionError included
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)
#: Credentials refused: a misconfiguration, not an outage to wait out.
_CONFIG_ERRORS = (coredis.exceptions.AuthenticationError, coredis.exceptions.AuthorizationError)


class RedisBudgetUnavailableError(CambError):
    """The budget could not use Redis and ``on_redis_error="raise"`` was chosen.

    ``redis_error`` names what went wrong: the error code of Redis's reply (``"OOM"``,
    ``"READONLY"``, ...) or the kind of failure (``"ConnectionError"``, ``"TimeoutError"``).
    """

    def __init__(self, message: str, *, redis_error: str = "") -> None:
        super().__init__(message)
        self.redis_error = redis_error


class RedisReplyError(RedisBudgetUnavailableError):
    """Redis answered with an error (``redis_error`` is its code: OOM, READONLY, WRONGPASS...).

    Raised with ``on_redis_error="raise"``, and whatever the mode when Redis refuses the
    credentials (WRONGPASS, NOAUTH, NOPERM): a misconfiguration, not an outage.
    """


#: Error replies that coredis raises as classes of their own, with the code cut off the message.
_REPLY_CODES: dict[type[BaseException], str] = {
    cls: code for code, cls in coredis.parser.Parser.EXCEPTION_CLASSES.items()
    if isinstance(cls, type)
}


def _reply_code(exc: BaseException) -> str | None:
    """The error code of a Redis error reply ("OOM", "READONLY"), None if not a reply."""
    code = _REPLY_CODES.get(type(exc))
    if code is not None:
        return code
    text = str(exc)
    if isinstance(exc, coredis.exceptions.ResponseError):
        word = text.split(" ", 1)[0]
        return word if word.isupper() and word.isalpha() else "ERR"
    if text.startswith("max number of clients reached"):  # coredis: a ConnectionError
        return "ERR"
    return None


def _error_name(exc: BaseException) -> str:
    """What went wrong: the code of Redis's error reply, else the kind of failure."""
    return _reply_code(exc) or type(exc).__name__


def _first_failure(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The failure inside ``group`` if it holds only ordinary errors, else ``group`` itself."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(reversed(exc.exceptions))
        else:
            leaves.append(exc)
    if not all(isinstance(exc, Exception) for exc in leaves):
        return group  # a cancellation among them: it must go on as it is
    return next((exc for exc in leaves if isinstance(exc, _FAILURES)), group)


def _client_is_open(client: RedisClient) -> bool:
    """True if someone holds ``client`` open (its pool runs); then it is used as it is."""
    try:
        client.connection_pool.task_group  # noqa: B018 - raises unless the pool is open
    except RuntimeError:
        return False
    return True


def _tls_defaults(url: str) -> str:
    """``rediss://``: check the server's name against its certificate unless told otherwise.

    coredis builds the TLS context from the URL's ``ssl_*`` parameters (``ssl_ca_certs``,
    ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``, ``ssl_check_hostname``) but does not
    check the host name by default.
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return url
    query = parse_qsl(parts.query, keep_blank_values=True)
    for key, value in query:  # coredis looks it up as is: anything else was a raw KeyError
        if key == "ssl_cert_reqs" and value not in ("none", "optional", "required"):
            raise ValueError("ssl_cert_reqs must be 'none', 'optional' or 'required', got "
                             f"{value[:40]!r}")
    if any(key == "ssl_check_hostname" for key, _ in query):
        return url
    if any(key == "ssl_cert_reqs" and value.lower() == "none" for key, value in query):
        return url
    query.append(("ssl_check_hostname", "true"))
    return urlunsplit(parts._replace(query=urlencode(query)))


class RedisRateBudget:
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
        if isinstance(rate, bool) or not isinstance(rate, (int, float)):
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
            if (isinstance(setting, bool) or not isinstance(setting, (int, float))
                    or not math.isfinite(setting) or setting < 0
                    or (least is not None and setting <= least)):
                raise ValueError(f"{label} must be a finite number "
                                 f"{'> 0' if least is not None else '>= 0'}, got {setting!r}")
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
        self.give_backs = 0

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
        scheme = urlsplit(url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"unsupported Redis URL scheme {scheme!r}")
        if cluster and scheme == "unix":
            raise ValueError("a Redis Cluster is reached over TCP (redis:// or rediss://)")
        kwargs: dict[str, Any] = {
            "stream_timeout": 2.0,
            "connect_timeout": 1.0,
            "decode_components": True,  # percent-encoded passwords, as in any URL
        }
        if not cluster:  # the Cluster client's own policy follows MOVED and CLUSTERDOWN
            kwargs["retry_policy"] = coredis.retry.ConstantRetryPolicy(
                (coredis.exceptions.ConnectionError,), retries=1, delay=0)
        kwargs.update(redis_options or {})
        client: RedisClient
        if cluster:
            with warnings.catch_warnings():  # coredis 6.9 warns about its own from_url
                warnings.filterwarnings("ignore", "Use coredis.connection.TCPLocation",
                                        DeprecationWarning)
                client = coredis.RedisCluster.from_url(_tls_defaults(url), **kwargs)
        else:
            client = coredis.Redis.from_url(_tls_defaults(url), **kwargs)
        budget = cls(client, rate=rate, name=name, max_concurrency=max_concurrency, **options)
        parts = urlsplit(url)
        budget._secrets = tuple(
            secret for secret in (parts.password, parts.password and unquote(parts.password))
            if secret)
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
        if self._down:
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


# The fleet watch list lives in its own module; imported on first use, so that neither module
# imports the other while it is being initialised.
if TYPE_CHECKING:
    from ._redis_watch import (
        RedisWatchList,
        RedisWatchReplyError,
        RedisWatchUnavailableError,
        WatchEvent,
        WatchStats,
    )

_WATCH_NAMES = ("RedisWatchList", "RedisWatchReplyError", "RedisWatchUnavailableError",
                "WatchEvent", "WatchStats")


def __getattr__(name: str) -> Any:
    if name in _WATCH_NAMES:
        from . import _redis_watch

        return getattr(_redis_watch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
