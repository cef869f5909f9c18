"""``client.transcription``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._models import DurationHint, TranscriptionResult
from ..polling._handle import TaskHandle
from ._args import (
    FileArg,
    LanguageArg,
    _check_flag,
    _form_text,
    _opt_bool,
    _opt_formatting,
    _opt_mode,
    _project_fields,
    _required_str,
    check_language,
)
from ._base import _ROUTES, TaskResource, _Body, _Headers, _Query
from ._upload import _Upload

__all__ = ["TranscriptionResource"]


class TranscriptionResource(TaskResource[TranscriptionResult]):
    """``client.transcription``: transcribe media from a URL or an uploaded file."""

    __slots__ = ()

    async def create(
        self,
        *,
        language: LanguageArg,
        media_url: str | None = None,
        file: FileArg | None = None,
        filename: str | None = None,
        content_type: str | None = None,
        project_name: str | None = None,
        project_description: str | None = None,
        folder_id: int | None = None,
        transcription_mode: str | None = None,
        run_audio_cleaning: bool | None = None,
        include_music_in_fg: bool | None = None,
        formatting_options: Mapping[str, Any] | str | None = None,
        retry_unsafe: bool = False,
        hint: DurationHint | float | None = None,
        extra_headers: _Headers = None,
        extra_query: _Query = None,
        extra_body: _Body = None,
    ) -> TaskHandle[TranscriptionResult]:
        """``POST /transcribe`` as multipart form data; returns a handle.

        The media is ``media_url=`` or ``file=`` (exactly one): a path (``str`` or
        ``os.PathLike``), ``bytes``, or a binary file object. A path or file object is
        streamed in 64 KiB pieces, never read whole, so a large upload costs little memory;
        a path is reopened for a retry, a file object is rewound (one that cannot seek is
        sent once, without retries). ``language`` may be ``"auto"`` (detect).
        ``formatting_options`` is a mapping (sent as JSON text) or ready JSON text.
        ``hint``: the media's duration in seconds (or a ``DurationHint``) if you know it;
        otherwise an uploaded file's size in bytes is the handle's duration hint.
        """
        fields: list[tuple[str, str]] = [
            ("language", str(check_language(language, "language", allow_auto=True)))
        ]
        if (media_url is None) == (file is None):
            raise ValueError("pass exactly one of media_url= or file=")
        if media_url is not None:
            fields.append(("media_url", _required_str(media_url, "media_url")))
        for name, value in (
            *_project_fields(project_name, project_description, folder_id).items(),
            ("transcription_mode", _opt_mode(transcription_mode)),
            ("run_audio_cleaning", _opt_bool(run_audio_cleaning, "run_audio_cleaning")),
            ("include_music_in_fg", _opt_bool(include_music_in_fg, "include_music_in_fg")),
            ("formatting_options", _opt_formatting(formatting_options)),
        ):
            if value is not None:
                fields.append((name, _form_text(value)))
        _check_flag(retry_unsafe)
        # Every field goes out as a part without a file name, so the body is multipart even
        # when no file is attached (the endpoint takes multipart only).
        parts: list[tuple[str, Any]] = [(name, (None, value)) for name, value in fields]
        path = _ROUTES[self.kind].create_path
        if file is None:
            return await self._create(
                path,
                files=parts,
                retry_unsafe=retry_unsafe,
                hint=hint,
                extra_headers=extra_headers,
                extra_query=extra_query,
                extra_body=extra_body,
            )
        upload = _Upload.prepare(file, filename, content_type)
        try:
            if hint is None:
                size = upload.size()
                hint = DurationHint(size, "bytes") if size else None
            return await self._create(
                path,
                files=[*parts, upload.part()],
                retry_unsafe=retry_unsafe,
                max_retries=None if upload.resendable else 0,
                reopen_body=lambda: upload.reopen(parts),
                hint=hint,
                extra_headers=extra_headers,
                extra_query=extra_query,
                extra_body=extra_body,
            )
        finally:
            upload.close()
