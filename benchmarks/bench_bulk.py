"""Bulk-poller acceptance figures (issue 3), printed and written to results/bulk_<backend>.json.

  A. 2,000 tasks of the four kinds finishing at random times within 6 s, polled over real
     loopback TCP (FakeCambAPI on uvicorn) with rate_limit=150, max_concurrency=32.
  B. Server allows 120 req/s, client asks for 200, 20 % injected transient faults.
The third acceptance figure (100,000 PENDING ids: memory per task, loop lag, timeout=4) is
``bench_memory.py``'s, beside the coroutine-per-task pattern.

Run: .venv/bin/python benchmarks/bench_bulk.py [--backend asyncio|trio] [--only A,B]
Exit status 0 when every acceptance line holds.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from camb_async import AsyncCambClient, TaskKind, gather_statuses
from camb_async.testing import peak_per_window

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import FakeServer

KEY = "bench-key"
KINDS = list(dict.fromkeys(TaskKind))
RESULTS = Path(__file__).parent / "results"


def _script(n: int, horizon: float, seed: int) -> list[dict[str, Any]]:
    """``FakeCambAPI.add_task`` arguments: the four kinds, mostly SUCCESS, random end times."""
    rng = random.Random(seed)
    return [
        {
            "kind": KINDS[i % 4].value,
            "task_id": f"{KINDS[i % 4].value}-{i}",
            "status": rng.choices(
                ["SUCCESS", "ERROR", "TIMEOUT", "PAYMENT_REQUIRED"], [85, 7, 5, 3]
            )[0],
            "after": rng.uniform(0, horizon),
        }
        for i in range(n)
    ]


async def _poll(url: str, tasks: list[dict[str, Any]], rate: float) -> tuple[list[Any], float, Any]:
    async with AsyncCambClient(KEY, base_url=url, rate_limit=rate, max_concurrency=32) as client:
        handles = [client.task(t["kind"], t["task_id"]) for t in tasks]
        start = time.monotonic()
        out = await gather_statuses(client, handles, return_exceptions=True)
        return out, time.monotonic() - start, client.budget


def _correct(out: list[Any], tasks: list[dict[str, Any]]) -> bool:
    return all(
        not isinstance(r, BaseException)
        and r.task_id == t["task_id"]
        and r.raw_status == t["status"]
        for r, t in zip(out, tasks, strict=True)
    )


def scenario_a(backend: str) -> dict[str, Any]:
    tasks = _script(2000, 6.0, seed=3)
    # The fake API runs in its own process: sharing the client's GIL would delay and bunch
    # the arrival times it logs.
    server = FakeServer(tasks, api_key=KEY)
    with server as url:
        out, wall, _ = anyio.run(_poll, url, tasks, 150, backend=backend)
        log = server.log()
    correct = _correct(out, tasks)
    requests = len(log)
    peak = peak_per_window(t for t, _, _, _ in log)
    bound = 1.5 * max(2000 / 150, 6.0)
    return {
        "tasks": 2000,
        "rate_limit": 150,
        "max_concurrency": 32,
        "policy": "per-kind defaults",
        "all_correct_in_order": correct,
        "server_peak_per_1s": peak,
        "wall_s": round(wall, 2),
        "wall_bound_s": bound,
        "requests": requests,
        "requests_per_task": round(requests / 2000, 3),
        "pass": correct and peak <= 151 and wall <= bound and requests / 2000 <= 2,
    }


def scenario_b(backend: str) -> dict[str, Any]:
    tasks = _script(2000, 6.0, seed=5)
    server = FakeServer(tasks, api_key=KEY, rate_limit=120, fault_rate=0.2, seed=11)
    with server as url:
        out, wall, budget = anyio.run(_poll, url, tasks, 200, backend=backend)
        log = server.log()
    by_status: dict[str, int] = {}
    for _, status, _, fault in log:
        key = f"{status} {fault}" if fault else str(status)
        by_status[key] = by_status.get(key, 0) + 1
    n429 = sum(1 for _, status, _, _ in log if status == 429)
    correct = _correct(out, tasks)
    return {
        "tasks": 2000,
        "server_rate_limit": 120,
        "client_rate_limit": 200,
        "fault_rate": 0.2,
        "all_correct": correct,
        "requests": len(log),
        "answers_by_status": dict(sorted(by_status.items())),
        "share_429": round(n429 / len(log), 4),
        "budget_pauses": getattr(budget, "pauses", None),
        "budget_cuts": getattr(budget, "cuts", None),
        "wall_s": round(wall, 2),
        "pass": correct and n429 / len(log) < 0.15,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--only", default="A,B")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "machine": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "backend": args.backend,
        }
    }
    runners = {"A": scenario_a, "B": scenario_b}
    names = args.only.split(",")
    for name in names:
        result = runners[name](args.backend)
        report[name] = result
        print(f"{name}: " + json.dumps(result), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"bulk_{args.backend}.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(report[n]["pass"] for n in names) else 1


if __name__ == "__main__":
    raise SystemExit(main())
