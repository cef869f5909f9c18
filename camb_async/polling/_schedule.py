"""The schedule math of adaptive polling, pure functions of a fit: the exact mean-mode
schedule (dynamic programming) and the quantile-mode plan (closed form)."""

from __future__ import annotations

import bisect
import math

from ._fit import _NORMAL, _q

__all__ = ["mean_schedule", "quantile_plan"]


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
        while ptr + 1 < size and (
            hull_b[ptr + 1] - slope * hull_t[ptr + 1] <= hull_b[ptr] - slope * hull_t[ptr]
        ):
            ptr += 1
        nxt[k] = hull_j[ptr]
        v = (1.0 - f[k]) + lam * g[k] + hull_b[ptr] - slope * hull_t[ptr]
        pt, pb = t[k], lam * (t[k] * f[k] - g[k]) + v
        while len(hull_t) >= 2 and (
            (hull_b[-1] - pb) * (hull_t[-2] - pt) >= (hull_b[-2] - pb) * (hull_t[-1] - pt)
        ):
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


def quantile_plan(mu: float, sigma: float, d: float, g: float, share: float) -> tuple[float, float]:
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
