"""``client.tts``: results as a file URL, or the audio streamed."""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any

import anyio

from .._download import save_atomically
from .._errors import APITimeoutError
from .._models import DurationHint, TTSResult
from ..polling._handle import TaskHandle
from ._args import (
    _check_flag,
    _opt_int,
    _project_fields,
    _put,
    _required_int,
    _required_str,
    check_language,
    check_run_id,
)
from ._base import _RAW_AUDIO, _ROUTES, TaskResource, _as_body, _Body, _Headers, _Query

if TYPE_CHECKING:
    from .._reading import BodyStream

__all__ = ["TTSResource"]


class TTSResource(TaskResource[TTSResult]):
    """``client.tts``: the legacy polled text-to-speech flow.

    CAMB.AI's reference marks create-then-poll TTS as deprecated in favour of streaming TTS
    (``POST /tts-stream``); status checks and results of TTS tasks stay fully supported.

    ``result()`` asks for ``output_type=file_url`` (the API's enum is ``raw_bytes`` |
    ``file_url``, lower case, validated case-sensitively): the answer is JSON with a
    pre-signed URL of the audio, small, typed and batchable like every other kind's.
    ``audio()`` and ``save_audio()`` fetch the audio itself, the API's default ``raw_bytes``
    mode (FLAC), streamed and never held whole in memory.
    """

    __slots__ = ()

    async def audio(
        self, run_id: int, *, extra_headers: _Headers = None, extra_query: _Query = None
    ) -> AsyncIterator[bytes]:
        """The FLAC audio of run ``run_id`` as it arrives: ``async for chunk in ...``.

        ``GET /tts-result/{run_id}?output_type=raw_bytes``. Retried (budget, back-off) only
        until the first byte arrives; a connection lost after that raises
        ``APIConnectionError``. Close the iterator (``contextlib.aclosing``) if you stop
        early, so the connection is returned at once.

        Args:
            run_id: the run id a successful status carries.
            extra_headers: headers added to the request (never ``x-api-key``).
            extra_query: query parameters added to the request.
        """
        body = await self._audio_body(run_id, extra_headers, extra_query)
        try:
            async for chunk in body:
                yield chunk
        finally:
            with anyio.CancelScope(shield=True):
                await body.aclose()

    async def save_audio(
        self,
        run_id: int,
        path: str | os.PathLike[str],
        *,
        deadline: float | None = None,
        extra_headers: _Headers = None,
        extra_query: _Query = None,
    ) -> int:
        """Stream the FLAC audio of run ``run_id`` to ``path``; returns the bytes written.

        Written to a temporary file beside ``path`` and renamed over it only when complete:
        a dropped connection, an error or cancellation leaves no partial file at ``path``
        (and whatever was there before untouched). Never holds the audio in memory.

        Each chunk must arrive within the client's ``timeout``, but a server sending a byte
        just inside it keeps the download going: ``deadline`` bounds the whole call.

        Args:
            run_id: the run id a successful status carries.
            path: where the audio ends up.
            deadline: seconds the download may take at most, retries included (default
                none); past it: ``APITimeoutError``, no file at ``path``.
            extra_headers: headers added to the request (never ``x-api-key``).
            extra_query: query parameters added to the request.
        """
        run_id = check_run_id(run_id)

        def body() -> Awaitable[BodyStream]:
            return self._audio_body(run_id, extra_headers, extra_query)

        if deadline is None:
            return await save_atomically(path, body)
        if (
            isinstance(deadline, bool)
            or not isinstance(deadline, (int, float))
            or not 0 < deadline < math.inf
        ):
            raise ValueError(f"deadline must be a finite positive number, got {deadline!r}")
        with anyio.move_on_after(deadline):
            return await save_atomically(path, body)
        raise APITimeoutError(
            f"GET /tts-result/{run_id}: the audio did not arrive within deadline={deadline}s"
        )

    async def _audio_body(
        self, run_id: int, extra_headers: _Headers = None, extra_query: _Query = None
    ) -> BodyStream:
        path = _ROUTES[self.kind].result_prefix + str(check_run_id(run_id))
        body: BodyStream = await self._client._request(
            "GET",
            path,
            _as_body,
            params=_RAW_AUDIO,
            stream=True,
            extra_headers=extra_headers,
            extra_query=extra_query,
        )
        return body

    async def create(
        self,
        *,
        text: str,
        voice_id: int,
        language: int,
        gender: int | None = None,
        age: int | None = None,
        project_name: str | None = None,
        project_description: str | None = None,
        folder_id: int | None = None,
        retry_unsafe: bool = False,
        hint: DurationHint | float | None = None,
        extra_headers: _Headers = None,
        extra_query: _Query = None,
        extra_body: _Body = None,
    ) -> TaskHandle[TTSResult]:
        """``POST /tts``: speak ``text`` with voice ``voice_id``; returns a handle.

        ``language`` is an integer id (``int`` or ``Language``): this endpoint takes no
        locale strings. Omitted options are left out of the request. The handle's duration
        hint is the text's length in characters unless ``hint`` says otherwise.
        """
        body: dict[str, Any] = {
            "text": _required_str(text, "text"),
            "voice_id": _required_int(voice_id, "voice_id"),
            "language": check_language(language, "language", allow_str=False),
        }
        _put(body, "gender", _opt_int(gender, "gender"))
        _put(body, "age", _opt_int(age, "age"))
        body.update(_project_fields(project_name, project_description, folder_id))
        _check_flag(retry_unsafe)
        if hint is None and text:
            hint = DurationHint(len(text), "chars")
        return await self._create(
            _ROUTES[self.kind].create_path,
            json_body=body,
            retry_unsafe=retry_unsafe,
            hint=hint,
            extra_headers=extra_headers,
            extra_query=extra_query,
            extra_body=extra_body,
        )
