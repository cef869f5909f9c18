"""The default transport, over real loopback sockets, on asyncio and trio.

On asyncio the client sends through httpx over aiohttp (much cheaper per request, see
benchmarks/README.md); on trio through native httpx. Whatever the transport, failures must
land in the same places of the hierarchy: the request path relies on it to decide what is a
timeout, what is a connection failure and, for task creation, what is safe to resend.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import anyio
import httpx
import pytest
import sniffio

from camb_async import APIConnectionError, APITimeoutError, AsyncCambClient
from camb_async.testing import FakeCambAPI, Fault

from ..conftest import API_KEY
from .http_server import Recorder

pytestmark = pytest.mark.anyio


def closed_port_url() -> str:
    """A loopback URL nobody listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def transport_of(client: AsyncCambClient) -> Any:
    return client._open()._transport


async def test_default_transport_is_aiohttp_on_asyncio_and_sharded_httpx_on_trio(
    base_url: str,
) -> None:
    async with AsyncCambClient(API_KEY, base_url=base_url, rate_limit=None) as client:
        name = type(transport_of(client)).__name__
        if sniffio.current_async_library() == "asyncio":
            assert name == "CambAiohttpTransport"
        else:
            assert name == "_ShardedTransport"


async def test_a_callers_transport_or_http_client_wins(api: FakeCambAPI) -> None:
    transport = httpx.ASGITransport(app=api)
    async with AsyncCambClient(
        API_KEY, base_url="http://localhost", transport=transport, rate_limit=None
    ) as client:
        assert transport_of(client) is transport
    async with (
        httpx.AsyncClient() as own,
        AsyncCambClient(
            API_KEY, base_url="http://localhost", http_client=own, rate_limit=None
        ) as client,
    ):
        assert client._open() is own


async def test_status_round_trip_over_sockets(api: FakeCambAPI, base_url: str) -> None:
    done = api.add_task("dub", "d1", status="SUCCESS", run_id=7)
    pending = api.add_task("tts", "t1", after=1e9)
    async with AsyncCambClient(API_KEY, base_url=base_url, rate_limit=None) as client:
        first = await client.dub.status(done)
        second = await client.tts.status(pending)
    assert (first.raw_status, first.run_id, first.is_success) == ("SUCCESS", 7, True)
    assert (second.raw_status, second.is_terminal) == ("PENDING", False)
    # Our headers went out on every request (the aiohttp session carries none of its own).
    assert [r.status for r in api.log] == [200, 200]


# ------------------------------------------------------------------ httpx-level hierarchy


async def test_refused_connection_is_httpx_connect_error() -> None:
    async with AsyncCambClient(API_KEY, base_url=closed_port_url(), rate_limit=None) as client:
        with pytest.raises(httpx.ConnectError):
            await client._open().get(client.base_url + "/dub/x")


async def test_slow_answer_is_httpx_timeout(api: FakeCambAPI, base_url: str) -> None:
    api.add_task("dub", "slow")
    api.inject(status=None, delay=1.0)
    async with AsyncCambClient(API_KEY, base_url=base_url, rate_limit=None, timeout=0.2) as client:
        with pytest.raises(httpx.TimeoutException) as info:
            await client._open().get(client.base_url + "/dub/slow")
    # The request reached the server: it must not read as "never connected".
    assert not isinstance(info.value, (httpx.ConnectTimeout, httpx.PoolTimeout))


async def test_reset_mid_answer_is_httpx_transport_error_not_timeout(
    api: FakeCambAPI, base_url: str
) -> None:
    api.add_task("dub", "r")
    api.inject(status=None, reset=True)
    async with AsyncCambClient(API_KEY, base_url=base_url, rate_limit=None) as client:
        with pytest.raises(httpx.TransportError) as info:
            await client._open().get(client.base_url + "/dub/r")
    assert not isinstance(info.value, (httpx.TimeoutException, httpx.ConnectError))


# ------------------------------------------------------------------ what callers see


async def test_refused_connection_raises_api_connection_error_not_timeout() -> None:
    async with AsyncCambClient(
        API_KEY, base_url=closed_port_url(), rate_limit=None, max_retries=0
    ) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.dub.status("x")
    assert not isinstance(info.value, APITimeoutError)


async def test_slow_answer_raises_api_timeout_error(api: FakeCambAPI, base_url: str) -> None:
    api.add_task("dub", "slow")
    api.inject(status=None, delay=1.0)
    async with AsyncCambClient(
        API_KEY, base_url=base_url, rate_limit=None, timeout=0.2, max_retries=0
    ) as client:
        with pytest.raises(APITimeoutError):
            await client.dub.status("slow")


async def test_reset_status_check_is_retried_and_succeeds(api: FakeCambAPI, base_url: str) -> None:
    api.add_task("dub", "r", status="SUCCESS", run_id=3)
    api.inject(status=None, reset=True)
    async with AsyncCambClient(
        API_KEY, base_url=base_url, rate_limit=None, max_retries=2
    ) as client:
        result = await client.dub.status("r")
    assert result.run_id == 3
    assert [r.fault for r in api.log] == ["reset", None]


