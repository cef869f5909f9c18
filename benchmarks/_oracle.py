"""The exact polling oracle: the fewest expected requests any poll schedule can spend on a task
whose duration distribution is known, for a given detection-delay target.

Definitions (one task kind, duration ``T`` with survival ``S`` and density ``f``):

* A schedule is a sequence of poll ages ``0 <= t_1 < t_2 < ...`` fixed in advance. Nothing but
  "still pending" is ever learned from a poll, so an adaptive rule is also such a sequence.
  A poll at ``t_i`` happens iff ``T > t_{i-1}`` (``t_0 = 0``): ``E[requests] = sum_i
  S(t_{i-1})``. The task is seen done at the first ``t_i >= T``; delay ``= t_i - T``.
* Mean metric: ``E[delay] = sum_i integral_{t_{i-1}}^{t_i} (t_i - u) f(u) du``.
* Quantile metric (``p95 <= D``): ``P(delay > D) = sum_i max(F(t_i - D) - F(t_{i-1}), 0)``
  must be ``<= 0.05``.

The oracle minimises ``E[requests]`` subject to the delay constraint. It is solved through its
Lagrangian ``E[requests] + lam * (delay cost)`` by dynamic programming over the next poll time
on a uniform grid of ages (``V(t) = S(t) + min_{t' > t} [lam * cost(t, t') + V(t')]``, exact
on the grid): for the mean a convex-hull trick makes each solve O(grid), for the quantile a
sliding-window minimum (gaps up to ``D``: no late mass) and a suffix minimum (longer gaps).
``lam`` is found by bisection; the two solutions bracketing the target are mixed (a share of
tasks on each schedule, which any client can do), so the constraint holds with equality.
Several kinds pooled at equal *mean* share one ``lam`` (requests go where they buy most delay);
at equal p95 *per kind* each kind has its own constraint and ``lam``.

Grid: ages up to the ``1 - 3e-7`` quantile (``z = 5``); step ``D / m`` for the quantile metric
(an integer ``m >= 8`` so a gap of exactly ``D`` is on the grid; at most ~40,000 points) and
``t_max / 20,000`` for the mean. A poll at or past the grid's end is the last one (its cost
``S(t_max) < 3e-7``). Restricting poll ages to the grid can only cost the oracle requests, so
the figure is an upper bound on the continuous optimum, within a fraction of a percent of it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import attrs

_SQRT2 = math.sqrt(2.0)
Z_MAX = 5.0


@attrs.frozen
class LogNormal:
    mu: float
    sigma: float

    @classmethod
    def of(cls, median: float, sigma: float) -> LogNormal:
        return cls(math.log(median), sigma)

    def cdf(self, t: float) -> float:
        if t <= 0.0:
            return 0.0
        return 0.5 * math.erfc(-(math.log(t) - self.mu) / (self.sigma * _SQRT2))

    def partial_mean(self, t: float) -> float:
        """E[T; T <= t] = integral_0^t u f(u) du."""
        if t <= 0.0:
            return 0.0
        z = (math.log(t) - self.mu - self.sigma**2) / self.sigma
        return math.exp(self.mu + 0.5 * self.sigma**2) * 0.5 * math.erfc(-z / _SQRT2)

    def quantile_z(self, z: float) -> float:
        return math.exp(self.mu + self.sigma * z)


@attrs.frozen
class Solution:
    requests: float  # expected requests per task
    constraint: float  # E[delay] (mean) or P(delay > D) (quantile)
    mean_delay: float
    ages: tuple[float, ...]  # the schedule (poll ages)


def evaluate(
    dist: LogNormal, ages: Sequence[float], d: float | None = None
) -> tuple[float, float, float]:
    """Exact (expected requests, mean delay, P(delay > d)) of a poll schedule."""
    req = mean = late = 0.0
    prev_t, prev_f, prev_g = 0.0, 0.0, 0.0
    for t in ages:
        if t < prev_t:
            raise ValueError("ages must not decrease")
        f, g = dist.cdf(t), dist.partial_mean(t)
        req += 1.0 - prev_f
        mean += t * (f - prev_f) - (g - prev_g)
        if d is not None:
            late += max(dist.cdf(t - d) - prev_f, 0.0)
        prev_t, prev_f, prev_g = t, f, g
    return req, mean, late


class _Grid:
    def __init__(self, dist: LogNormal, step: float) -> None:
        t_max = dist.quantile_z(Z_MAX)
        k = max(2, math.ceil(t_max / step))
        self.step = step
        self.t = [i * step for i in range(k + 1)]
        self.f = [dist.cdf(x) for x in self.t]
        self.s = [1.0 - x for x in self.f]
        self.g = [dist.partial_mean(x) for x in self.t]


def _solve_mean(grid: _Grid, lam: float) -> list[int]:
    """argmin over schedules of E[requests] + lam * E[delay]; returns the grid indices."""
    t, f, s, g = grid.t, grid.f, grid.s, grid.g
    k_end = len(t) - 1
    nxt = [0] * (k_end + 1)
    # V(k) = s_k + lam*g_k + min_{j>k} [b_j - lam*f_k*t_j],  b_j = lam*(t_j f_j - g_j) + V(j)
    v_end = s[k_end]
    hull_t = [t[k_end]]
    hull_b = [lam * (t[k_end] * f[k_end] - g[k_end]) + v_end]
    hull_j = [k_end]
    ptr = 0
    for k in range(k_end - 1, -1, -1):
        slope = lam * f[k]
        n = len(hull_t)
        if ptr >= n:
            ptr = n - 1
        while ptr + 1 < n and (
            hull_b[ptr + 1] - slope * hull_t[ptr + 1] <= hull_b[ptr] - slope * hull_t[ptr]
        ):
            ptr += 1
        best = hull_b[ptr] - slope * hull_t[ptr]
        nxt[k] = hull_j[ptr]
        v = s[k] + lam * g[k] + best
        # add point k (leftmost) to the lower hull
        pt, pb = t[k], lam * (t[k] * f[k] - g[k]) + v
        while len(hull_t) >= 2:
            at, ab = hull_t[-1], hull_b[-1]
            bt, bb = hull_t[-2], hull_b[-2]
            if (ab - pb) * (bt - pt) >= (bb - pb) * (at - pt):
                hull_t.pop()
                hull_b.pop()
                hull_j.pop()
            else:
                break
        hull_t.append(pt)
        hull_b.append(pb)
        hull_j.append(k)
    return _path(nxt, k_end, start_polls=True)


def _solve_quantile(grid: _Grid, lam: float, m: int) -> list[int]:
    """argmin of E[requests] + lam * P(delay > m * step) over schedules on the grid."""
    f, s = grid.f, grid.s
    k_end = len(f) - 1
    v = [0.0] * (k_end + 1)
    nxt = [k_end] * (k_end + 1)
    v[k_end] = s[k_end]
    window: deque[int] = deque([k_end])  # indices j in (k, k+m], increasing V
    suffix_best, suffix_j = math.inf, k_end  # min over j > k+m of lam*F(j-m) + V(j)
    for k in range(k_end - 1, -1, -1):
        add = k + m + 1  # enters the suffix set (gap longer than D)
        if add <= k_end:
            w = lam * f[add - m] + v[add]
            if w < suffix_best:
                suffix_best, suffix_j = w, add
        while window and window[0] > k + m:
            window.popleft()
        j = window[0]
        best, arg = v[j], j
        late = suffix_best - lam * f[k]
        if late < best:
            best, arg = late, suffix_j
        v[k] = s[k] + best
        nxt[k] = arg
        while window and v[window[-1]] >= v[k]:
            window.pop()
        window.append(k)
    return _path(nxt, k_end, start_polls=True)


def _path(nxt: list[int], k_end: int, *, start_polls: bool) -> list[int]:
    out, k = [], 0
    while k < k_end:
        k = nxt[k]
        out.append(k)
    return out


def _mix(lo: Solution, hi: Solution, target: float) -> Solution:
    """Share of tasks on each schedule so the constraint is met with equality."""
    if hi.constraint == lo.constraint:
        return hi
    w = (lo.constraint - target) / (lo.constraint - hi.constraint)
    w = min(max(w, 0.0), 1.0)
    return Solution(
        (1 - w) * lo.requests + w * hi.requests,
        target,
        (1 - w) * lo.mean_delay + w * hi.mean_delay,
        hi.ages,
    )


def oracle_quantile(
    dist: LogNormal, d: float, share: float = 0.05, max_points: int = 40_000
) -> Solution:
    """Fewest expected requests with ``P(delay > d) <= share``."""
    t_max = dist.quantile_z(Z_MAX)
    m = max(8, math.ceil(8 * t_max / (max_points * d)))
    m = max(m, 8)
    while t_max / (d / m) > max_points and m > 8:
        m -= 1
    grid = _Grid(dist, d / m)

    def solve(lam: float) -> Solution:
        ages = [grid.t[i] for i in _solve_quantile(grid, lam, m)]
        req, mean, late = evaluate(dist, ages, d)
        return Solution(req, late, mean, tuple(ages))

    return _bisect(solve, share)


def _bisect(solve: object, target: float, iters: int = 28) -> Solution:
    fn = solve  # type: ignore[assignment]
    lo_lam, hi_lam = 1e-3, 1e5
    lo, hi = fn(lo_lam), fn(hi_lam)  # type: ignore[operator]
    if hi.constraint > target:
        return hi  # type: ignore[no-any-return]
    if lo.constraint <= target:
        return lo  # type: ignore[no-any-return]
    for _ in range(iters):
        mid_lam = math.sqrt(lo_lam * hi_lam)
        mid = fn(mid_lam)  # type: ignore[operator]
        if mid.constraint > target:
            lo_lam, lo = mid_lam, mid
        else:
            hi_lam, hi = mid_lam, mid
    return _mix(lo, hi, target)


def mean_grids(dists: Sequence[LogNormal], points: int = 20_000) -> list[_Grid]:
    return [_Grid(dist, dist.quantile_z(Z_MAX) / points) for dist in dists]


def oracle_mean(
    dists: Sequence[LogNormal],
    weights: Sequence[float],
    target: float,
    grids: Sequence[_Grid] | None = None,
) -> tuple[Solution, list[Solution]]:
    """Fewest pooled expected requests with pooled mean delay ``target`` (one ``lam``).

    ``weights``: each kind's share of the tasks. Returns the pooled solution and, per kind,
    the schedules at the bracketing ``lam`` on the feasible side."""
    grids = list(grids) if grids is not None else mean_grids(dists)
    total = sum(weights)
    per_kind: list[Solution] = []

    def solve(lam: float) -> Solution:
        per_kind.clear()
        req = mean = 0.0
        for dist, grid, w in zip(dists, grids, weights, strict=True):
            ages = [grid.t[i] for i in _solve_mean(grid, lam)]
            r, md, _ = evaluate(dist, ages)
            per_kind.append(Solution(r, md, md, tuple(ages)))
            req += w * r / total
            mean += w * md / total
        return Solution(req, mean, mean, ())

    pooled = _bisect(solve, target)
    return pooled, list(per_kind)


def oracle_quantile_mixture(
    dists: Sequence[LogNormal], d: float, share: float = 0.05, max_points: int = 20_000
) -> Solution:
    """Fewest expected requests over a mix of equally likely task types (here: tasks whose
    durations a size hint narrows to ``dists[i]``) with ``P(delay > d) <= share`` over the
    mix: one ``lam`` for all, each type on its own schedule."""
    grids, ms = [], []
    for dist in dists:
        t_max = dist.quantile_z(Z_MAX)
        m = 8
        while t_max / (d / m) > max_points and m > 2:
            m -= 1
        grids.append(_Grid(dist, d / m))
        ms.append(m)

    def solve(lam: float) -> Solution:
        req = late = mean = 0.0
        for dist, grid, m in zip(dists, grids, ms, strict=True):
            ages = [grid.t[i] for i in _solve_quantile(grid, lam, m)]
            r, md, lt = evaluate(dist, ages, d)
            req += r
            late += lt
            mean += md
        n = len(dists)
        return Solution(req / n, late / n, mean / n, ())

    return _bisect(solve, share)
