"""Conventions users bring from other SDKs (issue 15): with_options views, extra fields on
the wire, request ids on errors, CAMB_LOG, the public names and their docstrings."""

from __future__ import annotations

import inspect
import json
import logging
import subprocess
import sys
from typing import Any

import anyio
import attrs
import httpx
import pytest

import camb_async
from camb_async import (
    APIConnectionError,
    AsyncCambClient,
    ClientClosedError,
    NotFoundError,
    TaskKind,
    TaskStatus,
)
from camb_async.testing import FakeCambAPI

from ..conftest import API_KEY, ClientFactory

pytestmark = pytest.mark.anyio


class Recorder(httpx.AsyncBaseTransport):
    """The fake API in process, every request it is sent kept (what went on the wire)."""

    def __init__(self, api: FakeCambAPI) -> None:
        self.inner = httpx.ASGITransport(app=api)
        self.sent: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        self.sent.append(request)
        return await self.inner.handle_async_request(request)


# ------------------------------------------------------------------ public names


#: DESIGN.md's public names (its import block and "Added this round"), plus what the package
#: exports besides. Changing this list is changing the public API: on purpose only.
PUBLIC = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AdaptivePollPolicy",
    "AsyncCambClient",
    "AuthenticationError",
    "Budget",
    "CambError",
    "ClientClosedError",
    "CompletionStats",
    "DubResource",
    "DubbingOutcome",
    "DubbingResult",
    "DurationHint",
    "InternalServerError",
    "Language",
    "NotFoundError",
    "PollPolicy",
    "RateBudget",
    "RateLimitError",
    "RequestHooks",
    "StatusIterator",
    "StatusResult",
    "TTSResource",
    "TTSResult",
    "TaskFailedError",
    "TaskHandle",
    "TaskKind",
    "TaskResource",
    "TaskStatus",
    "TranscriptSegment",
    "TranscriptionResource",
    "TranscriptionResult",
    "TranslationResource",
    "TranslationResult",
    "UnprocessableEntityError",
    "ValidationDetail",
    "WaitTimeoutError",
    "__version__",
    "gather_results",
    "gather_statuses",
    "iter_statuses",
]
DESIGN_NAMES = {
    "AsyncCambClient",
    "TaskKind",
    "TaskStatus",
    "StatusResult",
    "TaskHandle",
    "PollPolicy",
    "RateBudget",
    "Language",
    "gather_statuses",
    "iter_statuses",
    "gather_results",
    "CambError",
    "APIError",
    "AuthenticationError",
    "NotFoundError",
    "UnprocessableEntityError",
    "RateLimitError",
    "InternalServerError",
    "APIConnectionError",
    "APITimeoutError",
    "TaskFailedError",
}


def test_all_is_sorted_and_pinned() -> None:
    assert camb_async.__all__ == sorted(camb_async.__all__)
    assert camb_async.__all__ == PUBLIC
    assert set(camb_async.__all__) >= DESIGN_NAMES
    for name in camb_async.__all__:
        assert hasattr(camb_async, name), name
    assert isinstance(camb_async.PollPolicy.adaptive(), camb_async.AdaptivePollPolicy)


def _public_members(obj: type) -> list[tuple[str, Any]]:
    out = []
    for name, member in vars(obj).items():
        if name.startswith("_") and name not in (
            "__init__",
            "__aenter__",
            "__aexit__",
            "__anext__",
            "__aiter__",
        ):
            continue
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if isinstance(member, property):
            member = member.fget
        if inspect.isfunction(member):
            out.append((name, member))
    return out


