"""create() for the four kinds: request shapes, argument checks, uploads, and the no-duplicate
retry rule (in-process, virtual time)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any, cast

import anyio
import httpx
import pytest

from camb_async import (
    APIConnectionError,
    APITimeoutError,
    AsyncCambClient,
    DubbingResult,
    InternalServerError,
    Language,
    PollPolicy,
    RateLimitError,
    TaskHandle,
    TaskKind,
    TranscriptionResult,
    TranslationResult,
    TTSResult,
    UnprocessableEntityError,
)
from camb_async.testing import FakeCambAPI

from ..conftest import API_KEY, ClientFactory

pytestmark = pytest.mark.anyio

FAST = PollPolicy(initial=1.0, factor=1.0, max_interval=1.0, jitter=0.0)


class FlakyTransport(httpx.AsyncBaseTransport):
    """Wraps the in-process transport to fail chosen attempts the way a network would.

    ``connect_failures``: attempts that fail before any connection exists (after reading the
    request body, so a resend must rebuild it). ``lost_answers``: attempts that reach the
    server, which acts on them, and then time out waiting for the answer.
    """

    def __init__(
        self, inner: httpx.AsyncBaseTransport, *, connect_failures: int = 0, lost_answers: int = 0
    ) -> None:
        self.inner = inner
        self.connect_failures = connect_failures
        self.lost_answers = lost_answers
        self.attempts = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        if self.connect_failures:
            self.connect_failures -= 1
            async for _ in request.stream:  # type: ignore[union-attr]
                pass
            raise httpx.ConnectError("connection refused", request=request)
        response = await self.inner.handle_async_request(request)
        if self.lost_answers:
            self.lost_answers -= 1
            await response.aclose()
            raise httpx.ReadTimeout("timed out waiting for the answer", request=request)
        return response


def flaky_client(
    api: FakeCambAPI, make_client: ClientFactory, **kwargs: Any
) -> tuple[AsyncCambClient, FlakyTransport]:
    transport = FlakyTransport(httpx.ASGITransport(app=api), **kwargs)
    return make_client(transport=transport), transport


# ------------------------------------------------------------------ request shapes


async def test_dub_minimal_body_leaves_omitted_fields_out(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    handle = await client.dub.create(
        video_url="https://x/v.mp4", source_language=Language.EN_US, target_language=Language.ES_ES
    )
    assert isinstance(handle, TaskHandle) and handle.kind is TaskKind.DUB
    (task,) = api.created("dub")
    assert task.task_id == handle.task_id
    assert task.request == {
        "video_url": "https://x/v.mp4",
        "source_language": 1,
        "target_language": 54,
    }
    assert [(r.method, r.path) for r in api.log] == [("POST", "/dub")]


async def test_dub_all_options(api: FakeCambAPI, client: AsyncCambClient) -> None:
    await client.dub.create(
        video_url="https://x/v.mp4",
        source_language="en-us",
        target_languages=[Language.FR_FR, 31],
        project_name="p",
        project_description="",
        folder_id=7,
        selected_audio_tracks=[0, 2],
        add_output_as_an_audio_track=True,
        chosen_dictionaries=[3],
        ai_optimization=False,
        transcription_mode="slow",
        source_transcript="1\n00:00:00,000 --> 00:00:01,000\nhi\n",
        target_transcripts={Language.FR_FR: "1\n00:00:00,000 --> 00:00:01,000\nsalut\n"},
    )
    (task,) = api.created()
    assert task.request == {
        "video_url": "https://x/v.mp4",
        "source_language": "en-us",
        "target_languages": [76, 31],
        "project_name": "p",
        "project_description": "",
        "folder_id": 7,
        "selected_audio_tracks": [0, 2],
        "add_output_as_an_audio_track": True,
        "chosen_dictionaries": [3],
        "ai_optimization": False,
        "transcription_mode": "slow",
        "source_transcript": {"content": "1\n00:00:00,000 --> 00:00:01,000\nhi\n", "format": "srt"},
        "target_transcripts": [
            {
                "content": "1\n00:00:00,000 --> 00:00:01,000\nsalut\n",
                "format": "srt",
                "language": 76,
            }
        ],
    }


async def test_tts_and_translation_bodies(api: FakeCambAPI, client: AsyncCambClient) -> None:
    await client.tts.create(text="Hello", voice_id=20298, language=Language.EN_GB, age=30)
    await client.translation.create(
        texts=["a", ""], source_language=1, target_language=Language.JA_JP, formality=1
    )
    tts, translation = api.created()
    assert tts.request == {"text": "Hello", "voice_id": 20298, "language": 35, "age": 30}
    assert translation.request == {
        "texts": ["a", ""],
        "source_language": 1,
        "target_language": 88,
        "formality": 1,
    }


async def test_transcription_from_url_is_multipart(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    await client.transcription.create(
        language="auto",
        media_url="https://x/a.mp3",
        run_audio_cleaning=False,
        folder_id=4,
        formatting_options={"max_characters_in_segment": 42},
    )
    (task,) = api.created()
    # The fake answers 422 to anything but multipart, and keeps the form fields it got.
    assert task.request == {
        "language": "auto",
        "media_url": "https://x/a.mp3",
        "folder_id": "4",
        "run_audio_cleaning": "false",
        "formatting_options": '{"max_characters_in_segment": 42}',
    }


@pytest.mark.parametrize("source", ["path", "bytes", "fileobj"])
async def test_transcription_upload(
    api: FakeCambAPI, client: AsyncCambClient, tmp_path: Path, source: str
) -> None:
    data = bytes(range(256)) * 4000 + b"tail"
    path = tmp_path / "talk.wav"
    path.write_bytes(data)
    file: Any = {"path": path, "bytes": data, "fileobj": io.BytesIO(data)}[source]
    await client.transcription.create(
        language=Language.EN_US, file=file, filename=None if source == "path" else "talk.wav"
    )
    (task,) = api.created()
    assert task.request is not None
    assert task.request["language"] == "1"
    assert task.request["media_file"] == {
        "filename": "talk.wav",
        "content_type": "audio/x-wav",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


async def test_created_task_id_is_checked(api: FakeCambAPI, client: AsyncCambClient) -> None:
    api.inject(status=None, path="/tts", body=b'{"task_id": "../../etc"}')
    with pytest.raises(Exception, match="task_id"):
        await client.tts.create(text="x", voice_id=1, language=1)
    api.inject(status=None, path="/tts", body=b'{"id": "abc"}')
    with pytest.raises(Exception, match="unexpected answer"):
        await client.tts.create(text="x", voice_id=1, language=1)


# ------------------------------------------------------------------ argument checks


BAD_CREATES: list[tuple[str, dict[str, Any], type[Exception]]] = [
    ("dub", {"video_url": "u", "source_language": 1}, ValueError),  # no target
    (
        "dub",
        {"video_url": "u", "source_language": 1, "target_language": 2, "target_languages": [3]},
        ValueError,
    ),
    ("dub", {"video_url": "", "source_language": 1, "target_language": 2}, ValueError),
    ("dub", {"video_url": "u", "source_language": True, "target_language": 2}, TypeError),
    ("dub", {"video_url": "u", "source_language": 0, "target_language": 2}, ValueError),
    ("dub", {"video_url": "u", "source_language": 1, "target_language": "auto"}, ValueError),
    ("dub", {"video_url": "u", "source_language": 1, "target_languages": []}, ValueError),
    ("dub", {"video_url": "u", "source_language": 1, "target_languages": "es"}, TypeError),
    (
        "dub",
        {
            "video_url": "u",
            "source_language": 1,
            "target_language": 2,
            "transcription_mode": "medium",
        },
        ValueError,
    ),
    (
        "dub",
        {"video_url": "u", "source_language": 1, "target_language": 2, "folder_id": "7"},
        TypeError,
    ),
    (
        "dub",
        {"video_url": "u", "source_language": 1, "target_language": 2, "ai_optimization": 1},
        TypeError,
    ),
    ("dub", {"video_url": "u", "source_language": "es/../x", "target_language": 2}, ValueError),
    ("tts", {"text": "hi", "voice_id": 1, "language": "en-us"}, TypeError),
    ("tts", {"text": "hi", "voice_id": "1", "language": 1}, TypeError),
    ("tts", {"text": " ", "voice_id": 1, "language": 1}, ValueError),
    ("translate", {"texts": "hello", "source_language": 1, "target_language": 2}, TypeError),
    ("translate", {"texts": [], "source_language": 1, "target_language": 2}, ValueError),
    ("translate", {"texts": ["a", 3], "source_language": 1, "target_language": 2}, TypeError),
    ("translate", {"texts": ["a"], "source_language": 1, "target_language": 2.0}, TypeError),
    ("transcribe", {"language": 1}, ValueError),  # no media
    ("transcribe", {"language": 1, "media_url": "u", "file": b"x"}, ValueError),
    ("transcribe", {"language": 1, "file": "/no/such/file.wav"}, FileNotFoundError),
    ("transcribe", {"language": 1, "file": io.StringIO("text")}, TypeError),
    ("transcribe", {"language": 1, "file": 12345}, TypeError),
    ("transcribe", {"language": 1, "file": b"x", "filename": 'a"b'}, ValueError),
    (
        "transcribe",
        {"language": 1, "media_url": "u", "formatting_options": {"x": "big"}},
        TypeError,
    ),
    ("transcribe", {"language": 1, "media_url": "u", "formatting_options": "[1]"}, ValueError),
    ("tts", {"text": "hi", "voice_id": 1, "language": 1, "retry_unsafe": "yes"}, TypeError),
]


@pytest.mark.parametrize(("kind", "kwargs", "error"), BAD_CREATES)
async def test_bad_arguments_fail_before_any_request(
    api: FakeCambAPI,
    client: AsyncCambClient,
    kind: str,
    kwargs: dict[str, Any],
    error: type[Exception],
) -> None:
    with pytest.raises(error):
        await client.resource(kind).create(**kwargs)  # type: ignore[attr-defined]
    assert api.log == []


async def test_server_side_422_carries_detail(api: FakeCambAPI, client: AsyncCambClient) -> None:
    detail = [{"loc": ["body", "voice_id"], "msg": "unknown voice", "type": "value_error"}]
    api.inject(status=422, path="/tts", body=json.dumps({"detail": detail}).encode())
    with pytest.raises(UnprocessableEntityError) as info:
        await client.tts.create(text="hi", voice_id=999, language=1)
    assert info.value.detail[0].msg == "unknown voice"
    assert len(api.log) == 1 and not api.created()


# ------------------------------------------------------------------ timelines


async def test_created_handle_carries_created_at_and_times_from_creation(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    api.script_create("translate", after=30)
    await anyio.sleep(100)  # the task's timeline starts at creation, not at the epoch
    before = anyio.current_time()
    handle = await client.translation.create(texts=["hola"], source_language=54, target_language=1)
    assert handle.created_at is not None and before <= handle.created_at
    final = await handle.wait(policy=FAST)
    assert final.is_success
    assert anyio.current_time() - before == pytest.approx(30, abs=1.5)


@pytest.mark.parametrize(
    ("kind", "create", "expected"),
    [
        (
            "dub",
            {"video_url": "https://x/v.mp4", "source_language": 1, "target_language": 54},
            DubbingResult,
        ),
        ("tts", {"text": "hi", "voice_id": 1, "language": 1}, TTSResult),
        (
            "translate",
            {"texts": ["hi"], "source_language": 1, "target_language": 54},
            TranslationResult,
        ),
        ("transcribe", {"language": 1, "media_url": "https://x/a.mp3"}, TranscriptionResult),
    ],
)
async def test_create_await_result_in_process(
    api: FakeCambAPI, client: AsyncCambClient, kind: str, create: dict[str, Any], expected: type
) -> None:
    api.script_create(kind, after=45)
    handle = await client.resource(kind).create(**create)  # type: ignore[attr-defined]
    result = await handle.result(policy=FAST)
    assert isinstance(result, expected)


async def test_translation_result_follows_request(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    handle = await client.translation.create(
        texts=["one", "two"], source_language=1, target_language=Language.ES_MX
    )
    assert (await handle.result()).texts == ("[58] one", "[58] two")


# ------------------------------------------------------------------ no duplicate jobs


async def test_lost_answer_is_not_retried(api: FakeCambAPI, make_client: ClientFactory) -> None:
    client, transport = flaky_client(api, make_client, lost_answers=1)
    with pytest.raises(APITimeoutError):
        await client.dub.create(video_url="https://x/v.mp4", source_language=1, target_language=2)
    assert transport.attempts == 1
    assert len(api.requests("POST", "/dub")) == 1 and len(api.created()) == 1


async def test_lost_answer_retried_only_when_caller_opts_in(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    client, transport = flaky_client(api, make_client, lost_answers=1)
    handle = await client.dub.create(
        video_url="https://x/v.mp4", source_language=1, target_language=2, retry_unsafe=True
    )
    assert transport.attempts == 2
    assert [t.task_id for t in api.created()][-1] == handle.task_id
    assert len(api.created()) == 2  # the documented risk of opting in


async def test_5xx_after_sending_is_not_retried(api: FakeCambAPI, client: AsyncCambClient) -> None:
    api.inject(status=503, path="/translate")
    with pytest.raises(InternalServerError):
        await client.translation.create(texts=["a"], source_language=1, target_language=2)
    assert len(api.requests("POST")) == 1


async def test_connect_failure_is_retried(api: FakeCambAPI, make_client: ClientFactory) -> None:
    client, transport = flaky_client(api, make_client, connect_failures=1)
    handle = await client.tts.create(text="hi", voice_id=1, language=1)
    assert transport.attempts == 2
    assert len(api.requests("POST", "/tts")) == 1
    assert [t.task_id for t in api.created()] == [handle.task_id]


async def test_connect_failures_exhaust_retries(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    transport = FlakyTransport(httpx.ASGITransport(app=api), connect_failures=10)
    client = make_client(transport=transport, max_retries=2)
    with pytest.raises(APIConnectionError):
        await client.tts.create(text="hi", voice_id=1, language=1)
    assert transport.attempts == 3 and api.log == []


async def test_429_is_retried_once_the_server_refused(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    api.inject(status=429, retry_after="2", path="/dub")
    await client.dub.create(video_url="https://x/v.mp4", source_language=1, target_language=2)
    assert [r.status for r in api.requests("POST", "/dub")] == [429, 200]
    assert len(api.created()) == 1


@pytest.mark.parametrize("source", ["path", "fileobj"])
async def test_upload_is_resent_whole_after_connect_failure_and_429(
    api: FakeCambAPI, make_client: ClientFactory, tmp_path: Path, source: str
) -> None:
    data = b"\x00\x01RIFF" * 50_000
    path = tmp_path / "a.flac"
    path.write_bytes(data)
    file: Any = path if source == "path" else io.BytesIO(data)
    client, transport = flaky_client(api, make_client, connect_failures=1)
    api.inject(status=429, retry_after="1", path="/transcribe")
    await client.transcription.create(language=1, file=file, filename="a.flac")
    assert transport.attempts == 3
    assert [r.status for r in api.requests("POST", "/transcribe")] == [429, 200]
    (task,) = api.created()
    assert task.request is not None
    assert task.request["media_file"]["sha256"] == hashlib.sha256(data).hexdigest()


async def test_unseekable_upload_is_sent_once(api: FakeCambAPI, client: AsyncCambClient) -> None:
    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self.left = 3

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            if not self.left:
                return 0
            self.left -= 1
            buffer[:4] = b"data"
            return 4

    api.inject(status=429, retry_after="1", path="/transcribe")
    with pytest.raises(RateLimitError):
        await client.transcription.create(language=1, file=cast(Any, Pipe()), filename="x.mp3")
    assert len(api.requests("POST")) == 1


async def test_path_upload_closes_its_file(
    api: FakeCambAPI, client: AsyncCambClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[Any] = []
    real_open = open

    def spy(*args: Any, **kwargs: Any) -> Any:
        handle = real_open(*args, **kwargs)
        opened.append(handle)
        return handle

    import camb_async.resources._upload as resources

    monkeypatch.setattr(resources, "open", spy, raising=False)
    path = tmp_path / "a.wav"
    path.write_bytes(b"x" * 1000)
    api.inject(status=503, path="/transcribe")
    with pytest.raises(InternalServerError):
        await client.transcription.create(language=1, file=path)
    await client.transcription.create(language=1, file=str(path))
    assert len(opened) == 2 and all(h.closed for h in opened)


async def test_created_handles_gather_with_others(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    from camb_async import gather_results

    api.script_create(after=20, count=3)
    handles = [
        await client.tts.create(text="a", voice_id=1, language=1),
        await client.translation.create(texts=["b"], source_language=1, target_language=2),
        await client.transcription.create(language=1, media_url="https://x/c.mp3"),
    ]
    results = await gather_results(client, handles, policy=FAST)
    assert [type(r) for r in results] == [TTSResult, TranslationResult, TranscriptionResult]


def test_fake_refuses_json_transcription(api: FakeCambAPI) -> None:
    # The endpoint takes form data only: FastAPI reads a JSON body as an empty form, so the
    # required language is missing. The fake must not accept what the real one rejects.
    status, body = api._handle(
        "POST",
        "/transcribe",
        {"x-api-key": API_KEY, "content-type": "application/json"},
        b'{"language": 1}',
        0.0,
    )
    assert status == 422
    assert json.loads(cast(bytes, body)) == {
        "detail": [{"loc": ["body", "language"], "msg": "Field required", "type": "missing"}]
    }


def test_fake_refuses_a_bad_fault_free_create(api: FakeCambAPI) -> None:
    status, body = api._handle("POST", "/dub", {"x-api-key": API_KEY}, b'{"video_url": "u"}', 0.0)
    assert status == 422
    # The schema's own errors come first (FastAPI validates before the handler runs); the
    # target is optional in the schema, so its absence is reported once the schema passes.
    assert json.loads(cast(bytes, body)) == {
        "detail": [{"loc": ["body", "source_language"], "msg": "Field required", "type": "missing"}]
    }
    status, body = api._handle(
        "POST", "/dub", {"x-api-key": API_KEY}, b'{"video_url": "u", "source_language": 1}', 0.0
    )
    assert status == 422
    detail = json.loads(cast(bytes, body))["detail"]
    assert [d["loc"] for d in detail] == [["body", "target_language"]]


async def test_auto_is_for_sources_only(api: FakeCambAPI, client: AsyncCambClient) -> None:
    await client.translation.create(texts=["x"], source_language="auto", target_language=2)
    await client.dub.create(
        video_url="https://x/v.mp4", source_language="auto", target_languages=["es-es"]
    )
    sent = [t.request for t in api.created()]
    assert [r["source_language"] for r in sent if r is not None] == ["auto", "auto"]
    with pytest.raises(ValueError, match="concrete"):
        await client.translation.create(texts=["x"], source_language=1, target_language="auto")
    with pytest.raises(ValueError, match="concrete"):
        await client.dub.create(
            video_url="https://x/v.mp4", source_language=1, target_languages=[2, "AUTO"]
        )
    assert len(api.log) == 2
