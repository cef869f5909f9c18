"""ASGI plumbing of the fake: message types, reading a body, sending an answer (JSON, or a
TTS run's FLAC audio generated as it streams), and the injected mid-answer reset."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Default size of a TTS run's raw FLAC answer (a few seconds of speech).
DEFAULT_AUDIO_SIZE = 48 * 1024
_AUDIO_CHUNK = 64 * 1024


class _ResetConnection(Exception):
    """Raised by the app to make the server drop the connection mid-answer."""


class _Audio:
    """A TTS run's raw FLAC answer, generated chunk by chunk as it is sent."""

    __slots__ = ("run_id", "size", "reset_after")

    def __init__(self, run_id: int, size: int, reset_after: int | None) -> None:
        self.run_id = run_id
        self.size = size
        self.reset_after = reset_after

    def chunks(self, limit: int | None = None) -> Iterator[bytes]:
        end = self.size if limit is None else min(limit, self.size)
        seed = hashlib.sha256(f"fake tts audio {self.run_id}".encode()).digest()
        block = (seed * (_AUDIO_CHUNK // len(seed) + 1))[:_AUDIO_CHUNK]
        sent = 0
        while sent < end:
            chunk = block[: min(_AUDIO_CHUNK, end - sent)]
            if sent == 0:
                chunk = b"fLaC"[: len(chunk)] + chunk[4:]
            sent += len(chunk)
            yield chunk

    async def send(
        self, send: Send, headers: list[tuple[str, str]], *, reset: bool = False
    ) -> None:
        raw_headers = [
            (b"content-type", b"audio/flac"),
            (b"content-length", str(self.size).encode()),
        ]
        raw_headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        await send({"type": "http.response.start", "status": 200, "headers": raw_headers})
        cut = self.size // 2 if reset else self.reset_after
        for chunk in self.chunks(cut):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if cut is not None:
            raise _ResetConnection("injected connection reset")
        await send({"type": "http.response.body", "body": b""})


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(
    send: Send,
    status: int,
    payload: bytes | _Audio,
    headers: list[tuple[str, str]],
    *,
    reset: bool = False,
) -> None:
    if isinstance(payload, _Audio):
        await payload.send(send, headers, reset=reset)
        return
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    raw_headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    if reset:
        await send(
            {"type": "http.response.body", "body": payload[: len(payload) // 2], "more_body": True}
        )
        raise _ResetConnection("injected connection reset")
    await send({"type": "http.response.body", "body": payload})
