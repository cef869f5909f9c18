"""Reading an answer: capped reads with bounded inflation, the upload stream that starts an
attempt's answer deadline, and ``BodyStream`` (a streamed 2xx body).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

import anyio
import httpx

from ._answers import transport_error
from ._errors import ClientClosedError

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


class _Answer:
    """An answer read whole, as the aiohttp path makes it (``send_answer``): what the request
    path reads of an ``httpx.Response`` (the ``Answer`` protocol), for a fraction of the cost
    of building one (~36 µs for five headers)."""

    __slots__ = ("status_code", "_raw", "_headers", "_content", "url", "_version")

    def __init__(
        self,
        status_code: int,
        raw_headers: Sequence[tuple[bytes, bytes]],
        url: str,
        version: tuple[int, int] | None,
        content: bytes = b"",
    ) -> None:
        self.status_code = status_code
        self._raw = raw_headers
        self._headers: dict[str, str] | None = None
        self._content = content
        self.url = url
        self._version = version or (1, 1)

    @property
    def headers(self) -> Mapping[str, str]:
        """The headers as httpx reads them: names lowercased, a repeated header's values
        joined with ", " (``gzip, gzip`` is two layers; two ``Retry-After`` lines are no
        usable wait), decoded as ``httpx.Headers`` decodes them. Built on first use."""
        headers = self._headers
        if headers is None:
            headers = self._headers = {}
            try:
                for name, value in self._raw:
                    key = name.decode("ascii").lower()
                    text = value.decode("ascii")
                    headers[key] = f"{headers[key]}, {text}" if key in headers else text
            except UnicodeDecodeError:  # rare: httpx's own decoding (UTF-8, else Latin-1)
                headers = self._headers = dict(httpx.Headers(list(self._raw)).items())
        return headers

    @property
    def content(self) -> bytes:
        return self._content

    @property
    def http_version(self) -> str:
        return f"HTTP/{self._version[0]}.{self._version[1]}"

    @property
    def reason_phrase(self) -> str:
        return httpx.codes.get_reason_phrase(self.status_code)

    def __repr__(self) -> str:
        return f"<_Answer [{self.status_code}]>"


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
        self.detail = (
            f"uses Content-Encoding {encoding[:40]!r}, which is not read "
            "(only gzip and deflate are)"
        )


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
                    zlib.decompressobj(-zlib.MAX_WBITS),
                    self._head,
                    None,
                )
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


async def _decoded(
    response: httpx.Response, layers: list[_Inflate], limit: int | None = None
) -> AsyncIterator[bytes]:
    """The body of ``response`` decoded (see ``_decoded_raw``)."""
    if response.is_stream_consumed:  # read already (httpx.Response(content=...) in tests)
        if response.content:
            yield response.content
        return
    async for out in _decoded_raw(response.aiter_raw(), layers, limit):
        yield out


async def _decoded_raw(
    raw: AsyncIterator[bytes], layers: list[_Inflate], limit: int | None = None
) -> AsyncGenerator[bytes, None]:
    """The body whose raw (still encoded) chunks ``raw`` yields, decoded, in pieces of at
    most ``_INFLATE_STEP`` bytes per layer step (a compressed body is never inflated a whole
    network chunk at a time). With ``limit``, the last layer inflates no more than one byte
    past it."""
    if layers and limit is not None:
        layers[-1].room = limit
    if not layers:
        async for data in raw:
            if data:
                yield data
        return
    async for data in raw:
        layers[0].pending = data
        for out in _drain(layers, 0):
            yield out
    for out in _finish(layers):
        yield out


async def _read_capped(response: httpx.Response, limit: int) -> None:
    """Read the body into ``response.content`` (see ``_capped``): what ``aread()`` would set,
    so ``.content`` works as usual."""
    status = response.status_code
    if response.is_stream_consumed:  # read already (httpx.Response(content=...) in tests)
        if len(response.content) > limit:
            if status < 300:
                raise _AnswerTooLarge(limit, status)
            response._content = response.content[:limit]
        return
    response._content = await _capped(
        response.aiter_raw(), response.headers.get("content-encoding", ""), status, limit
    )


async def _capped(raw: AsyncIterator[bytes], encoding: str, status: int, limit: int) -> bytes:
    """The body whose raw chunks ``raw`` yields, decompressed, never more than ``limit`` bytes.

    Own code rather than ``response.aread()``: aread has no cap, and httpx's decoders inflate
    each network chunk whole (one 64 KiB gzip chunk can become 64 MB) before anyone could
    count. Here zlib's ``max_length`` bounds every inflate step, of every stacked layer, to
    ``_INFLATE_STEP``, so the memory one answer takes stays within about twice ``limit`` (the
    pieces, then their join) whatever it inflates to. A 2xx answer past ``limit`` raises
    ``_AnswerTooLarge``, one in an encoding other than gzip/deflate ``_UnboundedEncoding``; an
    error answer is only cut short (its snippet is all anyone reads; its status decides a
    retry), and one in an unknown encoding is read as empty.
    """
    try:
        layers = _inflaters(encoding, status) if encoding else []
    except _UnboundedEncoding:
        if status < 300:
            raise
        return b""
    chunks: list[bytes] = []
    room = limit  # bytes still allowed
    inflated = _decoded_raw(raw, layers, limit) if layers else None
    pieces = raw if inflated is None else inflated
    try:
        async for out in pieces:
            if len(out) > room:
                if status < 300:
                    raise _AnswerTooLarge(limit, status)
                chunks.append(out[:room])
                break
            room -= len(out)
            if out:
                chunks.append(out)
    finally:
        if inflated is not None:  # closed now, not whenever the loop finalizes it
            await inflated.aclose()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _UploadStream(httpx.AsyncByteStream):
    """A multipart request body that calls ``uploaded`` once its last byte is handed over.

    An upload may take as long as bytes keep flowing, so its attempt has no overall deadline
    until then; but each chunk handed to the transport must be taken within ``timeout``
    (``uploaded(True)`` re-arms the attempt's deadline per chunk): a server that stops reading
    ends the attempt even where the transport has no write timeout (aiohttp's). From the
    last byte on, the wait for the answer is bounded by ``timeout`` like any request's.
    """

    __slots__ = ("_stream", "_uploaded")

    def __init__(self, stream: httpx.AsyncByteStream, uploaded: Callable[..., None]) -> None:
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


class BodyStream:
    """A 2xx answer's body, read chunk by chunk (``async for``), never held whole.

    Made by the request path in streaming mode once the first chunk has arrived; nothing
    after that is retried. Each later chunk must arrive within the client's ``timeout``
    (``APITimeoutError``); a connection lost mid-body is ``APIConnectionError``; the client's
    ``aclose()`` ends a read in progress with ``ClientClosedError``. ``aclose()`` (also done
    when the body is exhausted or iteration fails) returns the connection.
    """

    __slots__ = ("_client", "_response", "_source", "_chunks", "_first", "_method", "_path")

    def __init__(
        self,
        client: AsyncCambClient,
        response: httpx.Response,
        chunks: AsyncIterator[bytes],
        first: bytes | None,
        method: str,
        path: str,
    ) -> None:
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
            raise transport_error(client, failure, self._method, self._path) from None
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
