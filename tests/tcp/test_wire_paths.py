"""The two ways an owned client sends a request put the same bytes on the wire.

On asyncio an owned client on its default transport sends what has no upload and no
streamed answer straight through aiohttp (``send_answer``: no httpx ``Request`` or
``Response``); everything else, and every request on trio or on a given transport, goes
through an httpx ``Request``. A server must not be able to tell them apart: the request
line, every header and the body are compared here, byte for byte, against the httpx path
(a given ``httpx.AsyncHTTPTransport``) on a recording socket server. On trio both clients
take the httpx path, so there the test pins that path alone.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
import trio

from camb_async import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AsyncCambClient,
    AuthenticationError,
    CambError,
    ClientClosedError,
    RateBudget,
    RateLimitError,
    gather_statuses,
)

from ..conftest import API_KEY
from .http_server import ANSWER, Recorder, json_answer, silent, trickled

pytestmark = pytest.mark.anyio

_HAS_TIMEOUT = hasattr(asyncio, "timeout")


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.close()


def normalised(request: tuple[str, list[tuple[str, str]], bytes]) -> tuple[Any, ...]:
    """Header names are case-insensitive and their order carries no meaning; values, the
    request line and the body must match exactly."""
    line, headers, body = request
    return line, sorted((k.lower(), v) for k, v in headers), body


async def exchange(client: AsyncCambClient) -> None:
    """A status check, a JSON create with non-ASCII text and every kind of extra, a result
    with the route's own query parameters plus an extra one."""
    await client.dub.status("a b é")
    await client.tts.create(
        text="Grüße, 世界",
        voice_id=1,
        language=1,
        extra_headers={"X-Trace": "42", "Accept": "application/json; q=1"},
        extra_query={"q": "a b&c"},
        extra_body={"note": None},
    )
    await client._request(
        "GET", "/dub/t-2", lambda data: data, params={"format": "x y"}, extra_query={"page": 2}
    )


async def test_both_send_paths_put_the_same_bytes_on_the_wire(recorder: Recorder) -> None:
    async with AsyncCambClient(API_KEY, base_url=recorder.url, rate_limit=None) as default:
        await exchange(default)
    direct, recorder.requests = recorder.requests, []
    async with AsyncCambClient(
        API_KEY, base_url=recorder.url, rate_limit=None, transport=httpx.AsyncHTTPTransport()
    ) as via_httpx:
        await exchange(via_httpx)
    assert len(direct) == len(recorder.requests) == 3
    for ours, httpx_sent in zip(direct, recorder.requests, strict=True):
        assert normalised(ours) == normalised(httpx_sent)
    line, headers, body = direct[1]
    assert line == "POST /tts?q=a+b%26c HTTP/1.1"
    assert json.loads(body)["text"] == "Grüße, 世界"
    names = [k.lower() for k, _ in headers]
    assert names.count("accept") == 1 and dict(normalised(direct[1])[1])["accept"] == (
        "application/json; q=1"
    )
    assert direct[0][0] == "GET /dub/a%20b%20%C3%A9 HTTP/1.1"


# ------------------------------------------------------------------ what an answer can be
# Each runs on both loops; on asyncio the owned client takes the aiohttp path, which must
# read an answer exactly as httpx does.


async def test_a_repeated_header_is_read_as_httpx_reads_it() -> None:
    """``Content-Encoding: gzip`` twice is two layers; two ``X-Request-Id`` lines are one
    joined id; two ``Retry-After`` lines are no usable wait (not the first, not the last)."""
    body = gzip.compress(gzip.compress(json.dumps(ANSWER).encode()))
    twice = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
        b"content-encoding: gzip\r\n" + f"content-length: {len(body)}\r\n\r\n".encode() + body
    )
    throttled = json_answer(
        {},
        "429 Too Many Requests",
        b"retry-after: 100\r\nretry-after: 1\r\nx-request-id: edge-1\r\nx-request-id: o-2\r\n",
    )
    server = Recorder(lambda n: twice if n == 0 else throttled)
    try:
        async with AsyncCambClient(
            API_KEY, base_url=server.url, rate_limit=None, max_retries=0
        ) as client:
            assert (await client.dub.status("t")).run_id == 7
            with pytest.raises(RateLimitError) as info:
                await client.dub.status("t")
    finally:
        server.close()
    assert info.value.retry_after is None
    assert info.value.request_id == "edge-1, o-2"


async def test_a_status_below_100_is_no_answer() -> None:
    server = Recorder(lambda n: json_answer(status="099 Weird"))
    try:
        async with AsyncCambClient(
            API_KEY, base_url=server.url, rate_limit=None, max_retries=0
        ) as client:
            with pytest.raises(APIConnectionError):
                await client.dub.status("t")
    finally:
        server.close()


