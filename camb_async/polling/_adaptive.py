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

``AdaptivePollPolicy`` has two modes. Mean mode (``PollPolicy.adaptive(max_delay=...,
request_cost=...)``) polls on the schedule that minimises ``E[requests] + E[delay] / c``
for the fitted distribution, where ``c`` (``request_cost``) is the detection delay one
request is worth: exact dynamic programming over the next poll age (``mean_schedule``, O(grid)
with a convex-hull trick, cached per fit), which replaced Keller's local rule ``d * P(done
within d | pending) = 2 c`` (still ``gap_at``; within 1-3 % of the optimum, 5 % at large
``c``). Long gaps while completion is unlikely (a dubbing job's first minutes), short ones
where the durations bunch up; no gap exceeds ``max_delay`` except where ``tail`` stretches it.
Quantile mode (``PollPolicy.adaptive(p95_delay=D)``) spends the fewest requests such that 95 %
of completions are seen within ``D``: gaps of exactly ``D`` where tasks finish, the 5 % of
completions allowed to be late placed where polls buy least (the dead start, the far tail),
chosen in closed form per fit (``quantile_plan``). Both are within about 1 % of the exact
oracle in ``benchmarks/bench_polling_efficiency.py``. Until a kind has ``min_samples``
completions the kind's exponential default (capped at ``max_delay``, or ``p95_delay``) is used.

Duration hints: a task's ``DurationHint`` (text length, upload size, media duration) is
reported with its observations; per kind and unit a ``HintModel`` learns ``ln T = a + b *
ln(size) + N(0, s**2)`` by the same censored EM, O(1) per observation, and both modes then
schedule each hinted task by its conditional distribution — much narrower when size explains
duration — falling back to the kind's plain fit when no relation is learned yet.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from .._models import DurationHint, TaskKind
from .._validation import check_positive, int_at_least, is_number, positive
from . import _policy
from ._fit import _MAX_STRETCH, _NORMAL, DurationFit
from ._policy import DEFAULT_POLICIES, PollPolicy, _rng
from ._schedule import _anchor, mean_schedule, quantile_plan
from ._stats import DurationEstimator

if TYPE_CHECKING:
    from .._client import AsyncCambClient

__all__ = ["AdaptivePollPolicy"]


@attrs.frozen(kw_only=True, slots=True)
class AdaptivePollPolicy(PollPolicy):
    """A ``PollPolicy`` that polls where the learned duration distribution says completion
    is likely. Build it with ``PollPolicy.adaptive(max_delay=...)`` (mean mode) or
    ``PollPolicy.adaptive(p95_delay=...)`` (quantile mode).

    Mean mode. ``max_delay``: no gap between two polls of a task is longer, so no completion
    goes unnoticed for longer (plus one request's time), except where ``tail`` stretches it.
    ``request_cost``: seconds of mean detection delay one request is worth (default
    ``max_delay / 15``); larger means fewer requests and later detection. ``min_interval``: no
    gap is shorter. ``min_samples``: completions of a kind needed before its schedule is
    trusted; until then ``fallback`` (or the kind's default policy) is used, capped at
    ``max_delay``. ``tail`` (default 0.01; 0 makes the bound hard) is the share of a kind's
    completions (by the fit) that may be seen later than ``max_delay``: a gap the schedule
    wants longer than ``max_delay`` (up to 5 x ``max_delay``) is allowed only in the kind's
    dead start and far tail, placed like quantile mode's late share — before a task's first
    poll and between any two later polls alike. It skips a long job's dead start.

    Quantile mode (``p95_delay=D``): the goal is "at least ``delay_quantile`` (0.95) of the
    completions are seen within ``D``" with the fewest requests. The best schedule for that
    (see ``benchmarks/_oracle.py``) polls exactly every ``D`` where tasks finish, and spends
    the 5 % of completions allowed to be late where requests buy least: it skips the kind's
    dead start (the first poll waits until the share of tasks done by ``first - D`` is what
    the budget allows) and past a cut deep in the tail polls every ``max_delay`` (at least
    ``D``). How the 5 % is split between head and tail is chosen per fit to minimise the
    expected requests (closed form for a log-normal). Jitter moves only the first poll,
    earlier; later gaps are exact, so tasks created together stay spread.

    Both modes condition on a task's ``DurationHint`` once its kind has ``min_samples``
    hinted completions in that unit of sizes that vary (see ``HintModel``).
    """

    max_delay: float = attrs.field(default=30.0, validator=positive("max_delay"))
    request_cost: float | None = None
    min_interval: float = attrs.field(default=0.5, validator=positive("min_interval"))
    min_samples: int = attrs.field(default=20, validator=int_at_least("min_samples", 1))
    fallback: PollPolicy | None = None
    tail: float = 0.01
    p95_delay: float | None = None
    delay_quantile: float = 0.95
    _estimator: DurationEstimator | None = attrs.field(default=None, eq=False, repr=False)
    _clock: Any = attrs.field(default=None, eq=False, repr=False)
    _plans: dict[tuple[int, int, int], tuple[float, float]] = attrs.field(
        factory=dict, eq=False, repr=False
    )
    _schedules: dict[tuple[int, int], tuple[float, ...]] = attrs.field(
        factory=dict, eq=False, repr=False
    )

    def __attrs_post_init__(self) -> None:
        PollPolicy.__attrs_post_init__(self)
        if self.min_interval > self.max_delay:
            raise ValueError("min_interval must be <= max_delay")
        if self.request_cost is not None:
            check_positive("request_cost", self.request_cost)
        if self.fallback is not None and not isinstance(self.fallback, PollPolicy):
            raise TypeError("fallback must be a PollPolicy")
        if isinstance(self.fallback, AdaptivePollPolicy):
            raise TypeError("fallback must be a plain PollPolicy")
        if not is_number(self.tail) or not (0.0 <= self.tail < 0.5):
            raise ValueError(f"tail must be a probability in [0, 0.5), got {self.tail!r}")
        if self.p95_delay is not None:
            check_positive("p95_delay", self.p95_delay)
            if self.p95_delay < self.min_interval:
                raise ValueError("p95_delay must be >= min_interval")
        q = self.delay_quantile
        if not is_number(q) or not 0.5 <= q < 1.0:
            raise ValueError(f"delay_quantile must be in [0.5, 1), got {q!r}")

    @property
    def kappa(self) -> float:
        """Target of ``gap * P(done within gap | pending)``: twice the cost of a request."""
        cost = self.request_cost if self.request_cost is not None else self.max_delay / 15.0
        return 2.0 * cost

    @property
    def _cap(self) -> float:
        """The longest gap any rule hands out (``tail`` may stretch past ``max_delay``)."""
        return _MAX_STRETCH * self.max_delay if self.tail else self.max_delay

    def _bind(self, client: AsyncCambClient, kind: TaskKind) -> PollPolicy:
        fallback = self.fallback
        if fallback is None:
            fallback = attrs.evolve(DEFAULT_POLICIES[kind], jitter=self.jitter)
        bound = self.max_delay if self.p95_delay is None else min(self.max_delay, self.p95_delay)
        if fallback.max_interval > bound:
            fallback = attrs.evolve(
                fallback, max_interval=bound, initial=min(fallback.initial, bound)
            )
        return attrs.evolve(
            self,
            fallback=fallback,
            estimator=client.completion_stats.for_kind(kind),
            clock=anyio.current_time,
            # Shared with every binding of this policy: a schedule depends
            # only on the fit and the policy's own settings, not on the kind.
            plans=self._plans,
            schedules=self._schedules,
        )

    def current_fit(self, hint: DurationHint | None = None) -> DurationFit | None:
        """The fit this policy schedules by now (for a task of size ``hint``); None while it
        falls back."""
        est = self._estimator
        if est is None or est.completions < self.min_samples:
            return None
        return est.fit_for(self._clock(), hint, self.min_samples)

    def _fallback_bound(self) -> float:
        return self.max_delay if self.p95_delay is None else min(self.max_delay, self.p95_delay)

    def next_interval(
        self, polls: int, age: float = 0.0, hint: DurationHint | None = None
    ) -> float:
        """Seconds until the next poll, from the learned duration distribution.

        Args:
            polls: polls made so far.
            age: the task's age in seconds.
            hint: the task's input size, if known.
        """
        fit = self.current_fit(hint)
        if fit is None:
            fallback = self.fallback
            if fallback is None:
                return PollPolicy.next_interval(self, polls, age)
            return min(fallback.next_interval(polls, age), self._fallback_bound())
        if self.p95_delay is not None:
            return self._quantile_gap(fit, age)
        gap = self.mean_gap(fit, age)
        # A gap ``tail`` stretched past max_delay is kept after the first poll too; any
        # other gap stays within max_delay, jitter included.
        limit = self.max_delay if gap <= self.max_delay else self._cap
        if self.jitter:
            gap *= 1.0 + self.jitter * (2.0 * _rng.random() - 1.0)
        return min(max(gap, self.min_interval), limit)

    def first_interval(self, age: float, hint: DurationHint | None = None) -> float:
        """Seconds until the first poll of a task already ``age`` seconds old.

        Args:
            age: the task's age in seconds.
            hint: the task's input size, if known.
        """
        fit = self.current_fit(hint)
        if fit is None:
            fallback = self.fallback or self
            return max(0.0, min(fallback.initial, self._fallback_bound()) - age)
        if self.p95_delay is not None:
            first, _ = self.plan(fit)
            wait = first - age
            if self.jitter:  # earlier only: a later first poll would make more tasks late
                wait -= self.jitter * self.p95_delay * _rng.random()
            return max(wait, 0.0)
        gap = self.mean_gap(fit, age)
        if self.jitter:  # tasks created together must not all come due together
            gap *= 1.0 + self.jitter * (2.0 * _rng.random() - 1.0)
        return gap

    def _previous_gap(self, polls: int, age: float, hint: DurationHint | None = None) -> float:
        fit = self.current_fit(hint)
        if fit is None:
            if self.fallback is None:
                return PollPolicy._previous_gap(self, polls, age)
            return min(self.fallback._previous_gap(polls, age), self._fallback_bound())
        if self.p95_delay is not None:
            _, cut = self.plan(fit)
            d = self.p95_delay
            gap = d if age - d < cut + 1e-9 else max(self.max_delay, d)
            return min(gap, age)
        ages = self.schedule(fit)
        i = _anchor(ages, age)  # the scheduled poll this one stands for
        gap = ages[i - 1] - (ages[i - 2] if i >= 2 else 0.0) if i >= 1 else age
        return min(gap, self.max_delay if gap <= self.max_delay else self._cap, age)

    # ------------------------------------------------------------ quantile mode

    def _quantile_gap(self, fit: DurationFit, age: float) -> float:
        first, cut = self.plan(fit)
        d = self.p95_delay
        assert d is not None
        if first - age > d:  # polled well before the plan's first poll (id from elsewhere)
            return first - age
        # (A first poll that jitter moved a little earlier stands for the planned one.)
        if age < cut:
            return d
        return max(self.max_delay, d)

    def plan(self, fit: DurationFit) -> tuple[float, float]:
        """``(first, cut)``: the first poll's age and the age past which gaps are
        ``max(max_delay, p95_delay)`` instead of ``p95_delay``, for a log-normal ``fit``.
        Cached per fit (to 1 % in the median), so hinted tasks of similar sizes share it."""
        d = self.p95_delay
        assert d is not None
        return self._cached_plan(fit, d, max(self.max_delay, d), 1.0 - self.delay_quantile)

    def _cached_plan(
        self, fit: DurationFit, d: float, g: float, share: float
    ) -> tuple[float, float]:
        key = (round(fit.mu * 100.0), round(fit.sigma * 500.0), 0 if d == self.p95_delay else 1)
        plans = self._plans
        got = plans.get(key)
        if got is None:
            if len(plans) >= 4096:
                plans.clear()
            got = plans[key] = quantile_plan(key[0] / 100.0, max(key[1] / 500.0, 0.01), d, g, share)
        return got

    # ------------------------------------------------------------ mean mode

    def schedule(self, fit: DurationFit) -> tuple[float, ...]:
        """The poll ages minimising ``E[requests] + E[delay] / request_cost`` for a
        log-normal ``fit`` (``mean_schedule``), cached per fit (to 1 % in the median)."""
        key = (round(fit.mu * 100.0), round(fit.sigma * 500.0))
        cache = self._schedules
        got = cache.get(key)
        if got is None:
            if len(cache) >= 1024:
                cache.clear()
            got = cache[key] = mean_schedule(
                key[0] / 100.0, max(key[1] / 500.0, 0.01), 2.0 / self.kappa
            )
        return got

    def mean_gap(self, fit: DurationFit, age: float) -> float:
        """The gap from ``age`` to the schedule's next poll, within ``[min_interval,
        max_delay]`` or, where completion is unlikely enough (``tail``), up to the stretch
        limit. The poll at ``age`` stands for the scheduled one nearest to it, so jitter and
        queueing never make a tiny gap."""
        ages = self.schedule(fit)
        i = _anchor(ages, age)
        gap = ages[i] - age if i < len(ages) else self.max_delay
        gap = max(gap, self.min_interval)
        if gap > self.max_delay:
            if not self.tail:
                return self.max_delay
            # ``tail`` is a budget for the whole task, not a per-gap allowance (1 % a gap
            # adds up over a long job's dozens of gaps): it is spent like quantile mode's
            # 5 %, on the dead start (up to the plan's first poll) and the far tail (past its
            # cut), where polls buy least. Elsewhere max_delay binds.
            cap = _MAX_STRETCH * self.max_delay
            first, cut = self._cached_plan(fit, self.max_delay, cap, self.tail)
            if age >= cut:
                return min(gap, cap)
            return min(gap, max(first - age, self.max_delay), cap)
        return gap

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


_policy._adaptive_type = AdaptivePollPolicy
