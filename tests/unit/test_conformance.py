"""Conformance with the official SDK (camb-sdk 1.6.6, generated from CAMB.AI's API definition).

Requests: for every endpoint camb-async calls, the same call is made with camb-sdk and with
camb-async, each over an ``httpx.MockTransport``; method, path, query, JSON body (keys,
values and their JSON types) and multipart form (field names, values, the file part's name,
file name, content type and bytes) must match, except for the differences listed in
``ALLOWED`` — each one a case the real API treats the same, with the reason.

Answers: built from camb-sdk's own response models (every declared field; optional ones
present and null; extra fields the API may add later) and fed to camb-async's parsers, which
must read them as camb-sdk does.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import io
import json
import typing
from collections.abc import Awaitable, Callable, Set
from pathlib import Path
from typing import Any, cast

import httpx
import pydantic
import pytest
from camb.client import AsyncCambAI
from camb.core.api_error import ApiError
from camb.core.pydantic_utilities import parse_obj_as
from camb.dub.types import GetDubbedRunInfoDubResultRunIdGetResponse
from camb.text_to_speech.types import GetTtsResultsTtsResultsPostResponseValue
from camb.types import (
    CreateTtsOut,
    DubbingResult,
    ExceptionReasons,
    GetTtsResultOutFileUrl,
    HttpValidationError,
    OrchestratorPipelineCallResult,
    OrchestratorPipelineResult,
    Transcript,
    TranscriptionResult,
    TranslationResult,
    ValidationError,
)

import camb_async
from camb_async import AsyncCambClient, TaskKind, TaskStatus

from ..conftest import API_KEY

pytestmark = pytest.mark.anyio

BASE = "http://api.test/apis"
TASK_ID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
RUN_ID = 4242
RUN_IDS = [11, 12, 4242]
AUDIO = b"RIFF" + bytes(range(256)) * 40

#: Every way camb-async's requests differ from camb-sdk's for the same call, and why the
#: real API treats both the same. Keyed by (route, where, name); the tests fail on any
#: difference not listed here, and on any entry that no longer occurs.
ALLOWED: dict[tuple[str, str, str], str] = {
    (
        "POST /dub",
        "json",
        "transcription_mode",
    ): "camb-sdk always sends its default 'fast'; camb-async leaves options the caller did "
    "not set out of the request, and the server's default is the same 'fast'.",
    (
        "POST /transcribe",
        "form",
        "transcription_mode",
    ): "camb-sdk always sends 'fast'; omitted by camb-async unless asked for; the "
    "server's default is 'fast'.",
    (
        "POST /transcribe",
        "form",
        "run_audio_cleaning",
    ): "camb-sdk always sends true; omitted by camb-async unless asked for; the "
    "server's default is true.",
    (
        "POST /transcribe",
        "form",
        "include_music_in_fg",
    ): "camb-sdk always sends true; omitted by camb-async unless asked for; the "
    "server's default is true.",
    (
        "GET /tts-result/{run_id}",
        "query",
        "output_type",
    ): "audio(): camb-async names the raw_bytes mode explicitly; camb-sdk's default call "
    "sends no output_type, and the server's default is raw_bytes.",
}
#: Differences in how answers are read (not requests), for the record.
ALLOWED_IN_ANSWERS: dict[str, str] = {
    "tts result as a bare string": "the schema allows any string; camb-async accepts it only "
    "when it is an http(s) URL (what the API documents) and refuses other text rather than "
    "hand back a non-URL as an output_url.",
    "status TIMEOUT / PAYMENT_REQUIRED": "camb-sdk types status as SUCCESS|PENDING|ERROR or "
    "any string; camb-async knows the seeds' five values (terminal ones end polling) and "
    "keeps any other text as UNKNOWN with raw_status.",
    "unknown fields": "both accept them; camb-sdk keeps them on the model, camb-async drops "
    "them (its models are frozen attrs classes with the documented fields).",
    "transcription export results": "camb-async never sends format_type/data_type, so it "
    "never gets TranscriptExportResult ({transcript: str}); a string transcript is refused.",
}


#: The differences each kind of call is expected to show (all in ALLOWED).
DUB_DEFAULTS = {("json", "transcription_mode")}
TRANSCRIBE_DEFAULTS = {
    ("form", "transcription_mode"),
    ("form", "run_audio_cleaning"),
    ("form", "include_music_in_fg"),
}
RAW_DEFAULT = {("query", "output_type")}


# ----------------------------------------------------------------------- request capture


def shape(value: Any) -> Any:
    """A JSON value with every leaf replaced by (JSON type, value)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    kind = (
        "null"
        if value is None
        else "bool"
        if isinstance(value, bool)
        else "int"
        if isinstance(value, int)
        else "float"
        if isinstance(value, float)
        else "str"
    )
    return (kind, value)


