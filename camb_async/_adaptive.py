"""Adaptive polling: learn how long each kind of task takes, poll when completion is likely.

Two pieces:

``CompletionStats`` (one per client, ``client.completion_stats``) keeps one
``DurationEstimator`` per task kind. Every completion the bulk poller or a ``TaskHandle``
observes is reported to it as an *interval*: the task finished after the last poll that saw
it pending and no later than the poll that saw it done. Tasks whose creation time is unknown
(ids that came from elsewhere; only their first-seen time is known) say only that the task
ran *at least* as long as it was watched: a right-censored observation. Tasks still being
watched are right-censored at their current age. Treating these as what they are, rather than
as exact durations, is what keeps the estimate honest when a thousand tasks are submitted
together and the quick ones report first.

Observations land in a sparse histogram on a 5 % log-time grid (O(1) per observation, memory
bounded by the grid, not by the number of tasks). A log-normal is fitted to the binned,
censored data by EM (truncated-normal moments), lazily, when enough has changed; old data
fade by halving every weight once the total passes ``MAX_WEIGHT``.

``AdaptivePollPolicy`` (``PollPolicy.adaptive(max_delay=...)``) places each poll with
Keller's optimal checking density: a task of hazard rate ``h`` should be polled every
``sqrt(2 c / h)`` seconds, where ``c`` is the detection delay one request is worth
(``request_cost``). In discrete form the next interval ``d`` solves
``d * P(done within d | pending now) = 2 c``: long gaps while completion is unlikely (a
dubbing job's first minutes), short ones where the durations bunch up. No gap exceeds
``max_delay``; until a kind has ``min_samples`` completions the kind's exponential default
(capped at ``max_delay``) is used instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import attrs

from ._models import TaskKind
from ._polling import PollPolicy, _positive, _rng

if TYPE_CHECKING:
    from ._client import AsyncCambClient

__all__ = ["AdaptivePollPolicy", "CompletionStats", "DurationEstimator"]

#: Width of one histogram bin in log-seconds: durations are kept to within ~5 %.
GRID = 0.05
#: Once the summed weight of observations passes this, every weight is halved: the estimate
#: follows a drifting service (a busy day) instead of averaging over all history.
MAX_WEIGHT = 4000.0
_NEG = -(10**6)  # bin index meaning "no lower bound" (started at creation)
_POS = 10**6  # bin index meaning "no upper bound" (right-censored)
_MAX_PENDING_KEYS = 256
_MAX_STRETCH = 5.0  # a stretched gap (``tail``) is at most this many max_delays
_NORMAL = NormalDist()
_SQRT2 = math.sqrt(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _log_q(z: float) -> float:
    """log P(Z > z) for a standard normal, without underflow far in the tail."""
    if z < 25.0:
        return math.log(0.5 * math.erfc(z / _SQRT2))
    return -0.5 * z * z - math.log(z) - _LOG_SQRT_2PI + math.log1p(-1.0 / (z * z))


def _q(z: float) -> float:
    return 0.5 * math.erfc(z / _SQRT2)


def _phi(z: float) -> float:
    return _INV_SQRT_2PI * math.exp(-0.5 * z * z)


@attrs.frozen
class DurationFit:
    """A log-normal fitted to one kind's durations: ``ln T ~ N(mu, sigma**2)``."""

    mu: float
    sigma: float
    completions: float  # weighted count of completions behind the fit

    @property
    def median(self) -> float:
        return math.exp(self.mu)

    def quantile(self, p: float) -> float:
        """The ``p`` quantile of the fitted duration, by bisection on the survival."""
        lo, hi = -12.0, 12.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if 1.0 - _q(mid) < p:
                lo = mid
            else:
                hi = mid
        return math.exp(self.mu + self.sigma * 0.5 * (lo + hi))

    def log_survival(self, t: float) -> float:
        if t <= 0.0:
            return 0.0
        return _log_q((math.log(t) - self.mu) / self.sigma)


