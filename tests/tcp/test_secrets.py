"""The API key stays secret over real sockets (uvicorn, TLS). The in-process cases and the
helpers are in tests/unit/test_secrets.py.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from camb_async import (
    APIConnectionError,
    APITimeoutError,
    AsyncCambClient,
    CambError,
    InternalServerError,
    RateLimitError,
)
from camb_async.testing import FakeCambAPI, Fault, serve_in_thread

from ..unit.test_secrets import PARTS, SECRET, assert_no_secret, error_texts

pytestmark = pytest.mark.anyio


def test_key_absent_from_errors_and_logs_over_real_sockets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Resets, read timeouts and error answers through uvicorn; DEBUG logs of every library."""
    caplog.set_level(logging.DEBUG)
    api = FakeCambAPI(api_key=SECRET, clock=time.monotonic)
    api.add_task("dub", "t1", status="SUCCESS")
    errors: list[BaseException] = []

    async def main() -> None:
        async with AsyncCambClient(
            SECRET, base_url=url, timeout=0.3, max_retries=1, rate_limit=None
        ) as client:
            for fault in (
                Fault(status=None, reset=True),
                Fault(status=None, delay=0.6),
                Fault(status=502),
                Fault(status=429, retry_after="0"),
            ):
                api.inject(fault, count=2)
                try:
                    await client.dub.status("t1")
                except CambError as exc:
                    errors.append(exc)
            assert (await client.dub.status("t1")).is_success

    with serve_in_thread(api, log_level="critical") as url:
        for backend in ("asyncio", "trio"):
            anyio.run(main, backend=backend)
    assert [type(e) for e in errors] == [
        APIConnectionError,
        APITimeoutError,
        InternalServerError,
        RateLimitError,
    ] * 2
    for error in errors:
        assert_no_secret(*error_texts(error))
    assert "HTTP Request" in caplog.text  # httpx's own DEBUG/INFO lines were captured
    assert_no_secret(caplog.text)


@pytest.fixture(scope="module")
def self_signed_cert(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    openssl = shutil.which("openssl")
    assert openssl, "the TLS test needs the openssl command to make a self-signed certificate"
    folder: Path = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "RANDFILE": str(folder / "rnd")},
    )
    yield str(cert), str(key)


def test_tls_is_verified_by_default(self_signed_cert: tuple[str, str]) -> None:
    """An untrusted certificate is refused unless the caller opts out with verify=False."""
    cert, key = self_signed_cert
    api = FakeCambAPI(api_key=SECRET, clock=time.monotonic)
    api.add_task("dub", "t1")

    async def status(url: str, **kwargs: Any) -> Any:
        async with AsyncCambClient(SECRET, base_url=url, max_retries=0, **kwargs) as client:
            return await client.dub.status("t1")

    with serve_in_thread(api, log_level="critical", ssl_certfile=cert, ssl_keyfile=key) as url:
        url = url.replace("http://", "https://")
        for backend in ("asyncio", "trio"):
            with pytest.raises(APIConnectionError, match="CERTIFICATE_VERIFY_FAILED") as info:
                anyio.run(status, url, backend=backend)
            assert_no_secret(*error_texts(info.value))
            assert api.log == []  # the key never reached the untrusted server
            # The same server with verification turned off: so the refusal above was TLS's.
            assert anyio.run(lambda: status(url, verify=False), backend=backend).is_success
            api.log.clear()


def test_a_key_the_server_echoes_is_redacted_over_real_sockets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Through uvicorn on both loops; httpcore (trio) logs response headers at DEBUG."""
    caplog.set_level(logging.DEBUG)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        key = headers.get(b"x-api-key", b"")
        quoted = b"\n".join(name + b": " + value for name, value in scope["headers"])
        await send(
            {
                "type": "http.response.start",
                "status": 502,
                "headers": [
                    (b"content-type", b"text/plain"),
                    (b"x-echo", key),
                    (b"x-partial", key[:20]),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"bad gateway; you sent:\n" + quoted})

    errors: list[BaseException] = []

    async def main() -> None:
        async with AsyncCambClient(SECRET, base_url=url, max_retries=1, rate_limit=None) as client:
            with pytest.raises(InternalServerError) as info:
                await client.dub.status("t1")
            errors.append(info.value)

    with serve_in_thread(app, log_level="critical") as url:
        for backend in ("asyncio", "trio"):
            anyio.run(main, backend=backend)
    assert "x-echo" in caplog.text  # httpcore's DEBUG lines with the headers were captured
    for error in errors:
        assert "[redacted]" in str(error)
        for text in error_texts(error):
            for part in PARTS:
                assert part not in text
    for part in PARTS:
        assert part not in caplog.text
