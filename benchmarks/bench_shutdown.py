"""Shutdown and unreachable-server timings (issue 13 items 5 and 7), real time, both loops.

    .venv/bin/python benchmarks/bench_shutdown.py

(a) ``aclose()`` to every call ended. FakeCambAPI on uvicorn in a thread (real sockets). Ten
calls of every shape (single status checks, a handle wait, a bulk poll, a batch result fetch)
are parked behind the budget — a 429 pause (``Retry-After: 20``), rate pacing (one request
per 20 s), a full concurrency limit behind requests the server holds for 60 s, or a budget
backend that never grants — then ``aclose()`` is called; the time until the last call has
ended (each with ``ClientClosedError``) is reported.

(b) A refused port (bound, then closed: nothing listens). ``gather_statuses(100 ids,
wait=False)`` and ``wait=True`` with the default client (``max_retries=3``, 16 in flight):
time until ``APIConnectionError`` and connection attempts made (``RequestHooks``); and the CLI
``camb-async status dub X`` as a subprocess (wall time including interpreter start).

Writes ``benchmarks/results/shutdown.json``; prints a table.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from camb_async import (
    APIConnectionError,
    AsyncCambClient,
    ClientClosedError,
    RequestHooks,
    gather_statuses,
)
from camb_async.testing import FakeCambAPI, serve_in_thread

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
KEY = "sk-bench-0123456789abcdef"
BACKENDS = ("asyncio", "trio")


class NeverGrants:
    """A budget backend whose grant never comes (a fleet budget waiting on its store)."""

    max_concurrency = 16

    async def acquire(self) -> None:
        await anyio.sleep_forever()

    def release(self) -> None:
        pass

    def penalize(self, retry_after: float | None) -> None:
        pass


async def aclose_to_ended(url: str, api: FakeCambAPI, scenario: str) -> dict[str, Any]:
    ids = [api.add_task("dub", after=1e9) for _ in range(6)]
    options: dict[str, Any] = {"rate_limit": 50.0, "max_concurrency": 4}
    if scenario == "429 pause (Retry-After 20)":
        api.inject(status=429, retry_after="20")
    elif scenario == "rate pacing (1 per 20 s)":
        options = {"rate_limit": 0.05, "max_concurrency": 16}
    elif scenario == "concurrency limit (held 60 s)":
        api.inject(status=None, delay=60.0, count=1)
        options = {"rate_limit": None, "max_concurrency": 1}
    else:
        options = {"budget": NeverGrants()}
    client = AsyncCambClient(KEY, base_url=url, timeout=120, **options)
    ended: list[float] = []
    errors: list[str] = []

    async def run(call: Callable[[], Awaitable[Any]]) -> None:
        try:
            await call()
        except ClientClosedError:
            pass
        except BaseException as exc:
            errors.append(type(exc).__name__)
        ended.append(time.perf_counter())

    calls: list[Callable[[], Awaitable[Any]]] = [
        *(functools.partial(client.dub.status, i) for i in ids[:3]),
        client.dub.task(ids[3]).wait,
        functools.partial(gather_statuses, client, ids[4:], kind="dub"),
        functools.partial(client.dub.results, [1, 2]),
    ]
    async with anyio.create_task_group() as tg:
        for call in calls:
            tg.start_soon(run, call)
        await anyio.sleep(1.0)
        parked = len(calls) - len(ended)
        started = time.perf_counter()
        await client.aclose()
    return {"parked": parked, "seconds": max(ended) - started, "other_errors": errors}


def refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def refused(url: str, wait: bool) -> dict[str, Any]:
    attempts = [0]

    def start(method: str, path: str) -> None:
        attempts[0] += 1

    started = time.perf_counter()
    outcome = "returned"
    async with AsyncCambClient(
        KEY, base_url=url, hooks=RequestHooks(on_request_start=start)
    ) as client:
        try:
            await gather_statuses(client, [f"t{i}" for i in range(100)], kind="dub", wait=wait)
        except APIConnectionError:
            outcome = "APIConnectionError"
    return {"seconds": time.perf_counter() - started, "attempts": attempts[0], "outcome": outcome}


def cli_refused(url: str) -> dict[str, Any]:
    env = {**os.environ, "CAMB_API_KEY": KEY}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "camb_async.cli", "status", "dub", "X", "--base-url", url],
        env=env,
        capture_output=True,
        timeout=600,
    )
    return {"seconds": time.perf_counter() - started, "exit": proc.returncode}


def main() -> None:
    rows: list[dict[str, Any]] = []
    scenarios = [
        "429 pause (Retry-After 20)",
        "rate pacing (1 per 20 s)",
        "concurrency limit (held 60 s)",
        "budget backend never grants",
    ]
    for backend in BACKENDS:
        for scenario in scenarios:
            api = FakeCambAPI(api_key=KEY, clock=time.monotonic)
            with serve_in_thread(api, log_level="critical") as url:
                got = anyio.run(aclose_to_ended, url, api, scenario, backend=backend)
            rows.append({"figure": "aclose", "backend": backend, "scenario": scenario, **got})
        for wait in (False, True):
            got = anyio.run(refused, refused_url(), wait, backend=backend)
            rows.append(
                {
                    "figure": "refused",
                    "backend": backend,
                    "scenario": f"gather_statuses(100 ids, wait={wait})",
                    **got,
                }
            )
    rows.append(
        {
            "figure": "refused",
            "backend": "asyncio (CLI)",
            "scenario": "camb-async status dub X",
            **cli_refused(refused_url()),
        }
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "shutdown.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("| figure | loop | scenario | time | detail |")
    print("|---|---|---|---|---|")
    for row in rows:
        if row["figure"] == "aclose":
            detail = f"{row['parked']} calls parked; other errors: {row['other_errors'] or 'none'}"
        elif "attempts" in row:
            detail = f"{row['attempts']} connection attempts; {row['outcome']}"
        else:
            detail = f"exit {row['exit']}"
        name = "aclose() to all ended" if row["figure"] == "aclose" else "refused port"
        print(
            f"| {name} | {row['backend']} | {row['scenario']} | {row['seconds'] * 1000:.1f} ms"
            f" | {detail} |"
        )


if __name__ == "__main__":
    main()
