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

import hashlib
import itertools
import json
import math
import random
import re
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping, Sequence
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote

import anyio
import attrs

from ._models import TaskKind, TaskStatus

__all__ = ["Fault", "FakeCambAPI", "FakeTask", "LoggedRequest", "TRANSIENT_FAULTS",
           "peak_per_window", "serve_in_thread"]

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
    #: What the create request asked for (JSON body, or form fields with uploads summarised
    #: as ``{"filename", "content_type", "size", "sha256"}``); None for ``add_task`` tasks.
    request: dict[str, Any] | None = None
    #: The result JSON for this task's run; None = generated from the run id and request.
    result: Any = None

    def is_done(self, now: float, epoch: float) -> bool:
        """Whether the task has finished.

        Args:
            now: the current time.
            epoch: when the fake API started.
        """
        if self.polls is not None:
            return self.seen > self.polls
        start = self.created_at if self.created_at is not None else epoch
        return now >= start + self.after

    def body(self, now: float, epoch: float) -> dict[str, Any]:
        """The status answer for the task.

        Args:
            now: the current time.
            epoch: when the fake API started.
        """
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
    """One request the fake API received: when, what, and how it answered."""

    time: float
    method: str
    path: str
    status: int
    fault: str | None = None


def peak_per_window(times: Iterable[float], window: float = 1.0) -> int:
    """Most of ``times`` inside any half-open ``window``-second interval (sliding window)."""
    ordered = sorted(times)
    best = lo = 0
    for hi, t in enumerate(ordered):
        while t - ordered[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


class _ResetConnection(Exception):
    """Raised by the app to make the server drop the connection mid-answer."""


class FakeCambAPI:
    """An ASGI app imitating the CAMB.AI task API.

    ``rate_limit``: server-side limit in requests per second (sliding 1 s window of accepted
    requests); excess requests get 429 with ``Retry-After: rate_limit_retry_after``.
    ``fault_rate``: probability that a request gets a random fault from ``faults``.

    Routes: ``GET /{kind}/{task_id}`` (status); ``POST /dub``, ``/tts``, ``/translate`` (JSON)
    and ``/transcribe`` (multipart only, parsed as it streams) create tasks, checked for the
    required fields (422 otherwise) and scripted with ``script_create``; ``GET
    /{dub,tts,translation,transcription}-result/{run_id}`` and ``POST /dubbing-results``,
    ``/tts-results``, ``/translation-results``, ``/transcription-results`` serve a run's
    result once its task has reached SUCCESS (``set_result`` or ``script_create(result=)``
    script it; otherwise it is generated from the run id and the create request). TTS
    results are JSON only with ``output_type=file_url``; the default (``raw_bytes``) streams
    the run's FLAC audio (``set_audio`` scripts its size and a mid-body reset).

    Requests are validated like the real service (FastAPI) from the published API
    definition: unknown paths 404, other methods 405, then the key (401), then path, query
    and body (enums case-sensitive, ``run_id`` a strict integer, required fields present and
    typed), refused with 422 and FastAPI's ``{"detail": [{"loc", "msg", "type"}]}`` body.
    Malformed input of any kind is answered 4xx, never an exception inside the app.

    Args:
        api_key: the key requests must carry.
        prefix: a path prefix the routes live under (e.g. ``"/apis"``).
        rate_limit: the server's own limit in requests per second; ``None``: none.
        rate_limit_retry_after: the ``Retry-After`` sent with its 429s.
        fault_rate: probability that a request gets a random fault.
        faults: the faults to draw from.
        seed: the random generator's seed (reproducible faults).
        clock: the time source (default: the event loop's clock).
    """

    prefix: str
    faults: tuple[Fault, ...]

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
        # Create/result routes (issue 4): scripts for the next created tasks, run-id index.
        self._create_scripts: deque[tuple[TaskKind | None, dict[str, Any]]] = deque()
        self._runs: dict[tuple[TaskKind, int], FakeTask] = {}
        self._runs_indexed = 0
        self._audio: dict[int, tuple[int, int | None]] = {}

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
        """The requests the fake API received, in order."""
        return [r for r in self.log
                if (method is None or r.method == method) and r.path.startswith(path_prefix)]

    def peak_per_window(self, window: float = 1.0, *, accepted_only: bool = False) -> int:
        """Most requests that arrived in any ``window``-second interval."""
        return peak_per_window(
            [r.time for r in self.log if not accepted_only or r.status != 429], window)

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
        form: dict[str, Any] | None = None
        if headers.get("content-type", "").startswith("multipart/form-data"):
            # Streamed: uploads are hashed and counted, never held (100 MB must stay cheap).
            form = await _read_form(receive, headers["content-type"])
            body = b""
        else:
            body = await self._read_body(receive)
            if headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
                form = dict(parse_qsl(body.decode("latin-1"), keep_blank_values=True))
                body = b""

        fault = self._pick_fault(path)
        if fault is not None and fault.delay:
            await anyio.sleep(fault.delay)
        if fault is not None and fault.status is not None:
            extra = list(fault.headers)
            if fault.retry_after is not None:
                extra.append(("retry-after", fault.retry_after))
            self.log.append(LoggedRequest(now, method, path, fault.status, "fault"))
            faulty = fault.body if fault.body is not None else json.dumps(
                {"detail": f"injected fault {fault.status}"}).encode()
            await self._respond(send, fault.status, faulty, extra, reset=fault.reset)
            return

        if self.rate_limit is not None and not self._admit(now):
            self.log.append(LoggedRequest(now, method, path, 429, "rate_limit"))
            await self._respond(send, 429, b'{"detail":"rate limit exceeded"}',
                                [("retry-after", self.rate_limit_retry_after)])
            return

        query = scope.get("query_string", b"").decode("latin-1")
        status, payload = self._handle(method, path, headers, body, now, query=query,
                                       form=form)
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
    async def _respond(send: Send, status: int, payload: bytes | _Audio,
                       headers: list[tuple[str, str]], *, reset: bool = False) -> None:
        if isinstance(payload, _Audio):
            await payload.send(send, headers, reset=reset)
            return
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
                now: float, *, query: str = "", form: dict[str, Any] | None = None
                ) -> tuple[int, bytes | _Audio]:
        """Route and validate like the real service (FastAPI): unknown path 404, known path
        with another method 405, then the key (401), then parameters and body (422 with
        FastAPI's ``{"detail": [{"loc", "msg", "type"}]}``). Never raises on bad input."""
        if self.prefix:
            if not path.startswith(self.prefix + "/"):
                return 404, _NOT_FOUND
            path = path[len(self.prefix):]
        # Starlette routes on the percent-decoded path: an encoded "/" splits segments too.
        segments = unquote(path, errors="replace").split("/")[1:]
        route = _match(segments)
        if route is None:
            return 404, _NOT_FOUND
        allowed, handler_name = route
        if method != allowed:
            return 405, b'{"detail":"Method Not Allowed"}'
        if headers.get("x-api-key") != self.api_key:
            return 401, b'{"detail":"invalid or missing API key"}'
        params = _query_params(query)
        head, arg = segments[0], segments[1] if len(segments) > 1 else ""
        if handler_name == "status":
            problems = _check_query(params, {"run_id": _optional(_v_int)})
            if problems:
                return _unprocessable_all(problems)
            return self._status(_KINDS[head], arg, now)
        if handler_name == "create":
            problems = [] if head == "transcribe" else _check_query(
                params, {"run_id": _optional(_v_int)})
            return self._create(_KINDS[head], body, form, now, headers=headers,
                                query_problems=problems)
        if handler_name == "batch":
            return self._batch_results(_BATCH_ROUTES[head], body, now, headers=headers,
                                       params=params)
        return self._single_result(_RESULT_ROUTES[head], arg, query, now)

    def _status(self, kind: TaskKind, task_id: str, now: float) -> tuple[int, bytes]:
        task = self.tasks.get((kind, task_id))
        if task is None:
            return 404, json.dumps({"detail": f"task {task_id} not found"}).encode()
        task.seen += 1
        assert self.epoch is not None
        return 200, json.dumps(task.body(now, self.epoch)).encode()

    # ----------------------------------------------------------------- create & results

    def script_create(
        self,
        kind: TaskKind | str | None = None,
        *,
        status: TaskStatus | str = TaskStatus.SUCCESS,
        after: float = 0.0,
        polls: int | None = None,
        message: str | dict[str, Any] | None = None,
        exception_reason: str | None = None,
        result: Any = None,
        count: int = 1,
    ) -> None:
        """Script the next ``count`` tasks created through ``POST`` (of ``kind``, or any kind).

        The timeline starts at creation: PENDING for ``after`` seconds (or ``polls`` polls),
        then ``status``. ``result``: the result JSON for its run (default: generated from the
        run id and the create request). Unscripted creates succeed at once.
        """
        script = {
            "status": status.value if isinstance(status, TaskStatus) else str(status),
            "after": after, "polls": polls, "message": message,
            "exception_reason": exception_reason, "result": result,
        }
        key = None if kind is None else TaskKind(kind)
        self._create_scripts.extend([(key, script)] * count)

    def created(self, kind: TaskKind | str | None = None) -> list[FakeTask]:
        """Tasks made by create requests, oldest first."""
        want = None if kind is None else TaskKind(kind)
        return [t for t in self.tasks.values()
                if t.request is not None and (want is None or t.kind is want)]

    def set_result(self, kind: TaskKind | str, run_id: int, result: Any) -> None:
        """Replace the result JSON served for run ``run_id`` (of a scripted or created task)."""
        task = self._run(TaskKind(kind), run_id)
        if task is None:
            raise KeyError(f"no {TaskKind(kind).value} task has run id {run_id}")
        task.result = result

    def _next_script(self, kind: TaskKind) -> dict[str, Any] | None:
        for i, (want, script) in enumerate(self._create_scripts):
            if want is None or want is kind:
                del self._create_scripts[i]
                return script
        return None

    def _create(self, kind: TaskKind, body: bytes, form: dict[str, Any] | None,
                now: float, *, headers: dict[str, str] | None = None,
                query_problems: list[dict[str, Any]] | None = None) -> tuple[int, bytes]:
        problems = list(query_problems or ())
        if kind is TaskKind.TRANSCRIPTION:
            if form is None:
                # Starlette reads any other content type as an empty form.
                form = {}
            if "__invalid__" in form:
                return 400, b'{"detail":"There was an error parsing the body"}'
            request: Any = form
            problems += _validate_model(form, _TRANSCRIBE_FORM, ("body",))
        else:
            request, body_problems = _json_body(body, form, headers or {})
            if body_problems is _UNPARSABLE:
                return _PARSE_ERROR
            problems += body_problems
            if not body_problems:
                problems += _validate_model(request, _CREATE_MODELS[kind], ("body",))
        if not problems:
            problems = _CREATE_CHECKS[kind](request)
        if problems:
            return _unprocessable_all(problems)
        script = self._next_script(kind) or {}
        status = script.get("status", TaskStatus.SUCCESS.value)
        task_id = f"{kind.value}-{next(self._ids)}"
        task = FakeTask(
            kind=kind, task_id=task_id, status=status, after=script.get("after", 0.0),
            polls=script.get("polls"),
            run_id=next(self._run_ids) if status == TaskStatus.SUCCESS.value else None,
            message=script.get("message"), exception_reason=script.get("exception_reason"),
            created_at=now, request=request, result=script.get("result"),
        )
        self.tasks[(kind, task_id)] = task
        if task.run_id is not None:
            self._runs[(kind, task.run_id)] = task
        return 200, json.dumps({"task_id": task_id}).encode()

    def _run(self, kind: TaskKind, run_id: int) -> FakeTask | None:
        task = self._runs.get((kind, run_id))
        if task is None and self._runs_indexed != len(self.tasks):
            self._runs = {(t.kind, t.run_id): t for t in self.tasks.values()
                          if t.run_id is not None}
            self._runs_indexed = len(self.tasks)
            task = self._runs.get((kind, run_id))
        return task

    def _finished_run(self, kind: TaskKind, run_id: int, now: float) -> FakeTask | None:
        """The task of run ``run_id`` if its result exists yet (SUCCESS, and reached)."""
        task = self._run(kind, run_id)
        epoch = self.epoch if self.epoch is not None else now
        if (task is None or task.run_id != run_id or task.status != TaskStatus.SUCCESS.value
                or not task.is_done(now, epoch)):
            return None
        return task

    def _single_result(self, kind: TaskKind, raw_run_id: str, query: str, now: float
                       ) -> tuple[int, bytes | _Audio]:
        errors: list[dict[str, Any]] = []
        run_id = _v_int(raw_run_id, ("path", "run_id"), errors)
        params = _query_params(query)
        errors += _check_query(params, _RESULT_QUERIES[kind])
        if errors:
            return _unprocessable_all(errors)
        task = self._finished_run(kind, run_id, now)
        if task is None:
            return 404, json.dumps({"detail": f"run {run_id} not found"}).encode()
        if kind is TaskKind.TTS and params.get("output_type", "raw_bytes") == "raw_bytes":
            # The API's default: the audio itself, streamed as FLAC bytes (not JSON).
            size, reset_after = self._audio.get(run_id, (DEFAULT_AUDIO_SIZE, None))
            return 200, _Audio(run_id, size, reset_after)
        return 200, json.dumps(_result_json(task)).encode()

    def _batch_results(self, kind: TaskKind, body: bytes, now: float, *,
                       headers: dict[str, str] | None = None,
                       params: dict[str, str] | None = None) -> tuple[int, bytes]:
        problems = [] if kind is TaskKind.TRANSCRIPTION else _check_query(
            params or {}, {"run_id": _optional(_v_int)})
        request, body_problems = _json_body(body, None, headers or {})
        if body_problems is _UNPARSABLE:
            return _PARSE_ERROR
        problems += body_problems
        run_ids: Any = None
        if not body_problems:
            checked = _validate_model(request, _BATCH_MODEL, ("body",))
            problems += checked
            if not checked:
                run_ids = [_v_int(r, (), []) for r in request["run_ids"]]
        if problems:
            return _unprocessable_all(problems)
        out: dict[str, Any] = {}
        for run_id in run_ids:
            task = self._finished_run(kind, run_id, now)
            if task is not None:
                out[str(run_id)] = _result_json(task)
        return 200, json.dumps(out).encode()

    # ----------------------------------------------------------------- raw TTS audio

    def set_audio(self, run_id: int, size: int, *, reset_after: int | None = None) -> None:
        """Script the FLAC body served for TTS run ``run_id`` in ``raw_bytes`` mode: ``size``
        bytes, generated as they are sent (never held), and with ``reset_after`` the
        connection drops after that many bytes (over real sockets; in-process the app
        raises). Default for any run: ``DEFAULT_AUDIO_SIZE`` bytes."""
        if size < 0 or (reset_after is not None and not 0 <= reset_after < size):
            raise ValueError("size must be >= 0 and reset_after within the body")
        self._audio[run_id] = (size, reset_after)

    def audio_bytes(self, run_id: int) -> bytes:
        """The whole audio body of run ``run_id``, as served (for tests: keep it small)."""
        size, _ = self._audio.get(run_id, (DEFAULT_AUDIO_SIZE, None))
        return b"".join(_Audio(run_id, size, None).chunks())


