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
from camb_async.testing import TRANSIENT_FAULTS, FakeCambAPI, LoggedRequest

KEY = "bench-key"
KINDS = list(dict.fromkeys(TaskKind))
RESULTS = Path(__file__).parent / "results"


def _script(api: FakeCambAPI, n: int, horizon: float, seed: int
            ) -> list[tuple[TaskKind, str, str]]:
    rng = random.Random(seed)
    tasks = []
    for i in range(n):
        kind = KINDS[i % 4]
        status = rng.choices(["SUCCESS", "ERROR", "TIMEOUT", "PAYMENT_REQUIRED"],
                             [85, 7, 5, 3])[0]
        task_id = api.add_task(kind, f"{kind.value}-{i}", status=status,
                               after=rng.uniform(0, horizon))
        tasks.append((kind, task_id, status))
    return tasks


class served_in_subprocess:  # lower case: used like a function
    """Serve a scripted FakeCambAPI from a forked process; its request log comes back at exit.

    The server must not share the client's GIL: in one process, server-side arrival times
    lag by however long the client's code holds the interpreter, which bunches them.
    """

    def __init__(self, api: FakeCambAPI) -> None:
        self.api = api

    def __enter__(self) -> str:
        import multiprocessing as mp
        import socket

        ctx = mp.get_context("fork")
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._stop = ctx.Event()
        self._ready = ctx.Event()
        self._queue: Any = ctx.Queue()
        self._proc = ctx.Process(target=self._child, args=(sock,), daemon=True)
        self._proc.start()
        sock.close()
        if not self._ready.wait(15):
            raise RuntimeError("fake server did not start")
        return f"http://127.0.0.1:{self.port}"

    def _child(self, sock: Any) -> None:
        import threading

        import uvicorn

        server = uvicorn.Server(uvicorn.Config(self.api, log_level="warning", lifespan="off",
                                               access_log=False))

        def watch() -> None:
            while not server.started:
                time.sleep(0.01)
            self._ready.set()
            self._stop.wait()
            server.should_exit = True

        threading.Thread(target=watch, daemon=True).start()
        server.run(sockets=[sock])
        self._queue.put(([(r.time, r.method, r.path, r.status, r.fault) for r in self.api.log],
                         self.api.epoch))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        log, epoch = self._queue.get(timeout=30)
        self._proc.join(10)
        self.api.log[:] = [LoggedRequest(*entry) for entry in log]
        self.api.epoch = epoch


def scenario_a(backend: str) -> dict[str, Any]:
    api = FakeCambAPI(api_key=KEY, clock=time.monotonic)
    tasks = _script(api, 2000, 6.0, seed=3)
    with served_in_subprocess(api) as url:

        async def poll_all() -> tuple[list[Any], float]:
            async with AsyncCambClient(KEY, base_url=url, rate_limit=150,
                                       max_concurrency=32) as client:
                handles = [client.task(kind, tid) for kind, tid, _ in tasks]
                start = time.monotonic()
                out = await client.gather_statuses(handles)
                return out, time.monotonic() - start

        out, wall = anyio.run(poll_all, backend=backend)
    correct = all(r.task_id == tid and r.raw_status == status
                  for r, (_, tid, status) in zip(out, tasks, strict=True))
    requests = len(api.log)
    peak = api.peak_per_window(1.0)
    bound = 1.5 * max(2000 / 150, 6.0)
    return {
        "tasks": 2000, "rate_limit": 150, "max_concurrency": 32, "policy": "per-kind defaults",
        "all_correct_in_order": correct,
        "server_peak_per_1s": peak,
        "wall_s": round(wall, 2), "wall_bound_s": bound,
        "requests": requests, "requests_per_task": round(requests / 2000, 3),
        "pass": correct and peak <= 151 and wall <= bound and requests / 2000 <= 2,
    }


def scenario_b(backend: str) -> dict[str, Any]:
    api = FakeCambAPI(api_key=KEY, clock=time.monotonic, rate_limit=120, fault_rate=0.2,
                      faults=TRANSIENT_FAULTS, seed=11)
    tasks = _script(api, 2000, 6.0, seed=5)
    with served_in_subprocess(api) as url:

        async def poll_all() -> tuple[list[Any], float, Any]:
            async with AsyncCambClient(KEY, base_url=url, rate_limit=200,
                                       max_concurrency=32) as client:
                handles = [client.task(k, t) for k, t, _ in tasks]
                start = time.monotonic()
                out = await gather_statuses(client, handles, return_exceptions=True)
                return out, time.monotonic() - start, client.budget

        out, wall, budget = anyio.run(poll_all, backend=backend)
    correct = all(not isinstance(r, BaseException) and r.raw_status == status
                  for r, (_, _, status) in zip(out, tasks, strict=True))
    by_status: dict[str, int] = {}
    for r in api.log:
        key = f"{r.status} {r.fault}" if r.fault else str(r.status)
        by_status[key] = by_status.get(key, 0) + 1
    n429 = sum(1 for r in api.log if r.status == 429)
    return {
        "tasks": 2000, "server_rate_limit": 120, "client_rate_limit": 200, "fault_rate": 0.2,
        "all_correct": correct, "requests": len(api.log),
        "answers_by_status": dict(sorted(by_status.items())),
        "share_429": round(n429 / len(api.log), 4),
        "budget_pauses": getattr(budget, "pauses", None),
        "budget_cuts": getattr(budget, "cuts", None),
        "wall_s": round(wall, 2),
        "pass": correct and n429 / len(api.log) < 0.15,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--only", default="A,B")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                    "backend": args.backend},
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
