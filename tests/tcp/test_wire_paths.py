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

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from camb_async import AsyncCambClient

from ..conftest import API_KEY

pytestmark = pytest.mark.anyio

ANSWER = {"task_id": "t-1", "status": "SUCCESS", "run_id": 7}


class Recorder:
    """A loopback HTTP/1.1 server that records each request (line, headers, body) and
    answers every one with ``ANSWER`` as JSON, keeping the connection open."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, list[tuple[str, str]], bytes]] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                line, *lines = head.decode("latin-1").split("\r\n")
                headers = [tuple(h.split(": ", 1)) for h in lines]
                length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                body, buffer = buffer[:length], buffer[length:]
                self.requests.append((line, headers, body))  # type: ignore[arg-type]
                payload = json.dumps(ANSWER).encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )

    def close(self) -> None:
        self._sock.close()


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
