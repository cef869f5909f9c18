"""AsyncCambClient and the one request path. The only module that touches httpx.

Flow of every request: budget.acquire() -> httpx send -> on 408/429/5xx or a transport
failure wait (Retry-After / retry-after-ms when given, else a jittered ``backoff`` wait
generator) and retry up to ``max_retries`` -> non-2xx mapped to the error hierarchy -> JSON
decoded and handed to a parser from ``_models``.
"""

from __future__ import annotations

import email.utils
import functools
import ipaddress
import json
import logging
import math
import os
import re
import sys
import time
import urllib.request
import weakref
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import anyio
import backoff
import httpx
import sniffio

from ._adaptive import CompletionStats
from ._budget import Budget, RateBudget
from ._errors import (
    MIN_ECHO,
    REDACTED,
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    ClientClosedError,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    UnprocessableEntityError,
    redact,
    snippet,
)
from ._hooks import RequestHooks
from ._models import (
    DubbingOutcome,
    ModelError,
    StatusResult,
    TaskKind,
    TranscriptionResult,
    TranslationResult,
    TTSResult,
    ValidationDetail,
    parse_validation_details,
)
from ._resources import (
    DubResource,
    TaskResource,
    TranscriptionResource,
    TranslationResource,
    TTSResource,
)
from ._version import __version__

if TYPE_CHECKING:
    from ._errors import CambError
    from ._handle import TaskHandle
    from ._models import DurationHint
    from ._polling import PolicyArg

__all__ = ["AsyncCambClient", "DEFAULT_BASE_URL"]

T = TypeVar("T")
logger = logging.getLogger("camb_async")
_httpx_logger = logging.getLogger("httpx")

DEFAULT_BASE_URL = "https://client.camb.ai/apis"
RETRY_STATUSES = frozenset({408, 429})
#: Longest server-requested wait honoured; a hostile or buggy Retry-After cannot park us.
MAX_RETRY_AFTER = 60.0
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class _KeyFilter(logging.Filter):
    """Redacts the key of every live client from the log records of the loggers that
    could carry a server's echo of it (httpcore logs response headers at DEBUG, httpx the
    reason phrase at INFO). Runs only for records that are emitted: free when logging is off.
    """

    def __init__(self) -> None:
        super().__init__()
        self.clients: weakref.WeakSet[AsyncCambClient] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        clients = list(self.clients)
        if clients:
            try:
                message = clean = record.getMessage()
            except Exception:  # a malformed record: the handler reports it, not us
                return True
            for client in clients:
                clean = client._redact(clean)
            if clean != message:
                record.msg, record.args = clean, None
        return True


_KEY_FILTER = _KeyFilter()
for _name in ("camb_async", "httpx", "httpcore.connection", "httpcore.http11",
              "httpcore.http2", "httpcore.proxy", "httpcore.socks", "aiohttp.client"):
    logging.getLogger(_name).addFilter(_KEY_FILTER)


#: Response headers that carry the server's id of a request, most specific first: what a
#: support ticket needs. CAMB.AI's API sits behind AWS and Cloudflare; both stamp their own.
REQUEST_ID_HEADERS = ("x-request-id", "request-id", "x-amzn-requestid", "x-amz-request-id",
                      "x-amz-cf-id", "cf-ray")
#: Response headers worth keeping on an error (the rest are noise in a ticket).
_KEPT_HEADERS = frozenset({*REQUEST_ID_HEADERS, "content-type", "content-length", "date",
                           "server", "retry-after", "retry-after-ms", "via",
                           "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"})
_LOG_HANDLER: logging.Handler | None = None


def _setup_logging(value: str | None = None) -> None:
    """``CAMB_LOG=debug|info``: the library's log lines to stderr, as ``OPENAI_LOG`` does.

    Runs at every client construction (the variable may be set after import) but adds its
    handler once; an unknown value is ignored. The handler carries the key filter, so no log
    line it writes holds a client's key.
    """
    global _LOG_HANDLER
    value = (os.environ.get("CAMB_LOG") if value is None else value) or ""
    level = {"debug": logging.DEBUG, "info": logging.INFO}.get(value.strip().lower())
    if level is None:
        return
    root = logging.getLogger("camb_async")
    if _LOG_HANDLER is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(
            "[%(asctime)s %(levelname)s %(name)s] %(message)s"))
        handler.addFilter(_KEY_FILTER)
        _LOG_HANDLER = handler
    if _LOG_HANDLER not in root.handlers:
        root.addHandler(_LOG_HANDLER)
    root.setLevel(level)