# ------------------------------------------------------------- create/result helpers (issue 4)

_RESULT_ROUTES = {
    "dub-result": TaskKind.DUB,
    "tts-result": TaskKind.TTS,
    "translation-result": TaskKind.TRANSLATION,
    "transcription-result": TaskKind.TRANSCRIPTION,
}
_BATCH_ROUTES = {
    "dubbing-results": TaskKind.DUB,
    "tts-results": TaskKind.TTS,
    "translation-results": TaskKind.TRANSLATION,
    "transcription-results": TaskKind.TRANSCRIPTION,
}
_FORM_TEXT_LIMIT = 1 << 20  # longest non-file form field kept


_NOT_FOUND = b'{"detail":"Not Found"}'
#: Default size of a TTS run's raw FLAC answer (a few seconds of speech).
DEFAULT_AUDIO_SIZE = 48 * 1024
_AUDIO_CHUNK = 64 * 1024


def _unprocessable(loc: list[str | int], msg: str, kind: str) -> tuple[int, bytes]:
    return _unprocessable_all([{"loc": loc, "msg": msg, "type": kind}])


def _unprocessable_all(problems: list[dict[str, Any]]) -> tuple[int, bytes]:
    return 422, json.dumps({"detail": problems}).encode()


def _match(segments: list[str]) -> tuple[str, str] | None:
    """``(method, handler)`` of the route ``segments`` name, or None (404)."""
    if not segments or any(not part for part in segments):
        return None
    head = segments[0]
    if len(segments) == 1:
        if head in _KINDS:
            return "POST", "create"
        if head in _BATCH_ROUTES:
            return "POST", "batch"
    elif len(segments) == 2:
        if head in _KINDS:
            return "GET", "status"
        if head in _RESULT_ROUTES:
            return "GET", "result"
    return None


