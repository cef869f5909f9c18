"""Fleets of worker processes sharing one RedisRateBudget (issue 8's acceptance, as tests).

A FakeCambAPI is served over loopback TCP from this process; three worker processes (see
tests/redis_server.py) poll their own tasks through one budget on a real redis-server. The
assertions are on counts from the server's log: tasks finished, requests in the busiest
1-second window, requests during a pause. Wall times are benchmarks/bench_fleet.py's.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from camb_async.testing import FakeCambAPI, Fault

from .redis_server import RedisServer, run_fleet

pytestmark = pytest.mark.redis


# The server counts arrivals, so its count also holds the jitter of every process between
# Redis's admission and the server's clock read. This machine is shared by many busy
# processes (load 5-9 on 2 cores seen): at the default 10 % margin a server window held
# 105 once in about ten runs at that load. The pass/fail tests give the margin for such a
# host; benchmarks/bench_fleet.py reports the default's figures.
FLEET = {"margin": 0.2}


def _others(log: list[Any], prefix: str, lo: float, hi: float) -> int:
    return sum(1 for r in log if lo < r.time < hi and not r.path.startswith(prefix))


def test_three_processes_share_one_budget(redis_server: RedisServer) -> None:
    run = run_fleet(
        redis_server.url,
        workers=3,
        tasks=300,
        rate=100,
        name=f"fleet-{uuid.uuid4().hex[:6]}",
        budget_options=FLEET,
        backends=["asyncio", "trio"],
    )  # one trio worker among asyncio ones
    assert [w["backend"] for w in run.workers] == ["asyncio", "trio", "asyncio"]
    assert [w["success"] for w in run.workers] == [300, 300, 300]
    assert len(run.log) == 900 and all(r.status == 200 for r in run.log)
    assert run.peak(1.0) <= 101, f"server saw {run.peak(1.0)} requests in one second"
    assert run.wall < 60  # generous: the figure itself is benchmarks/bench_fleet.py's


def test_a_429_in_one_process_pauses_the_others(redis_server: RedisServer) -> None:
    retry_after = 2.0

    def throttle(api: FakeCambAPI) -> None:
        # Worker 0 polls its tasks in order: its 61st poll, ~2 s into the run,, gets the 429.
        api.inject(Fault(status=429, retry_after=str(retry_after)), path="/tts/w0-60")

    # recovery=100: back to the full rate 0.5 s after the pause (the default takes 5 s; the
    # cut itself is checked in-process above), to keep this test short.
    run = run_fleet(
        redis_server.url,
        workers=3,
        tasks=100,
        rate=100,
        name=f"fleet-{uuid.uuid4().hex[:6]}",
        budget_options={**FLEET, "recovery": 100.0},
        during=[(0.0, "429", throttle)],
    )
    assert [w["success"] for w in run.workers] == [100, 100, 100]
    (hit,) = [r for r in run.log if r.status == 429]
    assert hit.path.startswith("/tts/w0-")
    assert run.workers[0]["pauses"] == 1
    t0 = hit.time
    # Before the 429 the other two were polling; during its Retry-After nobody was, except
    # requests already admitted when it arrived (0.75 s of slack for the news to spread).
    assert _others(run.log, "/tts/w0-", t0 - 1.0, t0) > 10
    assert _others(run.log, "/tts/w0-", t0 + 0.75, t0 + retry_after - 0.1) == 0
    assert sum(1 for r in run.log if t0 + 0.75 < r.time < t0 + retry_after - 0.1) == 0
    assert run.peak(1.0) <= 101


def test_redis_restart_mid_run() -> None:
    """Redis stops for 2 s and comes back empty; the workers fall back to a third each."""
    options = {**FLEET, "retry_interval": 0.25, "on_redis_error": "local", "fleet_size": 3}
    with RedisServer() as server:
        run = run_fleet(
            server.url,
            workers=3,
            tasks=100,
            rate=100,
            name="restarted",
            budget_options=options,
            backends=["asyncio", "trio"],
            during=[(1.0, "restart", lambda api: server.restart(down_for=2.0))],
        )
    assert [w["success"] for w in run.workers] == [100, 100, 100]  # no crash, all done
    assert all(w["outages"] >= 1 for w in run.workers)  # each saw Redis go
    assert sum(w["local_grants"] for w in run.workers) > 0  # and carried on locally
    assert run.peak(1.0) <= 101  # into the fallback, on it, and back
    assert run.peak(1.0, since=run.events["restart:done"]) <= 101
    # Redis lost its data: the first caller after the restart found no state and held.
    assert sum(w["resets_seen"] for w in run.workers) >= 2
