"""Default transports: aiohttp-backed on asyncio (httpx-aiohttp, errors mapped to httpx's),
sharded httpx pools on trio, and ``_DirectSender`` (straight to the transport, no httpx
client machinery per request).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import sniffio

from ._answers import Answer
from ._reading import _Answer, _capped, _read_capped, _UploadStream

if TYPE_CHECKING:
    pass

__all__ = ["_DirectSender", "_default_transport", "open_owned"]

T = TypeVar("T")
logger = logging.getLogger("camb_async")
_httpx_logger = logging.getLogger("httpx")


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
    (benchmarks/README.md). Smaller still pays: measured interleaved in one process at 200
    in flight, 16 pools of 13 cost 2.65 ms per check, 40 of 5 1.99 ms, 100 of 2 1.57 ms,
    200 of 1 1.55 ms; at 50 in flight 10 of 5 1.63 ms against 25 of 2 1.29 ms. Picking the
    least-loaded of 100 pools costs ~2 µs, no cheaper pick is needed. Each request goes to
    the pool with the fewest requests in flight (its connection returns when the response
    stream closes), so every pool holds about
    ``in_flight / shards`` connections and keep-alive still works.
    """

    #: Connections per shard the pools are sized for.
    PER_SHARD = 2
    MAX_SHARDS = 128

    def __init__(self, *, verify: bool, limits: httpx.Limits) -> None:
        keepalive = limits.max_keepalive_connections or 20
        shards = max(1, min(self.MAX_SHARDS, math.ceil(keepalive / self.PER_SHARD)))
        per_shard = httpx.Limits(
            max_connections=limits.max_connections,
            max_keepalive_connections=math.ceil(keepalive / shards),
            keepalive_expiry=limits.keepalive_expiry,
        )
        # One TLS context for all shards: loading the CA bundle costs ~50 ms each time.
        # trust_env: SSL_CERT_FILE / SSL_CERT_DIR name the CA bundle, as httpx's default does.
        context = httpx.create_ssl_context(verify=verify, trust_env=True)
        self._pools = [
            httpx.AsyncHTTPTransport(verify=context, limits=per_shard, trust_env=False)
            for _ in range(shards)
        ]
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