async def test_a_hang_up_is_not_resent_behind_the_budgets_back() -> None:
    """aiohttp resends an idempotent request on a kept-alive connection the server closed;
    with ``max_retries=0`` the server must see the request once."""
    server = Recorder(lambda n: json_answer() if n == 0 else None)
    try:
        async with AsyncCambClient(
            API_KEY, base_url=server.url, rate_limit=None, max_retries=0
        ) as client:
            await client.dub.status("t")
            with pytest.raises(APIConnectionError):
                await client.dub.status("t")
    finally:
        server.close()
    assert len(server.requests) == 2


async def test_cookies_a_server_sets_are_not_sent_back(recorder: Recorder) -> None:
    recorder.answer = lambda n: json_answer(headers=b"set-cookie: sess=abc; Path=/\r\n")
    url = recorder.url.replace("127.0.0.1", "localhost")  # jars keep no cookies for IPs
    async with AsyncCambClient(API_KEY, base_url=url, rate_limit=None) as client:
        await client.dub.status("t")
        await client.dub.status("t")
    assert all(k.lower() != "cookie" for _, headers, _ in recorder.requests for k, _ in headers)


async def test_a_key_echoed_as_a_header_name_is_redacted() -> None:
    key = "Abcdef0123456789-key-as-a-name"
    server = Recorder(lambda n: json_answer({}, "401 Unauthorized", f"x-{key}: 1\r\n".encode()))
    try:
        async with AsyncCambClient(key, base_url=server.url, rate_limit=None) as client:
            with pytest.raises(AuthenticationError) as info:
                await client.dub.status("t")
    finally:
        server.close()
    assert key.lower() not in repr(info.value.headers).lower()


async def test_every_call_is_a_checkpoint_also_one_that_fails_before_sending(
    recorder: Recorder,
) -> None:
    """A body that cannot be encoded fails before any network wait; a caller retrying it in
    a loop must still let other tasks run (and see its own cancellation) on every call."""
    turns = 0

    async def other() -> None:
        nonlocal turns
        while True:
            turns += 1
            await anyio.lowlevel.checkpoint()

    async def fail() -> None:
        with pytest.raises(CambError):
            await client.translation.create(
                texts=["bad \ud800"], source_language=1, target_language=2
            )

    async with (
        AsyncCambClient(API_KEY, base_url=recorder.url, rate_limit=None) as client,
        anyio.create_task_group() as tg,
    ):
        await fail()  # the first call opens the HTTP client (which may yield)
        tg.start_soon(other)
        before = turns
        for _ in range(20):
            await fail()
        tg.cancel_scope.cancel()
    assert turns - before >= 19
    assert recorder.requests == []


def test_an_owned_client_serves_one_asyncio_run_after_another(recorder: Recorder) -> None:
    """A client made outside any loop may be used in several ``asyncio.run`` calls: its
    connections belong to each run's loop (made again in the next)."""
    client = AsyncCambClient(API_KEY, base_url=recorder.url, rate_limit=None)
    view = client.with_options(timeout=5)

    async def use() -> None:
        assert (await client.dub.status("t")).run_id == 7
        assert (await view.dub.status("t")).run_id == 7

    asyncio.run(use())
    asyncio.run(use())
    asyncio.run(client.aclose())
    assert len(recorder.requests) == 4


def test_extra_headers_cannot_set_the_bodys_framing() -> None:
    client = AsyncCambClient(API_KEY, base_url="http://127.0.0.1:9", rate_limit=None)
    for name in ("Content-Length", "transfer-encoding"):
        with pytest.raises(ValueError, match="framing"):
            asyncio.run(
                client.tts.create(text="hi", voice_id=1, language=1, extra_headers={name: "1"})
            )


# ------------------------------------------------------------------ the attempt's deadline
# On aiohttp's path aiohttp keeps each attempt's deadline (one timer over connect, send and
# every read), and a bulk poll has no cancel scope of its own: aclose() reaches it through
# the poller's workers. Neither may let a call hang.


async def test_an_answer_that_trickles_ends_at_the_timeout_single_and_bulk() -> None:
    server = Recorder(trickled)
    timeout = 0.3
    try:
        async with AsyncCambClient(
            API_KEY, base_url=server.url, rate_limit=None, max_retries=0, timeout=timeout
        ) as client:
            with anyio.fail_after(30 * timeout):  # a hang, not a speed: each ends at 0.3 s
                with pytest.raises(APITimeoutError):
                    await client.dub.status("one")
                # The server has answered nothing at all: the whole call fails at once.
                with pytest.raises(APITimeoutError):
                    await gather_statuses(
                        client, ["a", "b", "c"], kind="dub", wait=False, return_exceptions=True
                    )
    finally:
        server.close()
    assert len(server.requests) >= 2


async def test_aclose_ends_a_bulk_poll_in_flight() -> None:
    server = Recorder(trickled)
    try:
        async with AsyncCambClient(
            API_KEY, base_url=server.url, rate_limit=None, max_retries=0, timeout=60
        ) as client:
            budget = client.budget
            assert isinstance(budget, RateBudget)

            async def close_once_sent() -> None:
                while len(server.requests) < 2:  # noqa: ASYNC110 (the server is a thread)
                    await anyio.sleep(0.01)
                await client.aclose()

            with anyio.fail_after(20):  # the attempt's own deadline is 60 s away
                async with anyio.create_task_group() as tg:
                    tg.start_soon(close_once_sent)
                    with pytest.raises(ClientClosedError):
                        await gather_statuses(client, ["a", "b"], kind="dub", wait=False)
            assert budget.in_flight == 0
    finally:
        server.close()