def describe(request: httpx.Request, content: bytes) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "")
    out: dict[str, Any] = {
        "method": request.method,
        "path": request.url.path.removeprefix("/apis"),
        "query": dict(request.url.params.multi_items()),
        "key": request.headers.get("x-api-key"),
        "content_type": content_type.split(";")[0],
    }
    assert len(out["query"]) == len(request.url.params.multi_items()), "repeated query"
    if content_type.startswith("application/json"):
        out["json"] = shape(json.loads(content))
    elif content_type.startswith("multipart/form-data"):
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + content
        )
        form: dict[str, str] = {}
        files: dict[str, tuple[str | None, str, str]] = {}
        for part in cast(Any, message).iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if part.get_filename() is None:
                assert name not in form, f"field {name} sent twice"
                form[name] = payload.decode()
            else:
                files[name] = (
                    part.get_filename(),
                    part.get_content_type(),
                    hashlib.sha256(payload).hexdigest(),
                )
        out["form"], out["files"] = form, files
    else:
        assert content == b"", "a body that is neither JSON nor multipart"
    return out


class Capture:
    def __init__(self, answer: httpx.Response) -> None:
        self.answer = answer
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        content = await request.aread()
        self.seen.append(describe(request, content))
        return httpx.Response(
            self.answer.status_code, headers=self.answer.headers, content=self.answer.content
        )


SdkCall = Callable[[AsyncCambAI], Awaitable[Any]]
OurCall = Callable[[AsyncCambClient], Awaitable[Any]]


async def via_sdk(call: SdkCall, answer: httpx.Response) -> tuple[dict[str, Any], Any]:
    capture = Capture(answer)
    async with httpx.AsyncClient(transport=httpx.MockTransport(capture)) as http:
        sdk = AsyncCambAI(api_key=API_KEY, base_url=BASE, httpx_client=http)
        try:
            result: Any = await call(sdk)
        except (ApiError, ValueError) as exc:  # raw audio: camb-sdk JSON-decodes every
            result = exc  # answer (binary FLAC: UnicodeDecodeError)
    (request,) = capture.seen
    return request, result


async def via_ours(call: OurCall, answer: httpx.Response) -> tuple[dict[str, Any], Any]:
    capture = Capture(answer)
    async with AsyncCambClient(
        API_KEY, base_url=BASE, rate_limit=None, transport=httpx.MockTransport(capture)
    ) as client:
        result = await call(client)
    (request,) = capture.seen
    return request, result


def differences(route: str, sdk: dict[str, Any], ours: dict[str, Any]) -> set[tuple[str, str]]:
    """(where, name) of every difference; the top-level request facts must be equal."""
    for fact in ("method", "path", "key", "content_type"):
        assert ours[fact] == sdk[fact], (route, fact)
    found: set[tuple[str, str]] = set()
    for where in ("query", "json", "form", "files"):
        mine, theirs = ours.get(where, {}), sdk.get(where, {})
        for name in set(mine) | set(theirs):
            if mine.get(name) != theirs.get(name):
                found.add((where, name))
    return found