def _aiohttp_error_mapping(aiohttp: Any) -> Callable[[Exception], httpx.TransportError | None]:
    """``to_httpx(exc)``: an aiohttp failure (or httpx-aiohttp's mapping of one, whose
    ``__cause__`` is the original) as the httpx error httpcore would have raised; ``None``
    for an exception that is no transport failure."""

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
        if isinstance(
            cause, (aiohttp.ClientPayloadError, OSError, aiohttp.ClientConnectionResetError)
        ):
            return httpx.ReadError(message)  # reset or truncated mid-answer
        if isinstance(cause, aiohttp.InvalidURL):
            return httpx.UnsupportedProtocol(message)
        if isinstance(cause, aiohttp.ClientError):
            return httpx.TransportError(message)
        return exc if isinstance(exc, httpx.TransportError) else None

    return to_httpx


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
    import yarl
    from httpx_aiohttp import AiohttpTransport

    to_httpx = _aiohttp_error_mapping(aiohttp)

    @functools.lru_cache(maxsize=16)
    def origin(prefix: str) -> yarl.URL:
        return yarl.URL(prefix, encoded=True)

    def target(url: str) -> yarl.URL:
        """``url`` (httpx's normal form) as a yarl URL sent as is: the origin parsed once,
        the path set on it (~2 µs; parsing each whole URL took ~6)."""
        slash = url.find("/", url.find("//") + 2)
        if slash < 0 or "?" in url or "#" in url:
            return yarl.URL(url, encoded=True)
        return origin(url[:slash]).with_path(url[slash:], encoded=True)

    @functools.lru_cache(maxsize=16)
    def client_timeout(seconds: float) -> aiohttp.ClientTimeout:
        """aiohttp's timeouts for ``send_answer``: one object per value (httpx-aiohttp builds
        one per request). A connect timeout of ``seconds`` (the attempt's deadline starts
        earlier and so fires first: a connect that hangs reads as a ``ReadTimeout``, as on
        the httpx path, and a create is not resent after it). No ``total``: aiohttp's
        total timer cancels the task, and while it waits for the headers the task is inside
        that timer twice (the request and the answer's start), so both exits
        ``uncancel()`` it: a caller's cancellation landing in the same loop iteration would
        be swallowed and the call would read as a timeout (found in review; the attempt's
        deadline is ``send_answer``'s ``asyncio.timeout`` instead). No per-read timer
        (re-armed on every chunk, ~3 % of a status check)."""
        return aiohttp.ClientTimeout(total=None, sock_connect=seconds)

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
            # No cookie jar: httpx's path sends none back (the API authenticates by header).
            session = aiohttp.ClientSession(
                connector=connector, trust_env=False, cookie_jar=aiohttp.DummyCookieJar()
            )
            # aiohttp resends an idempotent request once by itself when a kept-alive
            # connection turns out closed: a request outside the budget, the hooks and
            # max_retries. The request path decides every resend.
            session._retry_connection = False
            return session

        def session(self) -> aiohttp.ClientSession:
            """The session, made on first use, and made again in a new event-loop run (a
            session belongs to the loop it was made in; the client may outlive one
            ``asyncio.run``; the old one's connections died with its loop)."""
            session = self.client
            if isinstance(session, aiohttp.ClientSession):
                if session._loop is asyncio.get_running_loop():
                    return session
                session.detach()
            session = self.client = self.get_client()
            return session

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            self.session()
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

        async def send_answer(
            self,
            method: str,
            url: str,
            content: bytes | None,
            headers: Mapping[str, str],
            timeout: float,
            limit: int,
        ) -> _Answer:
            """One request straight through aiohttp, its answer read whole (capped) into an
            ``_Answer``: no httpx ``Request``/``Response`` or stream layers (see
            ``_DirectSender``). ``url`` is already in httpx's normal form; it goes out as is.
            Failures are mapped like ``handle_async_request``'s.

            On Python 3.11+ the attempt's deadline is kept here (``KEEPS_DEADLINE``): one
            ``asyncio.timeout(timeout)`` over the connect, the send and every read of the
            answer, so a server trickling a byte per read is cut at ``timeout`` all the same,
            and the request path needs no cancel scope of its own for it (~50 µs of a bulk
            check at 50 in flight, benchmarks/README.md). ``asyncio.timeout`` counts
            cancellations: a caller's landing in the same loop iteration still wins. Its
            expiry is a ``ReadTimeout``, as the scope's was."""
            session = self.session()
            deadline = _deadline(timeout)
            try:
                async with (
                    deadline,
                    session.request(
                        method,
                        target(url),
                        data=content,
                        headers=headers,
                        allow_redirects=False,
                        auto_decompress=False,
                        compress=False,
                        timeout=client_timeout(timeout),
                    ) as response,
                ):
                    status = response.status
                    if status < 100:  # httpcore refuses these too
                        raise httpx.RemoteProtocolError(f"invalid status code {status}")
                    answer = _Answer(status, response.raw_headers, url, response.version)
                    # The headers are read as httpx reads them only when asked for (an
                    # error, a 429): a status check reads none but this one.
                    encoding = (
                        answer.headers.get("content-encoding", "")
                        if "Content-Encoding" in response.headers
                        else ""
                    )
                    answer._content = await _capped(
                        response.content.iter_any(), encoding, status, limit
                    )
            except Exception as exc:
                if isinstance(exc, TimeoutError) and _expired(deadline):
                    raise httpx.ReadTimeout(f"no complete answer within {timeout}s") from None
                mapped = to_httpx(exc)
                if mapped is None or mapped is exc:
                    raise
                raise mapped from exc
            return answer

    return CambAiohttpTransport


#: Whether ``send_answer`` keeps the attempt's deadline itself (``asyncio.timeout``, 3.11+).
KEEPS_DEADLINE = sys.version_info >= (3, 11)


