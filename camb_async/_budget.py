"""RateBudget: requests per second plus requests in flight, shared by all a client sends.

Why a sliding-window log rather than a token bucket: the promise is "at most R requests start
in any 1-second window", and a bucket of depth R lets 2R through across a window boundary.
The log keeps the start times of the last ``R`` requests and lets a new one start only when
the oldest is at least a window old, which is exact and costs O(1) per request.

Starts are also paced (GCRA: one start per ``1/rate`` s, with a small burst allowance): a
window's worth of requests fired in one instant queue up at the server, which then sees
them late and bunched against the next window's, so an exact client-side log alone still
lets a loaded server count more than ``rate`` in one of its windows.

429 handling is AIMD, as in TCP: the whole budget pauses for the server's Retry-After and the
rate is cut multiplicatively (at most once per window, so one burst of 429s from requests
already in flight counts as one signal), then grows back linearly toward the configured rate.

All those times are on the event loop's clock, and each event-loop run has its own (trio's
starts at a random offset, virtual clocks at 0), as does its semaphore. So a budget notices
the first use in a new run and starts afresh there: times from an older clock would stall it
(or let everything through), and a semaphore of another loop fails. One budget serves one
event loop at a time.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections import deque
from typing import Protocol, runtime_checkable

import anyio
import anyio.lowlevel

from ._validation import is_int, is_number

__all__ = ["DEFAULT_MAX_CONCURRENCY", "Budget", "RateBudget", "concurrency_of", "is_budget"]

#: Clock slack: a timer may fire a hair early (or float rounding may leave a start 1e-17 s
#: inside the window); without slack we would re-sleep for nothing, forever on a virtual clock.
_EPSILON = 1e-9

#: Requests in flight when nothing says otherwise: the default of ``AsyncCambClient`` and
#: ``RateBudget``, and what ``concurrency_of`` assumes of a budget object without the attribute.
DEFAULT_MAX_CONCURRENCY = 16


@runtime_checkable
class Budget(Protocol):
    """What the client needs of a budget; ``RateBudget`` and ``RedisRateBudget`` provide it.

    ``acquire`` returns once one request may start (a concurrency slot is held and a unit of
    rate was spent); every successful ``acquire`` is paired with exactly one ``release``.
    ``penalize`` reports a 429 with its Retry-After in seconds (``None`` if absent).
    ``max_concurrency`` is how many requests may be in flight at once through this process;
    the bulk calls size their worker pools by it.
    """

    @property
    def max_concurrency(self) -> int:
        """Requests in flight at most (through this process)."""
        ...

    async def acquire(self) -> None:
        """Wait until one request may start."""
        ...

    def release(self) -> None:
        """Give back what one ``acquire`` took (its concurrency slot)."""
        ...

    def penalize(self, retry_after: float | None) -> None:
        """Report a 429.

        Args:
            retry_after: the server's Retry-After in seconds, ``None`` if absent.
        """
        ...


class RateBudget:
    """At most ``rate`` request starts per ``window`` seconds and ``max_concurrency`` in flight.

    ``rate=None`` means no rate limit (the concurrency limit still applies). ``margin``
    widens the window (by 5 % by default) so that the varying delay between a start here and
    its arrival there (event-loop scheduling, connection setup, a busy CPU: tens of ms on a
    loaded machine) cannot make the server count more than ``rate`` in one of its windows;
    it costs that much throughput.

    Args:
        rate: request starts per ``window`` at most; ``None``: no rate limit.
        max_concurrency: requests in flight at most.
        window: the window's length in seconds.
        margin: how much wider than ``window`` the window really is (0.05: 5 %).
        decrease: the factor a 429 cuts the rate by.
        recovery: requests/s the rate grows back by per window (default: a tenth of
            ``rate``).
        min_rate: the rate a 429 never cuts below.
        default_pause: the pause after a 429 without Retry-After, in seconds.
        max_pause: the longest pause a 429 causes, in seconds.
        burst: starts allowed at once before pacing applies (default: a tenth of ``rate``,
            at least 1).
    """

    max_concurrency: int
    min_rate: float
    decrease: float
    recovery: float
    default_pause: float
    max_pause: float
    burst: float
    pauses: int
    cuts: int

    __slots__ = (
        "_max_rate",
        "_rate",
        "_rate_at_cut",
        "_cut_at",
        "_starts",
        "_window",
        "_sem",
        "_paused_until",
        "max_concurrency",
        "min_rate",
        "decrease",
        "recovery",
        "default_pause",
        "max_pause",
        "_clock",
        "_tat",
        "burst",
        "pauses",
        "cuts",
        "_run",
    )

    def __init__(
        self,
        rate: float | None = 20.0,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        *,
        window: float = 1.0,
        margin: float = 0.05,
        decrease: float = 0.5,
        recovery: float | None = None,
        min_rate: float = 1.0,
        default_pause: float = 1.0,
        max_pause: float = 60.0,
        burst: float | None = None,
    ) -> None:
        if rate is not None:
            if not is_number(rate):
                raise TypeError("rate must be a number or None")
            if not math.isfinite(rate) or rate <= 0:
                raise ValueError(f"rate must be > 0 requests/s (or None for unlimited), got {rate}")
        if not is_int(max_concurrency):
            raise TypeError("max_concurrency must be an integer")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if not 0 < decrease < 1:
            raise ValueError("decrease must be between 0 and 1")
        if not (0 < window < math.inf and 0 <= margin < math.inf):  # NaN fails these too
            raise ValueError("window must be finite and > 0, margin finite and >= 0")
        for name, value in (
            ("min_rate", min_rate),
            ("default_pause", default_pause),
            ("max_pause", max_pause),
            ("recovery", recovery),
            ("burst", burst),
        ):
            if value is not None and not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        self._max_rate = None if rate is None else float(rate)
        self._rate = self._max_rate
        self._rate_at_cut = self._max_rate
        self._cut_at = -math.inf
        self._window = window * (1.0 + margin)
        self._starts: deque[float] = deque()
        self._sem = anyio.Semaphore(max_concurrency, fast_acquire=True)
        self._paused_until = -math.inf
        self.max_concurrency = max_concurrency
        self.min_rate = min(min_rate, self._max_rate or min_rate)
        self.decrease = decrease
        # Additive increase: by default back from a halving to the full rate in ~5 windows.
        self.recovery = recovery if recovery is not None else (self._max_rate or 0.0) / 10.0
        self.default_pause = default_pause
        self.max_pause = max_pause
        self._clock = anyio.current_time
        self._tat = -math.inf  # GCRA's theoretical arrival time of the next start
        #: Starts allowed back to back after idling (default a tenth of the rate, at least 1).
        self.burst = burst if burst is not None else max(1.0, (self._max_rate or 0.0) / 10.0)
        if self.burst < 1:
            raise ValueError("burst must be >= 1")
        self.pauses = 0
        self.cuts = 0
        #: The event-loop run this budget's times and semaphore belong to (see _in_this_run).
        self._run: weakref.ref[object] | None = None

    def __repr__(self) -> str:
        return (
            f"RateBudget(rate={self._max_rate}, max_concurrency={self.max_concurrency}, "
            f"current_rate={self.current_rate()})"
        )

    @property
    def rate(self) -> float | None:
        """The configured rate (requests per window)."""
        return self._max_rate

    @property
    def in_flight(self) -> int:
        """Requests holding a concurrency slot now."""
        return self.max_concurrency - int(self._sem.value)

    def current_rate(self, now: float | None = None) -> float | None:
        """The rate in force now: the configured one, or less while recovering from a 429."""
        if self._rate_at_cut is None or self._max_rate is None:
            return None
        if self._rate_at_cut >= self._max_rate:
            return self._max_rate
        if now is None:
            try:
                now = self._clock()
            except Exception:  # outside an event loop: report the rate at the last cut
                return self._rate_at_cut
        rate = self._rate_at_cut + self.recovery * max(0.0, now - self._cut_at)
        if rate >= self._max_rate:
            self._rate_at_cut = self._max_rate
            return self._max_rate
        return rate

    @property
    def paused_until(self) -> float:
        """When the current 429 pause ends (event-loop clock; in the past if none)."""
        return self._paused_until

    def _in_this_run(self) -> None:
        """Start afresh on the first use in a new event-loop run (see the module doc)."""
        run = _current_run()
        previous = self._run
        if previous is not None and previous() is run:
            return
        if self.in_flight:
            raise RuntimeError(
                f"this RateBudget has {self.in_flight} request(s) in flight in another event "
                "loop; a budget serves one event loop at a time (make one per loop or thread)"
            )
        self._run = weakref.ref(run)
        self._sem = anyio.Semaphore(self.max_concurrency, fast_acquire=True)
        self._starts.clear()
        self._tat = self._paused_until = self._cut_at = -math.inf
        self._rate = self._rate_at_cut = self._max_rate

    async def acquire(self) -> None:
        """Wait until one request may start (a concurrency slot and a unit of rate)."""
        # Every acquire is a checkpoint (the caller's cancellation is seen, other tasks run,
        # also when what follows never waits: an in-process transport, a body that fails
        # to encode). A free slot is taken first, then a plain checkpoint (a cancellation
        # there gives the slot back): the semaphore itself takes none (fast_acquire:
        # anyio's shielded one cost 13.7 µs against this one's 7 on asyncio), and of a
        # burst of calls only those that got a slot take one; the others' wait is theirs.
        if self._try_acquire():
            try:
                await anyio.lowlevel.checkpoint()
            except BaseException:
                self._sem.release()
                raise
            return  # a free slot, no rate to keep and no pause: nothing to wait for
        sem = self._sem
        if sem.value > 0:  # the semaphore will not wait, and _take_start may not either
            await anyio.lowlevel.checkpoint()
        await sem.acquire()
        if self._max_rate is None and self._paused_until == -math.inf:
            return  # no rate to keep, no pause (one may have begun during the wait)
        try:
            await self._take_start()
        except BaseException:
            sem.release()
            raise

    def release(self) -> None:
        """Give back the concurrency slot of one ``acquire``."""
        self._sem.release()

    def _try_acquire(self) -> bool:
        """``acquire`` if it would not wait: a free slot, no rate to keep, no pause. For the
        bulk poller, which otherwise wraps every acquire in a cancel scope of its own (~4 %
        of a check), and for ``acquire`` itself: ``False`` means "call ``acquire``", never
        "no". No checkpoint: ``acquire`` and the poller's workers take their own."""
        self._in_this_run()
        if self._max_rate is not None or self._paused_until != -math.inf:
            return False
        try:
            self._sem.acquire_nowait()
        except anyio.WouldBlock:
            return False
        return True

    def penalize(self, retry_after: float | None) -> None:
        """Report a 429: pause the whole budget and cut the rate.

        Args:
            retry_after: the server's Retry-After in seconds, ``None`` if absent.
        """
        self._in_this_run()
        now = self._clock()
        pause = self.default_pause if retry_after is None else retry_after
        pause = min(max(pause, 0.0), self.max_pause)
        if now + pause > self._paused_until:
            self._paused_until = now + pause
            self.pauses += 1
        if self._max_rate is None:
            return
        # One cut per window: the 429s of requests already in flight are one signal, not many.
        if now - self._cut_at >= self._window:
            current = self.current_rate(now) or self._max_rate
            self._rate_at_cut = max(self.min_rate, current * self.decrease)
            self._cut_at = now + pause
            self.cuts += 1

    async def _take_start(self) -> None:
        clock = self._clock
        starts = self._starts
        while True:
            now = clock()
            if now < self._paused_until - _EPSILON:
                await anyio.sleep(self._paused_until - now)
                continue
            rate = self.current_rate(now)
            if rate is None:
                self._paused_until = -math.inf  # over: the next acquire need not look
                return
            interval = self._window / rate
            earliest = self._tat - (self.burst - 1.0) * interval
            if now < earliest - _EPSILON:
                await anyio.sleep(earliest - now)
                continue
            limit = max(1, int(rate))
            edge = now - self._window + _EPSILON
            while starts and starts[0] <= edge:
                starts.popleft()
            if len(starts) < limit:
                starts.append(now)
                self._tat = max(self._tat, now) + interval
                return
            # The (len - limit)-th oldest start must leave the window before we may start.
            await anyio.sleep(starts[len(starts) - limit] - edge + _EPSILON)


def _current_run() -> object:
    """An object unique to the running event-loop run: asyncio's loop, or trio's root task."""
    loop = asyncio._get_running_loop()  # public in asyncio.events.__all__; no exception cost
    if loop is not None:
        return loop
    try:
        import trio
    except ImportError:
        raise RuntimeError("RateBudget must be used inside an event loop") from None
    return trio.lowlevel.current_root_task()


def is_budget(obj: object) -> bool:
    """Whether ``obj`` can serve as a client's budget: it has ``acquire``, ``release`` and
    ``penalize``. ``max_concurrency`` is part of the protocol, but an object without it is
    still accepted (``concurrency_of`` then assumes the default), as before it was listed."""
    return all(getattr(obj, name, None) is not None for name in ("acquire", "release", "penalize"))


def concurrency_of(budget: object) -> int:
    """``budget.max_concurrency``: the one place that decides the default when it is absent."""
    value: int = getattr(budget, "max_concurrency", DEFAULT_MAX_CONCURRENCY)
    return value
