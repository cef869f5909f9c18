"""The examples/ programs, each exercised against FakeCambAPI.

The FastAPI and aiohttp services are served over TCP (uvicorn / aiohttp's own server, each in
a background thread with its own event loop) and called with httpx from the test, on asyncio
and trio; their camb-async client talks to FakeCambAPI served by uvicorn. Both examples have
the same routes, so the same tests run against each.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from camb_async import AsyncCambClient, PollPolicy, StatusResult, WaitTimeoutError
from camb_async.testing import FakeCambAPI, serve_in_thread

from ..conftest import API_KEY, load_example

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

FAST = PollPolicy(initial=0.05, factor=2.0, max_interval=0.2)


class serve_aiohttp:
    """Serve an aiohttp Application on a loopback port from a thread with its own loop."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def __enter__(self) -> str:
        from aiohttp import web

        async def main() -> None:
            self.stop = asyncio.Event()
            runner = web.AppRunner(self.app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = runner.addresses[0][1]
            self.ready.set()
            await self.stop.wait()
            await runner.cleanup()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            try:
                self.loop.run_until_complete(main())
            except BaseException as exc:
                self.error = exc
                self.ready.set()
            finally:
                self.loop.close()

        self.thread = threading.Thread(target=run, daemon=True, name="aiohttp-example")
        self.thread.start()
        assert self.ready.wait(10) and self.error is None, self.error
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc_info: object) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)


class Scenario:
    def __init__(self, api: FakeCambAPI) -> None:
        now = time.monotonic()
        self.api = api
        self.quick = [
            api.add_task("tts", f"quick-{i}", after=0.2 + i * 0.02, created_at=now)
            for i in range(12)
        ]
        self.slow = api.add_task("dub", "slow-1", after=3600, created_at=now)
        self.broken = api.add_task(
            "translate",
            "broken-1",
            status="ERROR",
            after=0.1,
            exception_reason="unsupported language pair",
            created_at=now,
        )


@pytest.fixture(scope="module")
def fake_api() -> Iterator[tuple[Scenario, str]]:
    api = FakeCambAPI(api_key=API_KEY, clock=time.monotonic)
    scenario = Scenario(api)
    with serve_in_thread(api) as url:
        yield scenario, url


@pytest.fixture(scope="module", params=["fastapi", "aiohttp"])
def service(
    request: pytest.FixtureRequest, fake_api: tuple[Scenario, str]
) -> Iterator[tuple[Scenario, str]]:
    scenario, api_url = fake_api
    options = {"api_key": API_KEY, "base_url": api_url, "policy": FAST, "rate_limit": 50.0}
    if request.param == "fastapi":
        app = load_example("fastapi_app").create_app(**options)
        with serve_in_thread(app, lifespan="on") as url:
            yield scenario, url
    else:
        app = load_example("aiohttp_app").create_app(**options)
        with serve_aiohttp(app) as url:
            yield scenario, url


