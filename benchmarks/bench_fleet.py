"""Fleet benchmark: several processes sharing one RedisRateBudget (issue 8's acceptance figures).

    .venv/bin/python benchmarks/bench_fleet.py [--quick]     # -> results/fleet.json too

Needs ``redis-server`` on PATH (Debian package); starts its own on a free loopback port. A
FakeCambAPI is served over loopback TCP from this process (uvicorn thread, time.monotonic
clock); the workers are separate processes (``python -m tests.tcp.redis_server worker``).

Scenarios, each printed as a row of one Markdown table:

* ``shared``: 3 workers x 300 tasks, one RedisRateBudget of 100 req/s. Acceptance: the
  server's busiest 1-s window <= 101; wall time within 1.6x of the ideal 900 / 100 = 9 s.
* ``shared, worker 1 on trio``: the same with the middle worker on trio beside two on asyncio
  (coredis: one code path on both loops).
* ``restart/wait`` and ``restart/local``: the same, with Redis stopped 1.5 s into the run and
  started again (empty: no persistence) 3 s later; ``on_redis_error="wait"`` and ``"local"``
  (fleet_size=3). Acceptance: every task finishes, no window after the restart exceeds 101.
* ``429``: 3 x 150 tasks; worker 0's 61st poll gets a 429 with Retry-After 3: the requests the
  *other* workers sent during those 3 s (from the server's log) show the fleet-wide pause.
* ``cluster ...``: the same on a local Redis Cluster (3 masters + 3 replicas on loopback,
  ``cluster=True``, ``cluster-node-timeout`` 1 s): ``shared``, and through a failover of the
  master serving the budget's slot 2 s into the run, ``CLUSTER FAILOVER`` on its replica and
  the master killed (SIGKILL). Failover figures: the longest time without a request at the
  server ("no progress s") and the busiest second around the switch (acceptance: at most one
  window's worth over the rate, once).
* peers, in the same run: ``uneven shared`` (600/200/100 tasks on one shared budget) against
  ``uneven split`` (the same tasks, each worker with a local RateBudget of 100/3 req/s, the
  static split one would use without Redis) and ``unshared`` (each worker its own 100 req/s,
  i.e. no fleet budget at all: what the server then sees).

Wall time runs from the first worker beginning to poll (imports done, client open) to the
last one finishing. It includes the one-window hold of a budget's first use (see
camb_async.redis) and, in the restart rows, the 3-s outage.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from camb_async.testing import FakeCambAPI, Fault  # noqa: E402
from tests.tcp.redis_server import FleetRun, LocalCluster, RedisServer, run_fleet  # noqa: E402

RATE = 100.0


def summarize(label: str, run: FleetRun, ideal: float, **extra: Any) -> dict[str, Any]:
    first = min(r.time for r in run.log)
    row: dict[str, Any] = {
        "scenario": label,
        "tasks done": sum(w["success"] for w in run.workers),
        "requests": len(run.log),
        "peak / 1 s": run.peak(1.0),
        "wall s": round(run.wall, 2),
        "wall / ideal": round(run.wall / ideal, 2),
        "to 1st request s": round(first - run.began, 2),
        "redis calls / grant": round(
            sum(w["redis_calls"] for w in run.workers)
            / max(1, sum(w["grants"] for w in run.workers)),
            2,
        ),
    }
    row.update(extra)
    print(json.dumps(row), flush=True)  # as it comes: a later failure keeps the earlier rows
    return row


def no_progress(run: FleetRun) -> tuple[float, float]:
    """The longest time without a request at the server, and when requests resumed."""
    times = sorted(r.time for r in run.log)
    gap, resumed = max((b - a, b) for a, b in itertools.pairwise(times))
    return gap, resumed


def cluster_rows(n: int, ideal: float, name: Callable[[], str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    options = {"cluster": True, "retry_interval": 0.25}
    with LocalCluster() as cluster:
        run = run_fleet(
            cluster.url,
            tasks=n,
            rate=RATE,
            name=name(),
            budget_options=options,
            backends=["asyncio", "trio"],
        )
        rows.append(summarize("cluster shared (worker 1 on trio)", run, ideal))
        for label in ("failover", "kill"):
            budget = name()
            master = cluster.master_of(f"camb-async:{{{budget}}}:log")
            replica = cluster.replica_of(master)
            action = (
                (lambda api, r=replica: r.cli("CLUSTER", "FAILOVER"))
                if label == "failover"
                else (lambda api, m=master: m.kill())
            )
            run = run_fleet(
                cluster.url,
                tasks=n,
                rate=RATE,
                name=budget,
                budget_options=options,
                backends=["asyncio", "trio"],
                during=[(2.0, label, action)],
            )
            gap, resumed = no_progress(run)
            switch = run.events[label]
            around = [r.time for r in run.log if switch - 1.0 <= r.time <= resumed + 1.0]
            rows.append(
                summarize(
                    f"cluster {'CLUSTER FAILOVER' if label == 'failover' else 'master killed'}",
                    run,
                    ideal,
                    **{
                        "no progress s": round(gap, 2),
                        "peak around the switch": FleetRun.peak_of(around),
                        "new master is the replica": cluster.master_of(
                            f"camb-async:{{{budget}}}:log"
                        ).port
                        == replica.port,
                        "outages seen": sum(w["outages"] for w in run.workers),
                    },
                )
            )
            if label == "kill":
                master.start()
            cluster.wait_ok()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--json",
        type=Path,
        default=Path(__file__).parent / "results" / "fleet.json",
        help="also write the rows here",
    )
    parser.add_argument("--quick", action="store_true", help="1/3 of the tasks")
    parser.add_argument("--only", choices=["single", "cluster"], help="one Redis setup only")
    args = parser.parse_args()
    n = 100 if args.quick else 300
    ideal = 3 * n / RATE
    rows: list[dict[str, Any]] = []

    def name() -> str:
        return f"bench-{uuid.uuid4().hex[:8]}"

    if args.only != "single":
        rows += cluster_rows(n, ideal, name)
    if args.only != "cluster":
        rows += single_rows(n, ideal, name)
    _print(rows, args.json)


def single_rows(n: int, ideal: float, name: Callable[[], str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with RedisServer() as server:
        run = run_fleet(server.url, tasks=n, rate=RATE, name=name())
        rows.append(summarize("shared", run, ideal))
        run = run_fleet(server.url, tasks=n, rate=RATE, name=name(), backends=["asyncio", "trio"])
        rows.append(summarize("shared, worker 1 on trio", run, ideal))

        for mode in ("wait", "local"):
            options: dict[str, Any] = {"on_redis_error": mode, "retry_interval": 0.25}
            if mode == "local":
                options["fleet_size"] = 3
            run = run_fleet(
                server.url,
                tasks=n,
                rate=RATE,
                name=name(),
                budget_options=options,
                during=[(1.5, "restart", lambda api: server.restart(down_for=3.0))],
            )
            rows.append(
                summarize(
                    f"restart/{mode}",
                    run,
                    ideal,
                    **{
                        "peak after recovery": run.peak(1.0, since=run.events["restart:done"]),
                        "outages seen": sum(w["outages"] for w in run.workers),
                        "local grants": sum(w["local_grants"] for w in run.workers),
                    },
                )
            )

        retry_after = 3.0

        def throttle(api: FakeCambAPI) -> None:
            api.inject(Fault(status=429, retry_after=str(retry_after)), path="/tts/w0-60")

        half = n // 2
        run = run_fleet(
            server.url, tasks=half, rate=RATE, name=name(), during=[(0.0, "429", throttle)]
        )
        (hit,) = [r for r in run.log if r.status == 429]
        t0 = hit.time
        others = [r.time for r in run.log if not r.path.startswith("/tts/w0-")]
        before = sum(1 for t in others if t0 - retry_after < t < t0)
        during = sum(1 for t in others if t0 < t < t0 + retry_after)
        after_news = sum(1 for t in others if t0 + 0.5 < t < t0 + retry_after)
        later = sorted(t for t in others if t > t0)
        gap = next((t for t in later if t > t0 + 0.5), t0) - t0
        rows.append(
            summarize(
                "429",
                run,
                3 * half / RATE + retry_after,
                **{
                    "others' requests in the 3 s before": before,
                    "in the 3 s after": during,
                    "after the first 0.5 s": after_news,
                    "others resumed after s": round(gap, 2),
                },
            )
        )

        uneven = [2 * n, 2 * n // 3, n // 3]
        run = run_fleet(server.url, tasks=uneven, rate=RATE, name=name())
        rows.append(summarize("uneven shared", run, sum(uneven) / RATE))
        run = run_fleet(server.url, tasks=uneven, rate=RATE, local_rate=RATE / 3)
        rows.append(summarize("uneven split (peer)", run, sum(uneven) / RATE))
        run = run_fleet(server.url, tasks=n, rate=RATE, local_rate=RATE)
        rows.append(summarize("unshared (peer)", run, ideal))

    return rows


def _print(rows: list[dict[str, Any]], path: Path) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row.get(k, "")) for k in keys) + " |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
