"""Limits every request respects (DESIGN "Limits every request respects"; issue 13).

A JSON answer is capped while it is read, after decompression; deeply nested JSON is an
``APIError``; a multipart upload may run while its bytes flow but the wait for the answer is
bounded by ``timeout``; a Retry-After longer than ``max_retry_wait`` is not slept on.

In-process (httpx.MockTransport / ASGI apps) on virtual time; the trickled answer after an
upload is also shown over real sockets.
"""

from __future__ import annotations

import gc
import gzip
import io
import itertools
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from camb_async import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AsyncCambClient,
    InternalServerError,
    RateLimitError,
    TaskStatus,
    UnprocessableEntityError,
)
from camb_async._reading import DEFAULT_MAX_RESPONSE_BYTES, _AnswerTooLarge, _read_capped

from ..conftest import API_KEY

pytestmark = pytest.mark.anyio

CAP = 1000


def json_of_size(size: int) -> bytes:
    """A valid status answer exactly ``size`` bytes long."""
    head, tail = b'{"status": "PENDING", "pad": "', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def encode(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body)
    if encoding == "deflate":
        return zlib.compress(body)
    if encoding == "raw-deflate":
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return packer.compress(body) + packer.flush()
    return body


def streamed(
    status: int, data: bytes, encoding: str, log: list[float], chunk: int = 100
) -> httpx.MockTransport:
    """Answers ``data`` in ``chunk``-byte pieces, as a network would (not pre-read)."""
    headers = (
        {"content-encoding": "deflate" if encoding == "raw-deflate" else encoding}
        if encoding != "identity"
        else {}
    )

    async def body() -> AsyncIterator[bytes]:
        for start in range(0, len(data), chunk):
            yield data[start : start + chunk]

    def handle(request: httpx.Request) -> httpx.Response:
        log.append(anyio.current_time())
        return httpx.Response(status, headers=headers, content=body())

    return httpx.MockTransport(handle)


def make(transport: httpx.AsyncBaseTransport, own_client: bool, **kwargs: Any) -> AsyncCambClient:
    """A client on ``transport``: its own HTTP client, or a caller's (the other branch)."""
    kwargs.setdefault("max_retries", 2)
    kwargs.setdefault("rate_limit", None)
    if own_client:
        return AsyncCambClient(API_KEY, base_url="http://localhost", transport=transport, **kwargs)
    http = httpx.AsyncClient(transport=transport)
    return AsyncCambClient(API_KEY, base_url="http://localhost", http_client=http, **kwargs)


both_branches = pytest.mark.parametrize("own_client", [True, False], ids=["owned", "callers"])
encodings = pytest.mark.parametrize("encoding", ["identity", "gzip", "deflate", "raw-deflate"])


# ------------------------------------------------------------------- 1. the answer cap


@both_branches
@encodings
async def test_an_answer_past_max_response_bytes_is_api_error_and_not_retried(
    encoding: str, own_client: bool
) -> None:
    log: list[float] = []
    transport = streamed(200, encode(json_of_size(CAP + 1), encoding), encoding, log)
    async with make(transport, own_client, max_response_bytes=CAP) as client:
        with pytest.raises(APIError) as info:
            await client.dub.status("t1")
    assert type(info.value) is APIError and info.value.status_code == 200
    assert "max_response_bytes" in str(info.value)
    assert len(log) == 1  # the same answer would come again: not retried


@both_branches
@encodings
async def test_an_answer_of_exactly_max_response_bytes_is_read(
    encoding: str, own_client: bool
) -> None:
    log: list[float] = []
    transport = streamed(200, encode(json_of_size(CAP), encoding), encoding, log)
    async with make(transport, own_client, max_response_bytes=CAP) as client:
        result = await client.dub.status("t1")
    assert result.status is TaskStatus.PENDING


async def test_the_default_cap_is_a_few_mebibytes() -> None:
    assert 1 << 20 <= DEFAULT_MAX_RESPONSE_BYTES <= 16 << 20
    log: list[float] = []
    big = json_of_size(DEFAULT_MAX_RESPONSE_BYTES + 1)
    async with make(streamed(200, big, "identity", log, chunk=1 << 16), True) as client:
        with pytest.raises(APIError, match="max_response_bytes"):
            await client.dub.status("t1")