def allowed_for(route: str) -> set[tuple[str, str]]:
    return {(where, name) for (r, where, name) in ALLOWED if r == route}


async def check_request(
    route: str,
    sdk_call: SdkCall,
    our_call: OurCall,
    answer: httpx.Response,
    *,
    expect: Set[tuple[str, str]] = frozenset(),
) -> tuple[Any, Any]:
    sdk_request, sdk_result = await via_sdk(sdk_call, answer)
    our_request, our_result = await via_ours(our_call, answer)
    found = differences(route, sdk_request, our_request)
    assert found <= allowed_for(route), f"{route}: unlisted differences {found}"
    assert found == set(expect), f"{route}: expected {expect}, found {found}"
    return sdk_result, our_result


def ok(data: Any) -> httpx.Response:
    return httpx.Response(200, json=data)


# --------------------------------------------------------------------------- answers


EXTRA = {"added_later": {"nested": [1, "x", None]}, "another_new_field": 3.5}


def full(model: type[pydantic.BaseModel], **values: Any) -> dict[str, Any]:
    """A JSON answer built from an SDK model: every declared field (those not given are
    null), plus fields the model does not declare."""
    declared = set(model.model_fields)
    assert set(values) <= declared, f"{model.__name__} has no {set(values) - declared}"
    # Every field set (None where not given): camb-sdk's dump leaves unset fields out.
    instance = model(**{name: values.get(name) for name in declared})
    data = json.loads(instance.json())
    assert set(data) == declared, f"{model.__name__}: not every declared field dumped"
    return {**data, **EXTRA}


SEGMENTS = [
    full(Transcript, start=0, end=1.25, text="hola", speaker="SPEAKER_0"),
    full(Transcript, start=1.5, end=3.0, text="mundo", speaker="SPEAKER_1"),
]
DUB_FULL = full(
    DubbingResult, audio_url="https://cdn/a.mp3", transcript=SEGMENTS, video_url="https://cdn/v.mp4"
)
DUB_NULLS = full(DubbingResult, audio_url="https://cdn/a.mp3", transcript=[])
TTS_URL = full(GetTtsResultOutFileUrl, output_url="https://cdn/speech.flac")
TRANSLATION = full(TranslationResult, texts=["hola", "", "mundo"])
TRANSCRIPTION = full(TranscriptionResult, transcript=SEGMENTS)


def same_segments(ours: Any, sdk: Any) -> None:
    assert [(s.start, s.end, s.text, s.speaker) for s in ours] == [
        (s.start, s.end, s.text, s.speaker) for s in sdk
    ]


def same_dub(ours: Any, sdk: Any) -> None:
    if isinstance(sdk, dict):
        assert isinstance(ours, dict) and set(ours) == set(sdk)
        for key in sdk:
            same_dub(ours[key], sdk[key])
        return
    assert (ours.audio_url, ours.video_url) == (sdk.audio_url, sdk.video_url)
    same_segments(ours.transcript, sdk.transcript)


# -------------------------------------------------------------------------- status x4

STATUS_CALLS: dict[TaskKind, SdkCall] = {
    TaskKind.DUB: lambda sdk: sdk.dub.get_dubbing_status(TASK_ID),
    TaskKind.TTS: lambda sdk: sdk.text_to_speech.get_tts_result(TASK_ID),
    TaskKind.TRANSLATION: lambda sdk: sdk.translation.get_translation_task_status(TASK_ID),
    TaskKind.TRANSCRIPTION: lambda sdk: sdk.transcription.get_transcription_task_status(TASK_ID),
}
STATUS_ANSWERS = [
    full(OrchestratorPipelineResult, status="SUCCESS", run_id=RUN_ID),
    full(OrchestratorPipelineResult, status="PENDING"),
    full(
        OrchestratorPipelineResult,
        status="ERROR",
        exception_reason="SOURCE_TOO_LONG",
        message="the source is longer than your plan allows",
    ),
    full(
        OrchestratorPipelineResult,
        status="ERROR",
        exception_reason="SOMETHING_NEW",
        message={"code": 7, "detail": ["a", "b"]},
    ),
    full(OrchestratorPipelineResult, status="TIMEOUT"),
    full(
        OrchestratorPipelineResult, status="PAYMENT_REQUIRED", exception_reason="PAYMENT_REQUIRED"
    ),
    full(OrchestratorPipelineResult, status="QUEUED_FOR_GPU"),
]


