"""``FakeCambAPI``: the ASGI app, its scripting methods and the request handlers.

Routing tables live in ``_routing``, validation in ``_validation``, multipart parsing in
``_multipart``, the ASGI answers (JSON, streamed audio, resets) in ``_asgi``, the task and log
records in ``_tasks``, faults in ``_faults``.
"""

from __future__ import annotations

import itertools
import json
import random
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote

import anyio

from .._models import TaskKind, TaskStatus
from ._asgi import DEFAULT_AUDIO_SIZE, Receive, Scope, Send, _Audio, _read_body, _respond
from ._faults import TRANSIENT_FAULTS, Fault
from ._multipart import _read_form
from ._routing import _BATCH_ROUTES, _KINDS, _NOT_FOUND, _RESULT_ROUTES, _match, _query_params
from ._tasks import FakeTask, LoggedRequest, _result_json, peak_per_window
from ._validation import (
    _BATCH_MODEL,
    _CREATE_CHECKS,
    _CREATE_MODELS,
    _PARSE_ERROR,
    _RESULT_QUERIES,
    _TRANSCRIBE_FORM,
    _UNPARSABLE,
    _check_query,
    _json_body,
    _optional,
    _unprocessable_all,
    _v_int,
    _validate_model,
)


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
            body = await _read_body(receive)
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
            await _respond(send, fault.status, faulty, extra, reset=fault.reset)
            return

        if self.rate_limit is not None and not self._admit(now):
            self.log.append(LoggedRequest(now, method, path, 429, "rate_limit"))
            await _respond(send, 429, b'{"detail":"rate limit exceeded"}',
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
        await _respond(send, status, payload, [],
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