class DurationEstimator:
    """Censored log-normal estimate of one kind's task durations. O(1) per observation."""

    __slots__ = ("_obs", "_weight", "_completions", "_unit", "_pending", "_pending_res",
                 "_fit", "_fit_weight", "_fit_at")

    def __init__(self) -> None:
        self._obs: dict[tuple[int, int], float] = {}
        self._weight = 0.0  # summed weight of every stored observation
        self._completions = 0.0  # summed weight of the ones with an upper bound
        self._unit = 1.0  # weight of one observation; stored ones are halved as they age
        self._pending: dict[int, int] = {}  # start-time bucket -> tasks being watched
        self._pending_res = 1.0  # seconds per start-time bucket
        self._fit: DurationFit | None = None
        self._fit_weight = 0.0
        self._fit_at = -math.inf

    def __repr__(self) -> str:
        return f"<DurationEstimator completions={self._completions:.0f} fit={self._fit!r}>"

    @property
    def completions(self) -> float:
        """Weighted count of observed completions (decayed once history is long)."""
        return self._completions

    @property
    def pending(self) -> int:
        """Tasks being watched right now (right-censored at their age in every fit)."""
        return sum(self._pending.values())

    # ------------------------------------------------------------ observations

    def observe(self, lo: float, hi: float | None) -> None:
        """A task ran longer than ``lo`` seconds and at most ``hi`` (``None``: no bound).

        ``lo <= 0`` means nothing is known below (the first poll already saw it done).
        """
        if hi is not None and not (hi > 0.0 and math.isfinite(hi)):
            return
        i_lo = math.floor(math.log(lo) / GRID) if lo > 0.0 else _NEG
        if hi is None:
            if i_lo == _NEG:
                return  # "longer than nothing": no information
            i_hi = _POS
        else:
            i_hi = max(math.ceil(math.log(hi) / GRID), i_lo + 1)
            self._completions += self._unit
        key = (i_lo, i_hi)
        self._obs[key] = self._obs.get(key, 0.0) + self._unit
        self._weight += self._unit
        if self._weight > MAX_WEIGHT:
            self._decay()

    def _decay(self) -> None:
        self._obs = {k: w * 0.5 for k, w in self._obs.items() if w > 1e-3}
        self._weight *= 0.5
        self._completions *= 0.5
        self._fit_weight *= 0.5

    def track(self, start: float) -> None:
        """A task that started at ``start`` (event-loop clock) is pending and being watched."""
        key = math.floor(start / self._pending_res)
        pending = self._pending
        pending[key] = pending.get(key, 0) + 1
        if len(pending) > _MAX_PENDING_KEYS:
            self._pending_res *= 2.0
            merged: dict[int, int] = {}
            for k, n in pending.items():
                merged[k // 2] = merged.get(k // 2, 0) + n
            self._pending = merged

    def untrack(self, start: float) -> None:
        key = math.floor(start / self._pending_res)
        n = self._pending.get(key, 0)
        if n <= 1:
            self._pending.pop(key, None)
        else:
            self._pending[key] = n - 1

    # ------------------------------------------------------------ the fit

    def fit(self, now: float) -> DurationFit | None:
        """The current fit, refitted when the data moved enough; None before any completion."""
        if self._completions <= 0.0:
            return None
        fit = self._fit
        pending = self._pending
        if fit is not None:
            new = self._weight - self._fit_weight
            stale = new >= max(self._unit, self._weight / 16.0)
            # Pending tasks age without any new completion: their censoring points move.
            # Refit on that at most every 5 % of the median, so a steady stream of tasks
            # costs a refit now and then, not one per poll.
            if not stale and pending:
                stale = now - self._fit_at >= 0.05 * fit.median
            if not stale:
                return fit
        self._fit = fit = self._refit(now, fit)
        self._fit_weight = self._weight
        self._fit_at = now
        return fit

    def _refit(self, now: float, previous: DurationFit | None) -> DurationFit:
        rows: dict[tuple[int, int], float] = dict(self._obs)
        res = self._pending_res
        for key, n in self._pending.items():
            age = now - (key + 0.5) * res
            if age > 0.0:
                k = (math.floor(math.log(age) / GRID), _POS)
                rows[k] = rows.get(k, 0.0) + n * self._unit
        data = [((-math.inf if a == _NEG else a * GRID),
                 (math.inf if b == _POS else b * GRID), w) for (a, b), w in rows.items()]
        total = sum(w for _, _, w in data)
        if previous is not None:
            mu, sigma = previous.mu, previous.sigma
        else:  # start from the bins' centres, completions only
            num = den = sq = 0.0
            for a, b, w in data:
                if b == math.inf:
                    continue
                y = b - 0.5 * GRID if a == -math.inf else 0.5 * (a + b)
                num += w * y
                sq += w * y * y
                den += w
            mu = num / den
            sigma = max(math.sqrt(max(sq / den - mu * mu, 0.0)), 0.2)
        for _ in range(60):  # warm-started from the last fit: a few steps usually do
            s1 = s2 = 0.0
            for a, b, w in data:
                ey, ey2 = _truncated_moments(a, b, mu, sigma)
                s1 += w * ey
                s2 += w * ey2
            new_mu = s1 / total
            new_sigma = max(math.sqrt(max(s2 / total - new_mu * new_mu, 0.0)), 0.02)
            done = abs(new_mu - mu) < 1e-4 and abs(new_sigma - sigma) < 1e-4
            mu, sigma = new_mu, new_sigma
            if done:
                break
        return DurationFit(mu, sigma, self._completions)

    # ------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        rows = [[None if a == _NEG else a, None if b == _POS else b, round(w, 6)]
                for (a, b), w in sorted(self._obs.items())]
        out: dict[str, Any] = {"bins": rows, "completions": round(self._completions, 6)}
        if self._fit is not None:
            out["fit"] = {"mu": self._fit.mu, "sigma": self._fit.sigma}
        return out

    def load(self, data: Mapping[str, Any]) -> None:
        """Add exported observations to this estimator (weights add up)."""
        rows = data.get("bins", [])
        if not isinstance(rows, list):
            raise ValueError("bins must be a list of [lo, hi, weight]")
        for row in rows:
            if not (isinstance(row, (list, tuple)) and len(row) == 3):
                raise ValueError(f"bad bin row {row!r}")
            a, b, w = row
            if (a is not None and not isinstance(a, int)) or (
                    b is not None and not isinstance(b, int)):
                raise ValueError(f"bin bounds must be integers or null, got {row!r}")
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not (
                    math.isfinite(w) and w > 0):
                raise ValueError(f"bin weight must be a positive number, got {row!r}")
            i_lo = _NEG if a is None else a
            i_hi = _POS if b is None else b
            if i_hi <= i_lo or (i_lo == _NEG and i_hi == _POS):
                raise ValueError(f"empty or unbounded bin {row!r}")
            key = (i_lo, i_hi)
            weight = float(w) * self._unit
            self._obs[key] = self._obs.get(key, 0.0) + weight
            self._weight += weight
            if i_hi != _POS:
                self._completions += weight
        while self._weight > MAX_WEIGHT:
            self._decay()
        self._fit_weight = -math.inf  # refit on next use