def _query_params(query: str) -> dict[str, str]:
    """Query parameters as Starlette reads a scalar one: the last value of a name wins."""
    return dict(parse_qsl(query, keep_blank_values=True, errors="replace"))


# ---------------------------------------------------------------- FastAPI-like validation
#
# The published API definition (the OpenAPI document camb-sdk is generated from) validated
# the way FastAPI with pydantic 2 does in its default (lax) mode: strings stay strings, an
# integer may come as a JSON integer, an integral float, a bool or a decimal string, enums
# and literals are case-sensitive. Errors carry pydantic's ``type`` and ``msg`` and a ``loc``
# starting with "path", "query" or "body". Validators append errors and return the value
# (converted) or ``_BAD``; none recurses into unknown structure, so no input can crash them.

_BAD: Any = object()
Loc = tuple[str | int, ...]
Validator = Callable[[Any, Loc, list[dict[str, Any]]], Any]
_INT_TEXT = re.compile(r"\s*[+-]?[0-9]+(?:_[0-9]+)*(?:\.0*)?\s*", re.ASCII)
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def _error(errors: list[dict[str, Any]], loc: Loc, kind: str, msg: str) -> Any:
    errors.append({"loc": list(loc), "msg": msg, "type": kind})
    return _BAD


def _v_int(value: Any, loc: Loc, errors: list[dict[str, Any]]) -> Any:
    if isinstance(value, int):  # bools included: pydantic's lax mode takes true as 1
        return int(value)
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        if not math.isfinite(value):
            return _error(errors, loc, "finite_number", "Input should be a finite number")
        return _error(errors, loc, "int_from_float",
                      "Input should be a valid integer, got a number with a fractional part")
    if isinstance(value, str):
        if _INT_TEXT.fullmatch(value):
            digits = value.strip().replace("_", "").split(".", 1)[0]
            if len(digits.lstrip("+-")) > 4300:  # pydantic's (and CPython's) digit limit
                return _error(errors, loc, "int_parsing_size",
                              "Unable to parse input string as an integer, exceeded maximum "
                              "size")
            return int(digits)
        return _error(errors, loc, "int_parsing",
                      "Input should be a valid integer, unable to parse string as an integer")
    return _error(errors, loc, "int_type", "Input should be a valid integer")


