"""Cancellation over real sockets: the pool lends out nothing after a cancellation. The
in-process trials and the helpers are in tests/unit/test_cancellation.py.
"""

from __future__ import annotations

import random
import time

import anyio
import pytest

from camb_async import AsyncCambClient, RateBudget
from camb_async.testing import FakeCambAPI, Fault, serve_in_thread

from ..conftest import API_KEY
from ..unit.test_cancellation import OPERATIONS, TRIALS, assert_clean, cancel_after, running_tasks

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_cancel_over_real_sockets_returns_every_connection(backend: str) -> None:
    """Same trials through uvicorn: the pool lends out nothing after a cancellation."""
    rng = random.Random(f"sockets-{backend}")
    api = FakeCambAPI(
        api_key=API_KEY,
        clock=time.monotonic,
        fault_rate=0.3,
        seed=1,
        faults=(Fault(status=None, delay=0.05), Fault(status=503), Fault(status=None, reset=True)),
    )
    ids = [api.add_task("translate", f"t{i}", after=1e9) for i in range(8)]
    stats = {"mid_request": 0}

    async def main(url: str) -> None:
        baseline = running_tasks()
        async with AsyncCambClient(
            API_KEY, base_url=url, max_concurrency=1, rate_limit=None, timeout=5
        ) as client:
            budget = client.budget
            assert isinstance(budget, RateBudget)
            for trial in range(TRIALS):
                op = list(OPERATIONS.values())[trial % 4]
                stats["mid_request"] += await cancel_after(rng.uniform(0, 0.03), op, client, ids)
                await anyio.lowlevel.checkpoint()
                await assert_clean(client, api, baseline)
                with anyio.fail_after(5):  # max_concurrency=1: a leaked slot would hang here
                    result = await client.translation.status(ids[0])
                assert result.raw_status == "PENDING"
                await assert_clean(client, api, baseline)

    with serve_in_thread(api, log_level="critical") as url:
        anyio.run(main, url, backend=backend)
    assert stats["mid_request"] >= 10
