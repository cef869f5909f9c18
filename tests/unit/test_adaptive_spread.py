"""Issue 18: the spread the estimators hand the schedules is the next task's, not an
underestimate. Completions are known only to within the gap between two polls; when those
gaps are coarse (about one median duration), rounding each interval outward onto the grid
let the censored fit shrink the spread (0.27 for a true 0.30, at any sample size), and the
fit of ~100 completions is itself a little narrow. A quantile schedule built on it let
7-8 % of completions be late for a 5 % target.

Pure math on seeded samples for the estimator; the scheduler on asyncio and trio, on virtual
time, for the same through the real poller (every number deterministic)."""

from __future__ import annotations

import math
import random
from statistics import NormalDist
from typing import Any

import anyio
import pytest

from camb_async import (
    AsyncCambClient,
    DurationHint,
    PollPolicy,
    TaskHandle,
    TaskKind,
    gather_statuses,
)
from camb_async.polling._adaptive import AdaptivePollPolicy
from camb_async.polling._fit import predictive_sigma
from camb_async.polling._stats import DurationEstimator
from camb_async.testing import FakeCambAPI

pytestmark = pytest.mark.anyio

_MEDIAN, _SPREAD, _RESIDUAL = 10.0, 0.6, 0.3  # TTS-like: ln T = ln 10 + 0.52 z + N(0, 0.3)
_SLOPE = math.sqrt(_SPREAD**2 - _RESIDUAL**2)


def _task(rng: random.Random) -> tuple[DurationHint, float]:
    z = rng.gauss(0.0, 1.0)
    t = math.exp(math.log(_MEDIAN) + _SLOPE * z + rng.gauss(0.0, _RESIDUAL))
    return DurationHint(400.0 * math.exp(z), "chars"), t


def _polled_every(gap: float, n: int, seed: int) -> DurationEstimator:
    """``n`` hinted tasks created at 0 and polled every ``gap`` seconds from then."""
    rng = random.Random(seed)
    est = DurationEstimator()
    for _ in range(n):
        hint, t = _task(rng)
        k = math.ceil(t / gap)
        est.observe((k - 1) * gap, k * gap, hint)
    return est


def _late_share(policy: AdaptivePollPolicy, est: DurationEstimator, d: float) -> float:
    """P(delay > d) of the quantile plan made from ``est``'s fit for a task of the median
    size, exactly, under that task's true distribution (ln T ~ N(ln 10, 0.3**2))."""
    fit = est.fit_for(0.0, DurationHint(400.0, "chars"), 20)
    assert fit is not None
    first, cut = policy.plan(fit)
    true = NormalDist(math.log(_MEDIAN), _RESIDUAL)

    def cdf(t: float) -> float:
        return 0.0 if t <= 0.0 else true.cdf(math.log(t))

    late = cdf(first - d)  # done before first - d: seen late at the first poll
    g = max(policy.max_delay, d)
    if cut != math.inf:  # past the cut, polls every g: (g - d) / g of those are late
        late += (1.0 - cdf(cut)) * (g - d) / g
    return late


def test_predictive_sigma_is_the_textbook_prediction_spread() -> None:
    # Plain mean of n: s * sqrt(n / (n - 1) * (1 + 1 / n)).
    assert predictive_sigma(0.5, 100.0, 1, 0.01) == pytest.approx(0.5 * math.sqrt(101 / 99))
    # Far from the sizes seen, the fitted slope is less certain: wider.
    near = predictive_sigma(0.3, 100.0, 2, 1.0 / 100.0)
    far = predictive_sigma(0.3, 100.0, 2, (1.0 + 9.0) / 100.0)
    assert 0.3 < near < far
    assert predictive_sigma(0.3, 0.0, 2, 1.0) == 0.3  # no data: nothing to widen by
    assert predictive_sigma(0.3, 1.0, 2, 1.0) <= 0.3 * math.sqrt(4.0)  # bounded when tiny


@pytest.mark.parametrize(("gap", "n"), [(10.0, 100), (5.0, 200)])
def test_fitted_spread_is_unbiased_when_polls_are_coarse(gap: float, n: int) -> None:
    """Averaged over 24 seeded samples: the hinted spread for a median-sized task and the
    plain spread are within ~2 % of the truth (outward rounding gave 0.27-0.29 and 0.54-0.59)."""
    hinted, plain = [], []
    for seed in range(24):
        est = _polled_every(gap, n, seed)
        fit = est.fit_for(0.0, DurationHint(400.0, "chars"), 20)
        whole = est.fit(0.0)
        assert fit is not None and whole is not None
        hinted.append(fit.sigma)
        plain.append(whole.sigma)
    assert sum(hinted) / len(hinted) == pytest.approx(_RESIDUAL, abs=0.006)
    assert sum(plain) / len(plain) == pytest.approx(_SPREAD, abs=0.015)


def test_quantile_plan_from_learned_hints_is_late_about_as_often_as_planned() -> None:
    """The plan for "95 % seen within 2 s", from hints learned off 200 tasks polled every
    5 s, is late for 4-6 % of completions on average over 24 samples (it was 7 %)."""
    policy = PollPolicy.adaptive(p95_delay=2.0, jitter=0.0)
    assert isinstance(policy, AdaptivePollPolicy)
    shares = [_late_share(policy, _polled_every(5.0, 200, seed), 2.0) for seed in range(24)]
    assert 0.04 <= sum(shares) / len(shares) <= 0.06


async def test_the_poller_learns_the_spread_from_its_own_coarse_polls(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    """1,200 hinted tasks created together, polled every 10 s by the real scheduler: the
    relation the client learned is the one a ``DurationEstimator`` fed the same intervals
    learns: the true residual spread and median (outward rounding, on these tasks: spread
    0.287, median 4 % long; over seeds the spread here varies by ~0.01)."""
    rng = random.Random(6)
    now = anyio.current_time()
    handles: list[TaskHandle[Any]] = []
    direct = DurationEstimator()
    for _ in range(1200):
        hint, t = _task(rng)
        task_id = api.add_task(TaskKind.TTS, after=t, created_at=now)
        handles.append(TaskHandle(client, TaskKind.TTS, task_id, created_at=now, hint=hint))
        k = math.ceil(t / 10.0)
        direct.observe((k - 1) * 10.0, k * 10.0, hint)
    every_10s = PollPolicy(initial=10.0, factor=1.0, max_interval=10.0, jitter=0.0)
    out = await gather_statuses(client, handles, policy=every_10s)
    assert all(r.is_success for r in out)
    est = client.completion_stats.for_kind(TaskKind.TTS)
    assert est.pending == 0
    coef = est.hint_model("chars").coefficients(anyio.current_time())
    # (EM stops at a 1e-4 step, warm-started from whichever fit came before: to ~1e-3)
    assert coef == pytest.approx(direct.hint_model("chars").coefficients(0.0), abs=1e-3)
    assert coef is not None
    a, b, spread = coef
    assert b == pytest.approx(_SLOPE, abs=0.04)
    assert spread == pytest.approx(_RESIDUAL, abs=0.015)
    assert a + b * math.log(400.0) == pytest.approx(math.log(_MEDIAN), abs=0.025)