@pytest.mark.parametrize("kind", list(STATUS_CALLS))
@pytest.mark.parametrize("answer", STATUS_ANSWERS, ids=lambda a: a["status"])
async def test_status(kind: TaskKind, answer: dict[str, Any]) -> None:
    sdk, ours = await check_request(
        f"GET /{kind.value}/{{task_id}}",
        STATUS_CALLS[kind],
        lambda c: c.resource(kind).status(TASK_ID),
        ok(answer),
    )
    assert ours.raw_status == sdk.status and ours.run_id == sdk.run_id
    assert ours.message == sdk.message and ours.exception_reason == sdk.exception_reason
    known = {s.value for s in TaskStatus} - {"UNKNOWN"}
    assert ours.status is (TaskStatus(sdk.status) if sdk.status in known else TaskStatus.UNKNOWN)
    assert ours.kind is kind and ours.task_id == TASK_ID


def test_every_exception_reason_is_passed_through() -> None:
    literal, _any = typing.get_args(ExceptionReasons)  # Literal[...] | Any
    values = typing.get_args(literal)
    assert len(values) == 21 and "NONE" in values
    for reason in values:
        answer = full(OrchestratorPipelineResult, status="ERROR", exception_reason=reason)
        parsed = camb_async._models.parse_status(TaskKind.DUB, "t", answer)
        assert parsed.exception_reason == reason and parsed.is_terminal


# ------------------------------------------------------------------- single results x4


async def test_dub_result() -> None:
    for answer in (DUB_FULL, DUB_NULLS, {"54": DUB_FULL, "76": DUB_NULLS}, {}):
        sdk, ours = await check_request(
            "GET /dub-result/{run_id}",
            lambda s: s.dub.get_dubbed_run_info(RUN_ID),
            lambda c: c.dub.result(RUN_ID),
            ok(answer),
        )
        same_dub(ours, sdk)
    assert ours == {}  # the last: an empty per-language map, not an error


async def test_tts_result_file_url() -> None:
    sdk, ours = await check_request(
        "GET /tts-result/{run_id}",
        lambda s: s.text_to_speech.get_tts_run_info(RUN_ID, output_type="file_url"),
        lambda c: c.tts.result(RUN_ID),
        ok(TTS_URL),
    )
    assert ours.output_url == sdk.output_url
    sdk, ours = await check_request(
        "GET /tts-result/{run_id}",
        lambda s: s.text_to_speech.get_tts_run_info(RUN_ID, output_type="file_url"),
        lambda c: c.tts.result(RUN_ID),
        ok("https://cdn/speech.flac"),
    )
    assert ours.output_url == sdk == "https://cdn/speech.flac"


async def test_tts_audio_raw_bytes() -> None:
    flac = httpx.Response(200, headers={"content-type": "audio/flac"}, content=b"fLaC" + AUDIO)

    async def read_all(client: AsyncCambClient) -> bytes:
        return b"".join([chunk async for chunk in client.tts.audio(RUN_ID)])

    sdk, ours = await check_request(
        "GET /tts-result/{run_id}",
        lambda s: s.text_to_speech.get_tts_run_info(RUN_ID),
        read_all,
        flac,
        expect=RAW_DEFAULT,
    )
    assert ours == b"fLaC" + AUDIO
    assert isinstance(sdk, UnicodeDecodeError)  # camb-sdk cannot read audio
    # Named explicitly, camb-sdk's request is exactly ours.
    sdk_request, _ = await via_sdk(
        lambda s: s.text_to_speech.get_tts_run_info(RUN_ID, output_type="raw_bytes"), flac
    )
    our_request, _ = await via_ours(read_all, flac)
    assert differences("raw", sdk_request, our_request) == set()


