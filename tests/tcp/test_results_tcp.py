"""Create -> await -> result over real loopback sockets (uvicorn in a thread), the
no-duplicate-job rule on a real read timeout, and the memory cost of a 100 MB upload."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import time
from typing import Any, cast

import httpx
import pytest

from camb_async import (
    APIConnectionError,
    APITimeoutError,
    AsyncCambClient,
    DubbingResult,
    PollPolicy,
    TranscriptionResult,
    TranslationResult,
    TTSResult,
)
from camb_async.testing import FakeCambAPI

from ..conftest import API_KEY

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

QUICK = PollPolicy(initial=0.05, factor=1.5, max_interval=0.2)


def wait_for(predicate: Any, seconds: float = 10.0) -> None:
    """Until the server thread has logged what the test needs (it logs after answering)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "server never logged the request"
        time.sleep(0.01)


@pytest.mark.parametrize(
    ("kind", "create", "expected"),
    [
        (
            "dub",
            {"video_url": "https://x/v.mp4", "source_language": 1, "target_languages": [54, 76]},
            dict,
        ),
        (
            "dub",
            {"video_url": "https://x/v.mp4", "source_language": 1, "target_language": 54},
            DubbingResult,
        ),
        ("tts", {"text": "hello", "voice_id": 7, "language": 1}, TTSResult),
        (
            "translate",
            {"texts": ["hello", "world"], "source_language": 1, "target_language": 54},
            TranslationResult,
        ),
        (
            "transcribe",
            {"language": "auto", "file": b"RIFF" + bytes(200_000), "filename": "a.wav"},
            TranscriptionResult,
        ),
    ],
)
async def test_round_trip_over_loopback(
    api: FakeCambAPI, base_url: str, kind: str, create: dict[str, Any], expected: type
) -> None:
    api.script_create(kind, after=0.3)
    async with AsyncCambClient(API_KEY, base_url=base_url) as client:
        resource: Any = client.resource(kind)
        handle = await resource.create(**create)
        result = await handle.result(timeout=30, policy=QUICK)
        again = await resource.results([api.created()[0].run_id])
    assert isinstance(result, expected)
    assert list(again.values()) == [result]
    if isinstance(result, dict):
        assert set(result) == {"54", "76"}
        assert all(isinstance(r, DubbingResult) for r in result.values())
    if kind == "translate":
        assert cast(Any, result).texts == ("[54] hello", "[54] world")
    statuses = api.requests("GET", f"/{kind}/")
    assert len(statuses) >= 2 and statuses[-1].status == 200  # polled through PENDING


async def test_read_timeout_on_create_is_one_request(api: FakeCambAPI, base_url: str) -> None:
    api.inject(status=None, delay=1.5, path="/dub")  # the job is made; its answer comes late
    async with AsyncCambClient(API_KEY, base_url=base_url, timeout=0.3) as client:
        with pytest.raises(APITimeoutError):
            await client.dub.create(
                video_url="https://x/v.mp4", source_language=1, target_language=2
            )
    wait_for(lambda: api.requests("POST", "/dub"))
    assert len(api.requests("POST", "/dub")) == 1
    assert len(api.created()) == 1


async def test_reset_after_create_is_not_retried(api: FakeCambAPI, base_url: str) -> None:
    api.inject(status=None, reset=True, path="/translate")
    async with AsyncCambClient(API_KEY, base_url=base_url) as client:
        with pytest.raises(APIConnectionError):
            await client.translation.create(texts=["a"], source_language=1, target_language=2)
        # the connection pool recovers for the next call
        await client.translation.create(texts=["b"], source_language=1, target_language=2)
    assert len(api.requests("POST", "/translate")) == 2
    assert len(api.created()) == 2


async def test_upload_resent_whole_after_429(
    api: FakeCambAPI, base_url: str, tmp_path: Any
) -> None:
    data = bytes(range(256)) * 20_000  # 5 MB
    path = tmp_path / "a.wav"
    path.write_bytes(data)
    api.inject(status=429, retry_after="0.1", path="/transcribe")
    async with AsyncCambClient(API_KEY, base_url=base_url) as client:
        await client.transcription.create(language=1, file=path)
    wait_for(lambda: len(api.requests("POST", "/transcribe")) == 2)
    assert [r.status for r in api.requests("POST", "/transcribe")] == [429, 200]
    (task,) = api.created()
    assert task.request is not None
    assert task.request["media_file"]["size"] == len(data)
    assert task.request["media_file"]["sha256"] == hashlib.sha256(data).hexdigest()


class FailFirstConnect(httpx.AsyncBaseTransport):
    """A real socket transport whose first connection attempt is refused."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.attempts = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        if self.attempts == 1:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_connect_failure_on_create_is_retried(api: FakeCambAPI, base_url: str) -> None:
    transport = FailFirstConnect()
    async with AsyncCambClient(API_KEY, base_url=base_url, transport=transport) as client:
        await client.tts.create(text="hi", voice_id=1, language=1)
    assert transport.attempts == 2
    assert len(api.requests("POST", "/tts")) == 1 and len(api.created()) == 1


async def test_refused_connection_is_an_api_connection_error() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with AsyncCambClient(
        API_KEY, base_url=f"http://127.0.0.1:{port}", max_retries=1
    ) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.tts.create(text="hi", voice_id=1, language=1)
    assert not isinstance(info.value, APITimeoutError)


# ------------------------------------------------------------------ memory of a big upload

UPLOAD_CHILD = textwrap.dedent("""
    import json, os, resource, sys, tempfile, time
    import anyio
    from camb_async import AsyncCambClient
    from camb_async.testing import FakeCambAPI, serve_in_thread

    backend, size_mb = sys.argv[1], int(sys.argv[2])

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    async def main(url, api, path):
        async with AsyncCambClient("k", base_url=url, rate_limit=None, timeout=120) as client:
            await client.transcription.create(language=1, file=b"warm-up" * 100_000)
            base = peak_mb()
            await client.transcription.create(language=1, file=path)
        print(json.dumps({"delta_mb": peak_mb() - base,
                          "server_size": api.created()[-1].request["media_file"]["size"]}))

    api = FakeCambAPI(api_key="k", clock=time.monotonic)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "big.wav")
        with open(path, "wb") as f:
            f.truncate(size_mb * 1024 * 1024)  # sparse: costs no disk, reads as zeros
        with serve_in_thread(api) as url:
            anyio.run(main, url, api, path, backend=backend)
""")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_100mb_upload_is_streamed(backend: str) -> None:
    """Peak RSS (client and fake server in one process) grows by far less than the file.

    Memory, unlike time, is deterministic enough to assert: the streamed upload measures
    under 1 MB of growth; reading the file whole measures about +290 MB.
    """
    out = subprocess.run(
        [sys.executable, "-c", UPLOAD_CHILD, backend, "100"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["server_size"] == 100 * 1024 * 1024
    assert report["delta_mb"] < 30, report
