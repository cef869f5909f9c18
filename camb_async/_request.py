"""The one request path: budget -> send -> classify -> wait -> retry -> map.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import backoff
import httpx

from ._answers import Answer, decode, status_error, transport_error
from ._config import with_extras
from ._errors import APIConnectionError, APIError, ClientClosedError
from ._hooks import RequestHooks
from ._reading import (
    BodyStream,
    _answer_deadline,
    _AnswerTooLarge,
    _decoded,
    _inflaters,
    _read_capped,
    _unmapped,
    _UploadStream,
)
from ._transports import _DirectSender

if TYPE_CHECKING:
    from ._client import AsyncCambClient

__all__ = ["parse_retry_after", "request"]

T = TypeVar("T")
logger = logging.getLogger("camb_async")

RETRY_STATUSES = frozenset({408, 429})
#: An attempt that needs no scope of its own (see _Call.send_once); reusable.
_UNSCOPED = contextlib.nullcontext()
#: Longest server-requested wait honoured; a hostile or buggy Retry-After cannot park us.
MAX_RETRY_AFTER = 60.0


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


async def request(
    client: AsyncCambClient,
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
    in_client_scope: bool = False,
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
    ``in_client_scope=True`` means the caller runs inside a cancel scope that ``aclose()``
    cancels (the bulk poller's workers): an attempt that needs no budget wait and whose
    deadline the transport keeps then needs no cancel scope of its own.

    ``extra_headers``, ``extra_query`` and ``extra_body`` (fields the SDK does not know
    yet) are added to the request: the body's to its JSON object, or as form fields of a
    multipart body. ``x-api-key`` cannot be set or replaced through ``extra_headers``.
    """
    call = _Call(client, method, path, json_body=json_body, params=params, data=data,
                 files=files, idempotent=idempotent, preacquired=preacquired,
                 in_client_scope=in_client_scope, max_retries=max_retries,
                 reopen_body=reopen_body, stream=stream)
    call.add_extras(extra_headers, extra_query, extra_body)
    while True:
        response, body, failure = await call.send_once()
        if failure is None:
            assert response is not None
            client._answers += 1
            if response.status_code < 300:
                if body is not None:
                    return parse(body)
                return decode(client, response, method, path, parse)
        error, retryable, retry_after = call.classify(response, failure)
        response = None  # not held (up to max_response_bytes) through the back-off and retry
        delay = call.wait_before_retry(error, retryable, retry_after)
        await call.back_off(delay, error)


