"""The exception hierarchy. Everything this package raises on purpose derives from CambError::

    CambError
    ├── APIError                    the server answered, and the answer is an error or unusable
    │   ├── AuthenticationError       401 / 403: every other request would fail the same way
    │   ├── NotFoundError             404: unknown task or run id
    │   ├── UnprocessableEntityError  422: the request was invalid; ``detail`` holds the reasons
    │   ├── RateLimitError            429 after the retries ran out
    │   └── InternalServerError       5xx after the retries ran out
    ├── APIConnectionError          no usable answer: connect/read/protocol failure
    │   └── APITimeoutError           ... because a timeout expired
    ├── TaskFailedError             the task ended ERROR / TIMEOUT / PAYMENT_REQUIRED
    ├── WaitTimeoutError            ``handle.wait(timeout=...)`` expired (also a TimeoutError)
    └── ClientClosedError           the client was closed (also a RuntimeError)

Messages carry at most a short snippet of a response body and never the API key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._models import StatusResult, TaskKind, ValidationDetail

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "CambError",
    "ClientClosedError",
    "InternalServerError",
    "NotFoundError",
    "RateLimitError",
    "TaskFailedError",
    "UnprocessableEntityError",
    "WaitTimeoutError",
    "redact",
    "snippet",
]

SNIPPET_LIMIT = 200
REDACTED = "[redacted]"
#: Echoes of the key this long or longer (any part of it) are redacted; a shorter run of its
#: characters is as likely to be chance as an echo, and gives away too little to matter.
MIN_ECHO = 8


def redact(text: str, secret: str | None) -> str:
    """``text`` with the key and every run of ``MIN_ECHO``+ characters of it replaced.

    Servers echo what they were sent (debug pages, proxies, WAF pages, a 422 quoting the
    header it rejected), sometimes only a part of it, and a snippet cut may split the key:
    so any part of the key counts, not only the whole. Own code (no library does this):
    one ``str.find`` per ``MIN_ECHO``-character piece of the key, so its cost is a few
    microseconds for a snippet, and it runs only on error paths and log lines.
    """
    if not secret or not text or len(secret) < 4:
        return text
    if len(secret) < MIN_ECHO:
        return text.replace(secret, REDACTED)
    hits: list[tuple[int, int]] = []
    for i in range(len(secret) - MIN_ECHO + 1):
        piece = secret[i : i + MIN_ECHO]
        at = text.find(piece)
        while at != -1:
            hits.append((at, at + MIN_ECHO))
            at = text.find(piece, at + 1)
    if not hits:
        return text
    runs: list[list[int]] = []  # overlapping or touching hits merged: one mark per echo
    for start, end in sorted(hits):
        if runs and start <= runs[-1][1]:
            runs[-1][1] = max(runs[-1][1], end)
        else:
            runs.append([start, end])
    out: list[str] = []
    done = 0
    for start, end in runs:
        out += (text[done:start], REDACTED)
        done = end
    out.append(text[done:])
    return "".join(out)


def snippet(body: bytes | str, limit: int = SNIPPET_LIMIT, secret: str | None = None) -> str:
    """A bounded, printable excerpt of a response body for error messages, the key (any
    echo of it, see ``redact``) replaced before the cut."""
    if isinstance(body, bytes):
        text = body[: limit * 4].decode("utf-8", "replace")
    else:
        text = body[: limit * 4]
    text = redact(text.replace("\r", " ").replace("\n", " "), secret)
    if len(text) > limit:
        return text[:limit] + "…"
    return text


class CambError(Exception):
    """Base class of every error camb-async raises on purpose.

    Errors reported for one task of a bulk call carry that task's ``kind`` and ``task_id``.
    """

    kind: TaskKind | None = None
    task_id: str | None = None


class APIError(CambError):
    """The API answered with an error status, or with a body this client cannot use.

    Carries what a support ticket needs: ``method``, the full ``url`` (query included; the
    key is a header, and any echo of it is redacted anyway), ``status_code``, the response
    ``headers`` (redacted) and ``request_id``, the server's id of the request when it sent
    one (``x-request-id``, ``x-amzn-requestid``, ``cf-ray``, ...). ``str(error)`` ends with
    ``[request_id: ...]`` when there is one.

    Args:
        message: what went wrong (already free of the key).
        status_code: the answer's HTTP status.
        body: a bounded snippet of the answer's body.
        method: the request's method.
        path: the request's path below the base URL.
        url: the request's full URL.
        headers: the answer's headers, redacted.
        request_id: the server's id of the request, if it sent one.
    """

    status_code: int
    body: str
    method: str
    path: str
    url: str
    headers: Mapping[str, str]
    request_id: str | None

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: str = "",
        method: str = "",
        path: str = "",
        url: str = "",
        headers: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body  # already a bounded snippet
        self.method = method
        self.path = path
        self.url = url
        self.headers = dict(headers) if headers else {}
        self.request_id = request_id

    def __str__(self) -> str:
        text = super().__str__()
        if self.request_id:
            text += f" [request_id: {self.request_id}]"
        return text


class AuthenticationError(APIError):
    """401 or 403: the API key is missing, wrong or not allowed to do this."""


class NotFoundError(APIError):
    """404: no such task or run for this key."""


class UnprocessableEntityError(APIError):
    """422: the API rejected the request's parameters; ``detail`` lists why.

    Args:
        message: what went wrong.
        detail: the API's reasons, one per rejected field.
        **kwargs: as for ``APIError``.
    """

    detail: list[ValidationDetail]

    def __init__(
        self, message: str, *, detail: list[ValidationDetail] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.detail = detail or []


class RateLimitError(APIError):
    """429 that persisted through every retry.

    Args:
        message: what went wrong.
        retry_after: seconds the server asked to wait, if it said.
        **kwargs: as for ``APIError``.
    """

    retry_after: float | None

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class InternalServerError(APIError):
    """5xx that persisted through every retry."""


class APIConnectionError(CambError):
    """The request got no usable answer (connection refused or reset, protocol error).

    ``method`` and ``url`` say which request (empty when unknown).

    Args:
        message: what went wrong (already free of the key).
        method: the request's method.
        url: the request's full URL.
    """

    method: str
    url: str

    def __init__(self, message: str, *, method: str = "", url: str = "") -> None:
        super().__init__(message)
        self.method = method
        self.url = url


class APITimeoutError(APIConnectionError):
    """A connect, read, write or pool timeout expired."""


class TaskFailedError(CambError):
    """The task reached a terminal status other than SUCCESS; ``status`` is its final result.

    Args:
        status: the task's final status.
    """

    status: StatusResult

    def __init__(self, status: StatusResult, redact: Callable[[str], str] | None = None) -> None:
        """``redact``: the client's key redaction, applied to the whole message (the
        server's ``message``/``exception_reason`` and the task id may echo the key)."""
        reason = f", reason={status.exception_reason}" if status.exception_reason else ""
        text = str(status.message) if status.message else ""
        message = f": {snippet(redact(text) if redact else text)}" if text else ""
        full = (
            f"{status.kind.value} task {status.task_id!r} ended "
            f"{status.raw_status}{reason}{message}"
        )
        super().__init__(redact(full) if redact else full)
        self.status = status

    @property
    def message(self) -> str | dict[str, Any] | None:
        """The API's message for the failed task (``status.message``)."""
        return self.status.message

    @property
    def exception_reason(self) -> str | None:
        """The API's reason for the failure (``status.exception_reason``)."""
        return self.status.exception_reason