async def test_reset_after_a_create_was_sent_is_not_resent(api: FakeCambAPI, base_url: str) -> None:
    """A create whose answer was lost may have made a job: resending could make a second."""
    api.inject(Fault(status=200, reset=True), count=5)
    async with AsyncCambClient(
        API_KEY, base_url=base_url, rate_limit=None, max_retries=3
    ) as client:
        with pytest.raises(APIConnectionError) as info:
            await client._request("POST", "/dub", lambda data: data, json_body={}, idempotent=False)
    assert not isinstance(info.value, APITimeoutError)
    assert len(api.requests("POST")) == 1


async def test_refused_create_is_resent(caplog: pytest.LogCaptureFixture) -> None:
    """A refused connection proves the server never saw the request: safe to resend."""
    caplog.set_level(logging.INFO, logger="camb_async")
    async with AsyncCambClient(
        API_KEY, base_url=closed_port_url(), rate_limit=None, max_retries=1
    ) as client:
        with pytest.raises(APIConnectionError) as info:
            await client._request("POST", "/dub", lambda data: data, json_body={}, idempotent=False)
    assert not isinstance(info.value, APITimeoutError)
    retries = [r for r in caplog.records if r.getMessage().startswith("retrying POST /dub")]
    assert len(retries) == 1


async def test_hang_up_before_answering_a_create_is_not_resent() -> None:
    """The server read the create and hung up: it may have made the job. Never resend."""
    server = Recorder(lambda n: None)  # reads the request, hangs up without answering
    try:
        async with AsyncCambClient(
            API_KEY, base_url=server.url, rate_limit=None, max_retries=3
        ) as client:
            with pytest.raises(APIConnectionError) as info:
                await client._request(
                    "POST", "/dub", lambda data: data, json_body={}, idempotent=False
                )
            with pytest.raises(httpx.TransportError) as raw:
                await client._open().post(client.base_url + "/dub", json={})
    finally:
        server.close()
    assert not isinstance(info.value, APITimeoutError)
    assert not isinstance(raw.value, (httpx.TimeoutException, httpx.ConnectError))
    assert len(server.requests) == 2  # one per call above: no resend


# ------------------------------------------------------------------ the direct send path


def echo_transport(seen: list[httpx.Request]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "PENDING", "run_id": None})

    return httpx.MockTransport(handler)


async def test_own_client_sends_our_headers_and_logs_like_httpx(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The owned client skips AsyncClient.request; what goes out and what is logged must not
    change: key, user agent, JSON accept, keep-alive, and httpx's own INFO line."""
    caplog.set_level(logging.INFO, logger="httpx")
    seen: list[httpx.Request] = []
    async with AsyncCambClient(
        API_KEY,
        base_url="http://localhost/apis",
        rate_limit=None,
        timeout=7,
        transport=echo_transport(seen),
    ) as client:
        await client.dub.status("a b")
    (request,) = seen
    assert str(request.url) == "http://localhost/apis/dub/a%20b"
    assert request.headers["x-api-key"] == API_KEY
    assert request.headers["user-agent"].startswith("camb-async/")
    assert request.headers["accept"] == "application/json"
    assert request.headers["host"] == "localhost"
    assert request.extensions["timeout"]["read"] == 7
    assert 'HTTP Request: GET http://localhost/apis/dub/a%20b "HTTP/1.1 200 OK"' in caplog.text


async def test_callers_http_client_keeps_its_hooks_and_headers() -> None:
    seen: list[httpx.Request] = []
    hooked: list[str] = []

    async def hook(request: httpx.Request) -> None:
        hooked.append(request.url.path)

    async with (
        httpx.AsyncClient(
            transport=echo_transport(seen),
            headers={"x-trace": "1"},
            event_hooks={"request": [hook]},
        ) as own,
        AsyncCambClient(
            API_KEY, base_url="http://localhost", http_client=own, rate_limit=None
        ) as client,
    ):
        await client.tts.status("t")
    assert hooked == ["/tts/t"]
    assert seen[0].headers["x-trace"] == "1"
    assert seen[0].headers["x-api-key"] == API_KEY


async def test_many_in_flight_then_cancelled_leave_no_shard_busy(
    api: FakeCambAPI, base_url: str
) -> None:
    """Concurrent checks spread over the pools and every one is given back, also when the
    caller cancels mid-request (on asyncio the aiohttp transport has no shards: the
    requests must still all succeed)."""
    ids = [api.add_task("tts", f"t{i}", after=1e9) for i in range(40)]
    api.inject(status=None, delay=5.0, count=10)  # ten slow answers, cancelled below
    async with AsyncCambClient(
        API_KEY, base_url=base_url, rate_limit=None, max_concurrency=40
    ) as client:
        transport = transport_of(client)
        loads = getattr(transport, "_load", None)
        with anyio.move_on_after(1.0):
            async with anyio.create_task_group() as tg:
                for task_id in ids:
                    tg.start_soon(client.tts.status, task_id)
        if loads is not None:
            assert len(loads) == 20  # 40 connections / 2 per shard
            assert loads == [0] * len(loads)
        results = []

        async def check(task_id: str) -> None:
            results.append(await client.tts.status(task_id))

        async with anyio.create_task_group() as tg:
            for task_id in ids:
                tg.start_soon(check, task_id)
        assert [r.raw_status for r in results] == ["PENDING"] * 40
        if loads is not None:
            assert loads == [0] * len(loads)
            # Spread: more than one pool opened connections.
            assert sum(1 for pool in transport._pools if pool._pool.connections) > 1