def gzip_bomb(inflated: int) -> bytes:
    """``inflated`` bytes of JSON-ish text, gzip'd (about 1000:1), without holding them."""
    packer = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    block = b" " * (1 << 20)
    parts = [packer.compress(b'{"status": "PENDING", "pad": "')]
    parts += [packer.compress(block) for _ in range(inflated // len(block))]
    return b"".join(parts) + packer.flush()


@both_branches
@pytest.mark.parametrize("status", [200, 503])
async def test_a_gzip_bomb_is_never_inflated_past_the_cap(status: int, own_client: bool) -> None:
    """64 MB behind 64 KB of gzip, cap 256 KiB: Python's allocations for the whole call stay
    within a few caps (before the cap, httpx inflated all 64 MB)."""
    cap = 256 * 1024
    bomb = gzip_bomb(64 << 20)
    log: list[float] = []
    gc.collect()
    tracemalloc.start()
    try:
        async with make(
            streamed(status, bomb, "gzip", log, chunk=1 << 16),
            own_client,
            max_response_bytes=cap,
            max_retries=1,
        ) as client:
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            with pytest.raises(APIError) as info:
                await client.dub.status("t1")
            peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    if status == 200:
        assert type(info.value) is APIError and len(log) == 1
    else:  # an error answer is only cut short: still a 503, still retried
        assert isinstance(info.value, InternalServerError) and len(log) == 2
    assert peak < 4 * cap, peak


@both_branches
@pytest.mark.parametrize("status", [200, 503])
async def test_a_stacked_gzip_bomb_is_never_inflated_past_the_cap(
    status: int, own_client: bool
) -> None:
    """``Content-Encoding: gzip, gzip``: 64 MB behind a few hundred bytes, each layer inflated
    in bounded steps (before, stacked encodings went to httpx's decoders: one network chunk
    inflated whole, the reviewer's 822 wire bytes took 800 MiB)."""
    cap = 256 * 1024
    bomb = gzip.compress(gzip_bomb(64 << 20))
    log: list[float] = []
    gc.collect()
    tracemalloc.start()
    try:
        async with make(
            streamed(status, bomb, "gzip, gzip", log, chunk=1 << 16),
            own_client,
            max_response_bytes=cap,
            max_retries=1,
        ) as client:
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            with pytest.raises(APIError) as info:
                await client.dub.status("t1")
            peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    if status == 200:
        assert type(info.value) is APIError and len(log) == 1
    else:
        assert isinstance(info.value, InternalServerError) and len(log) == 2
    assert peak < 4 * cap, peak


@pytest.mark.parametrize(
    "header", ["gzip, gzip", "deflate, gzip", "gzip,deflate", "identity, gzip", "GZIP , x-gzip"]
)
async def test_stacked_encodings_read_as_their_layers(header: str) -> None:
    body = json_of_size(5000)
    wire = body
    for coding in (c.strip().lower() for c in header.split(",")):
        wire = encode(wire, {"x-gzip": "gzip"}.get(coding, coding))
    pieces = [wire[i : i + 7] for i in range(0, len(wire), 7)]
    response = httpx.Response(200, headers={"content-encoding": header}, stream=Pieces(pieces))
    await _read_capped(response, 10_000)
    assert response.content == body


@both_branches
@pytest.mark.parametrize("header", ["br", "zstd", "gzip, br", "compress", "gzip, " * 8 + "gzip"])
async def test_an_encoding_we_cannot_bound_is_api_error_and_not_retried(
    header: str, own_client: bool
) -> None:
    log: list[float] = []
    transport = streamed(200, json_of_size(100), header, log)
    async with make(transport, own_client) as client:
        with pytest.raises(APIError, match="Content-Encoding") as info:
            await client.dub.status("t1")
    assert type(info.value) is APIError and info.value.status_code == 200
    assert len(log) == 1


@both_branches
async def test_an_error_answer_in_an_unknown_encoding_keeps_its_status(own_client: bool) -> None:
    log: list[float] = []
    async with make(streamed(503, b"\x00" * 500, "br", log), own_client) as client:
        with pytest.raises(InternalServerError):
            await client.dub.status("t1")
    assert len(log) == 3  # still a 503: retried


@both_branches
async def test_only_bounded_encodings_are_advertised(own_client: bool) -> None:
    """JSON answers: gzip and deflate (what _read_capped inflates in bounded steps), never
    br/zstd (httpx adds them to its default when their packages are installed); a streamed
    audio body asks for none."""
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("accept-encoding", ""))
        if request.url.path.startswith("/tts-result"):
            return httpx.Response(200, content=b"fLaC" + b"\x00" * 100)
        return httpx.Response(200, json={"status": "PENDING"})

    async with make(httpx.MockTransport(handle), own_client) as client:
        await client.dub.status("t1")
        async for _ in client.tts.audio(7):
            pass
    assert seen == ["gzip, deflate", "identity"]


@both_branches
@pytest.mark.parametrize("header", ["gzip", "gzip, gzip"])
async def test_a_compressed_audio_body_is_inflated_in_bounded_pieces(
    header: str, own_client: bool
) -> None:
    """A server that compresses the audio anyway: every piece handed out is at most one
    inflate step (before, httpx inflated each network chunk whole: 64 MiB per chunk)."""
    bomb = gzip_bomb(32 << 20)
    if header == "gzip, gzip":
        bomb = gzip.compress(bomb)
    log: list[float] = []
    biggest = total = 0
    async with make(streamed(200, bomb, header, log, chunk=1 << 16), own_client) as client:
        async for chunk in client.tts.audio(7):
            biggest, total = max(biggest, len(chunk)), total + len(chunk)
    assert total >= 32 << 20
    assert biggest <= 256 * 1024


@both_branches
async def test_an_audio_body_in_an_unknown_encoding_is_api_error(own_client: bool) -> None:
    log: list[float] = []
    async with make(streamed(200, b"x" * 1000, "br", log), own_client) as client:
        with pytest.raises(APIError, match="Content-Encoding") as info:
            async for _ in client.tts.audio(7):
                pass
    assert type(info.value) is APIError and len(log) == 1


@both_branches
async def test_an_accepted_answer_costs_at_most_about_twice_its_size(own_client: bool) -> None:
    """A valid 2 MiB answer (under a 2 MiB cap): the chunks and their join, then the text
    and the parsed string, never the bytes, the text and the parsed string at once."""
    cap = 2 << 20
    log: list[float] = []
    transport = streamed(200, json_of_size(cap), "identity", log, chunk=1 << 16)
    gc.collect()
    tracemalloc.start()
    try:
        async with make(transport, own_client, max_response_bytes=cap) as client:
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            result = await client.dub.status("t1")
            peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert result.status is TaskStatus.PENDING
    assert peak < 2.5 * cap, peak / cap


@both_branches
async def test_an_endless_answer_ends_at_the_cap(own_client: bool) -> None:
    """A body that never ends (a chunk every millisecond) is cut at the cap, not at the
    deadline (by then it would have sent 64 MB)."""
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"status": "'
        while True:
            sent += 1
            yield b"A" * (1 << 16)
            await anyio.sleep(0.001)

    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=endless()))
    async with make(transport, own_client, timeout=1.0, max_response_bytes=1 << 20) as client:
        with pytest.raises(APIError, match="max_response_bytes"):
            await client.dub.status("t1")
    assert sent <= (1 << 20) // (1 << 16) + 2