class WaitTimeoutError(CambError, TimeoutError):
    """``TaskHandle.wait(timeout=...)`` expired; ``last`` is the last observed status, if any.

    Args:
        message: what expired.
        last: the last observed status, ``None`` if the task was never polled.
    """

    last: StatusResult | None

    def __init__(self, message: str, last: StatusResult | None) -> None:
        super().__init__(message)
        self.last = last


class ClientClosedError(CambError, RuntimeError):
    """The client was closed (``aclose()`` or the end of its ``async with`` block)."""


# ------------------------------------------------------------------ classification
# How the polling layers treat an error a poll or a request ended with.


def is_transient(exc: BaseException) -> bool:
    """Errors worth another poll later: throttling, 5xx, no answer, or a garbled 2xx answer."""
    if isinstance(exc, (RateLimitError, InternalServerError, APIConnectionError)):
        return True
    return isinstance(exc, APIError) and exc.status_code < 300


def is_fatal(exc: BaseException) -> bool:
    """Errors that end the whole call at once: every other request would fail the same way."""
    return isinstance(exc, (AuthenticationError, ClientClosedError))


def unanswered(exc: BaseException, client: Any, answers: int) -> bool:
    """A poll that got no usable answer while the server answered nothing at all (neither
    this poll's attempts nor any other request of the client) since it started, when
    ``client._answers`` was ``answers``: the server is unreachable (refused, down, a black
    hole), which is no task's own problem. Re-polling every task on its schedule would take
    minutes to say so; the call fails at once instead, retries of the request path done."""
    return isinstance(exc, APIConnectionError) and client._answers == answers
