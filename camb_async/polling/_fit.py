"""The fitted log-normal of one kind's durations (``DurationFit``), the histogram grid and
the normal-distribution helpers the estimators and the schedules share."""

from __future__ import annotations

import math
from statistics import NormalDist

import attrs

from .._models import DurationHint

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


def _bin(t: float) -> int:
    """The grid point nearest to ``ln t``.

    Nearest, not outward (floor for a lower bound, ceiling for an upper one): widening every
    interval by up to a grid step lets the censored fit pull each completion towards the
    middle, and the fitted spread comes out low, more so the coarser the polls (0.27 instead
    of 0.30 for tasks polled about once per median duration, at any sample size). Rounding
    to the nearest point errs both ways and leaves the spread unbiased."""
    return round(math.log(t) / GRID)


def _bins(lo: float, hi: float | None) -> tuple[int, int] | None:
    """Histogram bounds of "ran longer than ``lo``, at most ``hi``"; None: no information."""
    if hi is not None and not (hi > 0.0 and math.isfinite(hi)):
        return None
    i_lo = _bin(lo) if lo > 0.0 else _NEG
    if hi is None:
        if i_lo == _NEG:
            return None  # "longer than nothing": no information
        return i_lo, _POS
    return i_lo, max(_bin(hi), i_lo + 1)


def predictive_sigma(sigma: float, n: float, params: int, leverage: float) -> float:
    """The spread of the next task's log-duration, not of the fitted ones: the maximum-
    likelihood ``sigma`` of a (censored) normal model with ``params`` mean parameters, fitted
    to ``n`` completions, times the textbook prediction factor ``sqrt(n / (n - params) *
    (1 + leverage))``. ``n / (n - params)`` undoes the small-sample shrinkage of the fitted
    variance; ``leverage`` (``1 / n`` for a plain mean, ``1 / n + (x - mean x)**2 / Sxx``
    for a regression on ``x``) adds the uncertainty of the fitted mean at the task's own
    size. A quantile schedule placed by the fitted ``sigma`` alone would let more than its
    share of completions be late."""
    if not (n > 0.0 and math.isfinite(n)):
        return sigma
    shrink = n / max(n - params, 0.5 * n)  # at most 2, while n is tiny
    return sigma * math.sqrt(shrink * (1.0 + max(leverage, 0.0)))


def _xbin(hint: DurationHint) -> int:
    return math.floor(math.log(hint.size) / XGRID)
