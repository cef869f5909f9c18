"""FakeCambAPI refuses what the real service (FastAPI) refuses, the way it refuses it.

Each request goes to the fake and to ``tests/reference_api.py`` (FastAPI itself, declaring
the routes as the published definition does); status codes and 422 ``detail`` entries must
agree. Malformed input must be answered 4xx, never crash the app (in-process, virtual time).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from camb_async import AsyncCambClient, TaskKind, UnprocessableEntityError
from camb_async.testing import FakeCambAPI

from ..conftest import API_KEY
from .reference_api import app as reference_app

pytestmark = pytest.mark.anyio

JSON = {"content-type": "application/json"}
DUB = {"video_url": "https://x/v.mp4", "source_language": 1, "target_language": 54}
DEEP = b"[" * 100_000 + b"]" * 100_000

# (method, url, httpx request arguments)
CASES: list[tuple[str, str, dict[str, Any]]] = [
    # the TTS output type: a case-sensitive enum
    ("GET", "/tts-result/1000?output_type=FILE_URL", {}),
    ("GET", "/tts-result/1000?output_type=RAW_BYTES", {}),
    ("GET", "/tts-result/1000?output_type=file_url", {}),
    ("GET", "/tts-result/1000?output_type=raw_bytes", {}),
    ("GET", "/tts-result/1000?output_type=", {}),
    ("GET", "/tts-result/1000?output_type=FILE_URL&output_type=file_url", {}),
    ("GET", "/transcription-result/1000?format_type=SRT", {}),
    ("GET", "/transcription-result/1000?data_type=raw_data&format_type=vtt", {}),
    # run ids: strict integers, as pydantic parses them
    ("GET", "/dub-result/%C2%B2", {}),
    ("GET", "/dub-result/abc", {}),
    ("GET", "/dub-result/1e3", {}),
    ("GET", "/dub-result/0x10", {}),
    ("GET", "/dub-result/%D9%A1", {}),
    ("GET", "/translation-result/" + "9" * 5000, {}),
    ("GET", "/translation-result/-5", {}),
    ("GET", "/translation-result/1_000", {}),
    ("GET", "/translation-result/12.0", {}),
    ("GET", "/dub/task-1?run_id=x", {}),
    # routes and methods
    ("GET", "/dubbing", {}),
    ("GET", "/dub", {}),
    ("POST", "/dub/x", {}),
    ("GET", "/dub/a%2Fb", {}),
    ("DELETE", "/tts-results", {}),
    ("GET", "/tts-result/1/extra", {}),
    # JSON bodies
    ("POST", "/dub", {"json": {"video_url": 1}}),
    ("POST", "/dub", {"json": [DUB]}),
    ("POST", "/dub", {"content": b"{bad", "headers": JSON}),
    ("POST", "/dub", {}),
    (
        "POST",
        "/dub",
        {"content": json.dumps(DUB).encode(), "headers": {"content-type": "text/plain"}},
    ),
    ("POST", "/dub", {"json": {**DUB, "source_language": 1.5}}),
    ("POST", "/dub", {"json": {**DUB, "source_language": None}}),
    ("POST", "/dub", {"json": {**DUB, "transcription_mode": "FAST"}}),
    ("POST", "/dub", {"json": {**DUB, "ai_optimization": "maybe", "folder_id": "7"}}),
    ("POST", "/dub", {"json": {**DUB, "selected_audio_tracks": [0, "x", 2.5]}}),
    ("POST", "/dub", {"json": {**DUB, "target_transcripts": [{"content": "x", "format": "SRT"}]}}),
    ("POST", "/dub", {"json": {**DUB, "source_transcript": "1\n00:00 --> 00:01\nhi"}}),
    ("POST", "/dub", {"json": {**DUB, "unknown": {"nested": [1, 2]}}}),
    ("POST", "/tts", {"json": {"text": "hi", "voice_id": "7", "language": True}}),
    ("POST", "/tts", {"json": {"text": 5, "voice_id": 1.5, "language": "en-us"}}),
    ("POST", "/translate", {"json": {"texts": "one", "source_language": 1, "target_language": 2}}),
    ("POST", "/translate", {"json": {"texts": ["a", 3], "source_language": 1}}),
    ("POST", "/dubbing-results", {"json": {"run_ids": [1, "2", True, 1.5, None]}}),
    ("POST", "/tts-results", {"json": {"run_ids": "1,2"}}),
    ("POST", "/translation-results", {"json": {}}),
    ("POST", "/transcription-results", {"json": {"run_ids": [1000]}}),
    ("POST", "/dubbing-results", {"content": DEEP, "headers": JSON}),
    ("POST", "/dub", {"content": DEEP, "headers": JSON}),
    ("POST", "/tts", {"content": b'{"text": "\xff\xfe"}', "headers": JSON}),
    # form data (transcription)
    ("POST", "/transcribe", {"json": {"language": 1}}),
    (
        "POST",
        "/transcribe",
        {"data": {"language": "1", "folder_id": "x", "media_url": "https://x/a.mp3"}},
    ),
    ("POST", "/transcribe", {"data": {"language": "1", "media_file": "not a file"}}),
    (
        "POST",
        "/transcribe",
        {
            "data": {
                "language": "auto",
                "media_url": "https://x/a.mp3",
                "run_audio_cleaning": "perhaps",
                "transcription_mode": "Slow",
            }
        },
    ),
    (
        "POST",
        "/transcribe",
        {
            "data": {"language": "1", "media_url": "https://x/a.mp3", "include_music_in_fg": "off"},
            "files": {"media_file": ("a.wav", b"RIFF")},
        },
    ),
]


def detail(response: httpx.Response) -> list[tuple[tuple[Any, ...], str, str]]:
    return [(tuple(d["loc"]), d["type"], d["msg"]) for d in response.json()["detail"]]


@pytest.mark.parametrize(
    ("method", "url", "kwargs"),
    CASES,
    ids=[f"{m} {u[:50]} {i}" for i, (m, u, _) in enumerate(CASES)],
)
async def test_fake_validates_like_fastapi(method: str, url: str, kwargs: dict[str, Any]) -> None:
    api = FakeCambAPI(api_key=API_KEY)
    api.add_task("tts", run_id=1000)
    api.add_task("transcribe", run_id=1000)
    fake_transport = httpx.ASGITransport(app=api)  # app exceptions are raised, not hidden
    async with (
        httpx.AsyncClient(
            transport=fake_transport, base_url="http://t", headers={"x-api-key": API_KEY}
        ) as fake,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=reference_app), base_url="http://t"
        ) as real,
    ):
        got = await fake.request(method, url, **kwargs)
        want = await real.request(method, url, **kwargs)
    if want.status_code == 422:
        assert got.status_code == 422, got.text[:300]
        assert detail(got) == detail(want)
    elif want.status_code in (400, 404, 405):
        assert got.status_code == want.status_code
    else:  # accepted by the definition; the fake may still not know the run or task
        assert want.status_code == 200
        assert got.status_code in (200, 404), got.text[:300]


async def test_known_crashes_are_answered_4xx(api: FakeCambAPI) -> None:
    # Item 12 of the reliability issue: these raised inside the app.
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api), base_url="http://t", headers={"x-api-key": API_KEY}
    ) as http:
        superscript = await http.get("/dub-result/%C2%B2")
        deep = [
            await http.post(path, content=DEEP, headers=JSON)
            for path in ("/dubbing-results", "/dub")
        ]
    assert superscript.status_code == 422
    assert detail(superscript) == [
        (
            ("path", "run_id"),
            "int_parsing",
            "Input should be a valid integer, unable to parse string as an integer",
        )
    ]
    # FastAPI's own answer to a body its JSON parser cannot take.
    assert [(r.status_code, r.json()) for r in deep] == [
        (400, {"detail": "There was an error parsing the body"})
    ] * 2


async def test_file_url_in_upper_case_is_refused_with_fastapi_body(api: FakeCambAPI) -> None:
    run_id = api.tasks[(TaskKind.TTS, api.add_task("tts"))].run_id
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api), base_url="http://t", headers={"x-api-key": API_KEY}
    ) as http:
        response = await http.get(f"/tts-result/{run_id}", params={"output_type": "FILE_URL"})
    assert response.status_code == 422
    assert response.json() == {
        "detail": [
            {
                "loc": ["query", "output_type"],
                "msg": "Input should be 'raw_bytes' or 'file_url'",
                "type": "enum",
            }
        ]
    }


async def test_client_error_carries_the_fakes_detail(client: AsyncCambClient) -> None:
    # The client checks run ids itself, so go one level down to send a bad one.
    with pytest.raises(UnprocessableEntityError) as info:
        await client._request("POST", "/dubbing-results", lambda d: d, json_body={"run_ids": ["x"]})
    (entry,) = info.value.detail
    assert (entry.loc, entry.type) == (["body", "run_ids", 0], "int_parsing")


def test_the_key_is_checked_after_the_route(api: FakeCambAPI) -> None:
    # FastAPI routes first: an unknown path is 404 whatever the key; a known one is 401.
    assert api._handle("GET", "/nowhere", {}, b"", 0.0)[0] == 404
    assert api._handle("GET", "/dub/x", {}, b"", 0.0)[0] == 401


_text = st.text(st.characters(codec="utf-8"), max_size=30)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_paths = st.sampled_from(
    [
        "/dub",
        "/tts",
        "/translate",
        "/transcribe",
        "/dubbing-results",
        "/tts-results",
        "/translation-results",
        "/transcription-results",
        "/dub-result/",
        "/tts-result/",
        "/translation-result/",
        "/transcription-result/",
        "/dub/",
        "/tts/",
        "/x/",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(["GET", "POST", "PUT"]),
    path=_paths,
    tail=_text,
    query=_text,
    body=_json | st.binary(max_size=40),
    fields=st.dictionaries(
        st.sampled_from(
            [
                "run_ids",
                "video_url",
                "source_language",
                "target_language",
                "texts",
                "text",
                "voice_id",
                "language",
            ]
        ),
        _json,
    ),
)
def test_no_input_crashes_the_fake(
    method: str, path: str, tail: str, query: str, body: Any, fields: dict[str, Any]
) -> None:
    api = FakeCambAPI(api_key=API_KEY)
    api.add_task("tts", run_id=7)
    headers = {"x-api-key": API_KEY, "content-type": "application/json"}
    for payload in (
        body if isinstance(body, bytes) else json.dumps(body).encode(),
        json.dumps(fields).encode(),
    ):
        status, _ = api._handle(method, path + tail, headers, payload, 0.0, query=query)
        assert status in (200, 400, 404, 405, 422)
