"""An unreachable server fails bulk calls fast (issue 13 item 7).

When every attempt of a poll fails to connect and the server answers nothing at all, that is
no task's own error: the call raises ``APIConnectionError`` once the request path's own
retries are done, instead of re-polling every task on its schedule (which took minutes). Tasks
are re-polled after connection failures only while the server answers something.
"""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest

from camb_async import (
    APIConnectionError,
    APITimeoutError,
    AsyncCambClient,
    PollPolicy,
    RequestHooks,
    TaskStatus,
    gather_statuses,
)
from camb_async.testing import FakeCambAPI, Fault

from ..conftest import API_KEY

pytestmark = pytest.mark.anyio

IDS = [f"task-{i}" for i in range(100)]
MAX_RETRIES = 2
MAX_CONCURRENCY = 16
#: Every worker's first poll, each with its retries; nothing more.
MAX_ATTEMPTS = MAX_CONCURRENCY * (MAX_RETRIES + 1)


class Attempts:
    def __init__(self) -> None:
        self.count = 0

    def hooks(self) -> RequestHooks:
        def start(method: str, path: str) -> None:
            self.count += 1

        return RequestHooks(on_request_start=start)


def refused_client(url: str, attempts: Attempts, **options: Any) -> AsyncCambClient:
    return AsyncCambClient(
        API_KEY,
        base_url=url,
        max_retries=MAX_RETRIES,
        max_concurrency=MAX_CONCURRENCY,
        rate_limit=None,
        hooks=attempts.hooks(),
        **options,
    )


def _refusing_transport(api: FakeCambAPI | None = None) -> httpx.AsyncBaseTransport:
    """Refuses every connection; with ``api``, refuses only while ``refusing[0]`` is set."""
    inner = httpx.ASGITransport(app=api) if api is not None else None

    class Refusing(httpx.AsyncBaseTransport):
        refusing = True

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            await anyio.lowlevel.checkpoint()
            if self.refusing or inner is None:
                raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
            return await inner.handle_async_request(request)

    return Refusing()


async def test_unreachable_on_virtual_time_fails_after_one_poll_each() -> None:
    """In-process twin of the socket test: a bulk wait on slow-polled kinds fails after the
    first polls' retries, not after ``max_errors`` re-polls of every task."""
    attempts = Attempts()
    async with AsyncCambClient(
        API_KEY,
        base_url="http://localhost",
        max_retries=MAX_RETRIES,
        max_concurrency=MAX_CONCURRENCY,
        rate_limit=None,
        hooks=attempts.hooks(),
        transport=_refusing_transport(),
    ) as client:
        start = anyio.current_time()
        for wait in (False, True):
            with pytest.raises(APIConnectionError):
                await gather_statuses(
                    client, IDS, kind="transcribe", wait=wait, return_exceptions=True
                )
        with pytest.raises(APIConnectionError):
            await client.transcription.task(IDS[0]).wait()
        # The request path's backoff only (well under 2 s a call), not the policy's minutes.
        assert anyio.current_time() - start < 10
    assert attempts.count <= 2 * MAX_ATTEMPTS + MAX_RETRIES + 1


async def test_repolls_go_on_while_the_server_answers_something() -> None:
    """One task's status hangs past the timeout while the others answer: that is the task's
    own problem, re-polled up to ``max_errors`` times and then put in its slot."""
    api = FakeCambAPI(api_key=API_KEY)
    good = [api.add_task("tts", after=30) for _ in range(5)]
    api.inject(Fault(status=None, delay=100), path="/tts/bad", count=1000)
    policy = PollPolicy(initial=1, factor=1, max_interval=1, jitter=0, max_errors=3)
    paths: list[str] = []
    async with AsyncCambClient(
        API_KEY,
        base_url="http://localhost",
        max_retries=0,
        timeout=2,
        rate_limit=None,
        transport=httpx.ASGITransport(app=api),
        hooks=RequestHooks(on_request_start=lambda m, p: paths.append(p)),
    ) as client:
        out = await gather_statuses(
            client, [*good, "bad"], kind="tts", policy=policy, return_exceptions=True
        )
        assert [getattr(r, "status", r) for r in out[:5]] == [TaskStatus.SUCCESS] * 5
        assert isinstance(out[5], APITimeoutError) and out[5].task_id == "bad"
        assert paths.count("/tts/bad") == 4  # 1 + max_errors


async def test_an_outage_after_answers_still_fails_fast() -> None:
    """The server answered before, then stops answering at all: the next poll that fails to
    connect with nothing answering meanwhile ends the call."""
    api = FakeCambAPI(api_key=API_KEY)
    ids = [api.add_task("tts", after=1e6) for _ in range(20)]
    transport: Any = _refusing_transport(api)
    transport.refusing = False
    async with AsyncCambClient(
        API_KEY, base_url="http://localhost", max_retries=1, rate_limit=None, transport=transport
    ) as client:

        async def outage() -> None:
            await anyio.sleep(30)
            transport.refusing = True

        async with anyio.create_task_group() as tg:
            tg.start_soon(outage)
            with pytest.raises(APIConnectionError):
                await gather_statuses(client, ids, kind="tts", return_exceptions=True)
            assert anyio.current_time() < 60
            assert len(api.log) >= 40