async def test_translation_result() -> None:
    sdk, ours = await check_request(
        "GET /translation-result/{run_id}",
        lambda s: s.translation.get_translation_result(RUN_ID),
        lambda c: c.translation.result(RUN_ID),
        ok(TRANSLATION),
    )
    assert list(ours.texts) == sdk.texts


async def test_transcription_result() -> None:
    sdk, ours = await check_request(
        "GET /transcription-result/{run_id}",
        lambda s: s.transcription.get_transcription_result(RUN_ID),
        lambda c: c.transcription.result(RUN_ID),
        ok(TRANSCRIPTION),
    )
    same_segments(ours.transcript, sdk.transcript)


# -------------------------------------------------------------------- batch results x4


async def test_dub_batch() -> None:
    answer = {"11": DUB_FULL, "12": {"54": DUB_NULLS}, "4242": {}}
    sdk, ours = await check_request(
        "POST /dubbing-results",
        lambda s: s.dub.get_dubbed_runs_results(run_ids=RUN_IDS),
        lambda c: c.dub.results(RUN_IDS),
        ok(answer),
    )
    assert set(ours) == {int(k) for k in sdk}
    for key, value in sdk.items():
        same_dub(ours[int(key)], value)


async def test_tts_batch() -> None:
    answer = {"11": TTS_URL, "12": "https://cdn/12.flac"}
    sdk, ours = await check_request(
        "POST /tts-results",
        lambda s: s.text_to_speech.get_tts_results(run_ids=RUN_IDS),
        lambda c: c.tts.results(RUN_IDS),
        ok(answer),
    )
    assert ours[11].output_url == sdk["11"].output_url and ours[12].output_url == sdk["12"]
    assert set(ours) == {11, 12}


async def test_translation_batch() -> None:
    sdk, ours = await check_request(
        "POST /translation-results",
        lambda s: s.translation.get_translation_results(run_ids=RUN_IDS),
        lambda c: c.translation.results(RUN_IDS),
        ok({"4242": TRANSLATION}),
    )
    assert {k: list(v.texts) for k, v in ours.items()} == {4242: sdk["4242"].texts}


async def test_transcription_batch() -> None:
    sdk, ours = await check_request(
        "POST /transcription-results",
        lambda s: s.transcription.get_transcription_results(run_ids=RUN_IDS),
        lambda c: c.transcription.results(RUN_IDS),
        ok({"11": TRANSCRIPTION}),
    )
    same_segments(ours[11].transcript, sdk["11"].transcript)


# ---------------------------------------------------------------------------- create x4

CREATED = full(OrchestratorPipelineCallResult, task_id=TASK_ID)


async def test_create_dub_minimal() -> None:
    sdk, ours = await check_request(
        "POST /dub",
        lambda s: s.dub.create_dub(
            video_url="https://x/v.mp4", source_language=1, target_language=54
        ),
        lambda c: c.dub.create(video_url="https://x/v.mp4", source_language=1, target_language=54),
        ok(CREATED),
        expect=DUB_DEFAULTS,
    )
    assert ours.task_id == sdk.task_id == TASK_ID