def _truncated_moments(a: float, b: float, mu: float, sigma: float) -> tuple[float, float]:
    """E[y] and E[y**2] for y ~ N(mu, sigma**2) restricted to (a, b]."""
    alpha = (a - mu) / sigma
    beta = (b - mu) / sigma
    if alpha > 0.0:  # upper tail: difference of survivals keeps precision
        z = _q(alpha) - _q(beta)
    else:
        z = _q(-beta) - _q(-alpha) if beta < 0.0 else 1.0 - _q(-alpha) - _q(beta)
    if z < 1e-300:
        # The fit gives this interval no mass: take its nearest bound as the value.
        y = a if alpha > 0.0 else b if beta < 0.0 else mu
        if not math.isfinite(y):
            y = mu
        return y, y * y
    pa = 0.0 if alpha == -math.inf else _phi(alpha)
    pb = 0.0 if beta == math.inf else _phi(beta)
    apa = 0.0 if alpha == -math.inf else alpha * pa
    bpb = 0.0 if beta == math.inf else beta * pb
    ex = (pa - pb) / z
    ex2 = 1.0 + (apa - bpb) / z
    return mu + sigma * ex, mu * mu + 2.0 * mu * sigma * ex + sigma * sigma * ex2


class CompletionStats:
    """What one client has learned about how long each kind of task takes.

    Fed by every completion its poller and handles observe (whatever their policy), read by
    ``PollPolicy.adaptive``. ``to_dict()``/``from_dict()`` (plain JSON-able data) let a
    service warm-start after a restart: ``AsyncCambClient(..., completion_stats=...)``.
    """

    __slots__ = ("_kinds",)

    def __init__(self) -> None:
        self._kinds: dict[TaskKind, DurationEstimator] = {}

    def __repr__(self) -> str:
        parts = ", ".join(f"{k.value}={e.completions:.0f}" for k, e in self._kinds.items())
        return f"<CompletionStats {parts}>"

    def for_kind(self, kind: TaskKind) -> DurationEstimator:
        est = self._kinds.get(kind)
        if est is None:
            est = self._kinds[kind] = DurationEstimator()
        return est

    def fit(self, kind: TaskKind | str, now: float) -> DurationFit | None:
        """The current duration fit of ``kind`` at event-loop time ``now``."""
        return self.for_kind(TaskKind(kind)).fit(now)

    # Reports from the poller and handles. ``start`` is the creation time if ``known_start``,
    # else the first-seen time; ``lo``/``hi`` are ages relative to it.

    def started(self, kind: TaskKind, start: float) -> None:
        self.for_kind(kind).track(start)

    def completed(self, kind: TaskKind, start: float, lo: float, hi: float, *,
                  known_start: bool, tracked: bool) -> None:
        est = self.for_kind(kind)
        if tracked:
            est.untrack(start)
        if known_start:
            est.observe(lo, hi)
        elif lo > 0.0:
            # Started at some unknown time before we first saw it: it ran longer than we
            # watched it pending, and that is all we know.
            est.observe(lo, None)

    def abandoned(self, kind: TaskKind, start: float, age: float) -> None:
        """Watching stopped while the task was pending (deadline, cancel): it ran > ``age``."""
        est = self.for_kind(kind)
        est.untrack(start)
        est.observe(age, None)

    def forget(self, kind: TaskKind, start: float) -> None:
        """Watching stopped on an error: no duration information."""
        self.for_kind(kind).untrack(start)

    # ------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        """Learned statistics as JSON-able data (pending tasks are not included)."""
        return {"version": 1, "grid": GRID,
                "kinds": {k.value: e.to_dict() for k, e in self._kinds.items()
                          if e.completions > 0 or e._obs}}

    def load(self, data: Mapping[str, Any]) -> None:
        """Merge statistics exported by ``to_dict`` into these."""
        if not isinstance(data, Mapping) or data.get("version") != 1:
            raise ValueError("not camb-async completion statistics (version 1)")
        if data.get("grid") != GRID:
            raise ValueError(f"statistics use grid {data.get('grid')!r}, this version {GRID}")
        kinds = data.get("kinds", {})
        if not isinstance(kinds, Mapping):
            raise ValueError("kinds must be a mapping")
        for name, entry in kinds.items():
            if not isinstance(entry, Mapping):
                raise ValueError(f"statistics for {name!r} must be a mapping")
            self.for_kind(TaskKind(name)).load(entry)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompletionStats:
        stats = cls()
        stats.load(data)
        return stats


