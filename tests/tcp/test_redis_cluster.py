"""RedisRateBudget on a real Redis Cluster (3 masters + 3 replicas on loopback), and through a
failover of the master that serves its slot: a manual one (``CLUSTER FAILOVER`` on its
replica) and a crash (the master killed).

The cluster is started once for the module (~2-3 s). A budget's keys share one hash tag, so
its script runs on one slot. Through a failover, requests go on once the replica took over,
and the server's rate exceeds the budget by at most one window's worth, once, during the
switch (a promoted replica may lack the last starts; each process re-adds its own).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import coredis
import pytest

from camb_async.redis import RedisRateBudget

from .redis_server import FleetRun, LocalCluster, run_fleet

pytestmark = [pytest.mark.redis]

RATE = 100
FLEET = {"cluster": True, "margin": 0.2, "retry_interval": 0.25}


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster() as local_cluster:
        yield local_cluster


def keys(name: str) -> list[str]:
    return [f"camb-async:{{{name}}}:{suffix}" for suffix in ("log", "state", "leases")]


@pytest.mark.anyio
async def test_one_budget_on_one_slot(cluster: LocalCluster) -> None:
    name = f"cl-{uuid.uuid4().hex[:8]}"
    a = RedisRateBudget.from_url(
        cluster.url,
        cluster=True,
        rate=5,
        name=name,
        window=10.0,
        smooth=0,
        reset_hold=0.0,
        max_concurrency=3,
    )
    # A caller's own RedisCluster client stands for a second process.
    own = coredis.RedisCluster("127.0.0.1", cluster.nodes[0].port)
    b = RedisRateBudget(
        own, rate=5, name=name, window=10.0, smooth=0, reset_hold=0.0, max_concurrency=3
    )
    async with a, b:
        for budget in (a, a, b):
            with anyio.fail_after(5):
                await budget.acquire()
        with anyio.move_on_after(0.5) as scope:
            await b.acquire()  # three leases out, fleet-wide
        assert scope.cancelled_caught
        for budget in (a, a, b):
            budget.release()
        with anyio.fail_after(5):
            await b.acquire()
            await b.acquire()  # 5 of 5 in the window
        with anyio.move_on_after(0.5) as scope:
            await a.acquire()
        assert scope.cancelled_caught
        b.release()
        b.release()
    master = cluster.master_of(keys(name)[0])
    assert {master.cli("EXISTS", key) for key in keys(name)[:2]} == {"1"}  # on its master


def gap(run: FleetRun) -> float:
    """The longest time without a request at the server."""
    times = sorted(r.time for r in run.log)
    return max(b - a for a, b in itertools.pairwise(times))


def check_failover(run: FleetRun, label: str, tasks: int) -> dict[str, Any]:
    assert [w["success"] for w in run.workers] == [tasks] * 3
    times = sorted(r.time for r in run.log)
    switch = run.events[label]
    longest = gap(run)
    # Out of the switch (from 1 s before it to 1 s after requests flow again), the budget.
    resumed = next(t for a, t in itertools.pairwise(times) if t - a == longest)
    outside = [t for t in times if t < switch - 1.0 or t > resumed + 1.0]
    figures = {
        "peak": run.peak(1.0),
        "gap s": round(longest, 2),
        "peak outside the switch": run.peak_of(outside),
    }
    assert figures["peak"] <= 2 * RATE + 1, figures  # one window's worth over, at most
    assert figures["peak outside the switch"] <= RATE + 1, figures
    return figures


def test_a_fleet_goes_on_through_a_manual_failover(cluster: LocalCluster) -> None:
    name = f"fo-{uuid.uuid4().hex[:6]}"
    master = cluster.master_of(keys(name)[0])
    replica = cluster.replica_of(master)

    def failover(api: object) -> None:
        assert replica.cli("CLUSTER", "FAILOVER") == "OK"

    run = run_fleet(
        cluster.url,
        workers=3,
        tasks=150,
        rate=RATE,
        name=name,
        budget_options=FLEET,
        backends=["asyncio", "trio"],
        during=[(2.0, "failover", failover)],
    )
    cluster.wait_ok()
    assert cluster.master_of(keys(name)[0]).port == replica.port
    figures = check_failover(run, "failover", 150)
    print("manual failover:", figures)


def test_a_fleet_goes_on_when_the_master_dies(cluster: LocalCluster) -> None:
    name = f"kill-{uuid.uuid4().hex[:6]}"
    master = cluster.master_of(keys(name)[0])
    replica = cluster.replica_of(master)
    try:
        run = run_fleet(
            cluster.url,
            workers=3,
            tasks=200,
            rate=RATE,
            name=name,
            budget_options=FLEET,
            backends=["asyncio", "trio"],
            during=[(2.0, "kill", lambda api: master.kill())],
        )
        assert cluster.master_of(keys(name)[0]).port == replica.port
        figures = check_failover(run, "kill", 200)
        print("master killed:", figures)
        assert sum(w["outages"] for w in run.workers) >= 3  # each saw it
    finally:
        master.start()  # back as a replica of the new master
        cluster.wait_ok()
