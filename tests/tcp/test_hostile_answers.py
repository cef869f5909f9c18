"""Hostile answers over real sockets (uvicorn): timeouts, resets and slow faults. The
in-process cases and the helpers are in tests/unit/test_hostile_answers.py.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from camb_async import APIConnectionError, APITimeoutError, AsyncCambClient, CambError
from camb_async.testing import FakeCambAPI, Fault, serve_in_thread

from ..conftest import API_KEY

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_no_call_outlives_its_timeout_over_real_sockets(backend: str) -> None:
    """Over uvicorn: a server that trickles its answer is cut off at ``timeout`` too."""
    timeout = 0.5

    async def slow_trickle(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        for _ in range(25):  # 2.5 s of one byte per 0.1 s: each read comes well in time
            await send({"type": "http.response.body", "body": b" ", "more_body": True})
            await anyio.sleep(timeout / 5)
        await send({"type": "http.response.body", "body": b"{}"})

    async def main(url: str) -> float:
        async with AsyncCambClient(
            API_KEY, base_url=url, timeout=timeout, max_retries=1, rate_limit=None
        ) as client:
            started = anyio.current_time()
            with pytest.raises(APITimeoutError):
                await client.dub.status("x")
            return anyio.current_time() - started

    with serve_in_thread(slow_trickle, log_level="critical") as url:
        elapsed = anyio.run(main, url, backend=backend)
    assert elapsed < 2 * timeout + 0.5 + 1.5  # two attempts, one backoff, scheduling slack


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_reset_and_slow_faults_are_transport_errors_over_real_sockets(backend: str) -> None:
    """FakeCambAPI's reset fault really drops the connection mid-answer, and its slow fault
    really outlasts the read timeout: the client sees them as the soak assumes."""
    api = FakeCambAPI(api_key=API_KEY, clock=time.monotonic)
    api.add_task("dub", "t1")

    async def main(url: str) -> list[BaseException]:
        errors: list[BaseException] = []
        async with AsyncCambClient(
            API_KEY, base_url=url, timeout=0.3, max_retries=0, rate_limit=None
        ) as client:
            for fault in (
                Fault(status=None, reset=True),
                Fault(status=503, reset=True),
                Fault(status=None, delay=0.6),
            ):
                api.inject(fault)
                try:
                    await client.dub.status("t1")
                except CambError as exc:
                    errors.append(exc)
            assert (await client.dub.status("t1")).is_success  # and the client still works
        return errors

    with serve_in_thread(api, log_level="critical") as url:
        errors = anyio.run(main, url, backend=backend)
    assert [type(e) for e in errors] == [APIConnectionError, APIConnectionError, APITimeoutError]
    assert [r.fault for r in api.log[:2]] == ["reset", "fault"]