# ------------------------------------------------------------------------- the policy


def _check_int(name: str) -> Any:
    def check(_: Any, __: Any, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    return check


@attrs.frozen(kw_only=True, slots=True)
class AdaptivePollPolicy(PollPolicy):
    """A ``PollPolicy`` that polls where the learned duration distribution says completion
    is likely. Build it with ``PollPolicy.adaptive(max_delay=...)``.

    ``max_delay``: no gap between two polls of a task is longer, so no completion goes
    unnoticed for longer (plus one request's time). ``request_cost``: seconds of mean
    detection delay one request is worth (default ``max_delay / 15``); larger means fewer
    requests and later detection. ``min_interval``: no gap is shorter. ``min_samples``:
    completions of a kind needed before its schedule is trusted; until then ``fallback`` (or
    the kind's default policy) is used, capped at ``max_delay``. ``tail`` (default 0.01; 0
    makes the bound hard) lets a gap pass ``max_delay`` (by up to 4 x ``max_delay``) where
    completion is so unlikely that even ``2 * max_delay`` would be worth waiting, as long as
    the fit gives the task at most ``tail`` probability of finishing in the overrun. It skips
    a long job's dead start; 0.1-0.5 % of completions were seen later than ``max_delay`` in
    the benchmark.
    """

    max_delay: float = attrs.field(default=30.0, validator=_positive("max_delay"))
    request_cost: float | None = None
    min_interval: float = attrs.field(default=0.5, validator=_positive("min_interval"))
    min_samples: int = attrs.field(default=20, validator=_check_int("min_samples"))
    fallback: PollPolicy | None = None
    tail: float = 0.01
    _estimator: DurationEstimator | None = attrs.field(default=None, eq=False, repr=False)
    _clock: Any = attrs.field(default=None, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        PollPolicy.__attrs_post_init__(self)
        if self.min_interval > self.max_delay:
            raise ValueError("min_interval must be <= max_delay")
        if self.request_cost is not None:
            _positive("request_cost")(None, None, self.request_cost)
        if self.fallback is not None and not isinstance(self.fallback, PollPolicy):
            raise TypeError("fallback must be a PollPolicy")
        if isinstance(self.fallback, AdaptivePollPolicy):
            raise TypeError("fallback must be a plain PollPolicy")
        if isinstance(self.tail, bool) or not isinstance(self.tail, (int, float)) or not (
                0.0 <= self.tail < 0.5):
            raise ValueError(f"tail must be a probability in [0, 0.5), got {self.tail!r}")

    @property
    def kappa(self) -> float:
        """Target of ``gap * P(done within gap | pending)``: twice the cost of a request."""
        cost = self.request_cost if self.request_cost is not None else self.max_delay / 15.0
        return 2.0 * cost

    def _bind(self, client: AsyncCambClient, kind: TaskKind) -> PollPolicy:
        import anyio

        from ._polling import DEFAULT_POLICIES

        fallback = self.fallback
        if fallback is None:
            fallback = attrs.evolve(DEFAULT_POLICIES[kind], jitter=self.jitter)
        if fallback.max_interval > self.max_delay:
            fallback = attrs.evolve(fallback, max_interval=self.max_delay,
                                    initial=min(fallback.initial, self.max_delay))
        return attrs.evolve(self, fallback=fallback,
                            estimator=client.completion_stats.for_kind(kind),
                            clock=anyio.current_time)

    def current_fit(self) -> DurationFit | None:
        """The fit this policy schedules by now; None while it falls back."""
        est = self._estimator
        if est is None or est.completions < self.min_samples:
            return None
        return est.fit(self._clock())

    def next_interval(self, polls: int, age: float = 0.0) -> float:
        fit = self.current_fit()
        if fit is None:
            fallback = self.fallback
            if fallback is None:
                return PollPolicy.next_interval(self, polls, age)
            return min(fallback.next_interval(polls, age), self.max_delay)
        gap = self.gap_at(fit, age)
        if self.jitter:
            gap *= 1.0 + self.jitter * (2.0 * _rng.random() - 1.0)
        return min(max(gap, self.min_interval), self.max_delay)

    def first_interval(self, age: float) -> float:
        fit = self.current_fit()
        if fit is None:
            fallback = self.fallback or self
            return max(0.0, min(fallback.initial, self.max_delay) - age)
        gap = self.gap_at(fit, age)
        if self.jitter:  # tasks created together must not all come due together
            gap *= 1.0 + self.jitter * (2.0 * _rng.random() - 1.0)
        return gap

    def _previous_gap(self, polls: int, age: float) -> float:
        fit = self.current_fit()
        if fit is None:
            if self.fallback is None:
                return PollPolicy._previous_gap(self, polls, age)
            return min(self.fallback._previous_gap(polls, age), self.max_delay)
        # The gap g that, handed out at age - g, led to this poll: a fixed point.
        gap = self.gap_at(fit, age)
        for _ in range(3):
            gap = self.gap_at(fit, max(age - gap, 0.0))
        return min(gap, age)

    def gap_at(self, fit: DurationFit, age: float) -> float:
        """The gap ``d`` in [min_interval, max_delay] with ``d * P(done by age+d | pending
        at age) = kappa``, found by bisection on log(d)."""
        kappa = self.kappa
        lo, hi = self.min_interval, self.max_delay
        log_s0 = fit.log_survival(age)

        def excess(d: float) -> float:
            return d * -math.expm1(fit.log_survival(age + d) - log_s0) - kappa

        if excess(hi) <= 0.0:
            # Completion so unlikely that even twice max_delay would be worth waiting: the
            # only place a gap may stretch past max_delay (``tail``).
            if self.tail and excess(2.0 * hi) <= 0.0:
                return self._stretch(fit, age, log_s0)
            return hi
        if excess(lo) >= 0.0:
            return lo
        for _ in range(10):
            mid = math.sqrt(lo * hi)
            if excess(mid) > 0.0:
                hi = mid
            else:
                lo = mid
        return math.sqrt(lo * hi)

    def _stretch(self, fit: DurationFit, age: float, log_s0: float) -> float:
        """With ``tail`` > 0, a gap may pass ``max_delay`` by the time in which the task
        finishes with probability at most ``tail``: a completion there is seen late (more
        than ``max_delay``), but that happens to at most a ``tail`` share of such gaps. This
        skips a kind's dead start (nothing finishes in a dubbing job's first minutes) and its
        far tail without loosening the delay bound where tasks actually finish."""
        p = math.exp(log_s0 + math.log1p(-self.tail))  # survival probability at the cut
        if not 0.0 < p < 1.0:
            return self.max_delay
        cut = math.exp(fit.mu - fit.sigma * _NORMAL.inv_cdf(p))
        return min(self.max_delay + max(cut - age, 0.0), _MAX_STRETCH * self.max_delay)
