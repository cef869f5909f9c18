"""Issue 18 (items 2-3) and issue 13 item 15: the exact mean-mode schedule, the quantile
(p95) mode, duration hints, and tail-stretched gaps after the first poll.

Pure math for the schedules and the estimator; the scheduler and handles on asyncio and trio,
on virtual time, with seeded randomness (every number deterministic)."""

from __future__ import annotations

import io
import math
import random
from typing import Any, cast

import anyio
import attrs
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
from camb_async.polling._fit import DurationFit
from camb_async.polling._schedule import mean_schedule, quantile_plan
from camb_async.polling._stats import CompletionStats, DurationEstimator
from camb_async.testing import FakeCambAPI

from ..conftest import ClientFactory

pytestmark = pytest.mark.anyio

_SQRT2 = math.sqrt(2.0)


def _policy(**kw: Any) -> AdaptivePollPolicy:
    options: dict[str, Any] = {"jitter": 0.0, "tail": 0.0}
    options.update(kw)
    policy = PollPolicy.adaptive(**options)
    assert isinstance(policy, AdaptivePollPolicy)
    return policy


def _bound(policy: AdaptivePollPolicy, est: DurationEstimator) -> AdaptivePollPolicy:
    """The policy as ``_bind`` makes it, on a given estimator and a frozen clock."""
    return attrs.evolve(policy, estimator=est, clock=lambda: 0.0, plans={}, schedules={})


def _trained(median: float, sigma: float, n: int = 400, seed: int = 1) -> DurationEstimator:
    rng = random.Random(seed)
    est = DurationEstimator()
    for _ in range(n):
        t = rng.lognormvariate(math.log(median), sigma)
        est.observe(t * 0.98, t * 1.02)
    return est


# ------------------------------------------------------------------ exact evaluation


def _cdf(mu: float, sigma: float, t: float) -> float:
    return 0.0 if t <= 0 else 0.5 * math.erfc(-(math.log(t) - mu) / (sigma * _SQRT2))


def _partial_mean(mu: float, sigma: float, t: float) -> float:
    if t <= 0:
        return 0.0
    z = (math.log(t) - mu - sigma * sigma) / sigma
    return math.exp(mu + sigma * sigma / 2) * 0.5 * math.erfc(-z / _SQRT2)


def _evaluate(
    mu: float, sigma: float, ages: list[float], d: float = math.inf
) -> tuple[float, float, float]:
    """Exact (E[requests], E[delay], P(delay > d)) of a poll schedule for a log-normal."""
    req = mean = late = 0.0
    pf = pg = 0.0
    for t in ages:
        f, g = _cdf(mu, sigma, t), _partial_mean(mu, sigma, t)
        req += 1.0 - pf
        mean += t * (f - pf) - (g - pg)
        if d < math.inf:
            late += max(_cdf(mu, sigma, t - d) - pf, 0.0)
        pf, pg = f, g
    return req, mean, late


def _ages(first: float, gap: Any, horizon: float) -> list[float]:
    ages = [first]
    while ages[-1] < horizon:
        ages.append(ages[-1] + gap(ages[-1]))
    return ages


# ------------------------------------------------------------------ mean mode


@pytest.mark.parametrize(
    ("median", "sigma", "cost"), [(10.0, 0.6, 0.2), (120.0, 0.7, 1.0), (480.0, 0.7, 4.0)]
)
def test_mean_schedule_beats_the_keller_rule_on_its_own_objective(
    median: float, sigma: float, cost: float
) -> None:
    """The DP schedule minimises E[requests] + E[delay] / cost; Keller's local rule (the
    previous schedule, still ``gap_at``) is a feasible schedule, so it can only do worse."""
    mu = math.log(median)
    horizon = math.exp(mu + 5.5 * sigma)
    ages = list(mean_schedule(mu, sigma, 1.0 / cost))
    assert ages == sorted(ages) and ages[0] > 0
    req, delay, _ = _evaluate(mu, sigma, ages)
    keller = _policy(max_delay=1e6, request_cost=cost)
    fit = DurationFit(mu, sigma, 100.0)
    k_ages = _ages(keller.gap_at(fit, 0.0), lambda a: keller.gap_at(fit, a), horizon)
    k_req, k_delay, _ = _evaluate(mu, sigma, k_ages)
    assert req + delay / cost < k_req + k_delay / cost
    # A costlier request buys fewer polls and a longer mean delay.
    req2, delay2, _ = _evaluate(mu, sigma, list(mean_schedule(mu, sigma, 0.5 / cost)))
    assert req2 < req and delay2 > delay


