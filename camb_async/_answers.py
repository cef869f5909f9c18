"""Mapping an answer: a 2xx body decoded and parsed, any other status or a transport failure
turned into the error hierarchy, with what a support ticket needs (URL, headers, request id)
and never the key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import httpx

from ._errors import (
    REDACTED,
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    UnprocessableEntityError,
)
from ._models import ModelError, ValidationDetail, parse_validation_details

if TYPE_CHECKING:
    from ._client import AsyncCambClient

__all__ = ["Answer", "decode", "status_error", "transport_error"]

T = TypeVar("T")
logger = logging.getLogger("camb_async")


class Answer(Protocol):
    """What the request path reads of an answer read whole: an ``httpx.Response``, or the
    aiohttp path's ``_reading._Answer`` (no httpx objects per request)."""

    #: The body; ``decode`` empties it once decoded (memory: see there).
    _content: bytes

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> bytes: ...

    @property
    def url(self) -> object: ...


#: Response headers that carry the server's id of a request, most specific first: what a
#: support ticket needs. CAMB.AI's API sits behind AWS and Cloudflare; both stamp their own.
REQUEST_ID_HEADERS = (
    "x-request-id",
    "request-id",
    "x-amzn-requestid",
    "x-amz-request-id",
    "x-amz-cf-id",
    "cf-ray",
)
#: Response headers worth keeping on an error (the rest are noise in a ticket).
_KEPT_HEADERS = frozenset(
    {
        *REQUEST_ID_HEADERS,
        "content-type",
        "content-length",
        "date",
        "server",
        "retry-after",
        "retry-after-ms",
        "via",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    }
)


def decode(
    client: AsyncCambClient, response: Answer, method: str, path: str, parse: Callable[[Any], T]
) -> T:
    raw = response.content
    if client._echoed(raw):  # never into a result or a message
        raw = client._redact(raw.decode("latin-1")).encode("latin-1")
    body: bytes | str = raw
    try:
        if raw:
            # Decoded here (as json.loads(bytes) would), then the bytes let go: otherwise
            # the body, its text and the parsed values of a large answer would all be
            # alive at once (3x max_response_bytes); this way at most 2x.
            encoding = json.detect_encoding(raw)
            escaped = client._escaped(raw)
            body = raw.decode(encoding, "surrogatepass")
            del raw
            response._content = b""
            if encoding != "utf-8" and client._echoed_text(body):
                body = client._redact(body)  # UTF-16/32: the bytes check could not see it
            data = json.loads(body)
            if escaped:  # an echo spelled in escapes shows only once decoded
                data, body = redact_decoded(client, data, body)
        else:
            data = None
    except (ValueError, RecursionError) as exc:
        # RecursionError: the json module has no depth limit of its own, and catching its
        # error costs nothing on the hot path (a depth-counting pre-scan would).
        what = "nested too deeply" if isinstance(exc, RecursionError) else "not JSON"
        raise APIError(
            f"{method} {path}: answer {response.status_code} is {what}: {client._snippet(body)!r}",
            status_code=response.status_code,
            body=client._snippet(body),
            **answer_info(client, response, method, path),
        ) from None
    try:
        return parse(data)
    except ModelError as exc:
        raise APIError(
            client._redact(f"{method} {path}: unexpected answer ({exc}): ")
            + repr(client._snippet(body)),
            status_code=response.status_code,
            body=client._snippet(body),
            **answer_info(client, response, method, path),
        ) from None


def redact_decoded(client: AsyncCambClient, data: Any, body: str) -> tuple[Any, str]:
    """``data`` (parsed JSON) with the key redacted from every string in it, and
    ``body`` re-encoded from it if anything changed. Only for bodies with escapes."""
    changed = False

    def clean(value: Any) -> Any:
        nonlocal changed
        if isinstance(value, str):
            if client._echoed_text(value):
                changed = True
                return client._redact(value)
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


def transport_error(
    client: AsyncCambClient, exc: Exception, method: str, path: str, url: str = ""
) -> APIConnectionError:
    kind = type(exc).__name__
    where = {"method": method, "url": client._redact(url or client.base_url + path)}
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"{method} {path}: {kind} (request timed out)", **where)
    # httpx/httpcore/trio wrap the real reason (e.g. a failed TLS verification) in
    # exceptions with no text: report the first cause in the chain that has some.
    cause: BaseException | None = exc
    for _ in range(8):
        if cause is None or str(cause):
            break
        cause = cause.__cause__ or cause.__context__
    detail = client._snippet(str(cause or ""), 120)  # parser errors quote bytes
    return APIConnectionError(f"{method} {path}: {kind}: {detail}", **where)


def answer_info(
    client: AsyncCambClient, response: Answer, method: str, path: str
) -> dict[str, Any]:
    """What an error keeps of an answer for a support ticket: the full URL, the headers
    and the server's request id, every value redacted (servers echo what they got)."""
    try:
        url = str(response.url)
    except RuntimeError:  # a Response built without its request (tests)
        url = client.base_url + path
    headers: dict[str, str] = {}
    for name, value in response.headers.items():
        name = client._redact_name(name.lower())  # a server may echo the key as a name
        if name in ("set-cookie", "authorization", "proxy-authorization", "x-api-key"):
            value = REDACTED
        headers[name] = client._redact(value)
    request_id = next((headers[h] for h in REQUEST_ID_HEADERS if headers.get(h)), None)
    return {
        "method": method,
        "path": path,
        "url": client._redact(url),
        "headers": headers,
        "request_id": request_id,
    }


def status_error(
    client: AsyncCambClient, response: Answer, method: str, path: str, retry_after: float | None
) -> APIError:
    status = response.status_code
    body = client._snippet(response.content)
    common: dict[str, Any] = {
        "status_code": status,
        "body": body,
        **answer_info(client, response, method, path),
    }
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
            message,
            detail=[redact_detail(client, d) for d in parse_validation_details(decoded)],
            **common,
        )
    if status == 429:
        return RateLimitError(message, retry_after=retry_after, **common)
    if status >= 500:
        return InternalServerError(message, **common)
    return APIError(message, **common)


def redact_detail(client: AsyncCambClient, detail: ValidationDetail) -> ValidationDetail:
    """A 422 entry without the key: servers quote the header value they rejected."""
    loc = [client._redact(part) if isinstance(part, str) else part for part in detail.loc]
    return ValidationDetail(
        loc=loc, msg=client._redact(detail.msg), type=client._redact(detail.type)
    )