async def test_wait_endpoint_returns_the_final_status(service: tuple[Scenario, str]) -> None:
    scenario, url = service
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        r = await http.get(f"/tasks/tts/{scenario.quick[0]}", params={"timeout": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["status"], body["done"], body["task_id"]) == ("SUCCESS", True, scenario.quick[0])
    assert isinstance(body["run_id"], int)


async def test_wait_endpoint_reports_failed_tasks(service: tuple[Scenario, str]) -> None:
    scenario, url = service
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        r = await http.get(f"/tasks/translate/{scenario.broken}", params={"timeout": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["status"], body["exception_reason"]) == ("ERROR", "unsupported language pair")


async def test_wait_endpoint_gives_202_with_last_status_on_timeout(
    service: tuple[Scenario, str],
) -> None:
    scenario, url = service
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        started = time.monotonic()
        r = await http.get(f"/tasks/dub/{scenario.slow}", params={"timeout": 0.5})
        elapsed = time.monotonic() - started
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "PENDING" and r.json()["done"] is False
    assert elapsed < 5  # the request was let go, not held until the task ended


async def test_wait_endpoint_unknown_task_is_404(service: tuple[Scenario, str]) -> None:
    _, url = service
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        r = await http.get("/tasks/tts/no-such-task", params={"timeout": 5})
    assert r.status_code == 404


async def test_bulk_status_endpoint_reports_each_task(service: tuple[Scenario, str]) -> None:
    scenario, url = service
    ids = [*scenario.quick[:5], "no-such-task"]
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        r = await http.post("/tasks/status", json={"kind": "tts", "task_ids": ids})
        bad = await http.post("/tasks/status", json={"kind": "podcast", "task_ids": ids})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["task_id"] for x in results] == ids
    assert all(x["status"] in ("PENDING", "SUCCESS") for x in results[:5])
    assert results[5]["error"] == "NotFoundError"
    assert bad.status_code in (400, 422)


async def test_concurrent_callers_share_one_client(service: tuple[Scenario, str]) -> None:
    """Many incoming requests at once: all answered, through the one client of the app."""
    scenario, url = service
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=url, timeout=20) as http:

        async def call(task_id: str) -> None:
            r = await http.get(f"/tasks/tts/{task_id}", params={"timeout": 10})
            statuses.append(r.status_code)
            assert r.json()["status"] == "SUCCESS"

        async with anyio.create_task_group() as tg:
            for task_id in scenario.quick:
                tg.start_soon(call, task_id)
    assert statuses == [200] * len(scenario.quick)


# ----------------------------------------------------------------------------- worker pool


async def test_worker_pool_handles_every_job_from_the_stream() -> None:
    example = load_example("worker_pool")
    api = FakeCambAPI(api_key=API_KEY)
    kinds = ["tts", "translate", "transcribe", "dub"]
    expected: dict[tuple[str, str], str] = {}
    send, receive = anyio.create_memory_object_stream[tuple[str, str]](4)
    done_order: list[str] = []

    async def on_done(job: tuple[str, str], outcome: Any) -> None:
        done_order.append(job[1])

    async def producer() -> None:
        async with send:
            for i in range(30):
                kind = kinds[i % 4]
                status = "ERROR" if i % 10 == 3 else "SUCCESS"
                task_id = api.add_task(kind, f"job-{i}", status=status, after=0.05 * (i % 6))
                expected[(kind, task_id)] = status
                await send.send((kind, task_id))
            slow = api.add_task("dub", "job-slow", after=3600)
            expected[("dub", slow)] = "PENDING"
            await send.send(("dub", slow))

    async with (
        AsyncCambClient(
            api_key=API_KEY,
            base_url="http://localhost",
            rate_limit=None,
            transport=httpx.ASGITransport(app=api),
        ) as client,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(producer)
        outcomes = await example.run_pool(
            client, receive, workers=5, timeout=1.0, policy=FAST, on_done=on_done
        )

    assert set(outcomes) == set(expected)
    for key, status in expected.items():
        outcome = outcomes[key]
        if status == "PENDING":
            assert isinstance(outcome, WaitTimeoutError)
            assert outcome.last is not None and outcome.last.status.value == "PENDING"
        else:
            assert isinstance(outcome, StatusResult) and outcome.status.value == status
    assert sorted(done_order) == sorted(task_id for _, task_id in expected)
    # From the server's log: how many tasks were being polled at once (first..last request).
    spans: dict[str, list[float]] = {}
    for entry in api.log:
        spans.setdefault(entry.path, []).append(entry.time)
    events = sorted(
        [(min(t), 1) for t in spans.values()] + [(max(t), -1) for t in spans.values()],
        key=lambda e: (e[0], e[1]),
    )
    overlap = peak = 0
    for _, delta in events:
        overlap += delta
        peak = max(peak, overlap)
    assert 1 < peak <= 5  # the pool ran jobs concurrently, never more than its workers