def _v_str(value: Any, loc: Loc, errors: list[dict[str, Any]]) -> Any:
    if isinstance(value, str):
        return value
    return _error(errors, loc, "string_type", "Input should be a valid string")


def _v_float(value: Any, loc: Loc, errors: list[dict[str, Any]]) -> Any:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return _error(errors, loc, "float_parsing",
                          "Input should be a valid number, unable to parse string as a number")
    return _error(errors, loc, "float_type", "Input should be a valid number")


def _v_bool(value: Any, loc: Loc, errors: list[dict[str, Any]]) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
    if isinstance(value, (int, float, str)):
        return _error(errors, loc, "bool_parsing",
                      "Input should be a valid boolean, unable to interpret input")
    return _error(errors, loc, "bool_type", "Input should be a valid boolean")


def _v_language(value: Any, loc: Loc, errors: list[dict[str, Any]]) -> Any:
    """``LanguageInput = int | str`` (a smart union: an exact type match wins)."""
    if isinstance(value, (str, int)):
        return int(value) if isinstance(value, bool) else value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    mine: list[dict[str, Any]] = []
    _v_int(value, (*loc, "int"), mine)
    _v_str(value, (*loc, "str"), mine)
    errors.extend(mine)
    return _BAD


def _literal(*allowed: str, kind: str = "literal_error") -> Validator:
    expected = " or ".join(", ".join(repr(a) for a in allowed).rsplit(", ", 1))

    def check(value: Any, loc: Loc, errors: list[dict[str, Any]]) -> Any:
        if isinstance(value, str) and value in allowed:
            return value
        return _error(errors, loc, kind, f"Input should be {expected}")
    return check


