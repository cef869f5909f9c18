"""Proxies and CA bundles from the environment, and ``proxy=``, over real loopback sockets on
both loops (issue 15): a tiny forwarding proxy (plain HTTP forwarding and CONNECT tunnels)
records what it saw; the fake API is served by uvicorn, over TLS where a tunnel is tested."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from camb_async import AsyncCambClient, TaskKind, TaskStatus
from camb_async._config import _env_proxy
from camb_async.testing import FakeCambAPI, serve_in_thread

from ..conftest import API_KEY
from .redis_server import TLSFiles

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


class RecordingProxy:
    """An HTTP proxy on loopback: absolute-form requests are forwarded (to ``upstream`` when
    set, else to the host they name), CONNECT is tunnelled. ``seen`` holds (method, target,
    headers) of every request it received, in order."""

    def __init__(self, upstream: tuple[str, int] | None = None) -> None:
        self.upstream = upstream
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                proxy._handle(self.connection, self.rfile)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> RecordingProxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, conn: socket.socket, rfile: Any) -> None:
        while True:
            line = rfile.readline().decode("latin-1").strip()
            if not line:
                return
            method, target, _ = line.split(" ", 2)
            headers: dict[str, str] = {}
            while header := rfile.readline().decode("latin-1").strip():
                name, _, value = header.partition(":")
                headers[name.strip().lower()] = value.strip()
            self.seen.append((method, target, headers))
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                upstream = socket.create_connection((host, int(port)))
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                self._pipe(conn, upstream)
                return
            url = httpx.URL(target)
            body = rfile.read(int(headers.get("content-length", "0") or 0))
            upstream = socket.create_connection(self.upstream or (url.host, url.port or 80))
            headers["connection"] = "close"
            headers.pop("proxy-connection", None)
            request = (
                f"{method} {url.raw_path.decode()} HTTP/1.1\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                + "\r\n"
            )
            upstream.sendall(request.encode("latin-1") + body)
            with upstream:
                while chunk := upstream.recv(65536):
                    conn.sendall(chunk)
            return  # the answer said "connection: close"

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        def copy(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for end in (src, dst):
                    with contextlib.suppress(OSError):
                        end.shutdown(socket.SHUT_RDWR)

        other = threading.Thread(target=copy, args=(b, a), daemon=True)
        other.start()
        copy(a, b)
        other.join(5)
        b.close()


@pytest.fixture
def api() -> FakeCambAPI:
    return FakeCambAPI(api_key=API_KEY, clock=time.monotonic)


@pytest.fixture(scope="module")
def tls() -> Iterator[TLSFiles]:
    with tempfile.TemporaryDirectory() as directory:
        yield TLSFiles.make(directory)


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
    ):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


async def test_explicit_proxy_forwards_plain_http(
    api: FakeCambAPI, no_proxy_env: pytest.MonkeyPatch
) -> None:
    task_id = api.add_task(TaskKind.DUB, polls=0)
    with serve_in_thread(api) as base_url, RecordingProxy() as proxy:
        async with AsyncCambClient(
            api_key=API_KEY, base_url=base_url, rate_limit=None, proxy=proxy.url
        ) as client:
            assert (await client.dub.status(task_id)).status is TaskStatus.SUCCESS
            assert (await client.dub.status(task_id)).is_success
    assert [(m, t) for m, t, _ in proxy.seen] == [("GET", f"{base_url}/dub/{task_id}")] * 2


async def test_proxy_from_the_environment_and_no_proxy(
    api: FakeCambAPI, no_proxy_env: pytest.MonkeyPatch
) -> None:
    task_id = api.add_task(TaskKind.TTS, polls=0)
    with serve_in_thread(api) as base_url, RecordingProxy() as proxy:
        port = int(base_url.rsplit(":", 1)[1])
        proxy.upstream = ("127.0.0.1", port)  # camb.invalid is served by the local fake
        no_proxy_env.setenv("HTTP_PROXY", proxy.url)
        async with AsyncCambClient(
            api_key=API_KEY, base_url="http://camb.invalid/", allow_insecure=True, rate_limit=None
        ) as client:
            assert (await client.tts.status(task_id)).status is TaskStatus.SUCCESS
        assert proxy.seen[0][:2] == ("GET", f"http://camb.invalid/tts/{task_id}")
        assert proxy.seen[0][2]["x-api-key"] == API_KEY  # through our own loopback proxy
    no_proxy_env.setenv("NO_PROXY", "camb.invalid")
    assert _env_proxy(httpx.URL("http://camb.invalid/x")) is None
    no_proxy_env.setenv("NO_PROXY", "other.example")
    assert _env_proxy(httpx.URL("http://camb.invalid/x")) == proxy.url
    assert _env_proxy(httpx.URL("http://127.0.0.1:8/x")) is None  # loopback: never proxied


async def test_connect_tunnel_and_ca_bundle_from_ssl_cert_file(
    api: FakeCambAPI, tls: TLSFiles, no_proxy_env: pytest.MonkeyPatch
) -> None:
    task_id = api.add_task(TaskKind.TRANSLATION, polls=0)
    with serve_in_thread(api, ssl_certfile=tls.server_cert, ssl_keyfile=tls.server_key) as base_url:
        https_url = base_url.replace("http://", "https://").replace("127.0.0.1", "localhost")
        # Without the CA the certificate is refused; SSL_CERT_FILE names it, as in httpx.
        async with AsyncCambClient(
            api_key=API_KEY, base_url=https_url, rate_limit=None, max_retries=0
        ) as client:
            with pytest.raises(Exception, match=r"(?i)certificate"):
                await client.translation.status(task_id)
        no_proxy_env.setenv("SSL_CERT_FILE", tls.ca)
        async with AsyncCambClient(
            api_key=API_KEY, base_url=https_url, rate_limit=None
        ) as client:  # the loop's default transport
            assert (await client.translation.status(task_id)).is_success
        with RecordingProxy() as proxy:
            async with AsyncCambClient(
                api_key=API_KEY, base_url=https_url, rate_limit=None, proxy=proxy.url
            ) as client:
                assert (await client.translation.status(task_id)).is_success
        host_port = https_url.split("//", 1)[1]
        assert [(m, t) for m, t, _ in proxy.seen] == [("CONNECT", host_port)]
        assert "x-api-key" not in proxy.seen[0][2]  # the key went inside the tunnel only


def test_plain_http_proxy_for_a_remote_plain_http_base_is_refused(
    no_proxy_env: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ValueError, match="plain http to the proxy"):
        AsyncCambClient(
            api_key=API_KEY, base_url="http://127.0.0.1:9", proxy="http://proxy.example:3128"
        )
    no_proxy_env.setenv("HTTP_PROXY", "http://proxy.example:3128")
    # A loopback base never takes the environment's (remote) proxy: the key stays local.
    assert AsyncCambClient(api_key=API_KEY, base_url="http://127.0.0.1:9")._proxy is None
    AsyncCambClient(
        api_key=API_KEY, base_url="https://camb.invalid", proxy="http://proxy.example:3128"
    )  # CONNECT: the key stays in TLS
    with pytest.raises(ValueError, match="proxy= is for the client's own transport"):
        AsyncCambClient(
            api_key=API_KEY,
            proxy="http://127.0.0.1:1",
            transport=httpx.MockTransport(lambda r: httpx.Response(200)),
        )
