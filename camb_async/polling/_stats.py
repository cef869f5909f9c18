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

import bisect
import math
from collections.abc import Mapping
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

import attrs

from ._models import HINT_UNITS, DurationHint, TaskKind
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
#: Width of one size bin (log units) for hinted observations: sizes kept to within ~5 %.
XGRID = 0.05
_MAX_HINT_PENDING_KEYS = 1024
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
        """Log of the probability that a task is still running at age ``t``.

        Args:
            t: the age in seconds.
        """
        if t <= 0.0:
            return 0.0
        return _log_q((math.log(t) - self.mu) / self.sigma)


class DurationEstimator:
    """Censored log-normal estimate of one kind's task durations. O(1) per observation."""

    __slots__ = ("_obs", "_weight", "_completions", "_unit", "_pending", "_pending_res",
                 "_fit", "_fit_weight", "_fit_at", "_hinted")

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
        self._hinted: dict[str, HintModel] = {}  # unit -> duration vs size, learned online

    def __repr__(self) -> str:
        return f"<DurationEstimator completions={self._completions:.0f} fit={self._fit!r}>"

    def hint_model(self, unit: str) -> HintModel:
        """The learned relation between duration and hinted size in ``unit``."""
        model = self._hinted.get(unit)
        if model is None:
            model = self._hinted[unit] = HintModel()
        return model

    def fit_for(self, now: float, hint: DurationHint | None, min_samples: float = 1.0
                ) -> DurationFit | None:
        """The fit for a task with ``hint``: conditional on its size once the kind's relation
        to that unit is learned (``min_samples`` hinted completions, sizes that vary), else
        the plain fit."""
        if hint is not None:
            model = self._hinted.get(hint.unit)
            if model is not None and model.completions >= min_samples:
                fit = model.fit_at(now, hint.size)
                if fit is not None:
                    return fit
        return self.fit(now)

    @property
    def completions(self) -> float:
        """Weighted count of observed completions (decayed once history is long)."""
        return self._completions

    @property
    def pending(self) -> int:
        """Tasks being watched right now (right-censored at their age in every fit)."""
        return sum(self._pending.values())

    # ------------------------------------------------------------ observations

    def observe(self, lo: float, hi: float | None, hint: DurationHint | None = None) -> None:
        """A task ran longer than ``lo`` seconds and at most ``hi`` (``None``: no bound).

        ``lo <= 0`` means nothing is known below (the first poll already saw it done).
        With a ``hint`` the observation also teaches the kind's duration-vs-size relation.
        """
        bins = _bins(lo, hi)
        if bins is None:
            return
        i_lo, i_hi = bins
        if i_hi != _POS:
            self._completions += self._unit
        if hint is not None:
            self.hint_model(hint.unit).observe(_xbin(hint), i_lo, i_hi)
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

    def track(self, start: float, hint: DurationHint | None = None) -> None:
        """A task that started at ``start`` (event-loop clock) is pending and being watched."""
        if hint is not None:
            self.hint_model(hint.unit).track(start, _xbin(hint))
        key = math.floor(start / self._pending_res)
        pending = self._pending
        pending[key] = pending.get(key, 0) + 1
        if len(pending) > _MAX_PENDING_KEYS:
            self._pending_res *= 2.0
            merged: dict[int, int] = {}
            for k, n in pending.items():
                merged[k // 2] = merged.get(k // 2, 0) + n
            self._pending = merged

    def untrack(self, start: float, hint: DurationHint | None = None) -> None:
        """Undo one ``track`` (the task finished or was forgotten).

        Args:
            start: the task's start time.
            hint: its input size, if known.
        """
        if hint is not None:
            model = self._hinted.get(hint.unit)
            if model is not None:
                model.untrack(start, _xbin(hint))
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
        """The observations as JSON-ready data (``load`` reads it back)."""
        rows = [[None if a == _NEG else a, None if b == _POS else b, round(w, 6)]
                for (a, b), w in sorted(self._obs.items())]
        out: dict[str, Any] = {"bins": rows, "completions": round(self._completions, 6)}
        if self._fit is not None:
            out["fit"] = {"mu": self._fit.mu, "sigma": self._fit.sigma}
        hinted = {unit: m.to_rows() for unit, m in self._hinted.items() if m._obs}
        if hinted:
            out["hinted"] = hinted
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
        hinted = data.get("hinted", {})
        if not isinstance(hinted, Mapping):
            raise ValueError("hinted must be a mapping {unit: bins}")
        for unit, hrows in hinted.items():
            if unit not in HINT_UNITS:
                raise ValueError(f"unknown hint unit {unit!r}")
            self.hint_model(unit).load_rows(hrows)
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


def _bins(lo: float, hi: float | None) -> tuple[int, int] | None:
    """Histogram bounds of "ran longer than ``lo``, at most ``hi``"; None: no information."""
    if hi is not None and not (hi > 0.0 and math.isfinite(hi)):
        return None
    i_lo = math.floor(math.log(lo) / GRID) if lo > 0.0 else _NEG
    if hi is None:
        if i_lo == _NEG:
            return None  # "longer than nothing": no information
        return i_lo, _POS
    return i_lo, max(math.ceil(math.log(hi) / GRID), i_lo + 1)


def _xbin(hint: DurationHint) -> int:
    return math.floor(math.log(hint.size) / XGRID)


class HintModel:
    """How one kind's durations grow with one unit of input size: the censored log-linear
    model ``ln T = a + b * ln(size) + N(0, s**2)``, fitted like the plain estimator (EM with
    truncated-normal moments) on a sparse histogram over (size bin, duration interval), so it
    is O(1) per observation and bounded in memory. Pending hinted tasks are right-censored
    at their age, per size bin."""

    __slots__ = ("_obs", "_weight", "_completions", "_pending", "_pending_res", "_fit",
                 "_fit_weight", "_fit_at", "_fit_span")

    def __init__(self) -> None:
        self._obs: dict[tuple[int, int, int], float] = {}  # (size bin, lo bin, hi bin)
        self._weight = 0.0
        self._completions = 0.0
        self._pending: dict[tuple[int, int], int] = {}  # (start bucket, size bin) -> tasks
        self._pending_res = 1.0
        self._fit: tuple[float, float, float] | None = None  # a, b, s
        self._fit_weight = 0.0
        self._fit_at = -math.inf
        self._fit_span = math.inf  # refit pending tasks' censoring after this long

    def __repr__(self) -> str:
        return f"<HintModel completions={self._completions:.0f} fit={self._fit!r}>"

    @property
    def completions(self) -> float:
        return self._completions

    def observe(self, xbin: int, i_lo: int, i_hi: int) -> None:
        """Count one completion of size bin ``xbin`` seen between bins ``i_lo`` and ``i_hi``.

        Args:
            xbin: the size bin.
            i_lo: the duration bin it was last seen pending in.
            i_hi: the duration bin it was seen done in.
        """
        key = (xbin, i_lo, i_hi)
        self._obs[key] = self._obs.get(key, 0.0) + 1.0
        self._weight += 1.0
        if i_hi != _POS:
            self._completions += 1.0
        if self._weight > MAX_WEIGHT:
            self._obs = {k: w * 0.5 for k, w in self._obs.items() if w > 1e-3}
            self._weight *= 0.5
            self._completions *= 0.5
            self._fit_weight *= 0.5

    def track(self, start: float, xbin: int) -> None:
        """Count one task of size bin ``xbin`` started at ``start`` as running.

        Args:
            start: its start time.
            xbin: its size bin.
        """
        key = (math.floor(start / self._pending_res), xbin)
        pending = self._pending
        pending[key] = pending.get(key, 0) + 1
        if len(pending) > _MAX_HINT_PENDING_KEYS:
            self._pending_res *= 2.0
            merged: dict[tuple[int, int], int] = {}
            for (k, x), n in pending.items():
                merged[k // 2, x] = merged.get((k // 2, x), 0) + n
            self._pending = merged

    def untrack(self, start: float, xbin: int) -> None:
        """Undo one ``track`` (the task finished or was forgotten).

        Args:
            start: its start time.
            xbin: its size bin.
        """
        key = (math.floor(start / self._pending_res), xbin)
        n = self._pending.get(key, 0)
        if n <= 1:
            self._pending.pop(key, None)
        else:
            self._pending[key] = n - 1

    def coefficients(self, now: float) -> tuple[float, float, float] | None:
        """``(a, b, s)``, refitted when the data moved enough; None until completions of
        more than one size are known."""
        if self._completions <= 0.0:
            return None
        fit = self._fit
        if self._fit_at != -math.inf:
            stale = self._weight - self._fit_weight >= max(1.0, self._weight / 16.0)
            # Pending tasks age: refit on that at most every 5 % of a typical duration.
            if not stale and fit is not None and self._pending:
                stale = now - self._fit_at >= self._fit_span
            if not stale:
                return fit
        self._fit = fit = self._refit(now, fit)
        self._fit_weight = self._weight
        self._fit_at = now
        return fit

    def fit_at(self, now: float, size: float) -> DurationFit | None:
        """The duration distribution expected for a task of ``size``, or ``None`` while unknown.

        Args:
            now: the current time (running tasks count as censored).
            size: the task's input size.
        """
        coef = self.coefficients(now)
        if coef is None:
            return None
        a, b, sd = coef
        return DurationFit(a + b * math.log(size), sd, self._completions)

    def _refit(self, now: float, previous: tuple[float, float, float] | None
               ) -> tuple[float, float, float] | None:
        rows: dict[tuple[int, int, int], float] = dict(self._obs)
        res = self._pending_res
        for (key, xb), n in self._pending.items():
            age = now - (key + 0.5) * res
            if age > 0.0:
                k = (xb, math.floor(math.log(age) / GRID), _POS)
                rows[k] = rows.get(k, 0.0) + n
        data = [((x + 0.5) * XGRID, (-math.inf if a == _NEG else a * GRID),
                 (math.inf if b == _POS else b * GRID), w) for (x, a, b), w in rows.items()]
        total = sum(w for _, _, _, w in data)
        sw = sx = sxx = 0.0
        for x, _, _, w in data:
            sw += w
            sx += w * x
            sxx += w * x * x
        var_x = sxx / sw - (sx / sw) ** 2
        if var_x < XGRID * XGRID:
            return None  # one size only: nothing to learn about the slope
        if previous is not None:
            a0, b0, sd = previous
        else:  # least squares on the completions' bin centres
            cw = cx = cy = cxx = cxy = cyy = 0.0
            for x, lo, hi, w in data:
                if hi == math.inf:
                    continue
                y = hi - 0.5 * GRID if lo == -math.inf else 0.5 * (lo + hi)
                cw += w
                cx += w * x
                cy += w * y
                cxx += w * x * x
                cxy += w * x * y
                cyy += w * y * y
            den = cw * cxx - cx * cx
            b0 = (cw * cxy - cx * cy) / den if den > 1e-12 else 0.0
            a0 = (cy - b0 * cx) / cw
            resid = cyy / cw - 2 * a0 * cy / cw - 2 * b0 * cxy / cw + a0 * a0 \
                + 2 * a0 * b0 * cx / cw + b0 * b0 * cxx / cw
            sd = max(math.sqrt(max(resid, 0.0)), 0.2)
        den = sw * sxx - sx * sx
        moments = [(0.0, 0.0)] * len(data)
        for _ in range(60):
            sy = sxy = 0.0
            for i, (x, lo, hi, w) in enumerate(data):
                ey, ey2 = _truncated_moments(lo, hi, a0 + b0 * x, sd)
                moments[i] = (ey, ey2)
                sy += w * ey
                sxy += w * x * ey
            b1 = (sw * sxy - sx * sy) / den
            a1 = (sy - b1 * sx) / sw
            ss = 0.0
            for (x, _, _, w), (ey, ey2) in zip(data, moments, strict=True):
                m = a1 + b1 * x
                ss += w * (ey2 - 2.0 * m * ey + m * m)
            sd1 = max(math.sqrt(max(ss / total, 0.0)), 0.02)
            done = abs(a1 - a0) + abs(b1 - b0) * 3.0 < 1e-4 and abs(sd1 - sd) < 1e-4
            a0, b0, sd = a1, b1, sd1
            if done:
                break
        self._fit_span = 0.05 * math.exp(a0 + b0 * sx / sw)
        return a0, b0, sd

    def to_rows(self) -> list[list[Any]]:
        """The observations as JSON-ready rows ``[size, lo, hi, weight]``."""
        return [[x, None if a == _NEG else a, None if b == _POS else b, round(w, 6)]
                for (x, a, b), w in sorted(self._obs.items())]

    def load_rows(self, rows: Any) -> None:
        """Add rows written by ``to_rows``.

        Args:
            rows: a list of ``[size, lo, hi, weight]``.
        """
        if not isinstance(rows, list):
            raise ValueError("hinted bins must be a list of [size, lo, hi, weight]")
        for row in rows:
            if not (isinstance(row, (list, tuple)) and len(row) == 4):
                raise ValueError(f"bad hinted bin row {row!r}")
            x, a, b, w = row
            if isinstance(x, bool) or not isinstance(x, int):
                raise ValueError(f"size bin must be an integer, got {row!r}")
            i_lo, i_hi = _check_bin_row(a, b, w, row)
            key = (x, i_lo, i_hi)
            self._obs[key] = self._obs.get(key, 0.0) + float(w)
            self._weight += float(w)
            if i_hi != _POS:
                self._completions += float(w)
        while self._weight > MAX_WEIGHT:
            self._obs = {k: v * 0.5 for k, v in self._obs.items() if v > 1e-3}
            self._weight *= 0.5
            self._completions *= 0.5
        self._fit = None
        self._fit_at = -math.inf


def _check_bin_row(a: Any, b: Any, w: Any, row: Any) -> tuple[int, int]:
    if (a is not None and (isinstance(a, bool) or not isinstance(a, int))) or (
            b is not None and (isinstance(b, bool) or not isinstance(b, int))):
        raise ValueError(f"bin bounds must be integers or null, got {row!r}")
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not (
            math.isfinite(w) and w > 0):
        raise ValueError(f"bin weight must be a positive number, got {row!r}")
    i_lo = _NEG if a is None else a
    i_hi = _POS if b is None else b
    if i_hi <= i_lo or (i_lo == _NEG and i_hi == _POS):
        raise ValueError(f"empty or unbounded bin {row!r}")
    return i_lo, i_hi


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
        """The duration estimator of ``kind`` (made on first use).

        Args:
            kind: the task kind.
        """
        est = self._kinds.get(kind)
        if est is None:
            est = self._kinds[kind] = DurationEstimator()
        return est

    def fit(self, kind: TaskKind | str, now: float, hint: DurationHint | None = None
            ) -> DurationFit | None:
        """The current duration fit of ``kind`` at event-loop time ``now`` (for a task of
        size ``hint`` once the kind's relation to that unit is learned)."""
        return self.for_kind(TaskKind(kind)).fit_for(now, hint)

    # Reports from the poller and handles. ``start`` is the creation time if ``known_start``,
    # else the first-seen time; ``lo``/``hi`` are ages relative to it.

    def started(self, kind: TaskKind, start: float, hint: DurationHint | None = None) -> None:
        """Record that a task of ``kind`` is running.

        Args:
            kind: the task kind.
            start: its start time.
            hint: its input size, if known.
        """
        self.for_kind(kind).track(start, hint)

    def completed(self, kind: TaskKind, start: float, lo: float, hi: float, *,
                  known_start: bool, tracked: bool, hint: DurationHint | None = None) -> None:
        """Record a completion seen between ages ``lo`` and ``hi``.

        Args:
            kind: the task kind.
            start: its start time.
            lo: the age at which it was last seen pending.
            hi: the age at which it was seen done.
            known_start: whether ``start`` is its creation time.
            tracked: whether ``started`` was called for it.
            hint: its input size, if known.
        """
        est = self.for_kind(kind)
        if tracked:
            est.untrack(start, hint)
        if known_start:
            est.observe(lo, hi, hint)
        elif lo > 0.0:
            # Started at some unknown time before we first saw it: it ran longer than we
            # watched it pending, and that is all we know.
            est.observe(lo, None, hint)

    def abandoned(self, kind: TaskKind, start: float, age: float,
                  hint: DurationHint | None = None) -> None:
        """Watching stopped while the task was pending (deadline, cancel): it ran > ``age``."""
        est = self.for_kind(kind)
        est.untrack(start, hint)
        est.observe(age, None, hint)

    def forget(self, kind: TaskKind, start: float, hint: DurationHint | None = None) -> None:
        """Watching stopped on an error: no duration information."""
        self.for_kind(kind).untrack(start, hint)

    # ------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        """Learned statistics as JSON-able data (pending tasks are not included)."""
        return {"version": 1, "grid": GRID,
                "kinds": {k.value: e.to_dict() for k, e in self._kinds.items()
                          if e.completions > 0 or e._obs or e._hinted}}

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
        """Statistics saved by ``to_dict`` (e.g. across a restart).

        Args:
            data: what ``to_dict`` returned.
        """
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

    max_delay: float = attrs.field(default=30.0, validator=_positive("max_delay"))
    request_cost: float | None = None
    min_interval: float = attrs.field(default=0.5, validator=_positive("min_interval"))
    min_samples: int = attrs.field(default=20, validator=_check_int("min_samples"))
    fallback: PollPolicy | None = None
    tail: float = 0.01
    p95_delay: float | None = None
    delay_quantile: float = 0.95
    _estimator: DurationEstimator | None = attrs.field(default=None, eq=False, repr=False)
    _clock: Any = attrs.field(default=None, eq=False, repr=False)
    _plans: dict[tuple[int, int, int], tuple[float, float]] = attrs.field(
        factory=dict, eq=False, repr=False)
    _schedules: dict[tuple[int, int], tuple[float, ...]] = attrs.field(
        factory=dict, eq=False, repr=False)

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
        if self.p95_delay is not None:
            _positive("p95_delay")(None, None, self.p95_delay)
            if self.p95_delay < self.min_interval:
                raise ValueError("p95_delay must be >= min_interval")
        q = self.delay_quantile
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.5 <= q < 1.0:
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
        import anyio

        from ._polling import DEFAULT_POLICIES

        fallback = self.fallback
        if fallback is None:
            fallback = attrs.evolve(DEFAULT_POLICIES[kind], jitter=self.jitter)
        bound = self.max_delay if self.p95_delay is None else min(self.max_delay,
                                                                   self.p95_delay)
        if fallback.max_interval > bound:
            fallback = attrs.evolve(fallback, max_interval=bound,
                                    initial=min(fallback.initial, bound))
        return attrs.evolve(self, fallback=fallback,
                            estimator=client.completion_stats.for_kind(kind),
                            clock=anyio.current_time,
                            # Shared with every binding of this policy: a schedule depends
                            # only on the fit and the policy's own settings, not on the kind.
                            plans=self._plans, schedules=self._schedules)

    def current_fit(self, hint: DurationHint | None = None) -> DurationFit | None:
        """The fit this policy schedules by now (for a task of size ``hint``); None while it
        falls back."""
        est = self._estimator
        if est is None or est.completions < self.min_samples:
            return None
        return est.fit_for(self._clock(), hint, self.min_samples)

    def _fallback_bound(self) -> float:
        return self.max_delay if self.p95_delay is None else min(self.max_delay,
                                                                 self.p95_delay)

    def next_interval(self, polls: int, age: float = 0.0,
                      hint: DurationHint | None = None) -> float:
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

    def _previous_gap(self, polls: int, age: float, hint: DurationHint | None = None
                      ) -> float:
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

    def _cached_plan(self, fit: DurationFit, d: float, g: float, share: float
                     ) -> tuple[float, float]:
        key = (round(fit.mu * 100.0), round(fit.sigma * 500.0), 0 if d == self.p95_delay else 1)
        plans = self._plans
        got = plans.get(key)
        if got is None:
            if len(plans) >= 4096:
                plans.clear()
            got = plans[key] = quantile_plan(key[0] / 100.0, max(key[1] / 500.0, 0.01), d, g,
                                             share)
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
            got = cache[key] = mean_schedule(key[0] / 100.0, max(key[1] / 500.0, 0.01),
                                             2.0 / self.kappa)
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


def _anchor(ages: tuple[float, ...], age: float) -> int:
    """Index of the next scheduled poll after the one nearest to ``age`` (0: the start)."""
    i = bisect.bisect_left(ages, age)
    prev = ages[i - 1] if i > 0 else 0.0
    if i < len(ages) and ages[i] - age <= age - prev:
        i += 1  # closest to ages[i]: this poll stands for it
    return i


_MEAN_GRID = 2000  # log-spaced ages from z = -5 to z = 5: ~0.35 % apart at sigma 0.7


def mean_schedule(mu: float, sigma: float, lam: float) -> tuple[float, ...]:
    """Exact (on a log-spaced grid) minimiser of ``E[requests] + lam * E[delay]`` over poll
    schedules for ``ln T ~ N(mu, sigma**2)``: dynamic programming over the next poll age,
    ``V(t) = S(t) + min_{t' > t} [lam * integral_t^t' (t' - u) f(u) du + V(t')]``, in O(grid)
    with a convex-hull trick (the inner term is linear in ``F(t)``, and ``F`` only grows).
    The same solver as the benchmark's oracle (``benchmarks/_oracle.py``), which shows
    this schedule within a fraction of a percent of the continuous optimum."""
    n = _MEAN_GRID
    mean = math.exp(mu + 0.5 * sigma * sigma)
    t = [0.0] + [math.exp(mu + sigma * (-5.0 + 10.0 * i / (n - 1))) for i in range(n)]
    f = [0.0] + [1.0 - _q(-5.0 + 10.0 * i / (n - 1)) for i in range(n)]
    g = [0.0] + [mean * (1.0 - _q(-5.0 + 10.0 * i / (n - 1) - sigma)) for i in range(n)]
    k_end = n
    nxt = [0] * (k_end + 1)
    hull_t = [t[k_end]]
    hull_b = [lam * (t[k_end] * f[k_end] - g[k_end]) + (1.0 - f[k_end])]
    hull_j = [k_end]
    ptr = 0
    for k in range(k_end - 1, -1, -1):
        slope = lam * f[k]
        size = len(hull_t)
        if ptr >= size:
            ptr = size - 1
        while ptr + 1 < size and (hull_b[ptr + 1] - slope * hull_t[ptr + 1]
                                  <= hull_b[ptr] - slope * hull_t[ptr]):
            ptr += 1
        nxt[k] = hull_j[ptr]
        v = (1.0 - f[k]) + lam * g[k] + hull_b[ptr] - slope * hull_t[ptr]
        pt, pb = t[k], lam * (t[k] * f[k] - g[k]) + v
        while len(hull_t) >= 2 and ((hull_b[-1] - pb) * (hull_t[-2] - pt)
                                    >= (hull_b[-2] - pb) * (hull_t[-1] - pt)):
            hull_t.pop()
            hull_b.pop()
            hull_j.pop()
        hull_t.append(pt)
        hull_b.append(pb)
        hull_j.append(k)
    ages, k = [], 0
    while k < k_end:
        k = nxt[k]
        ages.append(t[k])
    return tuple(ages)


def quantile_plan(mu: float, sigma: float, d: float, g: float, share: float
                  ) -> tuple[float, float]:
    """The poll plan for "at most ``share`` of completions seen later than ``d``" with the
    fewest expected requests, for ``ln T ~ N(mu, sigma**2)``: ``(first, cut)``.

    Polls at ``first``, every ``d`` until ``cut``, then every ``g`` (``>= d``). Late are
    tasks done before ``first - d`` (share ``h``) and, of those done after ``cut``, the
    ``(g - d) / g`` whose gap outlasts ``d``. Expected requests ``1 + S(first) / 2 +
    integral_first^cut S / d + integral_cut^inf S / g`` (Euler-Maclaurin on the sum of
    survivals at the polls) is minimised over ``h`` in ``[0, share]`` by golden section:
    each step is a few ``erfc``, no grid.
    """
    mean = math.exp(mu + 0.5 * sigma * sigma)

    def surv(t: float) -> float:
        return 1.0 if t <= 0.0 else _q((math.log(t) - mu) / sigma)

    def pmean(t: float) -> float:  # E[T; T <= t]
        if t <= 0.0:
            return 0.0
        return mean * (1.0 - _q((math.log(t) - mu - sigma * sigma) / sigma))

    def tail_integral(t: float) -> float:  # integral_t^inf S = E[(T - t)+]
        if t == math.inf:
            return 0.0
        return (mean - pmean(t)) - t * surv(t)

    def quantile(p: float) -> float:
        if p <= 0.0:
            return 0.0
        if p >= 1.0:
            return math.inf
        return math.exp(mu + sigma * _NORMAL.inv_cdf(p))

    late_after_cut = (g - d) / g

    def times(head: float) -> tuple[float, float]:
        first = quantile(head) + d
        rest = share - head
        if late_after_cut <= 0.0 or rest <= 1e-12:
            return first, math.inf
        cut = quantile(1.0 - min(rest / late_after_cut, 1.0 - 1e-12))
        return first, max(cut, first)

    def cost(head: float) -> float:
        first, cut = times(head)
        bulk = tail_integral(first) - tail_integral(cut)
        return 1.0 + 0.5 * surv(first) + bulk / d + tail_integral(cut) / g

    lo, hi = 0.0, share
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    x1, x2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    c1, c2 = cost(x1), cost(x2)
    for _ in range(40):
        if c1 <= c2:
            hi, x2, c2 = x2, x1, c1
            x1 = hi - ratio * (hi - lo)
            c1 = cost(x1)
        else:
            lo, x1, c1 = x1, x2, c2
            x2 = lo + ratio * (hi - lo)
            c2 = cost(x2)
    best = min((cost(h), h) for h in (0.0, share, 0.5 * (lo + hi)))[1]
    return times(best)