def _optional(inner: Validator) -> Validator:
    def check(value: Any, loc: Loc, errors: list[dict[str, Any]]) -> Any:
        return None if value is None else inner(value, loc, errors)
    return check


def _list_of(inner: Validator) -> Validator:
    def check(value: Any, loc: Loc, errors: list[dict[str, Any]]) -> Any:
        if not isinstance(value, (list, tuple)):
            return _error(errors, loc, "list_type", "Input should be a valid list")
        out = [inner(item, (*loc, i), errors) for i, item in enumerate(value)]
        return _BAD if any(item is _BAD for item in out) else out
    return check


Fields = dict[str, tuple[bool, Validator]]  # name -> (required, validator)


def _model(fields: Fields) -> Validator:
    def check(value: Any, loc: Loc, errors: list[dict[str, Any]]) -> Any:
        if not isinstance(value, dict):
            return _error(errors, loc, "model_attributes_type", "Input should be a valid "
                          "dictionary or object to extract fields from")
        before = len(errors)
        _validate_fields(value, fields, loc, errors)
        return value if len(errors) == before else _BAD
    return check


def _validate_fields(value: dict[str, Any], fields: Fields, loc: Loc,
                     errors: list[dict[str, Any]]) -> None:
    for field, (required, validator) in fields.items():
        if field not in value:
            if required:
                _error(errors, (*loc, field), "missing", "Field required")
            continue
        validator(value[field], (*loc, field), errors)