async def test_create_dub_every_option() -> None:
    srt = "1\n00:00:00,000 --> 00:00:01,000\nhi\n"
    sdk, ours = await check_request(
        "POST /dub",
        lambda s: s.dub.create_dub(
            video_url="https://x/v.mp4",
            source_language="en-us",
            target_languages=[76, 31],
            project_name="p",
            project_description="d",
            folder_id=7,
            selected_audio_tracks=[0, 2],
            add_output_as_an_audio_track=True,
            chosen_dictionaries=[3],
            ai_optimization=False,
            transcription_mode="slow",
            source_transcript={"content": srt, "format": "srt"},
            target_transcripts=[{"content": srt, "format": "srt", "language": 76}],
        ),
        lambda c: c.dub.create(
            video_url="https://x/v.mp4",
            source_language="en-us",
            target_languages=[76, 31],
            project_name="p",
            project_description="d",
            folder_id=7,
            selected_audio_tracks=[0, 2],
            add_output_as_an_audio_track=True,
            chosen_dictionaries=[3],
            ai_optimization=False,
            transcription_mode="slow",
            source_transcript=srt,
            target_transcripts={76: srt},
        ),
        ok(CREATED),
    )
    assert ours.task_id == sdk.task_id


async def test_create_tts() -> None:
    answer = full(CreateTtsOut, task_id=TASK_ID)
    sdk, ours = await check_request(
        "POST /tts",
        lambda s: s.text_to_speech.create_tts(
            text="Hello",
            voice_id=20298,
            language=35,
            gender=1,
            age=30,
            project_name="p",
            project_description="d",
            folder_id=2,
        ),
        lambda c: c.tts.create(
            text="Hello",
            voice_id=20298,
            language=35,
            gender=1,
            age=30,
            project_name="p",
            project_description="d",
            folder_id=2,
        ),
        ok(answer),
    )
    assert ours.task_id == sdk.task_id


async def test_create_translation() -> None:
    # camb-sdk leaves this answer untyped; the API sends {"task_id": ...} like the others.
    sdk, ours = await check_request(
        "POST /translate",
        lambda s: s.translation.create_translation(
            texts=["a", ""],
            source_language=1,
            target_language="ja-jp",
            age=30,
            formality=1,
            gender=2,
            chosen_dictionaries=[5],
            project_name="p",
            project_description="d",
            folder_id=3,
        ),
        lambda c: c.translation.create(
            texts=["a", ""],
            source_language=1,
            target_language="ja-jp",
            age=30,
            formality=1,
            gender=2,
            chosen_dictionaries=[5],
            project_name="p",
            project_description="d",
            folder_id=3,
        ),
        ok({"task_id": TASK_ID, **EXTRA}),
    )
    assert ours.task_id == sdk["task_id"]


async def test_create_transcription_from_url() -> None:
    sdk, ours = await check_request(
        "POST /transcribe",
        lambda s: s.transcription.create_transcription(
            language="auto", media_url="https://x/a.mp3"
        ),
        lambda c: c.transcription.create(language="auto", media_url="https://x/a.mp3"),
        ok(CREATED),
        expect=TRANSCRIBE_DEFAULTS,
    )
    assert ours.task_id == sdk.task_id


async def test_create_transcription_every_option() -> None:
    options = {"max_segment_duration_in_seconds": 4.5, "max_characters_in_segment": 42}
    sdk, ours = await check_request(
        "POST /transcribe",
        lambda s: s.transcription.create_transcription(
            language=54,
            media_url="https://x/a.mp3",
            project_name="p",
            project_description="d",
            folder_id=9,
            transcription_mode="slow",
            run_audio_cleaning=False,
            include_music_in_fg=False,
            formatting_options=options,
        ),
        lambda c: c.transcription.create(
            language=54,
            media_url="https://x/a.mp3",
            project_name="p",
            project_description="d",
            folder_id=9,
            transcription_mode="slow",
            run_audio_cleaning=False,
            include_music_in_fg=False,
            formatting_options=options,
        ),
        ok(CREATED),
    )
    assert ours.task_id == sdk.task_id


