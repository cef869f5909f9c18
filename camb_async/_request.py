"""The one request path: budget -> send -> classify -> wait -> retry -> map.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import backoff
import httpx

from ._answers import decode, status_error, transport_error
from ._errors import (
    APIConnectionError,
    APIError,
    ClientClosedError,
)
from ._hooks import RequestHooks
from ._reading import BodyStream, _answer_deadline, _AnswerTooLarge, _read_capped, _UploadStream
from ._transports import _DirectSender

if TYPE_CHECKING:
    from ._client import AsyncCambClient

__all__ = ["parse_retry_after", "request"]

T = TypeVar("T")
logger = logging.getLogger("camb_async")

RETRY_STATUSES = frozenset({408, 429})
#: Longest server-requested wait honoured; a hostile or buggy Retry-After cannot park us.
MAX_RETRY_AFTER = 60.0


def parse_retry_after(headers: Mapping[str, str], now: float | None = None,
                      cap: float = MAX_RETRY_AFTER) -> float | None:
    """Seconds the server asked us to wait, capped at ``cap``; None if absent/bad.

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
    url = client.base_url + path
    budget = client.budget
    if extra_headers or extra_query or extra_body:
        try:
            headers, params, json_body, files, reopen_body = with_extras(client,
                extra_headers, extra_query, extra_body, params, json_body, files,
                reopen_body)
        except BaseException:
            if preacquired:
                budget.release()
            raise
    else:
        headers = client._headers
    retries = client.max_retries if max_retries is None else max_retries
    attempt = 0
    waits: Any = None
    hooks = client._hooks
    while True:
        if client._closed:
            if preacquired:
                budget.release()
            raise ClientClosedError("this AsyncCambClient is closed")
        http = client._http or client._open()
        direct = client._direct
        if preacquired:
            preacquired = False
        else:
            await client._acquire(budget)
        # One attempt never outlasts ``timeout``: httpx's timeouts are per phase, so a
        # server trickling a byte per read (or an in-process transport, which has none)
        # could otherwise hold the call forever. An upload may run while bytes flow (the
        # write timeout guards it); the deadline starts once it is sent (_UploadStream).
        scope = anyio.CancelScope(
            deadline=anyio.current_time() + client.timeout if files is None else math.inf)
        uploaded = None if files is None else _answer_deadline(scope, client.timeout)
        client._scopes.add(scope)
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
                    response, body = await send_streaming(client, http, direct, method,
                                                                url, path, params, headers)
                elif direct is not None:
                    response = await direct.send(
                        method, url, json_body, params, data, files, uploaded=uploaded,
                        extra_headers=None if headers is client._headers else headers)
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
                        await _read_capped(streamed, client.max_response_bytes)
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
            if not client._closed:
                raise APIConnectionError(
                    f"{method} {path}: the HTTP client is closed "
                    f"({client._snippet(str(exc), 80)})"
                ) from exc
        finally:
            client._scopes.discard(scope)
            budget.release()
            if hooks is not None:
                hooks._end(method, path, anyio.current_time() - started,
                           None if response is None else response.status_code)
        if client._closed:
            if body is not None:
                with anyio.CancelScope(shield=True):
                    await body.aclose()
            raise ClientClosedError("the AsyncCambClient was closed during the request")
        if too_large is not None:  # not retried: the same answer would come again
            raise APIError(
                f"{method} {path}: answer {too_large.status_code} is larger than "
                f"max_response_bytes ({too_large.limit} bytes)",
                status_code=too_large.status_code, method=method, path=path,
                url=client._redact(url),
            )
        if response is None and failure is None:  # the attempt's deadline expired
            failure = httpx.ReadTimeout(f"no complete answer within {client.timeout}s")

        retry_after: float | None = None
        if failure is not None:
            error: Exception = transport_error(client, failure, method, path, url)
            # Safe to resend only if the request cannot have reached the server.
            retryable = idempotent or isinstance(
                failure, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
            )
        else:
            assert response is not None
            client._answers += 1
            status = response.status_code
            if status < 300:
                if body is not None:
                    return parse(body)
                return decode(client, response, method, path, parse)
            if status == 429:
                # Uncapped here: a wait past max_retry_wait is the caller's to decide.
                retry_after = parse_retry_after(response.headers, cap=math.inf)
                pause = None if retry_after is None else min(retry_after, MAX_RETRY_AFTER)
                budget.penalize(pause)
                if hooks is not None or logger.isEnabledFor(logging.INFO):
                    throttled(client, hooks, method, path, pause)
                retryable = True
            else:
                retryable = idempotent and (status in RETRY_STATUSES or status >= 500)
                if retryable:
                    retry_after = parse_retry_after(response.headers, cap=math.inf)
            error = status_error(client, response, method, path, retry_after)

        if not retryable or attempt >= retries:
            raise error
        if retry_after is not None and retry_after > client.max_retry_wait:
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
        await client._sleep(delay)  # aclose() cuts a back-off short, too


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
        response = await direct.send(method, url, None, params, None, None, stream=True,
                                     extra_headers=extra)
    else:
        request = http.build_request(method, url, params=params,
                                     headers=headers or client._headers)
        response = await http.send(request, stream=True, follow_redirects=False)
    try:
        if response.status_code >= 300:  # read like any answer: capped, then closed
            await _read_capped(response, client.max_response_bytes)
            await response.aclose()
            return response, None
        chunks = aiter(response.aiter_bytes())
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


def with_extras(
    client: AsyncCambClient,
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
    headers: Mapping[str, str] = client._headers
    if extra_headers:
        if not isinstance(extra_headers, Mapping):
            raise TypeError("extra_headers must be a mapping of header names to values")
        merged = dict(client._headers)
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