def _validate_model(value: Any, fields: Fields, loc: Loc) -> list[dict[str, Any]]:
    """Errors of a request body against a model (FastAPI's single-model body)."""
    errors: list[dict[str, Any]] = []
    if value is None:
        return [{"loc": list(loc), "msg": "Field required", "type": "missing"}]
    if not isinstance(value, dict):
        return [{"loc": list(loc), "type": "model_attributes_type",
                 "msg": "Input should be a valid dictionary or object to extract fields from"}]
    _validate_fields(value, fields, loc, errors)
    return errors


def _check_query(params: dict[str, str], fields: dict[str, Validator]
                 ) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    for name, validator in fields.items():
        if name in params:
            validator(params[name], ("query", name), errors)
    return errors


def _json_body(body: bytes, form: dict[str, Any] | None, headers: dict[str, str]
               ) -> tuple[Any, list[dict[str, Any]]]:
    """A JSON route's body as FastAPI reads it: decoded when the content type is JSON (or
    absent), else the raw bytes, which then fail model validation."""
    if form is not None:
        return b"<form>", []
    if not body:
        return None, []
    content_type = headers.get("content-type")
    if content_type:
        main = content_type.split(";", 1)[0].strip().lower()
        if not (main == "application/json" or (main.startswith("application/")
                                                and main.endswith("+json"))):
            return body, []
    try:
        return json.loads(body), []
    except json.JSONDecodeError as exc:
        return None, [{"loc": ["body", exc.pos], "msg": "JSON decode error",
                       "type": "json_invalid"}]
    except (ValueError, RecursionError):
        # Nesting deeper than the parser's stack, bytes that are no text: FastAPI answers
        # 400 "There was an error parsing the body".
        return None, _UNPARSABLE


_UNPARSABLE: list[dict[str, Any]] = [{"loc": ["body"], "msg": "unparsable", "type": "400"}]
_PARSE_ERROR = (400, b'{"detail":"There was an error parsing the body"}')
_MODE = _optional(_literal("fast", "slow"))
_PROJECT: Fields = {
    "project_name": (False, _optional(_v_str)),
    "project_description": (False, _optional(_v_str)),
    "folder_id": (False, _optional(_v_int)),
}
_SRT: Fields = {"content": (True, _v_str), "format": (False, _literal("srt"))}
_CREATE_MODELS: dict[TaskKind, Fields] = {
    TaskKind.DUB: {
        **_PROJECT,
        "video_url": (True, _v_str),
        "source_language": (True, _v_language),
        "target_language": (False, _optional(_v_language)),
        "target_languages": (False, _optional(_list_of(_v_language))),
        "selected_audio_tracks": (False, _optional(_list_of(_v_int))),
        "add_output_as_an_audio_track": (False, _optional(_v_bool)),
        "chosen_dictionaries": (False, _optional(_list_of(_v_int))),
        "ai_optimization": (False, _optional(_v_bool)),
        "transcription_mode": (False, _MODE),
        "source_transcript": (False, _optional(_model(_SRT))),
        "target_transcripts": (False, _optional(_list_of(_model(
            {**_SRT, "language": (True, _v_language)})))),
    },
    TaskKind.TTS: {
        **_PROJECT,
        "text": (True, _v_str),
        "voice_id": (True, _v_int),
        "language": (True, _v_int),
        "gender": (False, _optional(_v_int)),
        "age": (False, _optional(_v_int)),
    },
    TaskKind.TRANSLATION: {
        **_PROJECT,
        "texts": (True, _list_of(_v_str)),
        "source_language": (True, _v_language),
        "target_language": (True, _v_language),
        "age": (False, _optional(_v_int)),
        "formality": (False, _optional(_v_int)),
        "gender": (False, _optional(_v_int)),
        "chosen_dictionaries": (False, _optional(_list_of(_v_int))),
    },
}
_BATCH_MODEL: Fields = {"run_ids": (True, _list_of(_v_int))}


