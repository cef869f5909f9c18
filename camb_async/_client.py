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
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import backoff
import httpx
import sniffio

from ._adaptive import CompletionStats
from ._budget import Budget, RateBudget
from ._errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    ClientClosedError,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    UnprocessableEntityError,
    snippet,
)
from ._hooks import RequestHooks
from ._models import ModelError, StatusResult, TaskKind, parse_validation_details
from ._resources import (
    DubResource,
    TaskResource,
    TranscriptionResource,
    TranslationResource,
    TTSResource,
)
from ._version import __version__

if TYPE_CHECKING:
    from ._handle import TaskHandle
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


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asked us to wait, capped at ``MAX_RETRY_AFTER``; None if absent/bad.

    Accepts ``retry-after-ms`` (milliseconds) first, then ``Retry-After`` as (fractional)
    seconds or an HTTP date. Negative or unparseable values count as absent.
    """
    value: float | None = None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
        except ValueError:
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
    if not math.isfinite(value) or value < 0:
        return None
    return min(value, MAX_RETRY_AFTER)



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
        context = httpx.create_ssl_context(verify=verify, trust_env=False)
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

    __slots__ = ("_http", "_transport", "_headers", "_timeout")

    def __init__(self, http: httpx.AsyncClient, transport: httpx.AsyncBaseTransport,
                 headers: Mapping[str, str], timeout: float) -> None:
        self._http = http
        self._transport = transport
        self._headers = httpx.Headers({
            "accept-encoding": "gzip, deflate",
            "connection": "keep-alive",
            **headers,
        }).raw
        self._timeout = httpx.Timeout(timeout).as_dict()

    async def send(self, method: str, url: str, json_body: Any,
                   params: Mapping[str, str | int] | None, data: Mapping[str, str] | None,
                   files: Any) -> httpx.Response:
        if self._http.is_closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        request = httpx.Request(method, httpx.URL(url), params=params, headers=self._headers,
                                json=json_body, data=data, files=files,
                                extensions={"timeout": self._timeout})
        response = await self._transport.handle_async_request(request)
        response.request = request
        try:
            await response.aread()
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
    """

    dub: DubResource
    tts: TTSResource
    translation: TranslationResource
    transcription: TranscriptionResource

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
    ) -> None:
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
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        if http_client is not None and transport is not None:
            raise ValueError("pass http_client or transport, not both")
        if budget is None:
            budget = RateBudget(rate_limit, max_concurrency)
        elif not isinstance(budget, Budget):
            raise TypeError("budget must provide acquire(), release() and penalize()")

        self.__key = key
        self.base_url = str(parsed).rstrip("/")
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.budget: Budget = budget
        self._verify = verify
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
        self._resources = {
            TaskKind.DUB: self.dub,
            TaskKind.TTS: self.tts,
            TaskKind.TRANSLATION: self.translation,
            TaskKind.TRANSCRIPTION: self.transcription,
        }

    # ------------------------------------------------------------------ public surface

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<AsyncCambClient base_url={self.base_url!r} budget={self.budget!r} {state}>"

    @property
    def closed(self) -> bool:
        return self._closed

    def resource(self, kind: TaskKind | str) -> TaskResource:
        """The resource for ``kind`` (a ``TaskKind`` or its path word)."""
        try:
            return self._resources[TaskKind(kind)]
        except ValueError:
            raise ValueError(
                f"unknown task kind {kind!r}; expected one of "
                f"{', '.join(k.value for k in self._resources)}"
            ) from None

    def task(self, kind: TaskKind | str, task_id: str) -> TaskHandle:
        """A handle on an existing task of any kind; makes no request."""
        return self.resource(kind).task(task_id)

    async def gather_statuses(
        self,
        tasks: Iterable[str | TaskHandle],
        *,
        kind: TaskKind | str | None = None,
        wait: bool = True,
        timeout: float | None = None,
        policy: PolicyArg = None,
        return_exceptions: bool = False,
        on_update: Callable[[StatusResult], object] | None = None,
    ) -> list[Any]:
        """``gather_statuses(self, ...)``; see that function."""
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
        if self._closed:
            raise ClientClosedError("this AsyncCambClient is closed; create a new one")
        self._open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

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
        if self._http is None:
            limits = httpx.Limits(
                max_connections=None,
                max_keepalive_connections=max(20, getattr(self.budget, "max_concurrency", 20)),
            )
            transport = (self._transport
                         or _default_transport(verify=self._verify, limits=limits)
                         or httpx.AsyncHTTPTransport(verify=self._verify, limits=limits,
                                                     trust_env=False))
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
            self._direct = _DirectSender(self._http, transport, self._headers, self.timeout)
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
    ) -> T:
        """Send one logical request (with retries) and return ``parse(decoded JSON)``.

        ``idempotent=False`` (task creation) retries only failures that prove the server never
        saw the request (connection not established, 429); anything after the request may have
        been received is raised, so a lost answer cannot create a second job.
        ``preacquired=True`` means the caller already holds one budget acquisition for the
        first attempt (the bulk poller acquires in due order, then hands the slot over).
        """
        url = self.base_url + path
        budget = self.budget
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
            # could otherwise hold the call forever. Uploads keep only the per-phase timeouts.
            scope = anyio.CancelScope(
                deadline=anyio.current_time() + self.timeout if files is None else math.inf)
            self._scopes.add(scope)
            response: httpx.Response | None = None
            failure: Exception | None = None
            if hooks is not None:
                hooks._start(method, path)
                started = anyio.current_time()
            try:
                with scope:
                    if direct is not None:
                        response = await direct.send(method, url, json_body, params, data,
                                                     files)
                    else:
                        response = await http.request(
                            method,
                            url,
                            json=json_body,
                            params=params,
                            data=data,
                            files=files,
                            headers=self._headers,  # a caller's client has none of ours
                            # The x-api-key header must never follow a redirect to another
                            # host, whatever the caller's own client is configured to do.
                            follow_redirects=False,
                        )
            except httpx.RequestError as exc:
                # Transport failures and timeouts, but also an undecodable body
                # (DecodingError) or TooManyRedirects: all "no usable answer".
                failure = exc
            except RuntimeError as exc:  # httpx: "Cannot send a request, ... has been closed."
                if not self._closed:
                    raise APIConnectionError(
                        f"{method} {path}: the HTTP client is closed ({snippet(str(exc), 80)})"
                    ) from exc
            finally:
                self._scopes.discard(scope)
                budget.release()
                if hooks is not None:
                    hooks._end(method, path, anyio.current_time() - started,
                               None if response is None else response.status_code)
            if self._closed:
                raise ClientClosedError("the AsyncCambClient was closed during the request")
            if response is None and failure is None:  # the attempt's deadline expired
                failure = httpx.ReadTimeout(f"no complete answer within {self.timeout}s")

            retry_after: float | None = None
            if failure is not None:
                error: Exception = self._transport_error(failure, method, path)
                # Safe to resend only if the request cannot have reached the server.
                retryable = idempotent or isinstance(
                    failure, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
                )
            else:
                assert response is not None
                self._answers += 1
                status = response.status_code
                if status < 300:
                    return self._decode(response, method, path, parse)
                if status == 429:
                    retry_after = parse_retry_after(response.headers)
                    budget.penalize(retry_after)
                    if hooks is not None or logger.isEnabledFor(logging.INFO):
                        self._throttled(hooks, method, path, retry_after)
                    retryable = True
                else:
                    retryable = idempotent and (status in RETRY_STATUSES or status >= 500)
                    if retryable:
                        retry_after = parse_retry_after(response.headers)
                error = self._status_error(response, method, path, retry_after)

            if not retryable or attempt >= retries:
                raise error
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
        body = response.content
        try:
            data = json.loads(body) if body else None
        except ValueError:
            raise APIError(
                f"{method} {path}: answer {response.status_code} is not JSON: {snippet(body)!r}",
                status_code=response.status_code,
                body=snippet(body),
                method=method,
                path=path,
            ) from None
        try:
            return parse(data)
        except ModelError as exc:
            raise APIError(
                f"{method} {path}: unexpected answer ({exc}): {snippet(body)!r}",
                status_code=response.status_code,
                body=snippet(body),
                method=method,
                path=path,
            ) from None

    @staticmethod
    def _transport_error(exc: Exception, method: str, path: str) -> APIConnectionError:
        kind = type(exc).__name__
        if isinstance(exc, httpx.TimeoutException):
            return APITimeoutError(f"{method} {path}: {kind} (request timed out)")
        # httpx/httpcore/trio wrap the real reason (e.g. a failed TLS verification) in
        # exceptions with no text: report the first cause in the chain that has some.
        cause: BaseException | None = exc
        for _ in range(8):
            if cause is None or str(cause):
                break
            cause = cause.__cause__ or cause.__context__
        detail = snippet(str(cause or ""), 120)
        return APIConnectionError(f"{method} {path}: {kind}: {detail}")

    @staticmethod
    def _status_error(
        response: httpx.Response, method: str, path: str, retry_after: float | None
    ) -> APIError:
        status = response.status_code
        body = snippet(response.content)
        common: dict[str, Any] = {"status_code": status, "body": body, "method": method,
                                  "path": path}
        message = f"{method} {path}: HTTP {status}: {body!r}"
        if status in (401, 403):
            return AuthenticationError(message, **common)
        if status == 404:
            return NotFoundError(message, **common)
        if status == 422:
            try:
                decoded = json.loads(response.content)
            except ValueError:
                decoded = None
            return UnprocessableEntityError(
                message, detail=parse_validation_details(decoded), **common
            )
        if status == 429:
            return RateLimitError(message, retry_after=retry_after, **common)
        if status >= 500:
            return InternalServerError(message, **common)
        return APIError(message, **common)
