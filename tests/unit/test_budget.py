"""RateBudget on its own: the window, GCRA pacing and burst, the 429 cut and its recovery.

Virtual time on both loops (tests/conftest.py), so every start time is exact: a start at
``t`` is asserted at ``t`` (to a microsecond, for the asyncio twin's nanosecond per jump).
``margin=0`` keeps the window at exactly 1 s so the figures read as the rule states them.
"""

from __future__ import annotations

import math

import anyio
import pytest

from camb_async import RateBudget

pytestmark = pytest.mark.anyio


def approx(values: list[float]) -> object:
    return pytest.approx(values, abs=1e-6)


async def starts(budget: RateBudget, n: int, *, hold: float = 0.0) -> list[float]:
    """Start ``n`` requests at once (each holds its slot ``hold`` s); their start times,
    relative to the call, in start order."""
    t0 = anyio.current_time()
    times: list[float] = []

    async def one() -> None:
        await budget.acquire()
        times.append(anyio.current_time() - t0)
        try:
            await anyio.sleep(hold)
        finally:
            budget.release()

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    return sorted(times)


def per_window(times: list[float], window: float = 1.0) -> int:
    """The most starts in any window [t, t + window) (t at a start)."""
    return max(sum(1 for u in times if t <= u < t + window - 1e-6) for t in times)


# ----------------------------------------------------------------------------- the window


async def test_a_full_burst_allowance_gives_rate_starts_per_window_and_no_more() -> None:
    budget = RateBudget(5, 100, margin=0, burst=5)
    times = await starts(budget, 15)
    assert times == approx([0.0] * 5 + [1.0] * 5 + [2.0] * 5)
    assert per_window(times) == 5


async def test_the_margin_widens_the_window() -> None:
    budget = RateBudget(5, 100, margin=0.25, burst=5)
    times = await starts(budget, 10)
    assert times == approx([0.0] * 5 + [1.25] * 5)


async def test_no_rate_means_no_waiting() -> None:
    budget = RateBudget(None, 100)
    assert await starts(budget, 50) == approx([0.0] * 50)
    assert budget.rate is None and budget.current_rate() is None


# ----------------------------------------------------------------------------- GCRA pacing


async def test_starts_are_paced_one_per_interval_by_default() -> None:
    """The default burst is a tenth of the rate (1 here): one start per 1/rate s."""
    budget = RateBudget(10, 100, margin=0)
    assert budget.burst == 1.0
    times = await starts(budget, 20)
    assert times == approx([0.1 * i for i in range(20)])
    assert per_window(times) == 10


async def test_a_burst_starts_back_to_back_then_pacing_resumes() -> None:
    budget = RateBudget(10, 100, margin=0, burst=3)
    times = await starts(budget, 10)
    assert times == approx([0.0, 0.0, 0.0] + [0.1 * i for i in range(1, 8)])


async def test_the_burst_comes_back_after_idling() -> None:
    budget = RateBudget(10, 100, margin=0, burst=3)
    await starts(budget, 10)  # the last at 0.7
    await anyio.sleep(5.0)
    assert await starts(budget, 4) == approx([0.0, 0.0, 0.0, 0.1])


def test_a_burst_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="burst"):
        RateBudget(10, burst=0.5)


# ----------------------------------------------------------------------------- 429: the cut


async def test_a_429_pauses_every_start_and_halves_the_rate() -> None:
    budget = RateBudget(10, 100, margin=0, recovery=0)
    budget.penalize(None)  # default_pause: 1 s
    assert (budget.pauses, budget.cuts, budget.current_rate()) == (1, 1, 5.0)
    assert budget.paused_until == pytest.approx(anyio.current_time() + 1.0)
    assert await starts(budget, 5) == approx([1.0, 1.2, 1.4, 1.6, 1.8])


async def test_a_burst_of_429s_in_one_window_is_one_cut() -> None:
    budget = RateBudget(10, 100, margin=0, recovery=0)
    for _ in range(5):  # the 429s of requests that were already in flight
        budget.penalize(0)
    assert (budget.cuts, budget.current_rate()) == (1, 5.0)
    await anyio.sleep(0.999)
    budget.penalize(0)
    assert (budget.cuts, budget.current_rate()) == (1, 5.0)
    await anyio.sleep(0.001)
    budget.penalize(0)  # a window after the cut: a new signal
    assert (budget.cuts, budget.current_rate()) == (2, 2.5)


async def test_the_next_cut_window_counts_from_the_end_of_the_pause() -> None:
    budget = RateBudget(10, 100, margin=0, recovery=0)
    budget.penalize(2.0)  # paused until 2; the cut "happens" at 2
    await anyio.sleep(2.5)
    budget.penalize(0)  # 0.5 s after the pause ended: the same signal
    assert budget.cuts == 1
    await anyio.sleep(0.5)
    budget.penalize(0)
    assert (budget.cuts, budget.current_rate()) == (2, 2.5)


async def test_decrease_sets_the_cut() -> None:
    budget = RateBudget(10, 100, margin=0, recovery=0, decrease=0.8)
    budget.penalize(0)
    assert budget.current_rate() == pytest.approx(8.0)


# ----------------------------------------------------------------------------- recovery


async def test_the_rate_grows_back_linearly_from_the_end_of_the_pause() -> None:
    budget = RateBudget(10, 100, margin=0, recovery=2.0)
    t0 = anyio.current_time()
    budget.penalize(1.0)  # cut to 5 at t0 + 1
    rates = [budget.current_rate(t0 + dt) for dt in (0.5, 1.0, 2.0, 3.0, 3.5, 10.0)]
    assert rates == pytest.approx([5.0, 5.0, 7.0, 9.0, 10.0, 10.0])


