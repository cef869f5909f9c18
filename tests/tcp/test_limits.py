"""Resource limits over real sockets (uvicorn): the response cap, the answer timeout after an
upload. The in-process cases and the helpers are in tests/unit/test_limits.py.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from typing import Any

import anyio
import pytest

from camb_async import APIError, APITimeoutError, AsyncCambClient, CambError
from camb_async._reading import DEFAULT_MAX_RESPONSE_BYTES
from camb_async.testing import serve_in_thread

from ..conftest import API_KEY
from ..unit.test_limits import create_calls, json_of_size

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_cap_holds_over_real_sockets(backend: str) -> None:
    """Through uvicorn (aiohttp's transport on asyncio, httpcore on trio): a valid 16 MiB
    answer, plain in 64 KiB chunks or as a 16 KiB gzip body, is refused at the default cap
    (before: both returned a StatusResult)."""
    size = 2 * DEFAULT_MAX_RESPONSE_BYTES
    packer = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    bomb = packer.compress(json_of_size(size)) + packer.flush()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        gzipped = scope["path"].endswith("gzip")
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    *([(b"content-encoding", b"gzip")] if gzipped else []),
                ],
            }
        )
        if gzipped:
            await send({"type": "http.response.body", "body": bomb})
            return
        body = json_of_size(size)
        for start in range(0, size, 1 << 16):
            await send(
                {
                    "type": "http.response.body",
                    "body": body[start : start + (1 << 16)],
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b""})

    async def main(url: str) -> list[BaseException]:
        errors: list[BaseException] = []
        async with AsyncCambClient(API_KEY, base_url=url, rate_limit=None) as client:
            for task in ("plain", "gzip"):
                with pytest.raises(APIError, match="max_response_bytes") as info:
                    await client.dub.status(task)
                errors.append(info.value)
        return errors

    with serve_in_thread(app, log_level="critical") as url:
        errors = anyio.run(main, url, backend=backend)
    assert [type(e) for e in errors] == [APIError, APIError]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_trickled_answer_after_an_upload_ends_at_timeout_over_real_sockets(backend: str) -> None:
    """Over uvicorn: the server reads the upload, then trickles its answer for 4 s with
    ``timeout=0.5``; before the fix the call returned the late answer."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        for _ in range(40):
            await send({"type": "http.response.body", "body": b" ", "more_body": True})
            await anyio.sleep(0.1)
        await send({"type": "http.response.body", "body": b'{"task_id": "late"}'})

    async def main(url: str) -> None:
        async with AsyncCambClient(API_KEY, base_url=url, timeout=0.5, rate_limit=None) as client:
            for call in create_calls(client)[:2]:
                with pytest.raises(APITimeoutError):
                    await call()

    with serve_in_thread(app, log_level="critical") as url:
        anyio.run(main, url, backend=backend)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_an_upload_to_a_server_that_stops_reading_ends_over_real_sockets(backend: str) -> None:
    """A server that accepts and never reads: 20 MB fill the socket buffers, then no chunk
    is taken. On asyncio (aiohttp's transport, no write timeout) the call never ended."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    port = listener.getsockname()[1]

    async def main() -> None:
        async with AsyncCambClient(
            API_KEY,
            base_url=f"http://127.0.0.1:{port}",
            timeout=0.5,
            rate_limit=None,
            max_retries=0,
        ) as client:
            with anyio.fail_after(60), pytest.raises(APITimeoutError):
                await client.transcription.create(language=1, file=b"\0" * (20 << 20))

    try:
        anyio.run(main, backend=backend)
    finally:
        listener.close()
        for conn in held:
            conn.close()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_pipe_upload_whose_size_fstat_misreports_is_a_camb_error(backend: str) -> None:
    """A pipe's fstat size is 0, so httpx declares ``Content-Length`` for an empty file and
    then sends 60 000 bytes: on trio h11's LocalProtocolError escaped (not a CambError)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"task_id": "t-1"}'})

    async def main(url: str) -> None:
        read_end, write_end = os.pipe()
        os.write(write_end, b"x" * 60_000)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            async with AsyncCambClient(
                API_KEY, base_url=url, timeout=0.5, rate_limit=None, max_retries=0
            ) as client:
                # A CambError or a handle (what the server makes of the body is its own
                # business); anything else fails the test.
                with anyio.fail_after(30), contextlib.suppress(CambError):
                    await client.transcription.create(language=1, file=pipe, filename="a.wav")

    with serve_in_thread(app, log_level="critical") as url:
        anyio.run(main, url, backend=backend)