@pytest.mark.parametrize("caller", ["move_on_after", "fail_after", "the loop's own"])
async def test_a_callers_deadline_at_the_attempts_own_still_wins(
    caller: str, anyio_backend: str
) -> None:
    """The caller's deadline, set just before the call, falls a hair before the attempt's
    (which starts once the budget granted it), often in the same turn of the loop. The
    caller's cancellation must win every time: never swallowed into an APITimeoutError.
    (aiohttp's own total timeout lost it: entered twice while waiting for the headers, it
    uncancels the task twice.) "The loop's own": asyncio.timeout, trio.fail_after."""
    server = Recorder(silent)
    timeout = 0.2

    async def one_call(client: AsyncCambClient) -> str:
        try:
            if caller == "move_on_after":
                with anyio.move_on_after(timeout) as scope:
                    await client.dub.status("t")
                return "moved on" if scope.cancelled_caught else "answer"
            if caller == "fail_after":
                with anyio.fail_after(timeout):
                    await client.dub.status("t")
            elif anyio_backend == "trio":
                with trio.fail_after(timeout):
                    await client.dub.status("t")
            elif _HAS_TIMEOUT:
                async with asyncio.timeout(timeout):  # type: ignore[attr-defined,unused-ignore]
                    await client.dub.status("t")
            else:  # Python 3.10
                await asyncio.wait_for(client.dub.status("t"), timeout)
        except (TimeoutError, trio.TooSlowError):
            return "caller's timeout"
        except CambError as exc:
            return type(exc).__name__
        return "answer"

    try:
        async with AsyncCambClient(
            API_KEY, base_url=server.url, rate_limit=None, max_retries=0, timeout=timeout
        ) as client:
            outcomes = [await one_call(client) for _ in range(6)]
            assert client.budget.in_flight == 0  # type: ignore[attr-defined]
    finally:
        server.close()
    expected = "moved on" if caller == "move_on_after" else "caller's timeout"
    assert outcomes == [expected] * 6


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the transport's deadline: asyncio's
@pytest.mark.parametrize("call", ["status", "create"])
async def test_a_cancel_in_the_iteration_the_attempts_deadline_fires_wins(
    call: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller's scope is cancelled by a timer just after the attempt's own deadline, so
    both fire in one turn of the loop: anyio delivers the caller's cancellation a turn later
    (the task is already woken), and it must still win, not an APITimeoutError (which a
    create, never resent, would raise at once)."""
    from camb_async import _transports

    deadlines: list[Any] = []
    make = _transports._deadline

    def recorded(seconds: float) -> Any:
        deadlines.append(make(seconds))
        return deadlines[-1]

    monkeypatch.setattr(_transports, "_deadline", recorded)
    server = Recorder(silent)
    loop = asyncio.get_running_loop()
    outcomes = []
    try:
        async with AsyncCambClient(
            API_KEY, base_url=server.url, rate_limit=None, max_retries=0, timeout=0.1
        ) as client:
            for _ in range(3):
                deadlines.clear()
                with anyio.CancelScope() as scope:

                    async def cancel_with_the_deadline(scope: anyio.CancelScope = scope) -> None:
                        while not deadlines or deadlines[-1].when() is None:  # noqa: ASYNC110
                            await asyncio.sleep(0)
                        loop.call_at(deadlines[-1].when() + 1e-7, scope.cancel)

                    armed = asyncio.ensure_future(cancel_with_the_deadline())
                    try:
                        if call == "status":
                            await client.dub.status("t")
                        else:
                            await client.tts.create(text="hi", voice_id=1, language=1)
                    finally:
                        await armed
                outcomes.append(scope.cancelled_caught)
            assert client.budget.in_flight == 0  # type: ignore[attr-defined]
    finally:
        server.close()
    assert outcomes == [True] * 3


async def test_timeout_and_max_response_bytes_set_on_an_open_client_apply() -> None:
    """Both are plain attributes: a value set after the first request applies to the next
    one, on every send path (the aiohttp path once read them when the client opened)."""
    server = Recorder(lambda n: json_answer() if n < 2 else silent(n))
    try:
        async with AsyncCambClient(
            API_KEY, base_url=server.url, rate_limit=None, max_retries=0, timeout=30
        ) as client:
            await client.dub.status("t")
            client.max_response_bytes = 10
            with pytest.raises(APIError, match="larger than max_response_bytes"):
                await client.dub.status("t")
            client.timeout = 0.2
            with anyio.fail_after(10), pytest.raises(APITimeoutError):
                await client.dub.status("t")
    finally:
        server.close()