@pytest.mark.parametrize("source", ["bytes", "bytes with name and type", "path", "file object"])
async def test_create_transcription_upload(source: str, tmp_path: Path) -> None:
    path = tmp_path / "interview.wav"
    path.write_bytes(AUDIO)

    def sdk_file() -> Any:
        if source == "bytes":
            return AUDIO
        if source == "bytes with name and type":
            return ("talk.mp3", AUDIO, "audio/mpeg")
        return open(path, "rb")

    def our_file() -> dict[str, Any]:
        if source == "bytes":
            return {"file": AUDIO}
        if source == "bytes with name and type":
            return {"file": AUDIO, "filename": "talk.mp3", "content_type": "audio/mpeg"}
        if source == "path":
            return {"file": path}
        return {"file": io.BytesIO(AUDIO), "filename": "interview.wav"}

    sdk_upload = sdk_file()
    try:
        sdk, ours = await check_request(
            "POST /transcribe",
            lambda s: s.transcription.create_transcription(language=1, media_file=sdk_upload),
            lambda c: c.transcription.create(language=1, **our_file()),
            ok(CREATED),
            expect=TRANSCRIBE_DEFAULTS,
        )
    finally:
        if hasattr(sdk_upload, "close"):
            sdk_upload.close()
    assert ours.task_id == sdk.task_id


def test_every_allowed_difference_is_expected_by_a_test() -> None:
    # check_request() fails on a difference it was not told to expect and on an expected
    # one that does not occur; these are the expectations the tests above pass. An ALLOWED
    # entry no test expects would be a stale excuse.
    expected = {("POST /dub", *d) for d in DUB_DEFAULTS}
    expected |= {("POST /transcribe", *d) for d in TRANSCRIBE_DEFAULTS}
    expected |= {("GET /tts-result/{run_id}", *d) for d in RAW_DEFAULT}
    assert expected == set(ALLOWED)
    assert all(reason.strip() for reason in (*ALLOWED.values(), *ALLOWED_IN_ANSWERS.values()))


# ------------------------------------------------------------------- answers: SDK unions


def test_dub_result_union_matches_sdk() -> None:
    for answer in (DUB_FULL, {"54": DUB_FULL}, {}):
        sdk: Any = parse_obj_as(cast(Any, GetDubbedRunInfoDubResultRunIdGetResponse), answer)
        same_dub(camb_async._models.parse_dubbing_result(answer), sdk)


def test_tts_batch_value_union_matches_sdk() -> None:
    for answer in (TTS_URL, "https://cdn/x.flac"):
        sdk: Any = parse_obj_as(cast(Any, GetTtsResultsTtsResultsPostResponseValue), answer)
        ours = camb_async._models.parse_tts_result(answer)
        assert ours.output_url == (sdk if isinstance(sdk, str) else sdk.output_url)


async def test_validation_error_answer() -> None:
    # A 422 built from camb-sdk's HttpValidationError: every field, plus unknown ones
    # (FastAPI with pydantic 2 adds "input", "ctx" and sometimes "url" to each entry).
    entries = [
        {
            **full(ValidationError, loc=["body", "texts", 0], msg="Field required", type="missing"),
            "input": None,
            "ctx": {"x": 1},
        },
        full(ValidationError, loc=["query", "output_type"], msg="bad", type="enum"),
    ]
    answer = httpx.Response(422, json={**full(HttpValidationError, detail=entries)})
    _, sdk_error = await via_sdk(lambda s: s.translation.get_translation_result(RUN_ID), answer)
    with pytest.raises(camb_async.UnprocessableEntityError) as info:
        await via_ours(lambda c: c.translation.result(RUN_ID), answer)
    assert isinstance(sdk_error, ApiError) and sdk_error.status_code == 422
    assert [(d.loc, d.msg, d.type) for d in info.value.detail] == [
        (e.loc, e.msg, e.type) for e in sdk_error.body.detail
    ]