def test_mean_mode_follows_the_schedule_within_its_bounds() -> None:
    est = _trained(120.0, 0.7)
    policy = _bound(_policy(max_delay=1000.0, request_cost=1.0, min_interval=0.5), est)
    fit = policy.current_fit()
    assert fit is not None
    ages = policy.schedule(fit)
    assert policy.first_interval(0.0) == pytest.approx(ages[0])
    # A poll a little off its scheduled age (jitter, queueing) still aims at the next one:
    # never a tiny gap to the scheduled poll it stands for.
    for k in (3, 10, 20):
        for off in (-0.2, 0.0, 0.2):
            age = ages[k] + off * (ages[k] - ages[k - 1])
            assert policy.next_interval(k + 1, age) == pytest.approx(ages[k + 1] - age)
    capped = _bound(_policy(max_delay=5.0, request_cost=1.0), est)
    assert all(capped.next_interval(2, a) <= 5.0 for a in (0.0, 50.0, 120.0, 1000.0))


# ------------------------------------------------------------------ tail (issue 13 #15)


def test_tail_stretch_applies_after_the_first_poll_too() -> None:
    """The documented tail stretch used to apply only before a task's first poll: every later
    gap was cut to max_delay. An id from elsewhere is polled at once (age 0), so for it the
    stretch never happened at all."""
    est = _trained(480.0, 0.5)
    soft = _bound(_policy(max_delay=30.0, tail=0.01), est)
    hard = _bound(_policy(max_delay=30.0, tail=0.0), est)
    fit = soft.current_fit()
    assert fit is not None
    assert hard.next_interval(1, 0.0) == 30.0
    gap = soft.next_interval(1, 0.0)
    assert gap > 30.0  # the dead start is skipped after a first poll as well
    assert gap <= 150.0
    # ... by no more than the fit allows: at most `tail` of tasks finish in the overrun.
    # (Done within the first gap - 30 s of the gap: seen more than 30 s after.)
    overrun = -math.expm1(fit.log_survival(gap - 30.0))
    assert overrun <= 0.01 + 1e-9
    # Where tasks actually finish, max_delay binds, jitter included.
    jittery = _bound(_policy(max_delay=30.0, tail=0.01, jitter=0.5), est)
    assert all(jittery.next_interval(5, 480.0) <= 30.0 for _ in range(200))


@pytest.mark.parametrize("max_delay", [10.0, 30.0])
def test_tail_is_a_budget_for_the_whole_task_not_one_per_gap(max_delay: float) -> None:
    """Stretching every gap that may overrun by 1 % would make a long job's dozens of gaps
    add up: with max_delay=10 a quarter of dubbing completions were seen late."""
    est = _trained(480.0, 0.7)
    policy = _bound(_policy(max_delay=max_delay, tail=0.01), est)
    fit = policy.current_fit()
    assert fit is not None
    ages = _ages(
        policy.first_interval(0.0),
        lambda a: policy.next_interval(2, a),
        math.exp(fit.mu + 6 * fit.sigma),
    )
    _, _, late = _evaluate(fit.mu, fit.sigma, ages, max_delay)
    assert late <= 0.01 + 1e-3
    assert ages[0] > 2 * max_delay  # while the dead start is still skipped


