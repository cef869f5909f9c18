"""A FastAPI app declaring the CAMB.AI task routes as the published API definition does.

Only parameters, request models and enums — no behaviour: every valid request is answered
200 ``{}``. It is the yardstick for ``FakeCambAPI``'s validation (tests/test_fake_strict.py):
for the same request, FastAPI's own status code and 422 ``detail`` entries (loc, type) must
come out of the fake too. Field lists follow camb-sdk 1.6.6 (generated from the same
definition) and the published reference ("Get Text-to-Speech Result": ``output_type`` is an
enum of ``raw_bytes`` | ``file_url``, default ``raw_bytes``).
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, Form, Query, UploadFile
from pydantic import BaseModel

LanguageInput = int | str


class OutputType(str, enum.Enum):
    raw_bytes = "raw_bytes"
    file_url = "file_url"


class DubSRTInput(BaseModel):
    content: str
    format: Literal["srt"] = "srt"


class DubTargetSRTInput(DubSRTInput):
    language: LanguageInput


class Project(BaseModel):
    project_name: str | None = None
    project_description: str | None = None
    folder_id: int | None = None


class EndToEndDubbingRequest(Project):
    video_url: str
    source_language: LanguageInput
    target_language: LanguageInput | None = None
    target_languages: list[LanguageInput] | None = None
    selected_audio_tracks: list[int] | None = None
    add_output_as_an_audio_track: bool | None = None
    chosen_dictionaries: list[int] | None = None
    ai_optimization: bool | None = None
    transcription_mode: Literal["fast", "slow"] | None = "fast"
    source_transcript: DubSRTInput | None = None
    target_transcripts: list[DubTargetSRTInput] | None = None


class CreateTTSRequest(Project):
    text: str
    voice_id: int
    language: int
    gender: int | None = None
    age: int | None = None


class CreateTranslationRequest(Project):
    texts: list[str]
    source_language: LanguageInput
    target_language: LanguageInput
    age: int | None = None
    formality: int | None = None
    gender: int | None = None
    chosen_dictionaries: list[int] | None = None


class RunIDsRequestPayload(BaseModel):
    run_ids: list[int]


app = FastAPI()
OK: dict[str, Any] = {}


async def status(task_id: str, run_id: int | None = None) -> dict[str, Any]:
    return OK


for _kind in ("dub", "tts", "translate", "transcribe"):
    app.add_api_route(f"/{_kind}/{{task_id}}", status, methods=["GET"])


@app.post("/dub")
async def create_dub(body: EndToEndDubbingRequest, run_id: int | None = None) -> dict[str, Any]:
    return OK


@app.post("/tts")
async def create_tts(body: CreateTTSRequest, run_id: int | None = None) -> dict[str, Any]:
    return OK


@app.post("/translate")
async def create_translation(
    body: CreateTranslationRequest, run_id: int | None = None
) -> dict[str, Any]:
    return OK


@app.post("/transcribe")
async def create_transcription(
    language: Annotated[LanguageInput, Form()],
    media_file: Annotated[UploadFile | None, File()] = None,
    media_url: Annotated[str | None, Form()] = None,
    file: Annotated[UploadFile | None, File()] = None,
    audio_url: Annotated[str | None, Form()] = None,
    project_name: Annotated[str | None, Form()] = None,
    project_description: Annotated[str | None, Form()] = None,
    folder_id: Annotated[int | None, Form()] = None,
    transcription_mode: Annotated[Literal["fast", "slow"] | None, Form()] = "fast",
    run_audio_cleaning: Annotated[bool, Form()] = True,
    include_music_in_fg: Annotated[bool, Form()] = True,
    formatting_options: Annotated[str | None, Form()] = None,
) -> dict[str, Any]:
    return OK


@app.get("/dub-result/{run_id}")
@app.get("/translation-result/{run_id}")
async def single_result(run_id: int) -> dict[str, Any]:
    return OK


@app.get("/tts-result/{run_id}")
async def tts_result(
    run_id: int, output_type: Annotated[OutputType, Query()] = OutputType.raw_bytes
) -> dict[str, Any]:
    return OK


@app.get("/transcription-result/{run_id}")
async def transcription_result(
    run_id: int, format_type: str | None = None, data_type: str | None = None
) -> dict[str, Any]:
    # Open strings: camb-sdk types them Literal[...] | Any, and the sources disagree on the
    # data_type values (camb-sdk: raw_data | file; the reference's prose: json | file).
    return OK


@app.post("/dubbing-results")
@app.post("/tts-results")
@app.post("/translation-results")
async def batch(body: RunIDsRequestPayload, run_id: int | None = None) -> dict[str, Any]:
    return OK


@app.post("/transcription-results")
async def transcription_batch(body: RunIDsRequestPayload) -> dict[str, Any]:
    return OK
