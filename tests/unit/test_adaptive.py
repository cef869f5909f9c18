"""Adaptive polling: the duration estimator, the schedule, and their wiring into the poller
and handles. Everything runs on virtual time (trio MockClock / VirtualTimeLoop) with seeded
randomness, so every number below is deterministic."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import anyio
import pytest

from camb_async import (
    AsyncCambClient,
    PollPolicy,
    StatusResult,
    TaskHandle,
    TaskKind,
    gather_statuses,
)
from camb_async.polling._adaptive import AdaptivePollPolicy
from camb_async.polling._fit import MAX_WEIGHT, DurationFit
from camb_async.polling._policy import DEFAULT_POLICIES
from camb_async.polling._stats import CompletionStats, DurationEstimator
from camb_async.testing import FakeCambAPI

from ..conftest import ClientFactory

pytestmark = pytest.mark.anyio


def _lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return rng.lognormvariate(math.log(median), sigma)


def _policy(**kw: float) -> AdaptivePollPolicy:
    options: dict[str, float] = {"jitter": 0.0, "tail": 0.0}
    options.update(kw)
    policy = PollPolicy.adaptive(**options)  # type: ignore[arg-type]
    assert isinstance(policy, AdaptivePollPolicy)
    return policy


# ----------------------------------------------------------------------------- estimator


def test_estimator_recovers_lognormal_from_poll_intervals() -> None:
    rng = random.Random(7)
    est = DurationEstimator()
    for _ in range(600):
        t = _lognormal(rng, 120.0, 0.7)
        hi = math.ceil(t / 10.0) * 10.0  # seen done at the first 10 s poll after completion
        est.observe(hi - 10.0, hi)
    fit = est.fit(0.0)
    assert fit is not None
    assert fit.median == pytest.approx(120.0, rel=0.08)
    assert fit.sigma == pytest.approx(0.7, abs=0.07)


def test_pending_tasks_are_right_censored_not_ignored() -> None:
    """1,000 tasks submitted together: the quick ones report first. Counting only them would
    put the median at half the truth; the still-pending ones keep the estimate honest."""
    rng = random.Random(3)
    durations = [_lognormal(rng, 120.0, 0.7) for _ in range(1000)]
    now = 100.0
    censored, naive = DurationEstimator(), DurationEstimator()
    for t in durations:
        if t <= now:
            hi = math.ceil(t)
            censored.observe(hi - 1.0, hi)
            naive.observe(hi - 1.0, hi)
        else:
            censored.track(0.0)
    fit, biased = censored.fit(now), naive.fit(now)
    assert fit is not None and biased is not None
    assert censored.pending == sum(t > now for t in durations)
    assert fit.median == pytest.approx(120.0, rel=0.12)
    assert biased.median < 0.7 * 120.0  # what ignoring censoring would have produced


def test_refits_are_rationed_not_one_per_poll() -> None:
    est = DurationEstimator()
    for i in range(64):
        est.observe(9.0 + i % 3, 10.0 + i % 3)
    fit = est.fit(0.0)
    for start in range(100):  # a stream of new pending tasks
        est.track(float(start))
        assert est.fit(0.1) is fit
    est.observe(10.0, 11.0)  # one new completion among 64: not yet worth a refit
    assert est.fit(0.1) is fit
    assert fit is not None
    assert est.fit(0.1 + 0.05 * fit.median) is not fit  # pending tasks aged: refit


def test_tasks_of_unknown_age_only_say_they_ran_longer() -> None:
    stats = CompletionStats()
    # Seen pending for 30 s after first sight, then done: ran > 30 s, no upper bound known.
    stats.completed(TaskKind.DUB, 5.0, 30.0, 40.0, known_start=False, tracked=False)
    # Done at its very first poll: nothing known at all.
    stats.completed(TaskKind.DUB, 5.0, 0.0, 0.0, known_start=False, tracked=False)
    est = stats.for_kind(TaskKind.DUB)
    assert est.completions == 0
    assert stats.fit(TaskKind.DUB, 100.0) is None
    assert stats.to_dict()["kinds"]["dub"]["bins"] == [
        [math.floor(math.log(30.0) / 0.05), None, 1.0]
    ]


def test_old_observations_fade_so_a_drift_is_followed() -> None:
    rng = random.Random(11)
    est = DurationEstimator()
    for median in (10.0, 40.0):
        for _ in range(int(MAX_WEIGHT)):
            t = _lognormal(rng, median, 0.5)
            est.observe(t * 0.95, t * 1.05)
    fit = est.fit(0.0)
    assert fit is not None
    assert est.completions <= MAX_WEIGHT
    assert fit.median > 25.0  # equal weights would give ~20


def test_export_import_round_trip_is_json() -> None:
    rng = random.Random(5)
    stats = CompletionStats()
    for kind, median in ((TaskKind.TTS, 10.0), (TaskKind.DUB, 480.0)):
        for _ in range(200):
            t = _lognormal(rng, median, 0.6)
            stats.completed(kind, 0.0, t * 0.9, t, known_start=True, tracked=False)
    data = json.loads(json.dumps(stats.to_dict()))
    copy = CompletionStats.from_dict(data)
    for kind in (TaskKind.TTS, TaskKind.DUB):
        a, b = stats.fit(kind, 0.0), copy.fit(kind, 0.0)
        assert a is not None and b is not None
        assert b.mu == pytest.approx(a.mu, abs=1e-6)
        assert b.sigma == pytest.approx(a.sigma, abs=1e-6)
        assert copy.for_kind(kind).completions == pytest.approx(200.0)
    assert copy.fit(TaskKind.TRANSLATION, 0.0) is None


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"version": 2, "grid": 0.05, "kinds": {}},
        {"version": 1, "grid": 0.1, "kinds": {}},
        {"version": 1, "grid": 0.05, "kinds": {"nope": {"bins": []}}},
        {"version": 1, "grid": 0.05, "kinds": {"tts": {"bins": [[3, 2, 1.0]]}}},
        {"version": 1, "grid": 0.05, "kinds": {"tts": {"bins": [[1, 2, -1.0]]}}},
        {"version": 1, "grid": 0.05, "kinds": {"tts": {"bins": [[None, None, 1.0]]}}},
        {"version": 1, "grid": 0.05, "kinds": {"tts": {"bins": [["1", 2, 1.0]]}}},
        {"version": 1, "grid": 0.05, "kinds": {"tts": {"bins": [[1, 2]]}}},
    ],
)
def test_import_refuses_what_it_did_not_write(data: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        CompletionStats.from_dict(data)


# ----------------------------------------------------------------------------- schedule


def test_gaps_are_long_while_completion_is_unlikely_and_short_where_it_bunches() -> None:
    policy = _policy(max_delay=60.0, min_interval=0.5)
    fit = DurationFit(math.log(480.0), 0.5, 100.0)  # dubbing-like: ~8 minutes
    assert policy.gap_at(fit, 0.0) == 60.0  # a minute in, nothing is done yet: skip ahead
    near = policy.gap_at(fit, 480.0)
    assert policy.gap_at(fit, 150.0) > near
    assert 0.5 <= near < 60.0
    # Keller's density: gap * P(done within gap | pending) hits 2 * request_cost.
    done = -math.expm1(fit.log_survival(480.0 + near) - fit.log_survival(480.0))
    assert near * done == pytest.approx(policy.kappa, rel=0.02)
    # A larger request cost buys fewer polls.
    assert _policy(max_delay=60.0, request_cost=10.0).gap_at(fit, 480.0) > near
    for age in (0.0, 1.0, 100.0, 480.0, 2000.0, 1e6):
        assert 0.5 <= policy.gap_at(fit, age) <= 60.0


def test_adaptive_policy_validates_its_options() -> None:
    with pytest.raises(ValueError):
        PollPolicy.adaptive(max_delay=0)
    with pytest.raises(ValueError):
        PollPolicy.adaptive(max_delay=1.0, min_interval=2.0)
    with pytest.raises(ValueError):
        PollPolicy.adaptive(min_samples=0)
    with pytest.raises(ValueError):
        PollPolicy.adaptive(request_cost=-1.0)
    with pytest.raises(TypeError):
        PollPolicy.adaptive(fallback=PollPolicy.adaptive())
    with pytest.raises(ValueError):
        PollPolicy.adaptive(tail=0.5)


def test_tail_stretches_gaps_only_where_completion_is_unlikely() -> None:
    fit = DurationFit(math.log(480.0), 0.7, 100.0)
    hard, soft = _policy(max_delay=30.0), _policy(max_delay=30.0, tail=0.01)
    # At creation: stretch to the fit's 1 % quantile (+ max_delay), so 1 % finish in the
    # overrun; capped at 5 x max_delay.
    first = soft.gap_at(fit, 0.0)
    assert hard.gap_at(fit, 0.0) == 30.0
    assert first == pytest.approx(min(30.0 + fit.quantile(0.01), 150.0), rel=1e-6)
    assert fit.quantile(0.01) > 60.0
    # Where durations bunch up nothing changes.
    assert soft.gap_at(fit, 480.0) == hard.gap_at(fit, 480.0) <= 30.0


async def test_falls_back_to_the_kind_default_until_enough_samples(client: AsyncCambClient) -> None:
    policy = _policy(max_delay=4.0, min_samples=5)._bind(client, TaskKind.TRANSLATION)
    default = attrs_evolve_no_jitter(DEFAULT_POLICIES[TaskKind.TRANSLATION])
    assert [policy.next_interval(n, 0.0) for n in range(1, 6)] == [
        min(default.next_interval(n), 4.0) for n in range(1, 6)
    ]
    stats = client.completion_stats
    for i in range(5):
        stats.completed(
            TaskKind.TRANSLATION, 0.0, 19.0 + i, 20.0 + i, known_start=True, tracked=False
        )
    assert isinstance(policy, AdaptivePollPolicy)
    assert policy.current_fit() is not None
    assert policy.next_interval(1, 0.0) == 4.0  # at age 0 a ~20 s job is far from done


def attrs_evolve_no_jitter(policy: PollPolicy) -> PollPolicy:
    return PollPolicy(
        initial=policy.initial, factor=policy.factor, max_interval=policy.max_interval, jitter=0.0
    )


# ----------------------------------------------------------------------------- wiring


def _script(
    api: FakeCambAPI,
    client: AsyncCambClient,
    n: int,
    seed: int,
    *,
    median: float,
    sigma: float,
    kind: TaskKind = TaskKind.TTS,
) -> list[tuple[TaskHandle[Any], float]]:
    """``n`` tasks created now with log-normal durations: (handle, completion time)."""
    rng = random.Random(seed)
    now = anyio.current_time()
    out: list[tuple[TaskHandle[Any], float]] = []
    for _ in range(n):
        after = _lognormal(rng, median, sigma)
        task_id = api.add_task(kind, after=after, created_at=now)
        out.append((TaskHandle(client, kind, task_id, created_at=now), now + after))
    return out


async def _run(
    api: FakeCambAPI, client: AsyncCambClient, policy: PollPolicy, *, seed: int, n: int = 150
) -> tuple[float, float, float]:
    """Poll one batch; return (requests per task, mean detection delay, worst delay)."""
    tasks = _script(api, client, n, seed, median=30.0, sigma=0.6)
    done_at = {h.task_id: t for h, t in tasks}
    seen: dict[str, float] = {}
    before = len(api.log)

    def on_update(result: object) -> None:
        if getattr(result, "is_terminal", False):
            seen[result.task_id] = anyio.current_time()  # type: ignore[attr-defined]

    out = await gather_statuses(client, [h for h, _ in tasks], policy=policy, on_update=on_update)
    assert all(r.is_success for r in out)
    delays = [seen[k] - done_at[k] for k in done_at]
    assert min(delays) >= 0.0
    return (len(api.log) - before) / n, sum(delays) / n, max(delays)


async def test_adaptive_learns_and_then_spends_fewer_requests(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    fixed = PollPolicy(initial=5.0, factor=1.0, max_interval=5.0, jitter=0.0)
    fixed_req, fixed_mean, _ = await _run(api, make_client(), fixed, seed=1)

    client = make_client()
    adaptive = _policy(max_delay=10.0, request_cost=0.3)
    cold = await _run(api, client, adaptive, seed=1)  # learns while it polls
    fit = client.completion_stats.fit(TaskKind.TTS, anyio.current_time())
    assert fit is not None
    assert fit.median == pytest.approx(30.0, rel=0.15)
    assert fit.sigma == pytest.approx(0.6, abs=0.15)
    assert client.completion_stats.for_kind(TaskKind.TTS).pending == 0

    warm_req, warm_mean, warm_worst = await _run(api, client, adaptive, seed=2)
    assert warm_worst <= 10.0 + 1e-6  # max_delay bounds every detection delay
    print(
        f"fixed 5 s: {fixed_req:.2f} req/task, mean delay {fixed_mean:.2f} s; adaptive "
        f"cold {cold[0]:.2f}/{cold[1]:.2f} s, warm {warm_req:.2f}/{warm_mean:.2f} s"
    )
    # Fewer requests AND sooner on average than polling every 5 s ...
    assert warm_req < fixed_req
    assert warm_mean < fixed_mean
    # ... by a margin: requests x delay (what a fixed interval keeps constant) drops >= 15 %.
    assert warm_req * warm_mean < 0.85 * fixed_req * fixed_mean


async def test_first_poll_of_a_created_task_waits_when_the_kind_is_known(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    rng = random.Random(9)
    stats = CompletionStats()
    for _ in range(100):
        t = _lognormal(rng, 480.0, 0.5)
        stats.completed(TaskKind.DUB, 0.0, t - 5.0, t, known_start=True, tracked=False)
    client = make_client(completion_stats=CompletionStats.from_dict(stats.to_dict()))
    start = anyio.current_time()
    task_id = api.add_task(TaskKind.DUB, after=500.0, created_at=start)
    handle: TaskHandle[Any] = TaskHandle(client, TaskKind.DUB, task_id, created_at=start)
    final = await handle.wait(policy=_policy(max_delay=60.0))
    assert final.is_success
    first = api.requests("GET")[0].time
    assert first - start >= 60.0  # no request in the first minute of an 8-minute job
    assert len(api.requests("GET")) < 500.0 / 60.0 + 15
    assert anyio.current_time() - (start + 500.0) <= 60.0


async def test_handle_watch_reports_completions_and_censoring(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    stats = client.completion_stats
    now = anyio.current_time()
    created = api.add_task(TaskKind.TRANSLATION, after=7.0, created_at=now)
    await TaskHandle(client, TaskKind.TRANSLATION, created, created_at=now).wait()
    est = stats.for_kind(TaskKind.TRANSLATION)
    assert est.completions == 1 and est.pending == 0

    # An id from elsewhere: only "ran longer than we watched it" is learned.
    other = api.add_task(TaskKind.TRANSLATION, after=7.0, created_at=anyio.current_time())
    await client.translation.task(other).wait()
    assert est.completions == 1
    assert len(stats.to_dict()["kinds"]["translate"]["bins"]) == 2

    # Watching stops while pending: counted as pending meanwhile, censored afterwards.
    slow = api.add_task(TaskKind.TRANSLATION, after=1000.0, created_at=anyio.current_time())
    handle = client.translation.task(slow)

    async def wait_for_slow() -> None:
        with pytest.raises(TimeoutError):
            await handle.wait(timeout=30.0)

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait_for_slow)
        await anyio.sleep(5.0)
        assert est.pending == 1
    assert est.pending == 0
    assert est.completions == 1


async def test_poller_censors_tasks_still_pending_at_its_deadline(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    now = anyio.current_time()
    ids = [api.add_task(TaskKind.DUB, after=1000.0, created_at=now) for _ in range(20)]
    handles: list[TaskHandle[Any]] = [
        TaskHandle(client, TaskKind.DUB, i, created_at=now) for i in ids
    ]
    out = await gather_statuses(client, handles, timeout=120.0)
    assert not any(r.is_terminal for r in out)
    est = client.completion_stats.for_kind(TaskKind.DUB)
    assert est.pending == 0
    assert est.completions == 0
    rows = client.completion_stats.to_dict()["kinds"]["dub"]["bins"]
    assert sum(w for _, hi, w in rows if hi is None) == 20  # each: ran > ~120 s


async def test_every_policy_feeds_per_kind_stats_and_snapshots_leave_no_pending(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    now = anyio.current_time()
    handles: list[TaskHandle[Any]] = []
    for i in range(40):
        kind, after = (TaskKind.TTS, 8.0 + i % 5) if i % 2 else (TaskKind.DUB, 400.0 + i)
        handles.append(
            TaskHandle(
                client, kind, api.add_task(kind, after=after, created_at=now), created_at=now
            )
        )
    snapshot = await gather_statuses(client, handles, wait=False)
    assert not any(r.is_terminal for r in snapshot)
    stats = client.completion_stats
    assert stats.for_kind(TaskKind.TTS).pending == 0  # a snapshot watches nothing
    await gather_statuses(client, handles)  # the kinds' exponential defaults
    tts, dub = stats.for_kind(TaskKind.TTS), stats.for_kind(TaskKind.DUB)
    assert tts.completions == 20 and dub.completions == 20
    assert tts.pending == dub.pending == 0
    fit_tts, fit_dub = (stats.fit(k, anyio.current_time()) for k in (TaskKind.TTS, TaskKind.DUB))
    assert fit_tts is not None and fit_dub is not None
    assert 7.0 < fit_tts.median < 16.0
    assert 380.0 < fit_dub.median < 480.0


async def test_a_task_that_errors_is_forgotten_not_counted(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    now = anyio.current_time()
    ok = api.add_task(TaskKind.TTS, after=30.0, created_at=now)
    gone = api.add_task(TaskKind.TTS, after=1000.0, created_at=now)

    async def vanish() -> None:
        await anyio.sleep(10.0)
        del api.tasks[(TaskKind.TTS, gone)]  # the next poll answers 404

    async with anyio.create_task_group() as tg:
        tg.start_soon(vanish)
        out = await gather_statuses(
            client,
            [TaskHandle(client, TaskKind.TTS, i, created_at=now) for i in (ok, gone)],
            return_exceptions=True,
        )
    assert isinstance(out[0], StatusResult) and out[0].is_success
    assert isinstance(out[1], Exception)
    est = client.completion_stats.for_kind(TaskKind.TTS)
    assert est.pending == 0
    assert est.completions == 1
    assert len(client.completion_stats.to_dict()["kinds"]["tts"]["bins"]) == 1


def test_created_tasks_cost_no_extra_memory() -> None:
    import sys

    from camb_async.polling._scheduler import _CreatedTask, _Task

    policy = PollPolicy()
    plain = _Task(TaskKind.TTS, "a", policy, 0.0)
    created = _CreatedTask(TaskKind.TTS, "a", policy, 0.0)
    assert sys.getsizeof(created) == sys.getsizeof(plain)
    assert not hasattr(created, "__dict__")
