"""``client.dub``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .._models import DubbingOutcome, DurationHint
from ..polling._handle import TaskHandle
from ._args import (
    LanguageArg,
    _check_flag,
    _language_list,
    _opt_bool,
    _opt_int_list,
    _opt_mode,
    _project_fields,
    _put,
    _required_str,
    check_language,
)
from ._base import _ROUTES, TaskResource, _Body, _Headers, _Query

__all__ = ["DubResource"]


class DubResource(TaskResource[DubbingOutcome]):
    """``client.dub``: create dubbing tasks, check them, fetch their results.

    A dubbing result (``DubbingOutcome``) is a ``DubbingResult``, or for a run with several
    target languages a ``{language key: DubbingResult}`` map (the API's two shapes).
    """

    __slots__ = ()

    async def create(
        self,
        *,
        video_url: str,
        source_language: LanguageArg,
        target_language: LanguageArg | None = None,
        target_languages: Sequence[LanguageArg] | None = None,
        project_name: str | None = None,
        project_description: str | None = None,
        folder_id: int | None = None,
        selected_audio_tracks: Sequence[int] | None = None,
        add_output_as_an_audio_track: bool | None = None,
        chosen_dictionaries: Sequence[int] | None = None,
        ai_optimization: bool | None = None,
        transcription_mode: str | None = None,
        source_transcript: str | None = None,
        target_transcripts: Mapping[LanguageArg, str] | None = None,
        retry_unsafe: bool = False,
        hint: DurationHint | float | None = None,
        extra_headers: _Headers = None,
        extra_query: _Query = None,
        extra_body: _Body = None,
    ) -> TaskHandle[DubbingOutcome]:
        """``POST /dub``: start dubbing ``video_url``; returns a handle on the new task.

        Give exactly one of ``target_language`` / ``target_languages``. Languages are API ids
        (``int`` or ``Language``) or locale tags such as ``"es-es"``; only the source may be
        ``"auto"``. ``source_transcript``
        and ``target_transcripts`` (``{language: srt_text}``) are inline SRT text. Omitted
        options are left out of the request, so the server's defaults apply. Everything is
        checked before a request is made. ``retry_unsafe=True`` also retries read timeouts
        and 5xx answers, at the risk of a duplicate job when an answer was lost. ``hint``:
        the video's duration in seconds (or a ``DurationHint``), if you know it; adaptive
        polling then expects the job's duration from it.
        """
        body: dict[str, Any] = {
            "video_url": _required_str(video_url, "video_url"),
            "source_language": check_language(source_language, "source_language", allow_auto=True),
        }
        if (target_language is None) == (target_languages is None):
            raise ValueError("pass exactly one of target_language= or target_languages=")
        if target_language is not None:
            body["target_language"] = check_language(
                target_language, "target_language", allow_auto=False
            )
        else:
            body["target_languages"] = _language_list(target_languages, "target_languages")
        body.update(_project_fields(project_name, project_description, folder_id))
        _put(
            body,
            "selected_audio_tracks",
            _opt_int_list(selected_audio_tracks, "selected_audio_tracks"),
        )
        _put(
            body,
            "add_output_as_an_audio_track",
            _opt_bool(add_output_as_an_audio_track, "add_output_as_an_audio_track"),
        )
        _put(body, "chosen_dictionaries", _opt_int_list(chosen_dictionaries, "chosen_dictionaries"))
        _put(body, "ai_optimization", _opt_bool(ai_optimization, "ai_optimization"))
        _put(body, "transcription_mode", _opt_mode(transcription_mode))
        if source_transcript is not None:
            body["source_transcript"] = {
                "content": _required_str(source_transcript, "source_transcript"),
                "format": "srt",
            }
        if target_transcripts is not None:
            if not isinstance(target_transcripts, Mapping):
                raise TypeError("target_transcripts must be a mapping {language: srt_text}")
            body["target_transcripts"] = [
                {
                    "content": _required_str(text, "target_transcripts value"),
                    "format": "srt",
                    "language": check_language(lang, "target_transcripts key", allow_auto=False),
                }
                for lang, text in target_transcripts.items()
            ]
        _check_flag(retry_unsafe)
        return await self._create(
            _ROUTES[self.kind].create_path,
            json_body=body,
            retry_unsafe=retry_unsafe,
            hint=hint,
            extra_headers=extra_headers,
            extra_query=extra_query,
            extra_body=extra_body,
        )