def _deadline(seconds: float) -> contextlib.AbstractAsyncContextManager[object]:
    """``asyncio.timeout(seconds)`` where there is one; on 3.10 the request path's scope
    keeps the deadline (``KEEPS_DEADLINE``) and this is a no-op."""
    if sys.version_info >= (3, 11):
        return asyncio.timeout(seconds)
    return contextlib.nullcontext()


def _expired(deadline: object) -> bool:
    expired = getattr(deadline, "expired", None)
    return expired is not None and bool(expired())


@functools.lru_cache(maxsize=16)
def _httpx_timeouts(seconds: float) -> dict[str, float | None]:
    """httpx's per-phase timeouts of ``seconds``, as a request's ``timeout`` extension."""
    return httpx.Timeout(seconds).as_dict()


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

    __slots__ = (
        "_http",
        "_transport",
        "_headers",
        "_stream_headers",
        "_answer",
        "_plain",
        "_plain_json",
    )

    def __init__(
        self,
        http: httpx.AsyncClient,
        transport: httpx.AsyncBaseTransport,
        headers: Mapping[str, str],
    ) -> None:
        self._http = http
        self._transport = transport
        plain = {"accept-encoding": "gzip, deflate", "connection": "keep-alive", **headers}
        self._headers = httpx.Headers(plain).raw
        # On asyncio's default transport, a request with no upload and no streamed answer
        # skips httpx's Request/Response and stream layers altogether (send_answer): at 50
        # in flight they were most of the CPU above raw aiohttp (benchmarks/README.md).
        self._answer: Callable[..., Awaitable[_Answer]] | None = getattr(
            transport, "send_answer", None
        )
        self._plain = plain
        self._plain_json = {**plain, "content-type": "application/json"}
        # A streamed body (audio) asks for no compression: FLAC/MP3 do not shrink further.
        self._stream_headers = httpx.Headers({**plain, "accept-encoding": "identity"}).raw

    def _answers(self, data: Mapping[str, str] | None, files: Any) -> bool:
        """Whether ``send`` goes through the transport's ``send_answer`` (on aiohttp, a
        request with no form and no upload)."""
        return self._answer is not None and files is None and data is None

    def keeps_deadline(self, data: Mapping[str, str] | None, files: Any) -> bool:
        """Whether ``send`` goes through ``send_answer`` and that keeps the attempt's
        deadline itself (3.11+)."""
        return KEEPS_DEADLINE and self._answers(data, files)

    async def send(
        self,
        method: str,
        url: str,
        json_body: Any,
        params: Mapping[str, str | int] | None,
        data: Mapping[str, str] | None,
        files: Any,
        uploaded: Callable[..., None] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        *,
        timeout: float,
        max_bytes: int,
    ) -> Answer:
        """Send one request and read its answer whole (capped at ``max_bytes``).
        ``timeout`` and ``max_bytes`` are the client's at the time of the call."""
        self._check_open()
        if self._answers(data, files):
            return await self._send_answer(
                method, url, json_body, params, extra_headers, timeout, max_bytes
            )
        return await self._send_httpx(
            method,
            url,
            json_body,
            params,
            data,
            files,
            False,
            uploaded,
            extra_headers,
            timeout,
            max_bytes,
        )

    async def send_streaming(
        self,
        method: str,
        url: str,
        params: Mapping[str, str | int] | None,
        extra_headers: Mapping[str, str] | None = None,
        *,
        timeout: float,
    ) -> httpx.Response:
        """Send one request whose answer the caller streams (and closes)."""
        self._check_open()
        return await self._send_httpx(
            method, url, None, params, None, None, True, None, extra_headers, timeout, 0
        )

    def _check_open(self) -> None:
        """What ``AsyncClient.send`` raises once closed (the request path maps it)."""
        if self._http.is_closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")

    async def _send_httpx(
        self,
        method: str,
        url: str,
        json_body: Any,
        params: Mapping[str, str | int] | None,
        data: Mapping[str, str] | None,
        files: Any,
        stream: bool,
        uploaded: Callable[..., None] | None,
        extra_headers: Mapping[str, str] | None,
        timeout: float,
        max_bytes: int,
    ) -> httpx.Response:
        """An httpx ``Request`` straight to the transport (uploads, streamed answers, and
        every request on a transport without ``send_answer``)."""
        headers: Any = self._stream_headers if stream else self._headers
        if extra_headers:
            headers = httpx.Headers(headers)
            headers.update(extra_headers)
            if stream:  # never a compressed audio body, whatever the extra headers say
                headers["accept-encoding"] = "identity"
        request = httpx.Request(
            method,
            httpx.URL(url),
            params=params,
            headers=headers,
            json=json_body,
            data=data,
            files=files,
            extensions={"timeout": _httpx_timeouts(timeout)},
        )
        if uploaded is not None:
            request.stream = _UploadStream(request.stream, uploaded)  # type: ignore[arg-type]
        response = await self._transport.handle_async_request(request)
        response.request = request
        if not stream:  # a streamed body is read (and closed) by its ``BodyStream``
            try:
                if uploaded is not None:
                    uploaded()  # an answer before the whole upload: bound reading it all the same
                await _read_capped(response, max_bytes)
            finally:
                await response.aclose()
        if _httpx_logger.isEnabledFor(logging.INFO):  # the line httpx itself would log
            _httpx_logger.info(
                'HTTP Request: %s %s "%s %d %s"',
                method,
                request.url,
                response.http_version,
                response.status_code,
                response.reason_phrase,
            )
        return response

    async def _send_answer(
        self,
        method: str,
        url: str,
        json_body: Any,
        params: Mapping[str, str | int] | None,
        extra_headers: Mapping[str, str] | None,
        timeout: float,
        max_bytes: int,
    ) -> _Answer:
        """``send`` through the transport's ``send_answer``: the same bytes on the wire as
        the httpx path (httpx's URL and JSON encodings, the same headers)."""
        if params:
            url = str(httpx.URL(url, params=params))
        if json_body is None:
            content, headers = None, self._plain
        else:  # exactly httpx's encoding (json=...): compact, UTF-8, no NaN
            content = json.dumps(
                json_body, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            ).encode("utf-8")
            headers = self._plain_json
        if extra_headers:
            headers = {**headers}
            for name, value in extra_headers.items():  # ours are lowercase: replaced
                headers.pop(name.lower(), None)
                headers[name] = value
        assert self._answer is not None  # see _answers
        response = await self._answer(method, url, content, headers, timeout, max_bytes)
        if _httpx_logger.isEnabledFor(logging.INFO):  # the line httpx itself would log
            _httpx_logger.info(
                'HTTP Request: %s %s "%s %d %s"',
                method,
                url,
                response.http_version,
                response.status_code,
                response.reason_phrase,
            )
        return response