async def test_an_id_from_elsewhere_skips_the_dead_start_after_its_first_poll(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    stats = CompletionStats()
    rng = random.Random(4)
    for _ in range(200):
        t = rng.lognormvariate(math.log(480.0), 0.5)
        stats.completed(TaskKind.DUB, 0.0, t - 2.0, t, known_start=True, tracked=False)
    client = make_client(completion_stats=stats)
    start = anyio.current_time()
    task_id = api.add_task(TaskKind.DUB, after=500.0, created_at=start)
    final = await client.dub.task(task_id).wait(
        policy=PollPolicy.adaptive(max_delay=30.0, jitter=0.0)
    )
    assert final.is_success
    times = [r.time for r in api.requests("GET")]
    assert times[0] == pytest.approx(start)  # unknown age: polled at once
    assert times[1] - times[0] > 30.0  # then the dead start is skipped (tail=0.01)


# ------------------------------------------------------------------ quantile mode


@pytest.mark.parametrize(
    ("median", "sigma", "d"), [(10.0, 0.6, 4.75), (480.0, 0.7, 4.75), (120.0, 0.7, 28.0)]
)
def test_quantile_plan_spends_the_late_share_and_no_more(
    median: float, sigma: float, d: float
) -> None:
    mu = math.log(median)
    g = max(30.0, d)
    first, cut = quantile_plan(mu, sigma, d, g, 0.05)
    assert d <= first <= cut
    ages = _ages(first, lambda a: d if a < cut else g, math.exp(mu + 6 * sigma))
    req, _, late = _evaluate(mu, sigma, ages, d)
    assert late == pytest.approx(0.05, abs=0.004)
    # Polling every d from creation sees every completion within d; the plan spends the
    # 5 % where polls buy least and saves requests for it.
    every_d = _ages(0.0, lambda a: d, math.exp(mu + 6 * sigma))
    req_d, _, late_d = _evaluate(mu, sigma, every_d, d)
    assert late_d == 0.0
    assert req < req_d - (first - d) / d * 0.9


def test_quantile_mode_polls_every_p95_delay_where_tasks_finish() -> None:
    est = _trained(120.0, 0.7)
    policy = _bound(_policy(p95_delay=5.0, max_delay=60.0), est)
    fit = policy.current_fit()
    assert fit is not None
    first, cut = policy.plan(fit)
    assert policy.first_interval(0.0) == pytest.approx(first)
    assert policy.next_interval(1, first) == 5.0
    assert policy.next_interval(9, (first + cut) / 2) == 5.0
    assert policy.next_interval(99, cut + 1.0) == 60.0
    assert policy.next_interval(1, 0.0) == pytest.approx(first)  # an id from elsewhere
    # Jitter moves only the first poll, and only earlier (a later one makes tasks late).
    jittery = _bound(_policy(p95_delay=5.0, max_delay=60.0, jitter=0.2), est)
    firsts = [jittery.first_interval(0.0) for _ in range(200)]
    assert all(first - 1.0 - 1e-9 <= x <= first for x in firsts)
    assert max(firsts) - min(firsts) > 0.5
    assert all(jittery.next_interval(3, first + 20.0) == 5.0 for _ in range(50))


def test_quantile_mode_validates_its_options() -> None:
    with pytest.raises(ValueError):
        PollPolicy.adaptive(p95_delay=0.0)
    with pytest.raises(ValueError):
        PollPolicy.adaptive(p95_delay=0.2, min_interval=0.5)
    with pytest.raises(ValueError):
        PollPolicy.adaptive(p95_delay=5.0, delay_quantile=1.0)
    with pytest.raises(TypeError):
        PollPolicy.adaptive(p95_delay="5")  # type: ignore[arg-type]


async def _run_batch(
    api: FakeCambAPI,
    client: AsyncCambClient,
    policy: PollPolicy | None,
    durations: list[float],
    hints: list[DurationHint] | None = None,
) -> tuple[float, list[float]]:
    """Create tasks now, poll them to the end: (requests per task, detection delays)."""
    now = anyio.current_time()
    handles: list[TaskHandle[Any]] = []
    done_at: dict[str, float] = {}
    for i, after in enumerate(durations):
        task_id = api.add_task(TaskKind.TRANSCRIPTION, after=after, created_at=now)
        handles.append(
            TaskHandle(
                client,
                TaskKind.TRANSCRIPTION,
                task_id,
                created_at=now,
                hint=None if hints is None else hints[i],
            )
        )
        done_at[task_id] = now + after
    seen: dict[str, float] = {}

    def on_update(result: Any) -> None:
        if result.is_terminal:
            seen[result.task_id] = anyio.current_time()

    before = len(api.log)
    out = await gather_statuses(client, handles, policy=policy, on_update=on_update)
    assert all(r.is_success for r in out)
    delays = [seen[k] - done_at[k] for k in done_at]
    assert min(delays) >= -1e-9
    return (len(api.log) - before) / len(durations), delays


async def test_quantile_mode_meets_its_p95_with_fewer_requests_than_fixed_polling(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    rng = random.Random(12)
    stats = CompletionStats()
    for _ in range(300):
        t = rng.lognormvariate(math.log(120.0), 0.7)
        stats.completed(TaskKind.TRANSCRIPTION, 0.0, t - 1.0, t, known_start=True, tracked=False)
    durations = [rng.lognormvariate(math.log(120.0), 0.7) for _ in range(200)]
    fixed = PollPolicy(initial=5.0, factor=1.0, max_interval=5.0, jitter=0.0)
    fixed_req, fixed_delays = await _run_batch(api, make_client(), fixed, durations)
    client = make_client(completion_stats=CompletionStats.from_dict(stats.to_dict()))
    req, delays = await _run_batch(api, client, PollPolicy.adaptive(p95_delay=5.0), durations)
    late = sum(d > 5.0 + 1e-9 for d in delays) / len(delays)
    assert max(fixed_delays) <= 5.0 + 1e-9
    assert late <= 0.08  # 5 % planned; 200 tasks
    assert sorted(delays)[int(0.9 * len(delays))] <= 5.0 + 1e-9
    assert req < 0.85 * fixed_req


# ------------------------------------------------------------------ hints


def test_hint_model_learns_duration_vs_size_from_censored_intervals() -> None:
    rng = random.Random(3)
    est = DurationEstimator()
    for _ in range(400):
        z = rng.gauss(0.0, 1.0)
        t = math.exp(math.log(120.0) + 0.6 * z + rng.gauss(0.0, 0.3))
        u = rng.random()
        lo, hi = max(t - 20.0 * u, 0.0), t + 20.0 * (1.0 - u)  # seen done within 20 s
        est.observe(lo, hi, DurationHint(300.0 * math.exp(z), "seconds"))
    model = est.hint_model("seconds")
    coef = model.coefficients(0.0)
    assert coef is not None
    a, b, s = coef
    assert b == pytest.approx(0.6, abs=0.06)
    assert s == pytest.approx(0.3, abs=0.04)
    assert a + b * math.log(300.0) == pytest.approx(math.log(120.0), abs=0.06)
    big = est.fit_for(0.0, DurationHint(300.0 * math.e, "seconds"), 20)
    small = est.fit_for(0.0, DurationHint(300.0 / math.e, "seconds"), 20)
    plain = est.fit(0.0)
    assert big is not None and small is not None and plain is not None
    assert big.median > 1.6 * plain.median > 2.5 * small.median
    assert big.sigma < 0.6 * plain.sigma
    # Unknown unit, no hint, or too few hinted completions: the plain fit.
    assert est.fit_for(0.0, DurationHint(5.0, "chars"), 20) is plain
    assert est.fit_for(0.0, None, 20) is plain
    assert est.fit_for(0.0, DurationHint(300.0, "seconds"), 10_000) is plain


def test_hint_model_needs_sizes_that_vary() -> None:
    est = DurationEstimator()
    for i in range(50):
        est.observe(10.0 + i % 5, 11.0 + i % 5, DurationHint(100.0, "chars"))
    assert est.hint_model("chars").coefficients(0.0) is None
    assert est.fit_for(0.0, DurationHint(100.0, "chars"), 20) is est.fit(0.0)


def test_pending_hinted_tasks_are_censored_per_size() -> None:
    """Submitted together, small ones report first: ignoring the big pending ones would flatten
    the slope."""
    rng = random.Random(8)
    est = DurationEstimator()
    now = 150.0
    for _ in range(600):
        z = rng.gauss(0.0, 1.0)
        t = math.exp(math.log(100.0) + 0.6 * z + rng.gauss(0.0, 0.3))
        hint = DurationHint(50.0 * math.exp(z), "chars")
        if t <= now:
            est.observe(t - 1.0, t, hint)
        else:
            est.track(0.0, hint)
    coef = est.hint_model("chars").coefficients(now)
    assert coef is not None
    assert coef[1] == pytest.approx(0.6, abs=0.08)
    for _ in range(3):  # tracking is undone exactly
        est.untrack(0.0, DurationHint(50.0, "chars"))


def test_hinted_statistics_round_trip_and_bad_rows_are_refused() -> None:
    stats = CompletionStats()
    rng = random.Random(2)
    for _ in range(100):
        z = rng.gauss(0.0, 1.0)
        t = math.exp(math.log(20.0) + 0.5 * z + rng.gauss(0.0, 0.3))
        stats.completed(
            TaskKind.TTS,
            0.0,
            t * 0.95,
            t,
            known_start=True,
            tracked=False,
            hint=DurationHint(400.0 * math.exp(z), "chars"),
        )
    data = stats.to_dict()
    assert "chars" in data["kinds"]["tts"]["hinted"]
    copy = CompletionStats.from_dict(data)
    hint = DurationHint(1000.0, "chars")
    a, b = stats.fit(TaskKind.TTS, 0.0, hint), copy.fit(TaskKind.TTS, 0.0, hint)
    assert a is not None and b is not None
    assert (b.mu, b.sigma) == pytest.approx((a.mu, a.sigma), abs=1e-6)
    bad: Any
    for bad in (
        {"furlongs": []},
        {"chars": [[1, 2, 3]]},
        {"chars": [[1.5, 2, 3, 1.0]]},
        {"chars": [[1, 3, 2, 1.0]]},
        [1],
    ):
        entry = {"bins": [], "hinted": bad}
        with pytest.raises(ValueError):
            CompletionStats.from_dict({"version": 1, "grid": 0.05, "kinds": {"tts": entry}})


def test_duration_hint_values() -> None:
    assert DurationHint(3, "chars") == DurationHint(3.0, "chars")
    for bad in (0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            DurationHint(bad)
    with pytest.raises(ValueError):
        DurationHint(1.0, "furlongs")
    with pytest.raises(TypeError):
        DurationHint(cast(Any, "12"))


async def test_handles_carry_hints(client: AsyncCambClient) -> None:
    assert client.task(TaskKind.DUB, "a").hint is None  # the old signature still works
    assert client.task("dub", "a", hint=90).hint == DurationHint(90.0, "seconds")
    assert client.task("tts", "a", hint=500).hint == DurationHint(500.0, "chars")
    assert client.translation.task("a", hint=DurationHint(7.0, "bytes")).hint == DurationHint(
        7.0, "bytes"
    )
    with pytest.raises(TypeError):
        client.task("tts", "a", hint="long")  # type: ignore[call-overload]
    with pytest.raises(ValueError):
        client.task("tts", "a", hint=-3)


async def test_created_tasks_remember_what_their_input_says(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    tts = await client.tts.create(text="Hello there", voice_id=1, language=1)
    assert tts.hint == DurationHint(11.0, "chars")
    tr = await client.translation.create(
        texts=["abc", "", "de"], source_language=1, target_language=2
    )
    assert tr.hint == DurationHint(5.0, "chars")
    data = b"x" * 12345
    for file in (data, io.BytesIO(data)):
        up = await client.transcription.create(language=1, file=file, filename="a.wav")
        assert up.hint == DurationHint(12345.0, "bytes")
    url = await client.transcription.create(language=1, media_url="https://x/a.mp3", hint=600.0)
    assert url.hint == DurationHint(600.0, "seconds")
    dub = await client.dub.create(
        video_url="https://x/v.mp4",
        source_language=1,
        target_language=2,
        hint=DurationHint(42.0, "seconds"),
    )
    assert dub.hint == DurationHint(42.0, "seconds")
    assert (
        await client.dub.create(video_url="https://x/v.mp4", source_language=1, target_language=2)
    ).hint is None
    with pytest.raises(ValueError):  # checked before anything is sent
        await client.dub.create(
            video_url="https://x/v.mp4", source_language=1, target_language=2, hint=0.0
        )
    assert len(api.created()) == 7


async def test_hints_let_the_poller_expect_each_task_s_duration(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    """Durations proportional to size (residual spread 0.2): with hints, small tasks are
    polled early and big ones late, so fewer requests meet the same p95."""
    rng = random.Random(21)
    stats = CompletionStats()

    def size_and_time() -> tuple[float, float]:
        z = rng.gauss(0.0, 1.0)
        return 300.0 * math.exp(z), math.exp(math.log(120.0) + 0.65 * z + rng.gauss(0.0, 0.2))

    for _ in range(300):
        size, t = size_and_time()
        stats.completed(
            TaskKind.TRANSCRIPTION,
            0.0,
            t - 1.0,
            t,
            known_start=True,
            tracked=False,
            hint=DurationHint(size, "seconds"),
        )
    batch = [size_and_time() for _ in range(150)]
    durations = [t for _, t in batch]
    hints = [DurationHint(s, "seconds") for s, _ in batch]
    policy = PollPolicy.adaptive(p95_delay=5.0, jitter=0.0)
    plain_req, plain_delays = await _run_batch(
        api,
        make_client(completion_stats=CompletionStats.from_dict(stats.to_dict())),
        policy,
        durations,
    )
    client = make_client(completion_stats=CompletionStats.from_dict(stats.to_dict()))
    hinted_req, hinted_delays = await _run_batch(api, client, policy, durations, hints)
    for delays in (plain_delays, hinted_delays):
        assert sum(d > 5.0 + 1e-9 for d in delays) / len(delays) <= 0.09
    assert hinted_req < 0.6 * plain_req
    est = client.completion_stats.for_kind(TaskKind.TRANSCRIPTION)
    assert est.hint_model("seconds").completions == pytest.approx(450.0)
    assert est.pending == 0
