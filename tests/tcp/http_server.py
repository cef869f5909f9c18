"""A loopback HTTP/1.1 server for tests that need exact bytes on the wire: it records each
request and answers as told (a canned answer, a hang-up, a trickle, silence)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

ANSWER = {"task_id": "t-1", "status": "SUCCESS", "run_id": 7}


def json_answer(payload: Any = ANSWER, status: str = "200 OK", headers: bytes = b"") -> bytes:
    body = json.dumps(payload).encode()
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n".encode()
        + headers
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )


TRICKLE = 0.05


def trickled(n: int) -> Iterator[bytes]:
    """A 200 whose body comes one byte per ``TRICKLE`` s, for ever: every read is in time."""
    yield b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 99999\r\n\r\n"
    while True:
        yield b" "


def silent(n: int) -> Iterator[bytes]:
    """No answer at all for 5 s (then a hang-up)."""
    time.sleep(5)
    yield from ()


class Recorder:
    """A loopback HTTP/1.1 server that records each request (line, headers, body) and
    answers the n-th with ``answer(n)`` (default: ``ANSWER`` as JSON), keeping the
    connection open; ``None`` hangs up instead of answering; an iterator of bytes is sent
    piece by piece (``trickled``)."""

    def __init__(self, answer: Any = None) -> None:
        self.answer = answer or (lambda n: json_answer())
        self.requests: list[tuple[str, list[tuple[str, str]], bytes]] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                line, *lines = head.decode("latin-1").split("\r\n")
                headers = [tuple(h.split(": ", 1)) for h in lines]
                length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                body, buffer = buffer[:length], buffer[length:]
                self.requests.append((line, headers, body))  # type: ignore[arg-type]
                answer = self.answer(len(self.requests) - 1)
                if answer is None:
                    return
                if isinstance(answer, bytes):
                    conn.sendall(answer)
                    continue
                try:  # an iterator: a trickle, one piece per TRICKLE s, until hung up on
                    for piece in answer:
                        conn.sendall(piece)
                        time.sleep(TRICKLE)
                except OSError:
                    return

    def close(self) -> None:
        self._sock.close()
