"""Resource limits over real sockets (uvicorn): the response cap, the answer timeout after an
upload. The in-process cases and the helpers are in tests/unit/test_limits.py.
"""

from __future__ import annotations

import zlib
from typing import Any

import anyio
import pytest

from camb_async import (
    APIError,
    APITimeoutError,
    AsyncCambClient,
)
from camb_async._client import DEFAULT_MAX_RESPONSE_BYTES
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
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"),
            *([(b"content-encoding", b"gzip")] if gzipped else [])]})
        if gzipped:
            await send({"type": "http.response.body", "body": bomb})
            return
        body = json_of_size(size)
        for start in range(0, size, 1 << 16):
            await send({"type": "http.response.body", "body": body[start:start + (1 << 16)],
                        "more_body": True})
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
def test_a_trickled_answer_after_an_upload_ends_at_timeout_over_real_sockets(
        backend: str) -> None:
    """Over uvicorn: the server reads the upload, then trickles its answer for 4 s with
    ``timeout=0.5``; before the fix the call returned the late answer."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        for _ in range(40):
            await send({"type": "http.response.body", "body": b" ", "more_body": True})
            await anyio.sleep(0.1)
        await send({"type": "http.response.body", "body": b'{"task_id": "late"}'})

    async def main(url: str) -> None:
        async with AsyncCambClient(API_KEY, base_url=url, timeout=0.5, rate_limit=None
                                   ) as client:
            for call in create_calls(client)[:2]:
                with pytest.raises(APITimeoutError):
                    await call()

    with serve_in_thread(app, log_level="critical") as url:
        anyio.run(main, url, backend=backend)
