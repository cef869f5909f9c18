"""Reading an answer: capped reads with bounded inflation, the upload stream that starts an
attempt's answer deadline, and ``BodyStream`` (a streamed 2xx body).
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import httpx

from ._answers import transport_error
from ._errors import (
    ClientClosedError,
)

if TYPE_CHECKING:
    from ._client import AsyncCambClient

__all__ = ["BodyStream", "DEFAULT_MAX_RESPONSE_BYTES"]

T = TypeVar("T")
logger = logging.getLogger("camb_async")


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


def _inflater(encoding: str) -> Any:
    """A zlib decompressor for ``Content-Encoding`` gzip/deflate, ``None`` for identity, or
    ``False`` for anything else (left to httpx's decoders)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj(zlib.MAX_WBITS)
    return False


async def _read_capped(response: httpx.Response, limit: int) -> None:
    """Read the body into ``response.content``, decompressed, never more than ``limit`` bytes.

    Own code rather than ``response.aread()``: aread has no cap, and httpx's decoders inflate
    each network chunk whole (one 64 KiB gzip chunk can become 64 MB) before anyone could
    count. Here zlib's ``max_length`` bounds every inflate step to ``_INFLATE_STEP``, so the
    memory one answer takes stays within about twice ``limit`` (the pieces, then their join)
    whatever it inflates to. A 2xx answer past ``limit`` raises ``_AnswerTooLarge``; an error
    answer is only cut short (its snippet is all anyone reads; its status decides a retry).
    """
    status = response.status_code
    if response.is_stream_consumed:  # read already (httpx.Response(content=...) in tests)
        if len(response.content) > limit:
            if status < 300:
                raise _AnswerTooLarge(limit, status)
            response._content = response.content[:limit]
        return
    encoding = response.headers.get("content-encoding", "")
    inflater = _inflater(encoding)
    # "deflate" is zlib-wrapped per the RFC, but some servers send it raw; zlib tells which
    # once it has seen two bytes (its header), so those are kept until then.
    head: bytes | None = b"" if encoding.strip().lower() == "deflate" else None
    chunks: list[bytes] = []
    room = limit  # bytes still allowed
    # An encoding we do not inflate ourselves (br, zstd, stacked ones) goes through httpx's
    # decoders: still counted and capped, only a single chunk is not bounded while inflating.
    source = response.aiter_bytes() if inflater is False else response.aiter_raw()
    async for data in source:
        while data:
            if inflater:
                if head is not None:
                    head += data
                try:
                    out = inflater.decompress(data, min(room + 1, _INFLATE_STEP))
                except zlib.error as exc:
                    if head is not None:  # not a zlib header: raw deflate, from the start
                        inflater, data, head = zlib.decompressobj(-zlib.MAX_WBITS), head, None
                        continue
                    raise httpx.DecodingError(f"bad compressed answer: {exc}") from None
                if head is not None and len(head) >= 2:
                    head = None  # a valid zlib header: decided
                # Whatever follows the compressed stream (unused_data) is ignored, as httpx does.
                data = b"" if inflater.eof else inflater.unconsumed_tail
            else:
                out, data = data, b""
            if len(out) > room:
                if status < 300:
                    raise _AnswerTooLarge(limit, status)
                chunks.append(out[:room])
                response._content = b"".join(chunks)
                return
            room -= len(out)
            chunks.append(out)
    if inflater:
        tail = inflater.flush()
        if len(tail) > room and status < 300:
            raise _AnswerTooLarge(limit, status)
        chunks.append(tail[:room])
    response._content = b"".join(chunks)  # what aread() would set: .content works as usual


class _UploadStream(httpx.AsyncByteStream):
    """A multipart request body that calls ``uploaded`` once its last byte is handed over.

    An upload may take as long as bytes keep flowing (httpx's write timeout guards each
    write), so its attempt has no overall deadline until then; from then on the wait for
    the answer is bounded by ``timeout`` like any request's (see ``_request``).
    """

    __slots__ = ("_stream", "_uploaded")

    def __init__(self, stream: httpx.AsyncByteStream, uploaded: Callable[[], None]) -> None:
        self._stream = stream
        self._uploaded = uploaded

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk
        self._uploaded()


def _answer_deadline(scope: anyio.CancelScope, timeout: float) -> Callable[[], None]:
    """Start ``scope``'s deadline (``timeout`` from now) the first time this is called."""
    def start() -> None:
        if scope.deadline == math.inf:
            scope.deadline = anyio.current_time() + timeout
    return start


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
        finally:
            client._scopes.discard(scope)
        if client._closed:
            raise ClientClosedError("the AsyncCambClient was closed while a body was read")
        if failure is None and scope.cancelled_caught:
            failure = httpx.ReadTimeout(f"no data for {client.timeout}s")
        if failure is not None:
            self._chunks = None
            raise transport_error(client, failure, self._method, self._path) from failure
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