class Pieces(httpx.AsyncByteStream):
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.binary(max_size=3000) | st.builds(lambda n: b"{" * n, st.integers(0, 5000)),
    encoding=st.sampled_from(["identity", "gzip", "deflate", "raw-deflate"]),
    cuts=st.lists(st.integers(0, 6000), max_size=8),
    cap=st.integers(1, 4000),
    status=st.sampled_from([200, 500]),
)
async def test_the_capped_reader_reads_what_aread_would_up_to_the_cap(
    body: bytes, encoding: str, cuts: list[int], cap: int, status: int
) -> None:
    """However the network splits the (compressed) bytes: an answer within the cap reads
    exactly as httpx's own decoding would; past it a 2xx raises, an error answer is cut."""
    wire = encode(body, encoding)
    bounds = sorted({0, len(wire), *(c for c in cuts if c < len(wire))})
    pieces = [wire[a:b] for a, b in itertools.pairwise(bounds)]
    header = {"identity": {}, "raw-deflate": {"content-encoding": "deflate"}}.get(
        encoding, {"content-encoding": encoding}
    )
    response = httpx.Response(status, headers=header, stream=Pieces(pieces))
    if len(body) > cap and status < 300:
        with pytest.raises(_AnswerTooLarge):
            await _read_capped(response, cap)
    else:
        await _read_capped(response, cap)
        assert response.content == body[:cap]