async def test_default_recovery_is_back_to_full_rate_in_five_windows_after_a_halving() -> None:
    budget = RateBudget(10, 100, margin=0)
    assert budget.recovery == 1.0
    t0 = anyio.current_time()
    budget.penalize(0)
    assert budget.current_rate(t0 + 2.5) == pytest.approx(7.5)
    assert budget.current_rate(t0 + 5.0) == pytest.approx(10.0)


async def test_a_cut_while_recovering_cuts_the_rate_in_force() -> None:
    budget = RateBudget(10, 100, margin=0)  # recovery 1/s
    budget.penalize(0)  # 5
    await anyio.sleep(1.0)  # back to 6
    budget.penalize(0)
    assert budget.current_rate() == pytest.approx(3.0)
    assert budget.cuts == 2


async def test_pacing_follows_the_recovering_rate() -> None:
    budget = RateBudget(10, 100, margin=0, recovery=5.0)
    budget.penalize(0)  # 5 now, 10 one second later
    times = await starts(budget, 3)
    assert times == approx([0.0, 0.2, 0.2 + 1 / 6])  # 1/rate at each start: 5, then 6


# ----------------------------------------------------------------------------- min_rate


async def test_cuts_stop_at_min_rate() -> None:
    budget = RateBudget(10, 100, margin=0, recovery=0, min_rate=4.0)
    rates = []
    for _ in range(3):
        budget.penalize(0)
        rates.append(budget.current_rate())
        await anyio.sleep(1.0)
    assert rates == pytest.approx([5.0, 4.0, 4.0])
    assert budget.cuts == 3


def test_min_rate_is_never_above_the_rate() -> None:
    assert RateBudget(2.0, min_rate=5.0).min_rate == 2.0
    assert RateBudget(None, min_rate=5.0).min_rate == 5.0


async def test_below_one_request_per_window_starts_wait_whole_intervals() -> None:
    budget = RateBudget(1, 100, margin=0, recovery=0, min_rate=0.5)
    budget.penalize(0)
    assert budget.current_rate() == 0.5
    assert await starts(budget, 3) == approx([0.0, 2.0, 4.0])


# ----------------------------------------------------------------------------- concurrency


async def test_max_concurrency_bounds_requests_in_flight() -> None:
    budget = RateBudget(None, 2)
    peak = 0

    async def watch() -> None:
        nonlocal peak
        for _ in range(40):
            peak = max(peak, budget.in_flight)
            await anyio.sleep(0.1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        times = await starts(budget, 5, hold=1.0)
    assert times == approx([0.0, 0.0, 1.0, 1.0, 2.0])
    assert (peak, budget.in_flight, budget.max_concurrency) == (2, 0, 2)


async def test_rate_and_concurrency_limits_together() -> None:
    budget = RateBudget(10, 1, margin=0, burst=10)
    assert await starts(budget, 3, hold=0.5) == approx([0.0, 0.5, 1.0])


async def test_a_cancelled_acquire_gives_its_slot_back() -> None:
    budget = RateBudget(1, 1, margin=0)
    await budget.acquire()  # the one start of this window
    budget.release()
    with anyio.move_on_after(0.5):
        await budget.acquire()  # waits for the window: cancelled while holding the slot
    assert budget.in_flight == 0
    assert await starts(budget, 1) == approx([0.5])


async def test_an_acquire_cancelled_at_its_checkpoint_holds_no_slot() -> None:
    """A free slot is taken before the acquire's checkpoint: a caller cancelled there (its
    scope cancelled before it ran) gets the slot back, and the next caller gets it."""
    budget = RateBudget(None, 1)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await budget.acquire()
    assert scope.cancelled_caught
    assert budget.in_flight == 0
    with anyio.fail_after(1):
        await budget.acquire()
    assert budget.in_flight == 1
    budget.release()


@pytest.mark.parametrize(
    ("concurrency", "error"), [(0, ValueError), (1.5, TypeError), (True, TypeError)]
)
def test_bad_max_concurrency_is_refused(concurrency: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        RateBudget(10, concurrency)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- penalize


async def test_penalize_without_retry_after_pauses_for_default_pause() -> None:
    budget = RateBudget(None, 10, default_pause=2.5)
    budget.penalize(None)
    assert await starts(budget, 2) == approx([2.5, 2.5])
    assert (budget.pauses, budget.cuts) == (1, 0)  # no rate, nothing to cut


async def test_penalize_with_retry_after_pauses_for_it() -> None:
    budget = RateBudget(None, 10)
    budget.penalize(3.0)
    assert await starts(budget, 1) == approx([3.0])


async def test_a_shorter_pause_does_not_shorten_a_longer_one() -> None:
    budget = RateBudget(None, 10)
    t0 = anyio.current_time()
    budget.penalize(3.0)
    budget.penalize(1.0)
    assert budget.pauses == 1 and budget.paused_until == pytest.approx(t0 + 3.0)
    budget.penalize(4.0)
    assert budget.pauses == 2 and budget.paused_until == pytest.approx(t0 + 4.0)


@pytest.mark.parametrize(("retry_after", "pause"), [(-5.0, 0.0), (1e9, 60.0), (math.inf, 60.0)])
async def test_retry_after_is_clamped_to_zero_and_max_pause(
    retry_after: float, pause: float
) -> None:
    budget = RateBudget(None, 10)
    t0 = anyio.current_time()
    budget.penalize(retry_after)
    assert budget.paused_until == pytest.approx(t0 + pause)


async def test_max_pause_is_configurable() -> None:
    budget = RateBudget(None, 10, max_pause=5.0)
    budget.penalize(30.0)
    assert await starts(budget, 1) == approx([5.0])
