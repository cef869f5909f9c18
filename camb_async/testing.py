"""FakeCambAPI: an in-memory CAMB.AI task API for tests, demos and benchmarks.

A plain ASGI app (no framework), so it runs in-process through ``httpx.ASGITransport`` — on
trio's ``MockClock`` too, because it reads time from the running event loop — and over real
sockets with uvicorn. Tasks follow scripted timelines; faults are injected deterministically
(``inject``) or at random (``fault_rate``); every request is logged with its arrival time.

Timeline times are relative to the task's creation (``POST``) or, for tasks added with
``add_task``, to the first request the API serves (its epoch), so a script can be prepared
before the server starts.
"""

from __future__ import annotations

import itertools
import json
import random
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any
from urllib.parse import unquote

import anyio
import attrs

from ._models import TaskKind, TaskStatus

__all__ = ["Fault", "FakeCambAPI", "FakeTask", "LoggedRequest", "TRANSIENT_FAULTS"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_KINDS = {k.value: k for k in TaskKind}


@attrs.define(kw_only=True)
class FakeTask:
    """A scripted task: PENDING until ``after`` seconds or ``polls`` polls, then ``status``."""

    kind: TaskKind
    task_id: str
    status: str = TaskStatus.SUCCESS.value
    after: float = 0.0
    polls: int | None = None
    run_id: int | None = None
    message: str | dict[str, Any] | None = None
    exception_reason: str | None = None
    pending_status: str = TaskStatus.PENDING.value
    created_at: float | None = None
    seen: int = 0
    extra: dict[str, Any] = attrs.Factory(dict)

    def is_done(self, now: float, epoch: float) -> bool:
        if self.polls is not None:
            return self.seen > self.polls
        start = self.created_at if self.created_at is not None else epoch
        return now >= start + self.after

    def body(self, now: float, epoch: float) -> dict[str, Any]:
        if not self.is_done(now, epoch):
            return {"status": self.pending_status, "run_id": None}
        out: dict[str, Any] = {"status": self.status, "run_id": self.run_id}
        if self.message is not None:
            out["message"] = self.message
        if self.exception_reason is not None:
            out["exception_reason"] = self.exception_reason
        out.update(self.extra)
        return out


@attrs.frozen(kw_only=True)
class Fault:
    """One injected bad answer.

    ``status``: the HTTP status to answer with (``None`` answers normally after ``delay``).
    ``retry_after``: a Retry-After header value, sent verbatim. ``delay``: seconds to wait
    before answering. ``reset``: start the answer, then drop the connection mid-body
    (meaningful over real sockets; in-process it surfaces as an app error). ``body``: raw bytes
    to send instead of the usual JSON.
    """

    status: int | None = 503
    retry_after: str | None = None
    delay: float = 0.0
    reset: bool = False
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()


#: The fault mix of the reliability suites: 5xx, 429 with Retry-After, resets, slow answers.
TRANSIENT_FAULTS: tuple[Fault, ...] = (
    Fault(status=500),
    Fault(status=502),
    Fault(status=503),
    Fault(status=504),
    Fault(status=429, retry_after="1"),
)


@attrs.frozen
class LoggedRequest:
    time: float
    method: str
    path: str
    status: int
    fault: str | None = None


class _ResetConnection(Exception):
    """Raised by the app to make the server drop the connection mid-answer."""


class FakeCambAPI:
    """An ASGI app imitating the CAMB.AI task API.

    ``rate_limit``: server-side limit in requests per second (sliding 1 s window of accepted
    requests); excess requests get 429 with ``Retry-After: rate_limit_retry_after``.
    ``fault_rate``: probability that a request gets a random fault from ``faults``.
    """

    def __init__(
        self,
        *,
        api_key: str = "test-key",
        prefix: str = "",
        rate_limit: float | None = None,
        rate_limit_retry_after: str = "1",
        fault_rate: float = 0.0,
        faults: Sequence[Fault] = TRANSIENT_FAULTS,
        seed: int | None = 0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.api_key = api_key
        self.prefix = prefix.rstrip("/")
        self.rate_limit = rate_limit
        self.rate_limit_retry_after = rate_limit_retry_after
        self.fault_rate = fault_rate
        self.faults = tuple(faults)
        self.tasks: dict[tuple[TaskKind, str], FakeTask] = {}
        self.log: list[LoggedRequest] = []
        self.epoch: float | None = None
        self._clock = clock or anyio.current_time
        self._rng = random.Random(seed)
        self._queued: deque[tuple[Fault, str | None]] = deque()
        self._window: deque[float] = deque()
        self._ids = itertools.count(1)
        self._run_ids = itertools.count(1000)

    # ----------------------------------------------------------------- scripting

    def add_task(
        self,
        kind: TaskKind | str,
        task_id: str | None = None,
        *,
        status: TaskStatus | str = TaskStatus.SUCCESS,
        after: float = 0.0,
        polls: int | None = None,
        run_id: int | None = None,
        message: str | dict[str, Any] | None = None,
        exception_reason: str | None = None,
        created_at: float | None = None,
    ) -> str:
        """Script a task; returns its id. SUCCESS tasks get a fresh ``run_id`` if none given."""
        kind = TaskKind(kind)
        task_id = task_id if task_id is not None else f"{kind.value}-{next(self._ids)}"
        status = status.value if isinstance(status, TaskStatus) else str(status)
        if run_id is None and status == TaskStatus.SUCCESS.value:
            run_id = next(self._run_ids)
        self.tasks[(kind, task_id)] = FakeTask(
            kind=kind, task_id=task_id, status=status, after=after, polls=polls, run_id=run_id,
            message=message, exception_reason=exception_reason, created_at=created_at,
        )
        return task_id

    def inject(self, fault: Fault | None = None, *, count: int = 1, path: str | None = None,
               **fault_fields: Any) -> None:
        """Queue ``count`` copies of a fault for the next matching requests.

        ``path``: only requests whose path starts with it match (default: any request).
        """
        fault = fault if fault is not None else Fault(**fault_fields)
        self._queued.extend([(fault, path)] * count)

    def requests(self, method: str | None = None, path_prefix: str = "") -> list[LoggedRequest]:
        return [r for r in self.log
                if (method is None or r.method == method) and r.path.startswith(path_prefix)]

    def peak_per_window(self, window: float = 1.0, *, accepted_only: bool = False) -> int:
        """Most requests that arrived in any ``window``-second interval."""
        times = sorted(r.time for r in self.log if not accepted_only or r.status != 429)
        best = 0
        lo = 0
        for hi, t in enumerate(times):
            while t - times[lo] >= window:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    # ----------------------------------------------------------------- ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        now = self._clock()
        if self.epoch is None:
            self.epoch = now
        method: str = scope["method"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        path = raw_path.decode("latin-1").split("?", 1)[0]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        body = await self._read_body(receive)

        fault = self._pick_fault(path)
        if fault is not None and fault.delay:
            await anyio.sleep(fault.delay)
        if fault is not None and fault.status is not None:
            extra = list(fault.headers)
            if fault.retry_after is not None:
                extra.append(("retry-after", fault.retry_after))
            self.log.append(LoggedRequest(now, method, path, fault.status, "fault"))
            payload = fault.body if fault.body is not None else json.dumps(
                {"detail": f"injected fault {fault.status}"}).encode()
            await self._respond(send, fault.status, payload, extra, reset=fault.reset)
            return

        if self.rate_limit is not None and not self._admit(now):
            self.log.append(LoggedRequest(now, method, path, 429, "rate_limit"))
            await self._respond(send, 429, b'{"detail":"rate limit exceeded"}',
                                [("retry-after", self.rate_limit_retry_after)])
            return

        status, payload = self._handle(method, path, headers, body, now)
        if fault is not None and fault.body is not None:
            payload = fault.body
        label: str | None = None  # how an answered-normally request was still faulty
        if fault is not None:
            label = "reset" if fault.reset else "slow" if fault.delay else "body"
        self.log.append(LoggedRequest(now, method, path, status, label))
        await self._respond(send, status, payload, [],
                            reset=fault is not None and fault.reset)

    def _pick_fault(self, path: str) -> Fault | None:
        for i, (fault, prefix) in enumerate(self._queued):
            if prefix is None or path.startswith(self.prefix + prefix):
                del self._queued[i]
                return fault
        if self.fault_rate and self._rng.random() < self.fault_rate:
            return self._rng.choice(self.faults)
        return None

    def _admit(self, now: float) -> bool:
        window = self._window
        while window and now - window[0] >= 1.0:
            window.popleft()
        assert self.rate_limit is not None
        if len(window) >= self.rate_limit:
            return False
        window.append(now)
        return True

    @staticmethod
    async def _read_body(receive: Receive) -> bytes:
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                return b"".join(chunks)

    @staticmethod
    async def _respond(send: Send, status: int, payload: bytes,
                       headers: list[tuple[str, str]], *, reset: bool = False) -> None:
        raw_headers = [(b"content-type", b"application/json"),
                       (b"content-length", str(len(payload)).encode())]
        raw_headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        if reset:
            await send({"type": "http.response.body", "body": payload[: len(payload) // 2],
                        "more_body": True})
            raise _ResetConnection("injected connection reset")
        await send({"type": "http.response.body", "body": payload})

    def _handle(self, method: str, path: str, headers: dict[str, str], body: bytes,
                now: float) -> tuple[int, bytes]:
        if headers.get("x-api-key") != self.api_key:
            return 401, b'{"detail":"invalid or missing API key"}'
        if self.prefix:
            if not path.startswith(self.prefix + "/"):
                return 404, b'{"detail":"Not Found"}'
            path = path[len(self.prefix):]
        segments = [unquote(s) for s in path.split("/")[1:]]
        if method == "GET" and len(segments) == 2 and segments[0] in _KINDS:
            return self._status(_KINDS[segments[0]], segments[1], now)
        return 404, b'{"detail":"Not Found"}'

    def _status(self, kind: TaskKind, task_id: str, now: float) -> tuple[int, bytes]:
        task = self.tasks.get((kind, task_id))
        if task is None:
            return 404, json.dumps({"detail": f"task {task_id} not found"}).encode()
        task.seen += 1
        assert self.epoch is not None
        return 200, json.dumps(task.body(now, self.epoch)).encode()


class serve_in_thread:  # lower case: used like a function, `with serve_in_thread(app) as url:`
    """Serve an ASGI app with uvicorn on a free loopback port in a background thread.

    ``with serve_in_thread(api) as base_url: ...`` — the server is up when the block starts
    and stopped when it ends. Real sockets, same process: for tests and the demo. Benchmarks
    that must not share the client's GIL run ``camb-async fake-server`` in a subprocess.
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0,
                 log_level: str = "warning", **uvicorn_options: Any) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.log_level = log_level
        self.options = uvicorn_options
        self._server: Any = None
        self._thread: Any = None

    def __enter__(self) -> str:
        import socket
        import threading
        import time

        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level=self.log_level, lifespan="off",
                                access_log=False, **self.options)
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                                        daemon=True, name="fake-camb-api")
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        self._sock = sock
        return f"http://{self.host}:{self.port}"

    def __exit__(self, *exc_info: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()