def _env_proxy(url: httpx.URL) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY``/``HTTP_PROXY``/
    ``ALL_PROXY``, honouring ``NO_PROXY``), as httpx would pick it; ``None`` for none.

    Loopback hosts never go through an environment proxy: the proxy's loopback is not ours.
    """
    if _is_loopback(url.host):
        return None
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if not proxy:
        return None
    host = url.host if url.port is None else f"{url.host}:{url.port}"
    if urllib.request.proxy_bypass_environment(host, proxies):  # type: ignore[attr-defined]
        return None
    return proxy


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_retry_after(headers: Mapping[str, str], now: float | None = None,
                      cap: float = MAX_RETRY_AFTER) -> float | None:
    """Seconds the server asked us to wait, capped at ``cap``; None if absent/bad.

    Accepts ``retry-after-ms`` (milliseconds) first, then ``Retry-After`` as (fractional)
    seconds or an HTTP date. Negative, NaN or unparseable values count as absent (an unusable
    ``retry-after-ms`` falls back to ``Retry-After``); an infinite or huge one is ``cap``
    (with ``cap=inf``: longer than any ``max_retry_wait``).
    """
    value: float | None = None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            value = None
        if value is not None and not value >= 0:  # negative or NaN: unusable
            value = None
    if value is None:
        raw = headers.get("retry-after")
        if raw is None:
            return None
        try:
            value = float(raw)
        except ValueError:
            try:
                date = email.utils.parsedate_to_datetime(raw)
            except (TypeError, ValueError, IndexError, OverflowError):
                return None
            if date is None:
                return None
            value = date.timestamp() - (time.time() if now is None else now)
            value = max(value, 0.0)
    if not value >= 0:  # negative or NaN
        return None
    return min(value, cap)


# ------------------------------------------------------------------ reading an answer
#
# Kept in small helpers so the read path stays one place: ``_DirectSender.send`` and the
# caller-client branch of ``_request`` both read every answer through ``_read_capped``.

#: Default ``max_response_bytes``: a JSON answer past this (after decompression) is refused.
#: A status answer is ~100 bytes; a full batch of results a few hundred KiB.
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
#: Most bytes one zlib step may inflate to (memory per step, whatever the ratio).
_INFLATE_STEP = 256 * 1024


class _AnswerTooLarge(Exception):
    """A 2xx answer passed ``max_response_bytes``; ``_request`` raises it as ``APIError``."""

    def __init__(self, limit: int, status_code: int) -> None:
        super().__init__(f"answer larger than max_response_bytes={limit}")
        self.limit = limit
        self.status_code = status_code
        self.detail = f"is larger than max_response_bytes ({limit} bytes)"


class _UnboundedEncoding(_AnswerTooLarge):
    """A ``Content-Encoding`` we cannot inflate within bounds (br, zstd, unknown): an
    ``APIError``, not retried (the same answer would come again)."""

    def __init__(self, encoding: str, status_code: int) -> None:
        Exception.__init__(self, f"unsupported Content-Encoding {encoding!r}")
        self.limit = 0
        self.status_code = status_code
        self.detail = (f"uses Content-Encoding {encoding[:40]!r}, which is not read "
                       "(only gzip and deflate are)")


class _Inflate:
    """One gzip/deflate layer of a ``Content-Encoding``, inflated in bounded steps."""

    __slots__ = ("_z", "_head", "pending", "room")

    def __init__(self, encoding: str) -> None:
        deflate = encoding == "deflate"
        self._z = zlib.decompressobj(zlib.MAX_WBITS if deflate else 16 + zlib.MAX_WBITS)
        # "deflate" is zlib-wrapped per the RFC, but some servers send it raw; zlib tells
        # which once it has seen two bytes (its header), so those are kept until then.
        self._head: bytes | None = b"" if deflate else None
        self.pending = b""  # input not inflated yet (at most one step's worth)
        self.room = 1 << 62  # the last layer: bytes its reader still takes (see _decoded)

    def step(self, most: int = _INFLATE_STEP) -> bytes:
        """Inflate at most ``most`` bytes of ``pending``."""
        data = self.pending
        if self._head is not None:
            self._head += data
        try:
            out: bytes = self._z.decompress(data, most)
        except zlib.error as exc:
            if self._head is not None:  # not a zlib header: raw deflate, from the start
                self._z, self.pending, self._head = (
                    zlib.decompressobj(-zlib.MAX_WBITS), self._head, None)
                return b""
            raise httpx.DecodingError(f"bad compressed answer: {exc}") from None
        if self._head is not None and len(self._head) >= 2:
            self._head = None  # a valid zlib header: decided
        # Whatever follows the compressed stream (unused_data) is ignored, as httpx does.
        self.pending = b"" if self._z.eof else self._z.unconsumed_tail
        return out

    def flush(self) -> bytes:
        out: bytes = self._z.flush()
        return out


def _inflaters(encoding: str, status_code: int) -> list[_Inflate]:
    """The layers of ``Content-Encoding`` to undo, outermost (last applied) first; raises
    ``_UnboundedEncoding`` for a coding other than gzip/deflate/identity. Stacked layers
    (``gzip, gzip``) are each inflated in bounded steps, never by httpx's decoders (which
    inflate a whole chunk at once)."""
    layers: list[_Inflate] = []
    for coding in reversed(encoding.lower().split(",")):
        coding = coding.strip()
        if coding in ("", "identity"):
            continue
        if coding in ("gzip", "x-gzip", "deflate"):
            if len(layers) >= 8:  # nobody stacks eight: refuse rather than chain forever
                raise _UnboundedEncoding(encoding, status_code)
            layers.append(_Inflate(coding))
        else:
            raise _UnboundedEncoding(encoding, status_code)
    return layers


def _drain(layers: list[_Inflate], index: int) -> Iterator[bytes]:
    """Everything layer ``index`` (and those after it) yields from its pending input, in
    pieces of at most ``_INFLATE_STEP`` bytes: one step is passed on whole before the next."""
    layer = layers[index]
    last = index == len(layers) - 1
    while layer.pending:
        out = layer.step(min(layer.room + 1, _INFLATE_STEP) if last else _INFLATE_STEP)
        if not out:
            continue
        if last:
            layer.room = max(layer.room - len(out), 0)
            yield out
        else:
            layers[index + 1].pending = out
            yield from _drain(layers, index + 1)


def _finish(layers: list[_Inflate]) -> Iterator[bytes]:
    """What the layers still hold once the input has ended."""
    for index, layer in enumerate(layers):
        tail = layer.flush()
        if not tail:
            continue
        if index == len(layers) - 1:
            yield tail
        else:
            layers[index + 1].pending = tail
            yield from _drain(layers, index + 1)


async def _decoded(response: httpx.Response, layers: list[_Inflate],
                   limit: int | None = None) -> AsyncIterator[bytes]:
    """The body of ``response`` decoded, in pieces of at most ``_INFLATE_STEP`` bytes per
    layer step (a compressed body is never inflated a whole network chunk at a time). With
    ``limit``, the last layer inflates no more than one byte past it."""
    if response.is_stream_consumed:  # read already (httpx.Response(content=...) in tests)
        if response.content:
            yield response.content
        return
    if layers and limit is not None:
        layers[-1].room = limit
    if not layers:
        async for data in response.aiter_raw():
            if data:
                yield data
        return
    async for data in response.aiter_raw():
        layers[0].pending = data
        for out in _drain(layers, 0):
            yield out
    for out in _finish(layers):
        yield out


async def _read_capped(response: httpx.Response, limit: int) -> None:
    """Read the body into ``response.content``, decompressed, never more than ``limit`` bytes.

    Own code rather than ``response.aread()``: aread has no cap, and httpx's decoders inflate
    each network chunk whole (one 64 KiB gzip chunk can become 64 MB) before anyone could
    count. Here zlib's ``max_length`` bounds every inflate step, of every stacked layer, to
    ``_INFLATE_STEP``, so the memory one answer takes stays within about twice ``limit`` (the
    pieces, then their join) whatever it inflates to. A 2xx answer past ``limit`` raises
    ``_AnswerTooLarge``, one in an encoding other than gzip/deflate ``_UnboundedEncoding``; an
    error answer is only cut short (its snippet is all anyone reads; its status decides a
    retry), and one in an unknown encoding is read as empty.
    """
    status = response.status_code
    if response.is_stream_consumed:  # read already (httpx.Response(content=...) in tests)
        if len(response.content) > limit:
            if status < 300:
                raise _AnswerTooLarge(limit, status)
            response._content = response.content[:limit]
        return
    try:
        layers = _inflaters(response.headers.get("content-encoding", ""), status)
    except _UnboundedEncoding:
        if status < 300:
            raise
        response._content = b""
        return
    chunks: list[bytes] = []
    room = limit  # bytes still allowed
    async for out in _decoded(response, layers, limit):
        if len(out) > room:
            if status < 300:
                raise _AnswerTooLarge(limit, status)
            chunks.append(out[:room])
            response._content = b"".join(chunks)
            return
        room -= len(out)
        chunks.append(out)
    response._content = b"".join(chunks)  # what aread() would set: .content works as usual


class _UploadStream(httpx.AsyncByteStream):
    """A multipart request body that calls ``uploaded`` once its last byte is handed over.

    An upload may take as long as bytes keep flowing, so its attempt has no overall deadline
    until then; but each chunk handed to the transport must be taken within ``timeout``
    (``uploaded(True)`` re-arms the attempt's deadline per chunk): a server that stops reading
    ends the attempt even where the transport has no write timeout (aiohttp's). From the
    last byte on, the wait for the answer is bounded by ``timeout`` like any request's.
    """

    __slots__ = ("_stream", "_uploaded")

    def __init__(self, stream: httpx.AsyncByteStream,
                 uploaded: Callable[..., None]) -> None:
        self._stream = stream
        self._uploaded = uploaded

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            self._uploaded(True)  # this chunk must be taken within ``timeout``
            yield chunk
        self._uploaded()


def _unmapped(exc: Exception) -> httpx.TransportError:
    """An exception the transport did not map to httpx's, as one (its text is redacted and
    cut where the ``CambError`` is made, and the original is not chained)."""
    return httpx.TransportError(f"{type(exc).__name__}: {exc}")


def _answer_deadline(scope: anyio.CancelScope, timeout: float) -> Callable[..., None]:
    """``start(progress=False)``: set ``scope``'s deadline to ``timeout`` from now. A
    ``progress`` call (an upload chunk handed over) re-arms it each time; the first plain
    call (the upload is sent, or an answer came) fixes it for the rest of the attempt."""
    fixed = False

    def start(progress: bool = False) -> None:
        nonlocal fixed
        if not fixed:
            scope.deadline = anyio.current_time() + timeout
            fixed = not progress
    return start



# ------------------------------------------------------------------ default transport
#
# Why httpx over aiohttp on asyncio: on loopback nginx, native httpx (httpcore) costs about
# 1.0-1.3 ms of CPU per status check alone and 2.6-3.1 ms at 50 in flight (httpcore scans its
# whole pool on every request), while httpx over httpx-aiohttp's transport costs ~0.55 ms at
# any concurrency (DESIGN "Measured facts"; `python benchmarks/run_all.py` re-measures it).
# aiohttp is asyncio-only, so on trio the client keeps native httpx. The choice is made when
# the HTTP client is opened (inside the running loop); a caller's transport/http_client wins.


def _default_transport(*, verify: bool, limits: httpx.Limits) -> httpx.AsyncBaseTransport | None:
    """The transport for a client given none: aiohttp's on asyncio, sharded httpx pools on
    trio (and any other loop), ``None`` (httpx's own) if no loop can be detected."""
    try:
        library = sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return None
    if library != "asyncio":
        return _ShardedTransport(verify=verify, limits=limits)
    try:
        transport_class = _aiohttp_transport_class()
    except ImportError:  # aiohttp is a dependency; a broken install still works, just slower
        return None
    return transport_class(verify=verify, limits=limits)


class _ShardedTransport(httpx.AsyncBaseTransport):
    """Several small httpx (httpcore) pools in place of one large one, for trio.

    httpcore scans every connection of its pool when a request starts and again when its
    response closes, so its CPU per request grows with the pool: at 50 in flight one pool
    costs ~2.7 ms of CPU per status check on loopback, ten pools of five ~0.95 ms
    (benchmarks/README.md). Each request goes to the pool with the fewest requests in flight
    (its connection returns when the response stream closes), so every pool holds about
    ``in_flight / shards`` connections and keep-alive still works.
    """

    #: Connections per shard the pools are sized for.
    PER_SHARD = 5
    MAX_SHARDS = 16

    def __init__(self, *, verify: bool, limits: httpx.Limits) -> None:
        keepalive = limits.max_keepalive_connections or 20
        shards = max(1, min(self.MAX_SHARDS, math.ceil(keepalive / self.PER_SHARD)))
        per_shard = httpx.Limits(max_connections=limits.max_connections,
                                 max_keepalive_connections=math.ceil(keepalive / shards),
                                 keepalive_expiry=limits.keepalive_expiry)
        # One TLS context for all shards: loading the CA bundle costs ~50 ms each time.
        # trust_env: SSL_CERT_FILE / SSL_CERT_DIR name the CA bundle, as httpx's default does.
        context = httpx.create_ssl_context(verify=verify, trust_env=True)
        self._pools = [httpx.AsyncHTTPTransport(verify=context, limits=per_shard,
                                                trust_env=False) for _ in range(shards)]
        self._load = [0] * shards

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        load = self._load
        index = load.index(min(load))
        load[index] += 1
        try:
            response = await self._pools[index].handle_async_request(request)
        except BaseException:
            load[index] -= 1
            raise
        response.stream = _ReleasingStream(response.stream, load, index)  # type: ignore[arg-type]
        return response

    @property
    def ssl_context(self) -> Any:
        """The TLS context every shard uses (one per shard, built from the same settings)."""
        return self._pools[0]._pool._ssl_context

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that gives its shard's in-flight count back when closed (once)."""

    __slots__ = ("_stream", "_load", "_index")

    def __init__(self, stream: httpx.AsyncByteStream, load: list[int], index: int) -> None:
        self._stream = stream
        self._load: list[int] | None = load
        self._index = index

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        load, self._load = self._load, None
        if load is not None:
            load[self._index] -= 1
        await self._stream.aclose()


@functools.cache
def _aiohttp_transport_class() -> Callable[..., httpx.AsyncBaseTransport]:
    """httpx-aiohttp's transport with an exception mapping that keeps httpx's hierarchy.

    Built lazily so trio users never import aiohttp. httpx-aiohttp 0.2 maps every
    ``aiohttp.ClientConnectionError`` (a refused connection, a server that hung up, a reset,
    a read timeout) to ``httpx.ConnectTimeout``, and lets other aiohttp errors escape
    unmapped. That breaks two promises of the request path: a connect failure must read as
    ``APIConnectionError`` (not a timeout), and only failures that prove the server never saw
    the request may be resent for task creation. So the original aiohttp error (kept as the
    ``__cause__``) is mapped again here, the way httpcore would have reported it.
    """
    import aiohttp
    from httpx_aiohttp import AiohttpTransport

    def to_httpx(exc: Exception) -> httpx.TransportError | None:
        cause: BaseException = exc
        if isinstance(exc, httpx.TransportError):
            if exc.__cause__ is None:
                return exc
            cause = exc.__cause__
        message = str(cause) or type(cause).__name__
        if isinstance(cause, aiohttp.ConnectionTimeoutError):
            return httpx.ConnectTimeout(message)  # no connection (pool wait or connect)
        if isinstance(cause, TimeoutError):  # aiohttp.ServerTimeoutError / SocketTimeoutError
            return httpx.ReadTimeout(message)
        if isinstance(cause, aiohttp.ClientConnectorError):  # refused, DNS, TLS handshake
            return httpx.ConnectError(message)
        if isinstance(cause, (aiohttp.ServerDisconnectedError, aiohttp.ClientResponseError)):
            return httpx.RemoteProtocolError(message)
        if isinstance(cause, (aiohttp.ClientPayloadError, OSError,
                              aiohttp.ClientConnectionResetError)):
            return httpx.ReadError(message)  # reset or truncated mid-answer
        if isinstance(cause, aiohttp.InvalidURL):
            return httpx.UnsupportedProtocol(message)
        if isinstance(cause, aiohttp.ClientError):
            return httpx.TransportError(message)
        return exc if isinstance(exc, httpx.TransportError) else None

    class MappedStream(httpx.AsyncByteStream):
        """The response body, with read errors mapped like the request's."""

        __slots__ = ("_stream",)

        def __init__(self, stream: httpx.AsyncByteStream) -> None:
            self._stream = stream

        async def __aiter__(self) -> AsyncIterator[bytes]:
            try:
                async for chunk in self._stream:
                    yield chunk
            except Exception as exc:
                mapped = to_httpx(exc)
                if mapped is None or mapped is exc:
                    raise
                raise mapped from exc.__cause__ or exc

        async def aclose(self) -> None:
            try:
                await self._stream.aclose()
            except Exception as exc:
                mapped = to_httpx(exc)
                if mapped is None or mapped is exc:
                    raise
                raise mapped from exc.__cause__ or exc

    class CambAiohttpTransport(AiohttpTransport):
        def get_client(self) -> aiohttp.ClientSession:
            # No connection cap of aiohttp's own (its default is 100): the budget decides.
            connector = aiohttp.TCPConnector(
                limit=0, keepalive_timeout=self.limits.keepalive_expiry, ssl=self.ssl_context
            )
            return aiohttp.ClientSession(connector=connector, trust_env=False)

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            try:
                response: httpx.Response = await super().handle_async_request(request)
            except Exception as exc:
                mapped = to_httpx(exc)
                if mapped is None or mapped is exc:
                    raise
                mapped.request = request
                raise mapped from exc.__cause__ or exc
            response.stream = MappedStream(response.stream)  # type: ignore[arg-type]
            return response

    return CambAiohttpTransport



class _DirectSender:
    """The request path's send for a client that owns its ``httpx.AsyncClient``.

    ``AsyncClient.request`` re-does per request what is fixed for this client: merging the
    base URL and default headers, cookie extraction into a jar nobody reads (the API
    authenticates with a header), auth and redirect layers that are off. Profiled at 50 in
    flight that was about a third of the CPU of a status check (benchmarks/README.md). Here
    the headers are built once and the request goes straight to the transport; the body is
    read and the stream closed exactly as ``AsyncClient.send`` does. A caller's own
    ``http_client`` keeps going through ``AsyncClient.request`` (its auth, hooks, cookies).
    """

    __slots__ = ("_http", "_transport", "_headers", "_stream_headers", "_timeout", "_max_bytes")

    def __init__(self, http: httpx.AsyncClient, transport: httpx.AsyncBaseTransport,
                 headers: Mapping[str, str], timeout: float, max_bytes: int) -> None:
        self._http = http
        self._max_bytes = max_bytes
        self._transport = transport
        self._headers = httpx.Headers({
            "accept-encoding": "gzip, deflate",
            "connection": "keep-alive",
            **headers,
        }).raw
        # A streamed body (audio) asks for no compression: FLAC/MP3 do not shrink further.
        self._stream_headers = httpx.Headers({
            **dict(httpx.Headers(self._headers).items()), "accept-encoding": "identity",
        }).raw
        self._timeout = httpx.Timeout(timeout).as_dict()

    async def send(self, method: str, url: str, json_body: Any,
                   params: Mapping[str, str | int] | None, data: Mapping[str, str] | None,
                   files: Any, stream: bool = False,
                   uploaded: Callable[..., None] | None = None,
                   extra_headers: Mapping[str, str] | None = None) -> httpx.Response:
        if self._http.is_closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        headers: Any = self._stream_headers if stream else self._headers
        if extra_headers:
            headers = httpx.Headers(headers)
            headers.update(extra_headers)
            if stream:  # never a compressed audio body, whatever the extra headers say
                headers["accept-encoding"] = "identity"
        request = httpx.Request(method, httpx.URL(url), params=params, headers=headers,
                                json=json_body, data=data, files=files,
                                extensions={"timeout": self._timeout})
        if uploaded is not None:
            request.stream = _UploadStream(request.stream, uploaded)  # type: ignore[arg-type]
        response = await self._transport.handle_async_request(request)
        response.request = request
        if not stream:  # a streamed body is read (and closed) by its ``BodyStream``
            try:
                if uploaded is not None:
                    uploaded()  # an answer before the whole upload: bound reading it all the same
                await _read_capped(response, self._max_bytes)
            finally:
                await response.aclose()
        if _httpx_logger.isEnabledFor(logging.INFO):  # the line httpx itself would log
            _httpx_logger.info('HTTP Request: %s %s "%s %d %s"', method, request.url,
                               response.http_version, response.status_code,
                               response.reason_phrase)
        return response


class AsyncCambClient:
    """Client for the CAMB.AI task API, for asyncio and trio.

    One client = one pooled HTTP client + one rate budget shared by every request it makes
    (status checks, handles, bulk polls, results). Use it as ``async with`` or call
    ``aclose()``; the HTTP client is opened lazily on first use inside the event loop.

    Limits every call respects: a JSON answer larger than ``max_response_bytes`` (counted
    after decompression; default 8 MiB) is an ``APIError``, not retried. Each attempt ends
    within ``timeout`` (an upload may run while its bytes flow, each chunk taken within
    ``timeout``; the wait for the answer after it is bounded by ``timeout``). Between
    attempts the client waits a jittered backoff of at most 8 s, or the server's
    Retry-After when it is at most ``max_retry_wait`` (default 60 s); a longer Retry-After
    is not slept on: the error (``RateLimitError`` with ``retry_after`` on a 429) is raised
    at once. So one call, retries included, takes at most
    ``(max_retries + 1) * timeout + max_retries * max(max_retry_wait, 8)`` seconds plus any
    wait for the rate budget (whose 429 pause is capped at its own ``max_pause``).

    Proxies and CA bundles come from the environment as httpx takes them by default
    (``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` with ``NO_PROXY``; ``SSL_CERT_FILE``,
    ``SSL_CERT_DIR``), or ``proxy=``. When a proxy applies, requests go through httpx's own
    transport with that proxy (on asyncio too). ``CAMB_LOG=debug|info`` sends the library's
    log lines to stderr.

    Args:
        api_key: the API key; ``None`` reads ``CAMB_API_KEY``.
        base_url: the API's root; ``None`` reads ``CAMB_BASE_URL``, else CAMB.AI's.
        timeout: seconds each attempt may take at most.
        max_retries: retries of a failed attempt (429, 5xx, connection failures).
        rate_limit: requests per second this client starts at most; ``None``: no limit.
        max_concurrency: requests in flight at most.
        budget: a shared ``Budget`` (e.g. ``RedisRateBudget``), in place of ``rate_limit``
            and ``max_concurrency``. ``async with client`` enters the budget's own
            ``async with`` when it has one and no one has entered it yet.
        http_client: your own ``httpx.AsyncClient`` (left open by ``aclose()``).
        transport: an httpx transport for the client's own ``httpx.AsyncClient``.
        allow_insecure: allow a plain-http ``base_url`` (or proxy) on a remote host, which
            sends the key in clear text.
        verify: verify the server's TLS certificate.
        hooks: request hooks for metrics and tracing.
        completion_stats: task durations learned earlier (``CompletionStats.from_dict``).
        max_response_bytes: largest JSON answer read, after decompression.
        max_retry_wait: longest Retry-After slept on; a longer one raises at once.
        proxy: a proxy URL (or ``httpx.Proxy``) for every request, in place of the
            environment's; not with ``http_client`` or ``transport``.
    """

    dub: DubResource
    tts: TTSResource
    translation: TranslationResource
    transcription: TranscriptionResource
    base_url: str
    timeout: float
    max_retries: int
    max_response_bytes: int
    max_retry_wait: float
    budget: Budget
    completion_stats: CompletionStats

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 3,
        rate_limit: float | None = 20.0,
        max_concurrency: int = 16,
        budget: Budget | None = None,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        allow_insecure: bool = False,
        verify: bool = True,
        hooks: RequestHooks | None = None,
        completion_stats: CompletionStats | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_retry_wait: float = MAX_RETRY_AFTER,
        proxy: str | httpx.Proxy | None = None,
    ) -> None:
        _setup_logging()
        key = api_key if api_key is not None else os.environ.get("CAMB_API_KEY")
        if key is None or not isinstance(key, str) or not key.strip():
            raise ValueError(
                "no API key: pass api_key=... or set the CAMB_API_KEY environment variable"
            )
        if any(ord(c) < 32 or ord(c) == 127 for c in key):
            raise ValueError("the API key contains control characters")
        base = base_url or os.environ.get("CAMB_BASE_URL") or DEFAULT_BASE_URL
        parsed = httpx.URL(base)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"base_url must be an http(s) URL with a host, got {base!r}")
        # In-process transports (httpx's ASGI app and mock handler) send nothing over a
        # network, so a test's "http://testserver" exposes no key.
        in_process = isinstance(transport, (httpx.ASGITransport, httpx.MockTransport))
        if (parsed.scheme == "http" and not allow_insecure and not in_process
                and not _is_loopback(parsed.host)):
            raise ValueError(
                f"refusing to send the API key over plain http to {parsed.host!r}; "
                "use https, a loopback host, or pass allow_insecure=True"
            )
        if (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                or not 0 < timeout < math.inf):  # NaN fails this too
            raise ValueError("timeout must be a finite positive number of seconds, got "
                             f"{timeout!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        if http_client is not None and transport is not None:
            raise ValueError("pass http_client or transport, not both")
        if (isinstance(max_response_bytes, bool) or not isinstance(max_response_bytes, int)
                or max_response_bytes < 1):
            raise ValueError("max_response_bytes must be a positive integer, got "
                             f"{max_response_bytes!r}")
        if (isinstance(max_retry_wait, bool) or not isinstance(max_retry_wait, (int, float))
                or not max_retry_wait >= 0 or math.isinf(max_retry_wait)):
            raise ValueError("max_retry_wait must be a finite number of seconds >= 0, got "
                             f"{max_retry_wait!r}")
        if proxy is not None:
            if http_client is not None or transport is not None:
                raise ValueError("proxy= is for the client's own transport; configure it on "
                                 "your http_client or transport instead")
            if not isinstance(proxy, httpx.Proxy):
                if not isinstance(proxy, str):
                    raise TypeError("proxy must be a URL string or an httpx.Proxy")
                proxy = httpx.Proxy(proxy)
        if proxy is None and http_client is None and transport is None:
            from_env = _env_proxy(parsed)  # read once, like httpx's own trust_env
            proxy = None if from_env is None else httpx.Proxy(from_env)
        if (proxy is not None and parsed.scheme == "http" and proxy.url.scheme == "http"
                and not allow_insecure and not _is_loopback(proxy.url.host)):
            raise ValueError(
                f"refusing to send the API key over plain http to the proxy "
                f"{proxy.url.host!r}; use an https base_url, a loopback proxy, or pass "
                "allow_insecure=True")
        if budget is None:
            budget = RateBudget(rate_limit, max_concurrency)
        elif not isinstance(budget, Budget):
            raise TypeError("budget must provide acquire(), release() and penalize()")

        self.__key = key
        # Aligned pieces of the key: any echo of 2 * MIN_ECHO - 1 or more of its characters
        # contains one, so one regex search (~0.3 us) checks a 2xx body (see _decode).
        raw = key.encode()
        pieces = {raw[i:i + MIN_ECHO] for i in range(0, len(raw) - MIN_ECHO + 1, MIN_ECHO)}
        pieces.add(raw[-MIN_ECHO:])
        self.__echo = re.compile(b"|".join(re.escape(p) for p in sorted(pieces)))
        # The same pieces as text, checked on decoded strings when the bytes could hide an
        # echo from the check above: JSON escapes (``\u0073k-...``) or a UTF-16/32 body.
        texts = {key[i:i + MIN_ECHO] for i in range(0, len(key) - MIN_ECHO + 1, MIN_ECHO)}
        texts.add(key[-MIN_ECHO:])
        self.__echo_text = re.compile("|".join(re.escape(p) for p in sorted(texts)))
        # Which escapes could spell the key: ``\u`` always, any backslash if the key holds a
        # character JSON may escape as ``\/``, ``\\`` or ``\"``.
        self.__escape = b"\\" if any(c in key for c in '/\\"') else b"\\u"
        _KEY_FILTER.clients.add(self)
        self.base_url = str(parsed).rstrip("/")
        self.timeout = float(timeout)
        self.max_retries = max_retries
        #: Largest JSON answer read (bytes, after decompression); a larger one is APIError.
        self.max_response_bytes = max_response_bytes
        #: Longest Retry-After slept on; a longer one raises (RateLimitError on a 429) at once.
        self.max_retry_wait = float(max_retry_wait)
        self.budget: Budget = budget
        self._verify = verify
        self._allow_insecure = allow_insecure
        self._proxy: httpx.Proxy | None = proxy
        #: The client a ``with_options`` view belongs to (``None``: this is no view).
        self._parent: AsyncCambClient | None = None
        self._views: weakref.WeakSet[AsyncCambClient] = weakref.WeakSet()
        #: The budget's own ``async with``, when ``async with client`` entered it.
        self._budget_entered = False
        if hooks is not None and not isinstance(hooks, RequestHooks):
            raise TypeError("hooks must be a RequestHooks")
        #: Request hooks for metrics/tracing; ``None`` costs one check per attempt.
        self._hooks = hooks
        if completion_stats is not None and not isinstance(completion_stats, CompletionStats):
            raise TypeError("completion_stats must be a CompletionStats")
        #: How long each kind of task took, learned from every completion this client saw;
        #: read by ``PollPolicy.adaptive``. ``to_dict()``/``CompletionStats.from_dict()``
        #: carry it across restarts.
        self.completion_stats = completion_stats if completion_stats is not None else (
            CompletionStats())
        self._transport = transport
        self._http: httpx.AsyncClient | None = http_client
        self._owns_http = http_client is None
        self._closed = False
        self._scopes: set[anyio.CancelScope] = set()
        self._headers = {
            "x-api-key": key,
            "user-agent": f"camb-async/{__version__}",
            "accept": "application/json",
            # Only encodings _read_capped inflates in bounded steps (httpx would add br/zstd).
            "accept-encoding": "gzip, deflate",
        }
        #: Set by ``_open()`` when this client owns its HTTP client: requests then go straight
        #: to the transport (see ``_DirectSender``).
        self._direct: _DirectSender | None = None
        #: Answers (of any status) the server has sent this client: a poll that failed to
        #: connect while this did not move tells "server unreachable" from "this task's
        #: problem" (the bulk poller and handles then stop instead of re-polling).
        self._answers = 0

        self.dub = DubResource(self, TaskKind.DUB)
        self.tts = TTSResource(self, TaskKind.TTS)
        self.translation = TranslationResource(self, TaskKind.TRANSLATION)
        self.transcription = TranscriptionResource(self, TaskKind.TRANSCRIPTION)
        self._resources: dict[TaskKind, TaskResource[Any]] = {
            TaskKind.DUB: self.dub,
            TaskKind.TTS: self.tts,
            TaskKind.TRANSLATION: self.translation,
            TaskKind.TRANSCRIPTION: self.transcription,
        }

    # ------------------------------------------------------------------ public surface

    def _redact(self, text: str) -> str:
        """``text`` without this client's key (or any echoed part of it)."""
        return redact(text, self.__key)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<AsyncCambClient base_url={self.base_url!r} budget={self.budget!r} {state}>"

    @property
    def closed(self) -> bool:
        """Whether ``aclose()`` ran (for a ``with_options`` view: its own or its parent's)."""
        return self._closed

    @overload
    def resource(self, kind: Literal[TaskKind.DUB, "dub"]) -> DubResource: ...

    @overload
    def resource(self, kind: Literal[TaskKind.TTS, "tts"]) -> TTSResource: ...

    @overload
    def resource(self, kind: Literal[TaskKind.TRANSLATION, "translate"]) -> TranslationResource: ...

    @overload
    def resource(self, kind: Literal[TaskKind.TRANSCRIPTION, "transcribe"]
                 ) -> TranscriptionResource: ...

    @overload
    def resource(self, kind: TaskKind | str) -> TaskResource[Any]: ...

    def resource(self, kind: TaskKind | str) -> TaskResource[Any]:
        """The resource for ``kind`` (a ``TaskKind`` or its path word).

        Args:
            kind: a ``TaskKind`` or its path word (``"dub"``, ``"tts"``, ``"translate"``,
                ``"transcribe"``).
        """
        try:
            return self._resources[TaskKind(kind)]
        except ValueError:
            raise ValueError(
                f"unknown task kind {kind!r}; expected one of "
                f"{', '.join(k.value for k in self._resources)}"
            ) from None

    @overload
    def task(self, kind: Literal[TaskKind.DUB, "dub"], task_id: str, *,
             hint: DurationHint | float | None = None) -> TaskHandle[DubbingOutcome]: ...

    @overload
    def task(self, kind: Literal[TaskKind.TTS, "tts"], task_id: str, *,
             hint: DurationHint | float | None = None) -> TaskHandle[TTSResult]: ...

    @overload
    def task(self, kind: Literal[TaskKind.TRANSLATION, "translate"], task_id: str, *,
             hint: DurationHint | float | None = None) -> TaskHandle[TranslationResult]: ...

    @overload
    def task(self, kind: Literal[TaskKind.TRANSCRIPTION, "transcribe"], task_id: str, *,
             hint: DurationHint | float | None = None) -> TaskHandle[TranscriptionResult]: ...

    @overload
    def task(self, kind: TaskKind | str, task_id: str, *,
             hint: DurationHint | float | None = None) -> TaskHandle[Any]: ...

    def task(self, kind: TaskKind | str, task_id: str, *,
             hint: DurationHint | float | None = None) -> TaskHandle[Any]:
        """A handle on an existing task of any kind; makes no request.

        Typed per kind when ``kind`` is a literal: ``client.task("tts", id)`` is a
        ``TaskHandle[TTSResult]``.

        Args:
            kind: a ``TaskKind`` or its path word.
            task_id: the task's id.
            hint: what you know of its input size (a ``DurationHint``, or a number in the
                kind's natural unit: characters for TTS and translation, media seconds for
                dubbing and transcription).
        """
        return self.resource(kind).task(task_id, hint=hint)

    def with_options(
        self,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        max_retry_wait: float | None = None,
        max_response_bytes: int | None = None,
    ) -> AsyncCambClient:
        """A light view of this client with other per-request settings.

        The view shares this client's connection pool, rate budget, hooks and completion
        statistics; only the settings given here differ. Closing the view ends its own calls
        and leaves this client open; closing this client ends the views' calls too.
        ``client.with_options(timeout=5).dub.status(id)`` is the usual shape.

        Args:
            timeout: seconds each attempt may take at most.
            max_retries: retries of a failed attempt.
            max_retry_wait: longest Retry-After slept on.
            max_response_bytes: largest JSON answer read, after decompression.
        """
        if self._closed:
            raise ClientClosedError("this AsyncCambClient is closed; create a new one")
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, (int, float)) or timeout <= 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if max_retries is not None and (isinstance(max_retries, bool)
                                        or not isinstance(max_retries, int) or max_retries < 0):
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        if max_response_bytes is not None and (
                isinstance(max_response_bytes, bool) or not isinstance(max_response_bytes, int)
                or max_response_bytes < 1):
            raise ValueError("max_response_bytes must be a positive integer, got "
                             f"{max_response_bytes!r}")
        if max_retry_wait is not None and (
                isinstance(max_retry_wait, bool) or not isinstance(max_retry_wait, (int, float))
                or not max_retry_wait >= 0 or math.isinf(max_retry_wait)):
            raise ValueError("max_retry_wait must be a finite number of seconds >= 0, got "
                             f"{max_retry_wait!r}")
        root = self._parent or self
        view: AsyncCambClient = object.__new__(AsyncCambClient)
        view.__dict__.update(self.__dict__)
        if timeout is not None:
            view.timeout = float(timeout)
        if max_retries is not None:
            view.max_retries = max_retries
        if max_retry_wait is not None:
            view.max_retry_wait = float(max_retry_wait)
        if max_response_bytes is not None:
            view.max_response_bytes = max_response_bytes
        view._parent = root
        view._views = weakref.WeakSet()
        view._owns_http = False  # the pool is the parent's: a view never closes it
        view._budget_entered = False
        view._scopes = set()
        view._http = None  # opened through the parent (see _open)
        view._direct = None
        view.dub = DubResource(view, TaskKind.DUB)
        view.tts = TTSResource(view, TaskKind.TTS)
        view.translation = TranslationResource(view, TaskKind.TRANSLATION)
        view.transcription = TranscriptionResource(view, TaskKind.TRANSCRIPTION)
        view._resources = {
            TaskKind.DUB: view.dub,
            TaskKind.TTS: view.tts,
            TaskKind.TRANSLATION: view.translation,
            TaskKind.TRANSCRIPTION: view.transcription,
        }
        root._views.add(view)
        return view

    @overload
    async def gather_statuses(
        self,
        tasks: Iterable[str | TaskHandle[Any]],
        *,
        kind: TaskKind | str | None = None,
        wait: bool = True,
        timeout: float | None = None,
        policy: PolicyArg = None,
        return_exceptions: Literal[False] = False,
        on_update: Callable[[StatusResult], object] | None = None,
    ) -> list[StatusResult]: ...

    @overload
    async def gather_statuses(
        self,
        tasks: Iterable[str | TaskHandle[Any]],
        *,
        kind: TaskKind | str | None = None,
        wait: bool = True,
        timeout: float | None = None,
        policy: PolicyArg = None,
        return_exceptions: bool,
        on_update: Callable[[StatusResult], object] | None = None,
    ) -> list[StatusResult | CambError | ValueError]: ...

    async def gather_statuses(
        self,
        tasks: Iterable[str | TaskHandle[Any]],
        *,
        kind: TaskKind | str | None = None,
        wait: bool = True,
        timeout: float | None = None,
        policy: PolicyArg = None,
        return_exceptions: bool = False,
        on_update: Callable[[StatusResult], object] | None = None,
    ) -> list[StatusResult] | list[StatusResult | CambError | ValueError]:
        """``gather_statuses(self, ...)``; see that function for the arguments.

        Args:
            tasks: task ids (with ``kind``) or ``TaskHandle`` objects.
            kind: the kind of every task id.
            wait: poll until terminal; ``False`` takes one snapshot each.
            timeout: overall deadline in seconds.
            policy: a ``PollPolicy`` or ``{kind: PollPolicy}``.
            return_exceptions: put a task's own error in its slot instead of raising it.
            on_update: called with every observed status (may be async).
        """
        from ._polling import gather_statuses

        return await gather_statuses(
            self,
            tasks,
            kind=kind,
            wait=wait,
            timeout=timeout,
            policy=policy,
            return_exceptions=return_exceptions,
            on_update=on_update,
        )

    async def __aenter__(self) -> AsyncCambClient:
        """Open the HTTP client and, when the budget has an ``async with`` of its own that no
        one has entered (``RedisRateBudget`` holds its Redis connections open in one), enter
        it for the client's block."""
        if self._closed:
            raise ClientClosedError("this AsyncCambClient is closed; create a new one")
        self._open()
        budget: Any = self.budget
        if (self._parent is None and callable(getattr(budget, "__aenter__", None))
                and callable(getattr(budget, "__aexit__", None))
                and getattr(budget, "entered", True) is False):
            await budget.__aenter__()
            self._budget_entered = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """``aclose()``, then leave the budget's ``async with`` if ``__aenter__`` entered it."""
        try:
            await self.aclose()
        finally:
            if self._budget_entered:
                self._budget_entered = False
                budget: Any = self.budget
                await budget.__aexit__(*exc_info)

    async def aclose(self) -> None:
        """Close the client. Requests still in flight or waiting for the budget end with
        ``ClientClosedError``.

        Closing twice is fine. A caller's own ``http_client`` is left open.
        """
        if self._closed:
            return
        self._closed = True
        for scope in list(self._scopes):
            scope.cancel()
        for view in list(self._views):  # their calls use this client's pool: they end too
            await view.aclose()
        http, self._http = self._http, None
        if http is not None and self._owns_http:
            with anyio.CancelScope(shield=True):
                await http.aclose()

    async def _sleep(self, seconds: float) -> None:
        """Wait between polls; ``aclose()`` cuts the wait short with ``ClientClosedError``,
        so a caller waiting on a slow task is released at shutdown, not at its next poll."""
        if self._closed:
            raise ClientClosedError("this AsyncCambClient is closed")
        scope = anyio.CancelScope()
        self._scopes.add(scope)
        try:
            with scope:
                await anyio.sleep(seconds)
        finally:
            self._scopes.discard(scope)
        if self._closed:
            raise ClientClosedError("the AsyncCambClient was closed while waiting to poll")

    async def _acquire(self, budget: Budget) -> None:
        """``budget.acquire()`` inside a scope ``aclose()`` cancels: a call parked behind a
        429 pause, rate pacing, a full concurrency limit or a fleet budget's backend ends at
        shutdown with ``ClientClosedError``, not when its wait would have ended."""
        scope = anyio.CancelScope()
        self._scopes.add(scope)
        try:
            with scope:
                await budget.acquire()
        finally:
            self._scopes.discard(scope)
        if scope.cancelled_caught or self._closed:
            if not scope.cancelled_caught:  # granted, but too late to use
                budget.release()
            raise ClientClosedError("the AsyncCambClient was closed while waiting for the budget")

    # ------------------------------------------------------------------ the request path

    def _open(self) -> httpx.AsyncClient:
        if self._closed:
            raise ClientClosedError("this AsyncCambClient is closed; create a new one")
        parent = self._parent
        if parent is not None:  # a view: the parent's pool, this view's settings
            if self._http is None:
                http = parent._open()
                if parent._direct is not None:
                    self._direct = _DirectSender(http, parent._direct._transport, self._headers,
                                                 self.timeout, self.max_response_bytes)
                self._http = http
            return self._http
        if self._http is None:
            limits = httpx.Limits(
                max_connections=None,
                max_keepalive_connections=max(20, getattr(self.budget, "max_concurrency", 20)),
            )
            proxy = self._proxy
            if proxy is not None and self._transport is None:
                # httpx's own transport speaks to proxies (CONNECT for https) on every loop.
                self._transport = httpx.AsyncHTTPTransport(
                    verify=httpx.create_ssl_context(verify=self._verify, trust_env=True),
                    limits=limits, proxy=proxy, trust_env=False)
            transport = (self._transport
                         or _default_transport(verify=self._verify, limits=limits)
                         or httpx.AsyncHTTPTransport(verify=self._verify, limits=limits,
                                                     trust_env=True))
            # Our headers (the key among them) live only in the direct sender, which sends
            # every request of an owned client; this AsyncClient just owns the transport.
            self._http = httpx.AsyncClient(
                timeout=self.timeout,
                transport=transport,
                limits=limits,
                verify=self._verify,
                follow_redirects=False,  # the x-api-key header must not follow a redirect
                trust_env=False,
            )
            self._direct = _DirectSender(self._http, transport, self._headers, self.timeout,
                                         self.max_response_bytes)
        return self._http

    async def _request(
        self,
        method: str,
        path: str,
        parse: Callable[[Any], T],
        *,
        json_body: Any = None,
        params: Mapping[str, str | int] | None = None,
        data: Mapping[str, str] | None = None,
        files: Any = None,
        idempotent: bool = True,
        preacquired: bool = False,
        max_retries: int | None = None,
        reopen_body: Callable[[], Awaitable[Any]] | None = None,
        stream: bool = False,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, str | int] | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> T:
        """Send one logical request (with retries) and return ``parse(decoded JSON)``.

        ``stream=True`` (raw audio): a 2xx answer is not read whole; ``parse`` gets a
        ``BodyStream`` whose first chunk has arrived. Retries, the budget, the attempt's
        deadline and error mapping cover everything up to that first chunk (the budget's
        concurrency slot is given back then, so a caller who stops reading cannot hold it);
        a failure after it is raised by the ``BodyStream`` (``APIConnectionError``), never
        retried.

        ``idempotent=False`` (task creation) retries only failures that prove the server never
        saw the request (connection not established, 429); anything after the request may have
        been received is raised, so a lost answer cannot create a second job.
        ``preacquired=True`` means the caller already holds one budget acquisition for the
        first attempt (the bulk poller acquires in due order, then hands the slot over).

        ``extra_headers``, ``extra_query`` and ``extra_body`` (fields the SDK does not know
        yet) are added to the request: the body's to its JSON object, or as form fields of a
        multipart body. ``x-api-key`` cannot be set or replaced through ``extra_headers``.
        """
        url = self.base_url + path
        budget = self.budget
        if extra_headers or extra_query or extra_body:
            try:
                headers, params, json_body, files, reopen_body = self._with_extras(
                    extra_headers, extra_query, extra_body, params, json_body, files,
                    reopen_body)
            except BaseException:
                if preacquired:
                    budget.release()
                raise
        else:
            headers = self._headers
        retries = self.max_retries if max_retries is None else max_retries
        attempt = 0
        waits: Any = None
        hooks = self._hooks
        while True:
            if self._closed:
                if preacquired:
                    budget.release()
                raise ClientClosedError("this AsyncCambClient is closed")
            http = self._http or self._open()
            direct = self._direct
            if preacquired:
                preacquired = False
            else:
                await self._acquire(budget)
            # One attempt never outlasts ``timeout``: httpx's timeouts are per phase, so a
            # server trickling a byte per read (or an in-process transport, which has none)
            # could otherwise hold the call forever. An upload may run while bytes flow: the
            # deadline is re-armed per chunk handed over, fixed once it is sent (_UploadStream).
            scope = anyio.CancelScope(
                deadline=anyio.current_time() + self.timeout if files is None else math.inf)
            uploaded = None if files is None else _answer_deadline(scope, self.timeout)
            self._scopes.add(scope)
            response: httpx.Response | None = None
            body: BodyStream | None = None  # streaming mode: a 2xx answer's body
            failure: Exception | None = None
            too_large: _AnswerTooLarge | None = None
            if hooks is not None:
                hooks._start(method, path)
                started = anyio.current_time()
            try:
                with scope:
                    if stream:
                        response, body = await self._send_streaming(http, direct, method,
                                                                    url, path, params, headers)
                    elif direct is not None:
                        response = await direct.send(
                            method, url, json_body, params, data, files, uploaded=uploaded,
                            extra_headers=None if headers is self._headers else headers)
                    else:
                        request = http.build_request(
                            method,
                            url,
                            json=json_body,
                            params=params,
                            data=data,
                            files=files,
                            headers=headers,  # a caller's client has none of ours
                        )
                        if uploaded is not None:
                            request.stream = _UploadStream(
                                request.stream, uploaded)  # type: ignore[arg-type]
                        # The x-api-key header must never follow a redirect to another
                        # host, whatever the caller's own client is configured to do.
                        streamed = await http.send(request, stream=True, follow_redirects=False)
                        try:
                            if uploaded is not None:
                                uploaded()
                            await _read_capped(streamed, self.max_response_bytes)
                        finally:
                            await streamed.aclose()
                        response = streamed
            except _AnswerTooLarge as exc:
                too_large = exc
            except httpx.RequestError as exc:
                # Transport failures and timeouts, but also an undecodable body
                # (DecodingError) or TooManyRedirects: all "no usable answer".
                failure = exc
            except RuntimeError as exc:  # httpx: "Cannot send a request, ... has been closed."
                if not self._closed:
                    raise APIConnectionError(
                        f"{method} {path}: the HTTP client is closed "
                        f"({snippet(str(exc), 80, self.__key)})"
                    ) from None  # the text above is redacted; the raw one may quote the key
            except Exception as exc:
                # Anything else the transport let through unmapped (h11's LocalProtocolError
                # for an upload whose file changed size, a file object's read error...):
                # no usable answer all the same, never a raw library error.
                failure = _unmapped(exc)
            finally:
                self._scopes.discard(scope)
                budget.release()
                if hooks is not None:
                    hooks._end(method, path, anyio.current_time() - started,
                               None if response is None else response.status_code)
            if self._closed:
                if body is not None:
                    with anyio.CancelScope(shield=True):
                        await body.aclose()
                raise ClientClosedError("the AsyncCambClient was closed during the request")
            if too_large is not None:  # not retried: the same answer would come again
                raise APIError(
                    f"{method} {path}: answer {too_large.status_code} {too_large.detail}",
                    status_code=too_large.status_code, method=method, path=path,
                    url=self._redact(url),
                )
            if response is None and failure is None:  # the attempt's deadline expired
                failure = httpx.ReadTimeout(f"no complete answer within {self.timeout}s")

            retry_after: float | None = None
            if failure is not None:
                error: Exception = self._transport_error(failure, method, path, url)
                # Safe to resend only if the request cannot have reached the server.
                retryable = idempotent or isinstance(
                    failure, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
                )
            else:
                assert response is not None
                self._answers += 1
                status = response.status_code
                if status < 300:
                    if body is not None:
                        return parse(body)
                    return self._decode(response, method, path, parse)
                if status == 429:
                    # Uncapped here: a wait past max_retry_wait is the caller's to decide.
                    retry_after = parse_retry_after(response.headers, cap=math.inf)
                    pause = None if retry_after is None else min(retry_after, MAX_RETRY_AFTER)
                    budget.penalize(pause)
                    if hooks is not None or logger.isEnabledFor(logging.INFO):
                        self._throttled(hooks, method, path, pause)
                    retryable = True
                else:
                    retryable = idempotent and (status in RETRY_STATUSES or status >= 500)
                    if retryable:
                        retry_after = parse_retry_after(response.headers, cap=math.inf)
                error = self._status_error(response, method, path, retry_after)

            if not retryable or attempt >= retries:
                raise error
            if retry_after is not None and retry_after > self.max_retry_wait:
                raise error  # not slept on: RateLimitError.retry_after tells the caller
            if retry_after is None:
                if waits is None:
                    waits = backoff.expo(base=2, factor=0.25, max_value=8.0)
                    next(waits)  # prime: backoff's generators start with a bare yield
                delay = backoff.full_jitter(next(waits))
            else:
                delay = retry_after
            attempt += 1
            if logger.isEnabledFor(logging.INFO):
                logger.info(
                    "retrying %s %s in %.2fs (attempt %d of %d): %s",
                    method, path, delay, attempt, retries, error,
                )
            if hooks is not None:
                hooks._retry(method, path, attempt, delay, error)
            if reopen_body is not None:
                files = await reopen_body()
            await self._sleep(delay)  # aclose() cuts a back-off short, too

    async def _send_streaming(self, http: httpx.AsyncClient, direct: _DirectSender | None,
                              method: str, url: str, path: str,
                              params: Mapping[str, str | int] | None,
                              headers: Mapping[str, str] | None = None,
                              ) -> tuple[httpx.Response, BodyStream | None]:
        """One attempt of a streamed request: the answer and, for a 2xx answer, its body with
        the first chunk read. An error answer is read whole (it is small and mapped like any
        other); a failure before the first chunk closes the answer."""
        if direct is not None:
            extra = None if headers is None or headers is self._headers else headers
            response = await direct.send(method, url, None, params, None, None, stream=True,
                                         extra_headers=extra)
        else:
            request = http.build_request(method, url, params=params, headers={
                **(headers or self._headers), "accept-encoding": "identity"})
            response = await http.send(request, stream=True, follow_redirects=False)
        try:
            if response.status_code >= 300:  # read like any answer: capped, then closed
                await _read_capped(response, self.max_response_bytes)
                await response.aclose()
                return response, None
            # A compressed answer all the same is inflated in bounded steps (never a whole
            # network chunk at once); an encoding we cannot bound is an APIError.
            chunks = aiter(_decoded(response, _inflaters(
                response.headers.get("content-encoding", ""), response.status_code)))
            first = await anext(chunks, None)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await response.aclose()
            raise
        return response, BodyStream(self, response, chunks, first, method, path)

    def _throttled(self, hooks: RequestHooks | None, method: str, path: str,
                   retry_after: float | None) -> None:
        """A 429 paused the whole budget: tell the hooks and the log (never the key)."""
        if hooks is not None:
            hooks._throttle(method, path, retry_after)
        if logger.isEnabledFor(logging.INFO):
            current = getattr(self.budget, "current_rate", None)
            rate = current() if callable(current) else None
            logger.info(
                "HTTP 429 on %s %s: budget paused for %s; rate now %s", method, path,
                "the default pause" if retry_after is None else f"{retry_after:.2f}s",
                "unlimited" if rate is None else f"{rate:.1f} requests/s",
            )

    def _decode(
        self,
        response: httpx.Response,
        method: str,
        path: str,
        parse: Callable[[Any], T],
    ) -> T:
        raw = response.content
        if self.__echo.search(raw) is not None:  # never into a result or a message
            raw = self._redact(raw.decode("latin-1")).encode("latin-1")
        body: bytes | str = raw
        try:
            if raw:
                # Decoded here (as json.loads(bytes) would), then the bytes let go: otherwise
                # the body, its text and the parsed values of a large answer would all be
                # alive at once (3x max_response_bytes); this way at most 2x.
                encoding = json.detect_encoding(raw)
                escaped = self.__escape in raw
                body = raw.decode(encoding, "surrogatepass")
                del raw
                response._content = b""
                if encoding != "utf-8" and self.__echo_text.search(body) is not None:
                    body = self._redact(body)  # UTF-16/32: the bytes check could not see it
                data = json.loads(body)
                if escaped:  # an echo spelled in escapes shows only once decoded
                    data, body = self._redact_decoded(data, body)
            else:
                data = None
        except (ValueError, RecursionError) as exc:
            # RecursionError: the json module has no depth limit of its own, and catching its
            # error costs nothing on the hot path (a depth-counting pre-scan would).
            what = "nested too deeply" if isinstance(exc, RecursionError) else "not JSON"
            raise APIError(
                f"{method} {path}: answer {response.status_code} is {what}: "
                f"{snippet(body, secret=self.__key)!r}",
                status_code=response.status_code,
                body=snippet(body, secret=self.__key),
                **self._answer_info(response, method, path),
            ) from None
        try:
            return parse(data)
        except ModelError as exc:
            raise APIError(
                self._redact(f"{method} {path}: unexpected answer ({exc}): ")
                + repr(snippet(body, secret=self.__key)),
                status_code=response.status_code,
                body=snippet(body, secret=self.__key),
                **self._answer_info(response, method, path),
            ) from None

    def _redact_decoded(self, data: Any, body: str) -> tuple[Any, str]:
        """``data`` (parsed JSON) with the key redacted from every string in it, and
        ``body`` re-encoded from it if anything changed. Only for bodies with escapes."""
        echo = self.__echo_text
        changed = False

        def clean(value: Any) -> Any:
            nonlocal changed
            if isinstance(value, str):
                if echo.search(value) is not None:
                    changed = True
                    return self._redact(value)
                return value
            if isinstance(value, list):
                return [clean(item) for item in value]
            if isinstance(value, dict):
                return {clean(k): clean(v) for k, v in value.items()}
            return value

        data = clean(data)
        if changed:
            body = json.dumps(data, ensure_ascii=False)
        return data, body

    def _transport_error(self, exc: Exception, method: str, path: str,
                         url: str = "") -> APIConnectionError:
        kind = type(exc).__name__
        where = {"method": method, "url": self._redact(url or self.base_url + path)}
        if isinstance(exc, httpx.TimeoutException):
            return APITimeoutError(f"{method} {path}: {kind} (request timed out)", **where)
        # httpx/httpcore/trio wrap the real reason (e.g. a failed TLS verification) in
        # exceptions with no text: report the first cause in the chain that has some.
        cause: BaseException | None = exc
        for _ in range(8):
            if cause is None or str(cause):
                break
            cause = cause.__cause__ or cause.__context__
        detail = snippet(str(cause or ""), 120, self.__key)  # parser errors quote bytes
        return APIConnectionError(f"{method} {path}: {kind}: {detail}", **where)

    def _answer_info(self, response: httpx.Response, method: str, path: str) -> dict[str, Any]:
        """What an error keeps of an answer for a support ticket: the full URL, the headers
        and the server's request id, every value redacted (servers echo what they got)."""
        try:
            url = str(response.request.url)
        except RuntimeError:  # a Response built without its request (tests)
            url = self.base_url + path
        headers: dict[str, str] = {}
        for name, value in response.headers.items():
            name = name.lower()
            if name in ("set-cookie", "authorization", "proxy-authorization", "x-api-key"):
                value = REDACTED
            headers[name] = self._redact(value)
        request_id = next((headers[h] for h in REQUEST_ID_HEADERS if headers.get(h)), None)
        return {"method": method, "path": path, "url": self._redact(url),
                "headers": headers, "request_id": request_id}

    def _with_extras(
        self,
        extra_headers: Mapping[str, str] | None,
        extra_query: Mapping[str, str | int] | None,
        extra_body: Mapping[str, Any] | None,
        params: Mapping[str, str | int] | None,
        json_body: Any,
        files: Any,
        reopen_body: Callable[[], Awaitable[Any]] | None,
    ) -> tuple[Mapping[str, str], Mapping[str, str | int] | None, Any, Any,
               Callable[[], Awaitable[Any]] | None]:
        """The request's headers, query, body and multipart parts with a caller's extra
        fields added (``extra_*`` on the public calls). The key header is never theirs."""
        headers: Mapping[str, str] = self._headers
        if extra_headers:
            if not isinstance(extra_headers, Mapping):
                raise TypeError("extra_headers must be a mapping of header names to values")
            merged = dict(self._headers)
            for name, value in extra_headers.items():
                if not isinstance(name, str) or not isinstance(value, str):
                    raise TypeError("extra_headers names and values must be strings")
                if name.strip().lower() == "x-api-key":
                    raise ValueError("extra_headers cannot set x-api-key; pass api_key= to "
                                     "the client")
                merged = {k: v for k, v in merged.items() if k.lower() != name.lower()}
                merged[name] = value
            headers = merged
        if extra_query:
            if not isinstance(extra_query, Mapping):
                raise TypeError("extra_query must be a mapping")
            params = {**(params or {}), **extra_query}
        if extra_body:
            if not isinstance(extra_body, Mapping):
                raise TypeError("extra_body must be a mapping")
            if files is not None:
                form = [(str(name), (None, value if isinstance(value, str)
                                     else json.dumps(value)))
                        for name, value in extra_body.items()]
                files = [*files, *form]
                if reopen_body is not None:
                    reopen = reopen_body

                    async def reopen_with_extras() -> Any:
                        return [*(await reopen()), *form]
                    reopen_body = reopen_with_extras
            elif json_body is None:
                json_body = dict(extra_body)
            elif isinstance(json_body, Mapping):
                json_body = {**json_body, **extra_body}
            else:
                raise TypeError("extra_body needs a JSON object body")
        return headers, params, json_body, files, reopen_body

    def _status_error(
        self, response: httpx.Response, method: str, path: str, retry_after: float | None
    ) -> APIError:
        status = response.status_code
        body = snippet(response.content, secret=self.__key)
        common: dict[str, Any] = {"status_code": status, "body": body,
                                  **self._answer_info(response, method, path)}
        message = f"{method} {path}: HTTP {status}: {body!r}"
        if status in (401, 403):
            return AuthenticationError(message, **common)
        if status == 404:
            return NotFoundError(message, **common)
        if status == 422:
            try:
                decoded = json.loads(response.content)
            except (ValueError, RecursionError):
                decoded = None
            return UnprocessableEntityError(
                message, detail=[self._redact_detail(d) for d in
                                 parse_validation_details(decoded)], **common
            )
        if status == 429:
            return RateLimitError(message, retry_after=retry_after, **common)
        if status >= 500:
            return InternalServerError(message, **common)
        return APIError(message, **common)

    def _redact_detail(self, detail: ValidationDetail) -> ValidationDetail:
        """A 422 entry without the key: servers quote the header value they rejected."""
        loc = [self._redact(part) if isinstance(part, str) else part for part in detail.loc]
        return ValidationDetail(loc=loc, msg=self._redact(detail.msg),
                                type=self._redact(detail.type))

