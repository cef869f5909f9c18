"""A RateBudget outlives event-loop runs (issue 13 item 10).

It stores loop-clock times (its sliding window, pacing, a 429 pause), and each run has its own
clock: trio's starts at a random offset, virtual clocks at 0. A budget reused in a later run
(``anyio.run`` twice, asyncio then trio, a module-level budget) must neither stall on times
from the old clock nor fail on a semaphore bound to the old loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
import trio.testing

from camb_async import AsyncCambClient, RateBudget
from camb_async.testing import FakeCambAPI

from ..conftest import API_KEY
from ..virtual_clock import VirtualTimeLoop

RATE = 5.0
REQUESTS = 10


def _virtual(backend: str) -> dict[str, Any]:
    if backend == "trio":
        return {"clock": trio.testing.MockClock(autojump_threshold=0)}
    return {"loop_factory": VirtualTimeLoop}


def _run(backend: str, main: Callable[[], Any], *, virtual: bool = True) -> Any:
    return anyio.run(main, backend=backend, backend_options=_virtual(backend) if virtual else {})


@pytest.mark.parametrize(
    "order", [("asyncio", "trio", "asyncio", "trio"), ("trio", "trio", "asyncio", "asyncio")]
)
def test_budget_reused_across_runs_neither_stalls_nor_fails(order: tuple[str, ...]) -> None:
    budget = RateBudget(RATE, max_concurrency=2)
    api = FakeCambAPI(api_key=API_KEY)
    task_id = api.add_task("tts", after=1e9)
    elapsed: list[float] = []

    async def main() -> None:
        # The first run leaves late clock times behind: requests after a long wait, then a
        # 429 pause. A later run's clock starts far below them.
        if not elapsed:
            await anyio.sleep(80_000)
            api.inject(status=429, retry_after="30")
        async with AsyncCambClient(
            API_KEY,
            base_url="http://localhost",
            budget=budget,
            transport=httpx.ASGITransport(app=api),
        ) as client:
            start = anyio.current_time()
            for _ in range(REQUESTS):
                await client.tts.status(task_id)
            elapsed.append(anyio.current_time() - start)

    for backend in order:
        _run(backend, main)
    assert len(elapsed) == len(order)
    # The first run waited out its own 429 pause; each later one only the pacing: 10
    # requests at 5/s, about 2 s (before: ~80,000 s of stale pause/pacing, or a RuntimeError
    # from a semaphore bound to the first loop).
    assert 30 <= elapsed[0] < 35
    assert all(e < REQUESTS / RATE + 1 for e in elapsed[1:]), elapsed
    assert budget.in_flight == 0


def test_budget_created_outside_any_loop_works_on_each_backend() -> None:
    budget = RateBudget(RATE, max_concurrency=1)

    async def main() -> float:
        start = anyio.current_time()
        for _ in range(3):
            await budget.acquire()
            budget.release()
        return anyio.current_time() - start

    for backend in ("trio", "asyncio", "trio"):
        assert _run(backend, main, virtual=False) < 2  # real clocks: trio's is offset


def test_budget_shared_by_two_live_loops_is_a_clear_error() -> None:
    """One budget serving two event loops at once (two threads) is refused with a clear
    message at the first use in the second loop, not a hang or a foreign-loop error."""
    budget = RateBudget(RATE, max_concurrency=2)
    errors: list[BaseException] = []

    async def second() -> None:
        try:
            await budget.acquire()
        except RuntimeError as exc:
            errors.append(exc)

    async def first() -> None:
        await budget.acquire()  # held while another loop tries to use the budget
        try:
            await anyio.to_thread.run_sync(lambda: anyio.run(second, backend="asyncio"))
        finally:
            budget.release()

    anyio.run(first, backend="trio")
    assert len(errors) == 1 and "another event loop" in str(errors[0])