def open_owned(
    *,
    transport: httpx.AsyncBaseTransport | None,
    proxy: httpx.Proxy | None,
    verify: bool,
    timeout: float,
    headers: dict[str, str],
    keepalive: int,
) -> tuple[httpx.AsyncBaseTransport | None, httpx.AsyncClient, _DirectSender]:
    """The HTTP client of a client that owns it, and its direct sender. Returns the
    transport to keep (a proxy's, made here, or the one given), the client, the sender."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=keepalive)
    if proxy is not None and transport is None:
        # httpx's own transport speaks to proxies (CONNECT for https) on every loop.
        transport = httpx.AsyncHTTPTransport(
            verify=httpx.create_ssl_context(verify=verify, trust_env=True),
            limits=limits,
            proxy=proxy,
            trust_env=False,
        )
    chosen = (
        transport
        or _default_transport(verify=verify, limits=limits)
        or httpx.AsyncHTTPTransport(verify=verify, limits=limits, trust_env=True)
    )
    # Our headers (the key among them) live only in the direct sender, which sends
    # every request of an owned client; this AsyncClient just owns the transport.
    http = httpx.AsyncClient(
        timeout=timeout,
        transport=chosen,
        limits=limits,
        verify=verify,
        follow_redirects=False,  # the x-api-key header must not follow a redirect
        trust_env=False,
    )
    return transport, http, _DirectSender(http, chosen, headers)
