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
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from typing import Any, Literal
from urllib.parse import parse_qs, unquote

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
    results are JSON only with ``output_type=FILE_URL``, as the real default streams audio.
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
        # Create/result routes (issue 4): scripts for the next created tasks, run-id index.
        self._create_scripts: deque[tuple[TaskKind | None, dict[str, Any]]] = deque()
        self._runs: dict[tuple[TaskKind, int], FakeTask] = {}
        self._runs_indexed = 0

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
                now: float, *, query: str = "", form: dict[str, Any] | None = None
                ) -> tuple[int, bytes]:
        if headers.get("x-api-key") != self.api_key:
            return 401, b'{"detail":"invalid or missing API key"}'
        if self.prefix:
            if not path.startswith(self.prefix + "/"):
                return 404, b'{"detail":"Not Found"}'
            path = path[len(self.prefix):]
        segments = [unquote(s) for s in path.split("/")[1:]]
        if method == "GET" and len(segments) == 2 and segments[0] in _KINDS:
            return self._status(_KINDS[segments[0]], segments[1], now)
        if len(segments) == 1 and method == "POST":
            if segments[0] in _KINDS:
                return self._create(_KINDS[segments[0]], body, form, now)
            if segments[0] in _BATCH_ROUTES:
                return self._batch_results(_BATCH_ROUTES[segments[0]], body, now)
        if method == "GET" and len(segments) == 2 and segments[0] in _RESULT_ROUTES:
            return self._single_result(_RESULT_ROUTES[segments[0]], segments[1], query, now)
        return 404, b'{"detail":"Not Found"}'

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
                now: float) -> tuple[int, bytes]:
        if kind is TaskKind.TRANSCRIPTION:
            if form is None:
                return _unprocessable(["body"], "expected multipart/form-data",
                                      "value_error.content_type")
            request: Any = form
        else:
            try:
                request = json.loads(body) if body else None
            except ValueError:
                return _unprocessable(["body"], "invalid JSON", "value_error.jsondecode")
            if not isinstance(request, dict):
                return _unprocessable(["body"], "expected a JSON object", "type_error.dict")
        problems = _CREATE_CHECKS[kind](request)
        if problems:
            return 422, json.dumps({"detail": problems}).encode()
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
                       ) -> tuple[int, bytes]:
        if not raw_run_id.isdigit() or len(raw_run_id) > 18:
            return _unprocessable(["path", "run_id"], "value is not a valid integer",
                                  "type_error.integer")
        task = self._finished_run(kind, int(raw_run_id), now)
        if task is None:
            return 404, json.dumps({"detail": f"run {raw_run_id} not found"}).encode()
        if kind is TaskKind.TTS and parse_qs(query).get("output_type") != ["FILE_URL"]:
            # The real default (RAW_BYTES) streams the audio itself, which is not JSON.
            return 200, b"fLaC\x00\x00\x00\x22" + raw_run_id.encode()
        return 200, json.dumps(_result_json(task)).encode()

    def _batch_results(self, kind: TaskKind, body: bytes, now: float) -> tuple[int, bytes]:
        try:
            request = json.loads(body) if body else None
        except ValueError:
            return _unprocessable(["body"], "invalid JSON", "value_error.jsondecode")
        run_ids = request.get("run_ids") if isinstance(request, dict) else None
        if not isinstance(run_ids, list) or not all(
                isinstance(r, int) and not isinstance(r, bool) for r in run_ids):
            return _unprocessable(["body", "run_ids"], "value is not a valid list of integers",
                                  "type_error.list")
        out: dict[str, Any] = {}
        for run_id in run_ids:
            task = self._finished_run(kind, run_id, now)
            if task is not None:
                out[str(run_id)] = _result_json(task)
        return 200, json.dumps(out).encode()


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


def _unprocessable(loc: list[str | int], msg: str, kind: str) -> tuple[int, bytes]:
    return 422, json.dumps({"detail": [{"loc": loc, "msg": msg, "type": kind}]}).encode()


def _missing(field: str) -> dict[str, Any]:
    return {"loc": ["body", field], "msg": "field required", "type": "value_error.missing"}


def _wrong(field: str, msg: str) -> dict[str, Any]:
    return {"loc": ["body", field], "msg": msg, "type": "type_error"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_language(value: Any) -> bool:
    return _is_int(value) or (isinstance(value, str) and bool(value))


def _check_fields(request: dict[str, Any], rules: dict[str, Callable[[Any], bool]]
                  ) -> list[dict[str, Any]]:
    problems = []
    for field, ok in rules.items():
        if field not in request:
            problems.append(_missing(field))
        elif not ok(request[field]):
            problems.append(_wrong(field, f"invalid value for {field}"))
    return problems


def _check_dub(request: dict[str, Any]) -> list[dict[str, Any]]:
    problems = _check_fields(request, {
        "video_url": lambda v: isinstance(v, str) and bool(v),
        "source_language": _is_language,
    })
    targets = request.get("target_languages")
    if "target_language" in request:
        if not _is_language(request["target_language"]):
            problems.append(_wrong("target_language", "invalid language"))
    elif targets is None:
        problems.append(_missing("target_language"))
    if targets is not None and not (isinstance(targets, list) and targets
                                    and all(_is_language(t) for t in targets)):
        problems.append(_wrong("target_languages", "expected a list of languages"))
    return problems


def _check_tts(request: dict[str, Any]) -> list[dict[str, Any]]:
    return _check_fields(request, {
        "text": lambda v: isinstance(v, str) and bool(v),
        "voice_id": _is_int,
        "language": _is_int,
    })


def _check_translation(request: dict[str, Any]) -> list[dict[str, Any]]:
    return _check_fields(request, {
        "texts": lambda v: isinstance(v, list) and bool(v) and all(isinstance(t, str)
                                                                    for t in v),
        "source_language": _is_language,
        "target_language": lambda v: _is_language(v) and v != "auto",
    })


def _check_transcription(form: dict[str, Any]) -> list[dict[str, Any]]:
    if "__invalid__" in form:
        return [_wrong("body", f"malformed multipart body: {form['__invalid__']}")]
    problems = [] if form.get("language") else [_missing("language")]
    if not any(k in form for k in ("media_file", "media_url", "file", "audio_url")):
        problems.append(_missing("media_file"))
    return problems


_CREATE_CHECKS: dict[TaskKind, Callable[[dict[str, Any]], list[dict[str, Any]]]] = {
    TaskKind.DUB: _check_dub,
    TaskKind.TTS: _check_tts,
    TaskKind.TRANSLATION: _check_translation,
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


class serve_in_thread:  # lower case: used like a function, `with serve_in_thread(app) as url:`
    """Serve an ASGI app with uvicorn on a free loopback port in a background thread.

    ``with serve_in_thread(api) as base_url: ...`` — the server is up when the block starts
    and stopped when it ends. Real sockets, same process: for tests and the demo. Benchmarks
    that must not share the client's GIL run ``camb-async fake-server`` in a subprocess.
    """

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