class BodyStream:
    """A 2xx answer's body, read chunk by chunk (``async for``), never held whole.

    Made by the request path in streaming mode once the first chunk has arrived; nothing
    after that is retried. Each later chunk must arrive within the client's ``timeout``
    (``APITimeoutError``); a connection lost mid-body is ``APIConnectionError``; the client's
    ``aclose()`` ends a read in progress with ``ClientClosedError``. ``aclose()`` (also done
    when the body is exhausted or iteration fails) returns the connection.
    """

    __slots__ = ("_client", "_response", "_source", "_chunks", "_first", "_method", "_path")

    def __init__(self, client: AsyncCambClient, response: httpx.Response,
                 chunks: AsyncIterator[bytes], first: bytes | None, method: str,
                 path: str) -> None:
        self._client = client
        self._response = response
        self._source: AsyncIterator[bytes] | None = chunks  # closed by aclose()
        self._chunks: AsyncIterator[bytes] | None = chunks if first is not None else None
        self._first = first
        self._method = method
        self._path = path

    @property
    def content_type(self) -> str | None:
        value: str | None = self._response.headers.get("content-type")
        return value

    @property
    def content_length(self) -> int | None:
        """The size the server announced, if it did (and it is a plain number)."""
        value = self._response.headers.get("content-length", "")
        return int(value) if value.isdigit() and value.isascii() else None

    def __aiter__(self) -> BodyStream:
        return self

    async def __anext__(self) -> bytes:
        first, self._first = self._first, None
        if first:
            return first
        try:
            chunk = await self._next()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.aclose()
            raise
        if chunk is None:
            await self.aclose()
            raise StopAsyncIteration
        return chunk

    async def _next(self) -> bytes | None:
        chunks = self._chunks
        if chunks is None:
            return None
        client = self._client
        scope = anyio.CancelScope(deadline=anyio.current_time() + client.timeout)
        client._scopes.add(scope)
        failure: Exception | None = None
        chunk: bytes | None = None
        try:
            with scope:
                chunk = await anext(chunks, None)
        except (httpx.RequestError, httpx.StreamError) as exc:
            failure = exc
        except Exception as exc:  # unmapped by the transport: still a connection failure
            failure = _unmapped(exc)
        finally:
            client._scopes.discard(scope)
        if client._closed:
            raise ClientClosedError("the AsyncCambClient was closed while a body was read")
        if failure is None and scope.cancelled_caught:
            failure = httpx.ReadTimeout(f"no data for {client.timeout}s")
        if failure is not None:
            self._chunks = None
            # Never chained: httpx's texts quote raw bytes, the key among them.
            raise client._transport_error(failure, self._method, self._path) from None
        if chunk is None:
            self._chunks = None
        return chunk

    async def aclose(self) -> None:
        self._chunks = None
        source, self._source = self._source, None
        try:
            close = getattr(source, "aclose", None)
            if close is not None:  # httpx's chunk generator, finished here, not by the GC
                await close()
        finally:
            await self._response.aclose()