class _Call:
    """One logical request: what its attempts share (the request, the retry count, the
    back-off generator). Each step is one method: ``send_once`` (budget -> send -> read),
    ``classify`` (the error of an unusable attempt), ``wait_before_retry`` (or raise),
    ``back_off``."""

    __slots__ = ("client", "method", "path", "url", "json_body", "params", "data", "files",
                 "idempotent", "preacquired", "in_client_scope", "retries", "reopen_body",
                 "stream", "headers", "attempt", "waits")

    def __init__(self, client: AsyncCambClient, method: str, path: str, *, json_body: Any,
                 params: Mapping[str, str | int] | None, data: Mapping[str, str] | None,
                 files: Any, idempotent: bool, preacquired: bool, in_client_scope: bool,
                 max_retries: int | None,
                 reopen_body: Callable[[], Awaitable[Any]] | None, stream: bool) -> None:
        self.client = client
        self.method = method
        self.path = path
        self.url = client.base_url + path
        self.json_body = json_body
        self.params = params
        self.data = data
        self.files = files
        self.idempotent = idempotent
        self.preacquired = preacquired
        self.in_client_scope = in_client_scope
        self.retries = client.max_retries if max_retries is None else max_retries
        self.reopen_body = reopen_body
        self.stream = stream
        self.headers: Mapping[str, str] = client._headers
        self.attempt = 0
        self.waits: Any = None

    def add_extras(self, extra_headers: Mapping[str, str] | None,
                   extra_query: Mapping[str, str | int] | None,
                   extra_body: Mapping[str, Any] | None) -> None:
        """Add a caller's extra fields; a refused one gives a preacquired slot back."""
        if not (extra_headers or extra_query or extra_body):
            return
        try:
            self.headers, self.params, self.json_body, self.files, self.reopen_body = (
                with_extras(self.client, extra_headers, extra_query, extra_body, self.params,
                            self.json_body, self.files, self.reopen_body))
        except BaseException:
            if self.preacquired:
                self.client.budget.release()
            raise

    async def send_once(self) -> tuple[Answer | None, BodyStream | None,
                                       Exception | None]:
        """One attempt under the budget and the attempt's deadline: the answer (and, when
        streaming, its 2xx body), or the transport failure that left none."""
        client, method, path = self.client, self.method, self.path
        budget = client.budget
        if client._closed:
            if self.preacquired:
                budget.release()
            raise ClientClosedError("this AsyncCambClient is closed")
        http = client._http or client._open()
        direct = client._direct
        acquired, self.preacquired = self.preacquired, False
        # One attempt never outlasts ``timeout``: httpx's timeouts are per phase, so a
        # server trickling a byte per read (or an in-process transport, which has none)
        # could otherwise hold the call forever; the deadline starts once the budget
        # granted. On aiohttp's direct path send_answer keeps it (one asyncio.timeout over
        # connect, send and every read); elsewhere the attempt's scope.
        timed_by_transport = (direct is not None and not self.stream
                              and direct.keeps_deadline(self.data, self.files))
        # A scope per attempt, which aclose() cancels: it covers the wait for the budget
        # (a 429 pause, pacing, a full concurrency limit, a fleet backend) and the attempt,
        # and keeps the deadline the transport does not. Not needed when there is no
        # budget wait, no deadline to keep and the caller's own scope is one aclose()
        # cancels (the bulk poller's workers): ~50 µs of a bulk check at 50 in flight.
        # An upload may run while bytes flow: the deadline is re-armed per chunk handed
        # over, fixed once it is sent (_UploadStream).
        scope: anyio.CancelScope | None = None
        uploaded = None
        if not (acquired and timed_by_transport and self.in_client_scope):
            scope = anyio.CancelScope()
            if self.files is not None:
                uploaded = _answer_deadline(scope, client.timeout)
            client._scopes.add(scope)
        response: Answer | None = None
        body: BodyStream | None = None  # streaming mode: a 2xx answer's body
        failure: Exception | None = None
        too_large: _AnswerTooLarge | None = None
        hooks = client._hooks
        started: float | None = None
        try:
            with scope or _UNSCOPED:
                if not acquired:
                    await budget.acquire()
                    acquired = True
                if scope is not None and self.files is None and not timed_by_transport:
                    scope.deadline = anyio.current_time() + client.timeout
                if hooks is not None:
                    hooks._start(method, path)
                    started = anyio.current_time()
                response, body = await self.send(http, direct, uploaded)
        except _AnswerTooLarge as exc:
            too_large = exc
        except httpx.RequestError as exc:
            # Transport failures and timeouts, but also an undecodable body
            # (DecodingError) or TooManyRedirects: all "no usable answer".
            failure = exc
        except RuntimeError as exc:  # httpx: "Cannot send a request, ... has been closed."
            if not client._closed:
                raise APIConnectionError(
                    f"{method} {path}: the HTTP client is closed "
                    f"({client._snippet(str(exc), 80)})"
                ) from None  # the text above is redacted; the raw one may quote the key
        except Exception as exc:
            # Anything else the transport let through unmapped (h11's LocalProtocolError
            # for an upload whose file changed size, a file object's read error...):
            # no usable answer all the same, never a raw library error.
            failure = _unmapped(exc)
        finally:
            if scope is not None:
                client._scopes.discard(scope)
            if acquired:
                budget.release()
            if hooks is not None and started is not None:
                hooks._end(method, path, anyio.current_time() - started,
                           None if response is None else response.status_code)
        await self.check_attempt(body, too_large)
        if response is None and failure is None:  # the attempt's deadline expired
            failure = httpx.ReadTimeout(f"no complete answer within {client.timeout}s")
        elif failure is not None and timed_by_transport:
            # A caller's anyio cancellation landing in the loop iteration in which the
            # transport's deadline fired is delivered an iteration later (the task was
            # already woken): the caller's wins, never an APITimeoutError in its place.
            await anyio.lowlevel.checkpoint_if_cancelled()
        return response, body, failure

    async def send(self, http: httpx.AsyncClient, direct: _DirectSender | None,
                   uploaded: Callable[..., None] | None
                   ) -> tuple[Answer, BodyStream | None]:
        """Send the request and read the answer (capped; a streamed 2xx body is not read)."""
        client, method, url, headers = self.client, self.method, self.url, self.headers
        if self.stream:
            return await send_streaming(client, http, direct, method, url, self.path,
                                        self.params, headers)
        if direct is not None:
            return await direct.send(
                method, url, self.json_body, self.params, self.data, self.files,
                uploaded=uploaded,
                extra_headers=None if headers is client._headers else headers,
                timeout=client.timeout, max_bytes=client.max_response_bytes), None
        request = http.build_request(
            method,
            url,
            json=self.json_body,
            params=self.params,
            data=self.data,
            files=self.files,
            headers=headers,  # a caller's client has none of ours
        )
        if uploaded is not None:
            request.stream = _UploadStream(request.stream, uploaded)  # type: ignore[arg-type]
        # The x-api-key header must never follow a redirect to another
        # host, whatever the caller's own client is configured to do.
        streamed = await http.send(request, stream=True, follow_redirects=False)
        try:
            if uploaded is not None:
                uploaded()
            await _read_capped(streamed, client.max_response_bytes)
        finally:
            await streamed.aclose()
        return streamed, None

    async def check_attempt(self, body: BodyStream | None,
                            too_large: _AnswerTooLarge | None) -> None:
        """Raise what no retry can help: the client closed meanwhile, an answer too large."""
        client = self.client
        if client._closed:
            if body is not None:
                with anyio.CancelScope(shield=True):
                    await body.aclose()
            raise ClientClosedError("the AsyncCambClient was closed during the request")
        if too_large is not None:  # not retried: the same answer would come again
            raise APIError(
                f"{self.method} {self.path}: answer {too_large.status_code} {too_large.detail}",
                status_code=too_large.status_code, method=self.method, path=self.path,
                url=client._redact(self.url),
            )

    def classify(self, response: Answer | None, failure: Exception | None
                 ) -> tuple[Exception, bool, float | None]:
        """An unusable attempt's error, whether it may be retried, and the server's wait."""
        client, method, path = self.client, self.method, self.path
        retry_after: float | None = None
        if failure is not None:
            error: Exception = transport_error(client, failure, method, path, self.url)
            # Safe to resend only if the request cannot have reached the server.
            retryable = self.idempotent or isinstance(
                failure, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
            )
            return error, retryable, None
        assert response is not None
        status = response.status_code
        if status == 429:
            # Uncapped here: a wait past max_retry_wait is the caller's to decide.
            retry_after = parse_retry_after(response.headers, cap=math.inf)
            pause = None if retry_after is None else min(retry_after, MAX_RETRY_AFTER)
            client.budget.penalize(pause)
            hooks = client._hooks
            if hooks is not None or logger.isEnabledFor(logging.INFO):
                throttled(client, hooks, method, path, pause)
            retryable = True
        else:
            retryable = self.idempotent and (status in RETRY_STATUSES or status >= 500)
            if retryable:
                retry_after = parse_retry_after(response.headers, cap=math.inf)
        return status_error(client, response, method, path, retry_after), retryable, retry_after

    def wait_before_retry(self, error: Exception, retryable: bool,
                          retry_after: float | None) -> float:
        """Seconds to wait before the next attempt, or ``error`` raised if there is none."""
        if not retryable or self.attempt >= self.retries:
            raise error
        if retry_after is not None and retry_after > self.client.max_retry_wait:
            raise error  # not slept on: RateLimitError.retry_after tells the caller
        if retry_after is not None:
            return retry_after
        if self.waits is None:
            self.waits = backoff.expo(base=2, factor=0.25, max_value=8.0)
            next(self.waits)  # prime: backoff's generators start with a bare yield
        return float(backoff.full_jitter(next(self.waits)))

    async def back_off(self, delay: float, error: Exception) -> None:
        """Tell the log and the hooks, reopen an upload's body, sleep ``delay``."""
        method, path = self.method, self.path
        self.attempt += 1
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "retrying %s %s in %.2fs (attempt %d of %d): %s",
                method, path, delay, self.attempt, self.retries, error,
            )
        hooks = self.client._hooks
        if hooks is not None:
            hooks._retry(method, path, self.attempt, delay, error)
        if self.reopen_body is not None:
            self.files = await self.reopen_body()
        await self.client._sleep(delay)  # aclose() cuts a back-off short, too