def _v_upload(value: Any, loc: Loc, errors: list[dict[str, Any]]) -> Any:
    if isinstance(value, dict):  # a file part (summarised by _read_form)
        return value
    return _error(errors, loc, "value_error",
                  f"Value error, Expected UploadFile, received: {type(value)}")


def _v_form_str(value: Any, loc: Loc, errors: list[dict[str, Any]]) -> Any:
    if isinstance(value, str):
        return value
    return _error(errors, loc, "string_type", "Input should be a valid string")


_TRANSCRIBE_FORM: Fields = {
    **_PROJECT,
    "language": (True, _v_language),
    "media_file": (False, _v_upload),
    "file": (False, _v_upload),
    "media_url": (False, _v_form_str),
    "audio_url": (False, _v_form_str),
    "transcription_mode": (False, _MODE),
    "run_audio_cleaning": (False, _v_bool),
    "include_music_in_fg": (False, _v_bool),
    "formatting_options": (False, _v_form_str),
}
_RESULT_QUERIES: dict[TaskKind, dict[str, Validator]] = {
    TaskKind.DUB: {},
    TaskKind.TTS: {"output_type": _literal("raw_bytes", "file_url", kind="enum")},
    TaskKind.TRANSLATION: {},
    # format_type / data_type are left unchecked: the sources disagree on their values
    # (camb-sdk: data_type raw_data | file; the reference's prose: json | file) and both
    # type them as open strings. camb-async never sends them.
    TaskKind.TRANSCRIPTION: {},
}


def _missing(field: str) -> dict[str, Any]:
    return {"loc": ["body", field], "msg": "Field required", "type": "missing"}


def _check_dub(request: dict[str, Any]) -> list[dict[str, Any]]:
    # Past the schema (both target fields are optional there): a dub needs a target.
    if request.get("target_language") is None and not request.get("target_languages"):
        return [_missing("target_language")]
    return []


def _check_none(request: dict[str, Any]) -> list[dict[str, Any]]:
    return []


def _check_transcription(form: dict[str, Any]) -> list[dict[str, Any]]:
    # Past the schema (every source field is optional there): one source is needed.
    if not any(form.get(k) for k in ("media_file", "media_url", "file", "audio_url")):
        return [_missing("media_file")]
    return []


_CREATE_CHECKS: dict[TaskKind, Callable[[dict[str, Any]], list[dict[str, Any]]]] = {
    TaskKind.DUB: _check_dub,
    TaskKind.TTS: _check_none,
    TaskKind.TRANSLATION: _check_none,
    TaskKind.TRANSCRIPTION: _check_transcription,
}


def _segments(run_id: int, label: str) -> list[dict[str, Any]]:
    return [{"start": i * 2.0, "end": i * 2.0 + 1.5,
             "text": f"{label} run {run_id} segment {i + 1}", "speaker": f"SPEAKER_{i % 2}"}
            for i in range(1 + run_id % 3)]


def _result_json(task: FakeTask) -> Any:
    """A task's result JSON: scripted, else generated from its run id and create request,
    so the same run always yields the same answer."""
    if task.result is not None:
        return task.result
    run_id = task.run_id
    assert run_id is not None
    request = task.request or {}
    base = f"https://fake.camb.ai/{task.kind.value}/{run_id}"
    if task.kind is TaskKind.DUB:
        def one(language: Any) -> dict[str, Any]:
            return {"audio_url": f"{base}/{language}/audio.mp3",
                    "video_url": f"{base}/{language}/video.mp4",
                    "transcript": _segments(run_id, f"dub[{language}]")}
        targets = request.get("target_languages")
        if isinstance(targets, list) and len(targets) > 1:
            return {str(t): one(t) for t in targets}
        target = targets[0] if targets else request.get("target_language", "target")
        return one(target)
    if task.kind is TaskKind.TTS:
        return {"output_url": f"{base}/speech.flac"}
    if task.kind is TaskKind.TRANSLATION:
        texts = request.get("texts") or [f"text {run_id}"]
        target = request.get("target_language", "target")
        return {"texts": [f"[{target}] {text}" for text in texts]}
    return {"transcript": _segments(run_id, "transcription")}


