"""Figure 3: 100,000 tracked tasks: memory per task and event-loop lag.

    .venv/bin/python benchmarks/bench_memory.py [--tasks 100000] [--backends asyncio,trio]

``gather_statuses(client, ids, kind="tts", timeout=4)`` over an in-process transport that
answers every status check ``PENDING`` at once (``rate_limit=None``, ``max_concurrency=16``:
the poller is never idle, the worst case for the loop). Beside it, the pattern users of the
official SDK write today, on the same client and transport: one coroutine per task, each
``while True: async with semaphore: status(); sleep(interval)``, under the same deadline.

The coroutine-per-task rows use 10,000 tasks (``--baseline-tasks``): at 100,000 that pattern
takes over a minute past its 4 s deadline, cancelling 100,000 semaphore waiters one by one.

Two passes per row, each in a fresh process: one plain (wall time and loop lag, from a
ticker that sleeps 10 ms and records how late it woke), one under ``tracemalloc`` (peak
traced bytes above the baseline, divided by the number of tasks; tracing slows Python, so
its lag is not reported). Writes ``benchmarks/results/memory.json``; prints a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
KEY = "bench-key"
BODY = b'{"status":"PENDING","run_id":null}'


async def _run(mode: str, n: int, traced: bool) -> dict[str, Any]:
    import anyio
    import httpx

    from camb_async import AsyncCambClient, PollPolicy, TaskStatus, gather_statuses

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=BODY)

    ids = [f"task-{i:06d}" for i in range(n)]
    lags: list[float] = []
    peak = 0
    async with AsyncCambClient(
        KEY,
        base_url="http://localhost",
        rate_limit=None,
        max_concurrency=16,
        transport=httpx.MockTransport(handler),
    ) as client:
        await client.tts.status("warm-up")
        stop = anyio.Event()

        async def ticker() -> None:
            nonlocal peak
            while not stop.is_set():
                before = anyio.current_time()
                await anyio.sleep(0.01)
                lags.append(anyio.current_time() - before - 0.01)
                if traced:
                    peak = max(peak, tracemalloc.get_traced_memory()[0])

        async def per_task_coroutines() -> list[Any]:
            """The official SDK's users' pattern: a coroutine per task, a semaphore."""
            sem = anyio.Semaphore(16)
            policy = PollPolicy.for_kind("tts")
            out: list[Any] = [None] * n

            async def follow(i: int, task_id: str) -> None:
                polls = 0
                while True:
                    async with sem:
                        out[i] = await client.tts.status(task_id)
                    polls += 1
                    if out[i].is_terminal:
                        return
                    await anyio.sleep(policy.next_interval(polls))

            with anyio.move_on_after(4):
                async with anyio.create_task_group() as tg:
                    for i, task_id in enumerate(ids):
                        tg.start_soon(follow, i, task_id)
            return out

        if traced:
            tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0] if traced else 0
        start = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            if mode == "camb-async":
                out = await gather_statuses(client, ids, kind="tts", timeout=4)
            else:
                out = await per_task_coroutines()
            wall = time.monotonic() - start
            stop.set()
        if traced:
            peak = max(peak, tracemalloc.get_traced_memory()[0]) - base
            tracemalloc.stop()
        polled = sum(1 for r in out if r is not None)
        pending = sum(1 for r in out if r is not None and r.status is TaskStatus.PENDING)
    lags.sort()
    return {
        "wall_s": round(wall, 2),
        "results": polled,
        "pending": pending,
        "peak_traced_bytes_per_task": round(peak / n, 1) if traced else None,
        "max_loop_lag_ms": round(lags[-1] * 1000, 1),
        "p99_loop_lag_ms": round(lags[int(len(lags) * 0.99)] * 1000, 1),
        "ticks": len(lags),
    }


def worker(mode: str, backend: str, n: int, traced: bool) -> dict[str, Any]:
    import anyio

    return anyio.run(_run, mode, n, traced, backend=backend)


def spawn(mode: str, backend: str, n: int, traced: bool) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", mode, "--backends", backend, "--tasks", str(n)]
    if traced:
        cmd.append("--traced")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode}/{backend} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| pattern | loop | tasks | traced bytes/task | max loop lag ms | p99 lag ms "
        "| wall s (timeout=4) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['pattern']} | {r['backend']} | {r['tasks']:,} | "
        f"{r['peak_traced_bytes_per_task']:.0f} | {r['max_loop_lag_ms']:.1f} | "
        f"{r['p99_loop_lag_ms']:.1f} | {r['wall_s']:.2f} |"
        for r in rows
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker")
    parser.add_argument("--traced", action="store_true")
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument(
        "--baseline-tasks",
        type=int,
        default=10_000,
        help="tasks for the coroutine-per-task pattern (its cancellation of "
        "100,000 semaphore waiters takes minutes)",
    )
    parser.add_argument("--backends", default="asyncio,trio")
    parser.add_argument("--patterns", default="camb-async,coroutine per task")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.backends, args.tasks, args.traced)))
        return 0
    rows = []
    for backend in args.backends.split(","):
        for mode in args.patterns.split(","):
            n = args.tasks if mode == "camb-async" else args.baseline_tasks
            plain = spawn(mode, backend, n, traced=False)
            traced = spawn(mode, backend, n, traced=True)
            row = {
                "pattern": mode,
                "backend": backend,
                "tasks": n,
                **plain,
                "peak_traced_bytes_per_task": traced["peak_traced_bytes_per_task"],
                "traced_wall_s": traced["wall_s"],
            }
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    result = {
        "figure": "100,000 tracked tasks: traced memory per task and event-loop lag "
        "(10 ms ticker); in-process transport answering PENDING; timeout=4",
        "command": "python benchmarks/bench_memory.py " + " ".join(sys.argv[1:]),
        "rows": rows,
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