async def send_streaming(client: AsyncCambClient, http: httpx.AsyncClient,
                         direct: _DirectSender | None, method: str, url: str, path: str,
                          params: Mapping[str, str | int] | None,
                          headers: Mapping[str, str] | None = None,
                          ) -> tuple[httpx.Response, BodyStream | None]:
    """One attempt of a streamed request: the answer and, for a 2xx answer, its body with
    the first chunk read. An error answer is read whole (it is small and mapped like any
    other); a failure before the first chunk closes the answer."""
    if direct is not None:
        extra = None if headers is None or headers is client._headers else headers
        response = await direct.send_streaming(method, url, params, extra_headers=extra,
                                               timeout=client.timeout)
    else:
        request = http.build_request(method, url, params=params, headers={
            **(headers or client._headers), "accept-encoding": "identity"})
        response = await http.send(request, stream=True, follow_redirects=False)
    try:
        if response.status_code >= 300:  # read like any answer: capped, then closed
            await _read_capped(response, client.max_response_bytes)
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
    return response, BodyStream(client, response, chunks, first, method, path)


def throttled(client: AsyncCambClient, hooks: RequestHooks | None, method: str, path: str,
               retry_after: float | None) -> None:
    """A 429 paused the whole budget: tell the hooks and the log (never the key)."""
    if hooks is not None:
        hooks._throttle(method, path, retry_after)
    if logger.isEnabledFor(logging.INFO):
        current = getattr(client.budget, "current_rate", None)
        rate = current() if callable(current) else None
        logger.info(
            "HTTP 429 on %s %s: budget paused for %s; rate now %s", method, path,
            "the default pause" if retry_after is None else f"{retry_after:.2f}s",
            "unlimited" if rate is None else f"{rate:.1f} requests/s",
        )