async def _read_form(receive: Receive, content_type: str) -> dict[str, Any]:
    """Parse a multipart body as it streams in: text fields are kept (up to 1 MiB), file
    parts are reduced to ``{"filename", "content_type", "size", "sha256"}``."""
    try:
        from python_multipart.multipart import MultipartParser, parse_options_header
    except ImportError as exc:  # pragma: no cover - a test extra
        raise RuntimeError("FakeCambAPI needs python-multipart for multipart requests "
                           "(pip install 'camb-async[test]')") from exc

    form: dict[str, Any] = {}
    part: dict[str, Any] = {}

    def on_part_begin() -> None:
        part.clear()
        part.update(headers={}, field=b"", value=b"", name="", file=None, text=bytearray())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        part["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        part["value"] += data[start:end]

    def on_header_end() -> None:
        part["headers"][part["field"].lower()] = part["value"]
        part["field"] = part["value"] = b""

    def on_headers_finished() -> None:
        _, options = parse_options_header(part["headers"].get(b"content-disposition", b""))
        part["name"] = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if filename is not None:
            part["file"] = {
                "filename": filename.decode("utf-8", "replace"),
                "content_type": part["headers"].get(b"content-type", b"").decode("latin-1"),
                "size": 0, "sha256": hashlib.sha256(),
            }

    def on_part_data(data: bytes, start: int, end: int) -> None:
        upload = part["file"]
        if upload is not None:
            upload["sha256"].update(data[start:end])
            upload["size"] += end - start
        elif len(part["text"]) < _FORM_TEXT_LIMIT:
            part["text"] += data[start:end]

    def on_part_end() -> None:
        upload = part["file"]
        if upload is not None:
            upload["sha256"] = upload["sha256"].hexdigest()
            form[part["name"]] = upload
        else:
            form[part["name"]] = bytes(part["text"]).decode("utf-8", "replace")

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    parser: Any = None
    if boundary:
        parser = MultipartParser(boundary, {
            "on_part_begin": on_part_begin, "on_part_data": on_part_data,
            "on_part_end": on_part_end, "on_header_field": on_header_field,
            "on_header_value": on_header_value, "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
        })
    else:
        form["__invalid__"] = "no boundary"
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        if parser is not None and chunk:
            try:
                parser.write(chunk)
            except Exception as exc:  # malformed body: answer 422, keep draining
                form["__invalid__"] = str(exc)[:200]
                parser = None
        if not message.get("more_body"):
            break
    if parser is not None:
        try:
            parser.finalize()
        except Exception as exc:
            form["__invalid__"] = str(exc)[:200]
    return form


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

    async def send(self, send: Send, headers: list[tuple[str, str]], *,
                   reset: bool = False) -> None:
        raw_headers = [(b"content-type", b"audio/flac"),
                       (b"content-length", str(self.size).encode())]
        raw_headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        await send({"type": "http.response.start", "status": 200, "headers": raw_headers})
        cut = self.size // 2 if reset else self.reset_after
        for chunk in self.chunks(cut):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if cut is not None:
            raise _ResetConnection("injected connection reset")
        await send({"type": "http.response.body", "body": b""})


class serve_in_thread:  # lower case: used like a function, `with serve_in_thread(app) as url:`
    """Serve an ASGI app with uvicorn on a free loopback port in a background thread.

    ``with serve_in_thread(api) as base_url: ...`` — the server is up when the block starts
    and stopped when it ends. Real sockets, same process: for tests and the demo. Benchmarks
    that must not share the client's GIL run ``camb-async fake-server`` in a subprocess.

    Args:
        app: the ASGI app (e.g. a ``FakeCambAPI``).
        host: the address to listen on.
        port: the port (0: a free one).
        log_level: uvicorn's log level.
        lifespan: uvicorn's lifespan mode.
        **uvicorn_options: more ``uvicorn.Config`` options.
    """

    port: int

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0,
                 log_level: str = "warning", lifespan: Literal["on", "off", "auto"] = "off",
                 **uvicorn_options: Any) -> None:
        self.app = app
        self.lifespan = lifespan  # "on" for apps (e.g. FastAPI) that open resources at startup
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

        # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only
        # when the socket says it is TCP, and accepted sockets inherit proto from this one.
        # With proto 0, every answer after a connection's first stalled ~40 ms (Nagle against
        # the client's delayed ACK: headers and body go out as two writes).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level=self.log_level, lifespan=self.lifespan,
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