# ------------------------------------------------------------------- 2. nested JSON

NESTED = b"[" * 100_000 + b"]" * 100_000


@both_branches
@pytest.mark.parametrize(
    "body",
    [NESTED, b'{"status": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001],
    ids=["lists", "objects"],
)
async def test_deeply_nested_json_is_api_error(body: bytes, own_client: bool) -> None:
    log: list[float] = []
    async with make(streamed(200, body, "identity", log, chunk=1 << 16), own_client) as client:
        with pytest.raises(APIError, match="nested too deeply") as info:
            await client.dub.status("t1")
        assert len(str(info.value)) < 1000
        with pytest.raises(APIError):  # results go through the same decoding
            await client.dub.results([1])


async def test_deeply_nested_422_is_unprocessable_entity() -> None:
    log: list[float] = []
    async with make(
        streamed(422, b'{"detail": ' + NESTED + b"}", "identity", log, chunk=1 << 16), True
    ) as client:
        with pytest.raises(UnprocessableEntityError) as info:
            await client.dub.status("t1")
    assert info.value.detail == []


# ------------------------------------------------------------------- 3. multipart deadline

TIMEOUT = 10.0


def upload_app(*, receive_pause: float, trickle: float | None) -> Callable[..., Any]:
    """Reads the request body (pausing ``receive_pause`` between pieces), then answers at
    once, or (``trickle``) sends headers and then one byte every ``trickle`` s, forever."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while True:
            message = await receive()
            if not message.get("more_body"):
                break
            await anyio.sleep(receive_pause)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        if trickle is None:
            await send({"type": "http.response.body", "body": b'{"task_id": "t-1"}'})
            return
        while True:
            await send({"type": "http.response.body", "body": b" ", "more_body": True})
            await anyio.sleep(trickle)

    return app


def create_calls(client: AsyncCambClient) -> list[Callable[[], Any]]:
    return [
        lambda: client.transcription.create(language=1, media_url="https://x.example/a.mp3"),
        lambda: client.transcription.create(language=1, file=b"RIFF" * 1000),
        lambda: client.transcription.create(language=1, file=io.BytesIO(b"\0" * 300_000)),
    ]


@both_branches
async def test_the_wait_for_an_answer_after_an_upload_is_bounded_by_timeout(
    own_client: bool,
) -> None:
    transport = httpx.ASGITransport(app=upload_app(receive_pause=0, trickle=TIMEOUT / 10))
    async with make(transport, own_client, timeout=TIMEOUT) as client:
        for call in create_calls(client):
            started = anyio.current_time()
            with anyio.fail_after(20 * TIMEOUT), pytest.raises(APITimeoutError):
                await call()
            # Not retried (task creation), so one attempt: the timeout, not more.
            assert anyio.current_time() - started <= TIMEOUT + 0.01


@both_branches
async def test_an_upload_may_outlast_timeout_while_its_bytes_flow(own_client: bool) -> None:
    """The server takes each piece of the upload slowly (the whole upload lasts far longer
    than ``timeout``), then answers at once: the call succeeds."""
    transport = httpx.ASGITransport(app=upload_app(receive_pause=TIMEOUT / 2, trickle=None))
    async with make(transport, own_client, timeout=TIMEOUT) as client:
        started = anyio.current_time()
        handle = await client.transcription.create(
            language=1, file=io.BytesIO(b"\0" * (10 * 65536))
        )
        assert anyio.current_time() - started > 2 * TIMEOUT  # it really was a slow upload
    assert handle.task_id == "t-1"


@both_branches
async def test_an_upload_the_server_stops_taking_ends_at_timeout(own_client: bool) -> None:
    """The server takes one piece of the upload, then nothing: no progress for ``timeout``
    is an ``APITimeoutError`` (before, the attempt had no deadline until the last byte)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await receive()
            await anyio.sleep_forever()

    transport = httpx.ASGITransport(app=cast(Any, app))
    async with make(transport, own_client, timeout=TIMEOUT) as client:
        for call in create_calls(client)[1:]:
            started = anyio.current_time()
            with anyio.fail_after(20 * TIMEOUT), pytest.raises(APITimeoutError):
                await call()
            assert anyio.current_time() - started <= TIMEOUT + 0.01


class ProtocolSlip(Exception):
    """Stands for what a transport may let through unmapped (h11's LocalProtocolError)."""


class SlipsMidBody(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"fLaC"
        raise ProtocolSlip("Too much data for declared Content-Length")


@both_branches
async def test_an_unmapped_transport_error_is_an_api_connection_error(own_client: bool) -> None:
    """Before, h11's LocalProtocolError (an upload whose file read more than fstat said)
    escaped the request path raw; now any such error is an ``APIConnectionError``."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/tts-result"):
            return httpx.Response(200, stream=SlipsMidBody())
        raise ProtocolSlip("Too much data for declared Content-Length")

    async with make(httpx.MockTransport(handle), own_client, max_retries=0) as client:
        for call in create_calls(client)[1:]:
            with pytest.raises(APIConnectionError, match="ProtocolSlip"):
                await call()
        with pytest.raises(APIConnectionError, match="ProtocolSlip"):
            await client.dub.status("t1")
        with pytest.raises(APIConnectionError, match="ProtocolSlip"):
            async for _ in client.tts.audio(3):
                pass


# ------------------------------------------------------------------- 4. hostile Retry-After


def throttled(
    log: list[float], retry_after: str, status: int = 429, times: int = 10**9
) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        log.append(anyio.current_time())
        if len(log) <= times:
            return httpx.Response(
                status, headers={"retry-after": retry_after}, content=b'{"detail": "slow down"}'
            )
        return httpx.Response(200, json={"status": "SUCCESS", "run_id": 1})

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(
    "retry_after", ["999999999", "60.5", "1e308", "Fri, 31 Dec 9999 23:59:59 GMT"]
)
async def test_a_retry_after_past_max_retry_wait_raises_at_once(retry_after: str) -> None:
    log: list[float] = []
    async with make(throttled(log, retry_after), True, timeout=5, max_retries=2) as client:
        started = anyio.current_time()
        with pytest.raises(RateLimitError) as info:
            await client.dub.status("t1")
        elapsed = anyio.current_time() - started
    assert len(log) == 1 and elapsed < 1.0  # not slept on (before: 2 x 60 s, 3 requests)
    assert info.value.retry_after is not None and info.value.retry_after > 60


@pytest.mark.parametrize("ms", ["-1", "nan", "inf", "1e400"])
async def test_a_bad_retry_after_ms_does_not_mask_a_long_retry_after(ms: str) -> None:
    """``retry-after-ms`` unusable (negative/NaN: fall back to ``Retry-After: 3600``) or
    infinite: longer than ``max_retry_wait`` either way, so raised at once, one request."""

    def handle(request: httpx.Request) -> httpx.Response:
        log.append(anyio.current_time())
        return httpx.Response(
            429,
            headers={"retry-after-ms": ms, "retry-after": "3600"},
            content=b'{"detail": "slow down"}',
        )

    log: list[float] = []
    async with make(httpx.MockTransport(handle), True, max_retries=2) as client:
        with pytest.raises(RateLimitError) as info:
            await client.dub.status("t1")
    assert len(log) == 1
    assert info.value.retry_after is not None and info.value.retry_after >= 3600


async def test_max_retry_wait_is_configurable() -> None:
    log: list[float] = []
    async with make(throttled(log, "5", times=1), True, max_retry_wait=5) as client:
        assert (await client.dub.status("t1")).is_success  # 5 s is within the bound: waited
    assert [b - a for a, b in itertools.pairwise(log)] == [pytest.approx(5, abs=0.01)]
    log.clear()
    async with make(throttled(log, "5.5", times=1), True, max_retry_wait=5) as client:
        with pytest.raises(RateLimitError) as info:
            await client.dub.status("t1")
    assert len(log) == 1 and info.value.retry_after == 5.5


async def test_a_long_retry_after_on_a_5xx_is_not_slept_on_either() -> None:
    log: list[float] = []
    async with make(throttled(log, "3600", status=503), True) as client:
        with pytest.raises(InternalServerError):
            await client.dub.status("t1")
    assert len(log) == 1


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), "60", True])
def test_bad_max_retry_wait_and_max_response_bytes_are_refused(value: Any) -> None:
    with pytest.raises(ValueError):
        AsyncCambClient(API_KEY, max_retry_wait=value)
    with pytest.raises(ValueError):
        AsyncCambClient(API_KEY, max_response_bytes=value)