def test_every_public_callable_has_a_docstring_with_its_arguments() -> None:
    missing = []
    for module in (camb_async, camb_async.testing):
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if (
                inspect.isclass(obj)
                and obj.__module__.startswith("camb_async")
                and not getattr(obj, "_is_protocol", False)
            ):
                if not (obj.__doc__ or "").strip():
                    missing.append(name)
                init = vars(obj).get("__init__")
                if (
                    inspect.isfunction(init)
                    and not attrs.has(obj)
                    and len(inspect.signature(init).parameters) > 1
                    and "Args:" not in (obj.__doc__ or "")
                    and "Args:" not in (init.__doc__ or "")
                ):
                    missing.append(f"{name}.__init__ (no Args section)")
                for member_name, member in _public_members(obj):
                    if member_name == "__init__":
                        continue
                    if not (member.__doc__ or "").strip():
                        missing.append(f"{name}.{member_name}")
            elif inspect.isfunction(obj) and not (obj.__doc__ or "").strip():
                missing.append(name)
    assert missing == [], missing


# ------------------------------------------------------------------ with_options


async def test_with_options_is_a_view_sharing_pool_budget_and_stats(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    task_id = api.add_task(TaskKind.DUB, polls=0)
    recorder = Recorder(api)
    client = make_client(transport=recorder, timeout=30.0, max_retries=3)
    view = client.with_options(
        timeout=5, max_retries=0, max_retry_wait=1.5, max_response_bytes=4096
    )
    assert (view.timeout, view.max_retries, view.max_retry_wait, view.max_response_bytes) == (
        5.0,
        0,
        1.5,
        4096,
    )
    assert (client.timeout, client.max_retries) == (30.0, 3)
    assert view.budget is client.budget
    assert view.completion_stats is client.completion_stats
    assert (await view.dub.status(task_id)).status is TaskStatus.SUCCESS
    assert view._http is client._http is not None  # one pool
    assert view.dub.task(task_id).client is view
    await view.aclose()  # the view only
    assert view.closed and not client.closed
    with pytest.raises(ClientClosedError):
        await view.dub.status(task_id)
    assert (await client.dub.status(task_id)).status is TaskStatus.SUCCESS
    assert len(recorder.sent) == 2


async def test_with_options_settings_apply_to_the_view_only(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    task_id = api.add_task(TaskKind.TTS, polls=0)
    client = make_client()
    api.inject(count=2)  # two faults: the parent retries through them
    small = client.with_options(max_retries=0)
    with pytest.raises(camb_async.CambError):
        await small.tts.status(task_id)
    assert (await client.tts.status(task_id)).status is TaskStatus.SUCCESS
    tiny = client.with_options(max_response_bytes=10)
    with pytest.raises(camb_async.APIError, match="max_response_bytes"):
        await tiny.tts.status(task_id)


async def test_closing_the_parent_ends_the_views(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    client = make_client()
    view = client.with_options(timeout=5).with_options(max_retries=1)  # a view of a view
    await client.aclose()
    assert view.closed
    with pytest.raises(ClientClosedError):
        await view.dub.status("x")
    with pytest.raises(ClientClosedError):
        client.with_options(timeout=1)


async def test_closing_the_parent_ends_a_call_in_flight_on_a_view(
    make_client: ClientFactory,
) -> None:
    started = anyio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        started.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    client = make_client(transport=httpx.MockTransport(hang), timeout=3600)
    view = client.with_options(timeout=1800)
    outcome: list[BaseException] = []

    async def call() -> None:
        try:
            await view.dub.status("x")
        except ClientClosedError as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await started.wait()
        await client.aclose()
    assert len(outcome) == 1 and view.closed


async def test_closing_a_view_ends_the_views_made_from_it(make_client: ClientFactory) -> None:
    started = anyio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        started.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    client = make_client(transport=httpx.MockTransport(hang), timeout=3600)
    view = client.with_options(timeout=1800)
    sub = view.with_options(timeout=900)
    outcome: list[BaseException] = []

    async def call() -> None:
        try:
            await sub.dub.status("x")
        except ClientClosedError as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await started.wait()
        await view.aclose()
    assert len(outcome) == 1 and sub.closed and view.closed and not client.closed
    with pytest.raises(ClientClosedError):
        view.with_options(timeout=1)
    other = client.with_options(timeout=5)  # the client and its other views are untouched
    assert not other.closed
    # a view of a view whose middle view is gone still ends with the client
    orphan = client.with_options(timeout=5).with_options(max_retries=0)
    await client.aclose()
    assert orphan.closed and other.closed


async def test_handles_of_a_view_poll_through_its_client(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    client = make_client()
    view = client.with_options(timeout=5)
    handle = await view.tts.create(text="hi", voice_id=1, language=1)
    assert handle.client is view
    [status] = await client.gather_statuses([handle])
    assert status.is_success
    assert len(await camb_async.gather_results(view, [client.tts.task(handle.task_id)])) == 1
    other = make_client()
    with pytest.raises(ValueError, match="another AsyncCambClient"):
        await other.gather_statuses([handle])


@pytest.mark.parametrize(
    "bad",
    [
        {"timeout": 0},
        {"timeout": True},
        {"max_retries": -1},
        {"max_response_bytes": 0},
        {"max_retry_wait": float("inf")},
        {"timeout": float("inf")},
        {"timeout": float("nan")},
    ],
)
async def test_with_options_checks_its_values(
    make_client: ClientFactory, bad: dict[str, Any]
) -> None:
    with pytest.raises(ValueError):
        make_client().with_options(**bad)


# ------------------------------------------------------------------ extra fields


async def test_extra_fields_reach_the_wire_on_create_and_results(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    recorder = Recorder(api)
    client = make_client(transport=recorder)
    extras: dict[str, Any] = {"extra_headers": {"X-Trace": "t-1"}, "extra_query": {"beta": "on"}}
    handle = await client.tts.create(
        text="hello", voice_id=1, language=1, extra_body={"new_field": [1, 2]}, **extras
    )
    create = recorder.sent[-1]
    assert create.headers["x-trace"] == "t-1"
    assert create.url.params["beta"] == "on"
    assert json.loads(create.content) == {
        "text": "hello",
        "voice_id": 1,
        "language": 1,
        "new_field": [1, 2],
    }
    assert create.headers["x-api-key"] == API_KEY  # the key is still the client's

    await handle  # polls go out without the extras
    assert "x-trace" not in recorder.sent[-1].headers
    result = await handle.result(**extras)
    sent = recorder.sent[-1]
    assert sent.url.path.startswith("/tts-result/")
    assert sent.headers["x-trace"] == "t-1"
    assert dict(sent.url.params) == {"output_type": "file_url", "beta": "on"}
    assert isinstance(result, camb_async.TTSResult)

    run_id = (await handle.status()).run_id
    assert run_id is not None
    await client.tts.results([run_id], extra_body={"flag": True}, **extras)
    batch = recorder.sent[-1]
    assert json.loads(batch.content) == {"run_ids": [run_id], "flag": True}
    assert batch.headers["x-trace"] == "t-1" and batch.url.params["beta"] == "on"

    chunks = [c async for c in client.tts.audio(run_id, **extras)]
    audio = recorder.sent[-1]
    assert b"".join(chunks) and audio.headers["x-trace"] == "t-1"
    assert dict(audio.url.params) == {"output_type": "raw_bytes", "beta": "on"}


async def test_extra_body_on_a_multipart_create(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    recorder = Recorder(api)
    client = make_client(transport=recorder)
    await client.transcription.create(
        language=1,
        file=b"RIFF....",
        filename="a.wav",
        extra_body={"speaker_labels": True, "note": "x"},
    )
    body = recorder.sent[-1].content
    assert b'name="speaker_labels"\r\n\r\ntrue' in body
    assert b'name="note"\r\n\r\nx' in body


async def test_extra_headers_cannot_replace_the_key(make_client: ClientFactory) -> None:
    client = make_client()
    for name in ("x-api-key", "X-API-Key", " x-api-key"):
        with pytest.raises(ValueError, match="x-api-key"):
            await client.dub.result(1, extra_headers={name: "other"})
    with pytest.raises(TypeError):
        await client.dub.result(1, extra_headers={"x-n": 1})  # type: ignore[dict-item]


# ------------------------------------------------------------------ errors for a ticket


async def test_errors_carry_request_id_url_and_redacted_headers(make_client: ClientFactory) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            404,
            json={"detail": "no such task"},
            headers={
                "x-request-id": "req-42",
                "cf-ray": "8a-LHR",
                "x-echo": f"key {API_KEY}",
                "set-cookie": "session=secret",
            },
        )

    client = make_client(transport=httpx.MockTransport(answer))
    with pytest.raises(NotFoundError) as caught:
        await client.dub.status("task-1")
    error = caught.value
    assert error.request_id == "req-42"
    assert error.method == "GET"
    assert error.url == "http://localhost/dub/task-1"
    assert error.status_code == 404
    assert error.headers["cf-ray"] == "8a-LHR"
    assert error.headers["set-cookie"] == "[redacted]"
    assert API_KEY not in repr(error.headers) and "[redacted]" in error.headers["x-echo"]
    assert str(error).endswith("[request_id: req-42]")
    assert API_KEY not in str(error)


@pytest.mark.parametrize("header", ["x-amzn-requestid", "cf-ray"])
async def test_request_id_from_other_headers(make_client: ClientFactory, header: str) -> None:
    client = make_client(
        transport=httpx.MockTransport(
            lambda request: httpx.Response(500, headers={header: "id-7"})
        ),
        max_retries=0,
    )
    with pytest.raises(camb_async.InternalServerError) as caught:
        await client.tts.status("t")
    assert caught.value.request_id == "id-7"


async def test_no_request_id_when_the_server_sends_none(make_client: ClientFactory) -> None:
    client = make_client(
        transport=httpx.MockTransport(lambda request: httpx.Response(404, json={}))
    )
    with pytest.raises(NotFoundError) as caught:
        await client.tts.status("t")
    assert caught.value.request_id is None and "request_id" not in str(caught.value)


async def test_connection_errors_carry_method_and_url(make_client: ClientFactory) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    client = make_client(transport=httpx.MockTransport(refuse), max_retries=0)
    with pytest.raises(APIConnectionError) as caught:
        await client.dub.result(5, extra_query={"a": 1})
    assert caught.value.method == "GET"
    assert caught.value.url.startswith("http://localhost/dub-result/5")


# ------------------------------------------------------------------ CAMB_LOG


def test_camb_log_turns_on_logging_to_stderr_without_the_key() -> None:
    program = (
        "import logging, camb_async\n"
        "from camb_async._logging import setup_logging as _setup_logging\n"
        f"c = camb_async.AsyncCambClient(api_key={API_KEY!r})\n"
        "camb_async.AsyncCambClient(api_key='another-key-0000')\n"
        "_setup_logging()\n"
        "log = logging.getLogger('camb_async')\n"
        "print(len(log.handlers), logging.getLevelName(log.level))\n"
        f"log.info('echo of %s', {API_KEY!r})\n"
        "log.debug('a debug line')\n"
    )
    env = {"CAMB_LOG": "info", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["1", "INFO"]  # one handler, however many clients
    assert "echo of [redacted]" in done.stderr and API_KEY not in done.stderr
    assert "a debug line" not in done.stderr
    env["CAMB_LOG"] = "debug"
    done = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["1", "DEBUG"] and "a debug line" in done.stderr
    env.pop("CAMB_LOG")
    done = subprocess.run(
        [sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.split()[0] == "0" and done.stderr == ""


def test_camb_log_in_process_adds_one_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    from camb_async import _logging as _client

    log = logging.getLogger("camb_async")
    before_level, before_handlers = log.level, list(log.handlers)
    monkeypatch.setenv("CAMB_LOG", "debug")
    try:
        AsyncCambClient(api_key=API_KEY)
        AsyncCambClient(api_key=API_KEY)
        assert log.handlers.count(_client._LOG_HANDLER) == 1  # type: ignore[arg-type]
        assert log.level == logging.DEBUG
    finally:
        if _client._LOG_HANDLER is not None:
            log.removeHandler(_client._LOG_HANDLER)
        log.handlers[:] = before_handlers
        log.setLevel(before_level)
