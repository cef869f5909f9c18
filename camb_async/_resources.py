"""One TaskResource per task kind: paths and the calls that use them.

Task ids come from callers and end up in URL paths, so they are checked before any request
and then percent-encoded as exactly one path segment: no id can reach another route or
another task (``..``, ``%2F``, ``?``, ``#`` and friends are refused or encoded).
"""

from __future__ import annotations

import io
import json
import math
import mimetypes
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, Generic, TypeVar, cast
from urllib.parse import quote

import anyio

from ._download import save_atomically
from ._errors import APITimeoutError, CambError
from ._models import (
    DubbingOutcome,
    DurationHint,
    ModelError,
    StatusResult,
    TaskKind,
    TranscriptionResult,
    TranslationResult,
    TTSResult,
    as_hint,
    parse_batch,
    parse_created,
    parse_dubbing_result,
    parse_status,
    parse_transcription_result,
    parse_translation_result,
    parse_tts_result,
)

if TYPE_CHECKING:
    from ._client import AsyncCambClient, BodyStream
    from ._handle import TaskHandle

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_TASK_ID_LENGTH",
    "DubResource",
    "TTSResource",
    "TaskResource",
    "TranscriptionResource",
    "TranslationResource",
    "check_task_id",
]

MAX_TASK_ID_LENGTH = 512
#: Run ids per batch-result request by default (1,000 results = 10 requests).
DEFAULT_CHUNK_SIZE = 100
#: Largest batch the client will put in one request; the API documents no cap.
MAX_CHUNK_SIZE = 1000
_MAX_RUN_ID = 2**63 - 1


def check_task_id(task_id: object) -> str:
    """Return ``task_id`` if it is usable as a task id, else raise ``TypeError``/``ValueError``."""
    if not isinstance(task_id, str):
        raise TypeError(f"task_id must be a string, got {type(task_id).__name__}")
    if not task_id or task_id.isspace():
        raise ValueError("task_id must not be empty or whitespace")
    if len(task_id) > MAX_TASK_ID_LENGTH:
        raise ValueError(f"task_id is longer than {MAX_TASK_ID_LENGTH} characters")
    if _PLAIN_ID.fullmatch(task_id) is not None and task_id not in (".", ".."):
        return task_id  # the common case: one regex in C, no per-character Python loop
    if "/" in task_id or "\\" in task_id:
        raise ValueError(f"task_id must not contain '/' or '\\': {task_id[:60]!r}")
    if task_id in (".", ".."):
        raise ValueError(f"task_id {task_id!r} is a relative path segment")
    if _CONTROL.search(task_id) is not None:
        raise ValueError(f"task_id contains control characters: {task_id[:60]!r}")
    if not task_id.isascii():
        try:  # a lone surrogate ("\udcff", what undecodable argv bytes become) cannot be sent
            task_id.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"task_id is not valid Unicode text: {task_id[:60]!r}") from None
    return task_id


_PLAIN_ID = re.compile(r"[A-Za-z0-9_.~-]+")  # unreserved characters: nothing to encode
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def encode_segment(value: str) -> str:
    """Percent-encode ``value`` as one path segment (``%`` itself included)."""
    if _PLAIN_ID.fullmatch(value) is not None:
        return value
    return quote(value, safe="-_.~")


#: A kind's result type: ``DubbingOutcome``, ``TTSResult``, ...
R = TypeVar("R")
_Headers = Mapping[str, str] | None
_Query = Mapping[str, "str | int"] | None
_Body = Mapping[str, Any] | None


class TaskResource(Generic[R]):
    """The calls for one task kind, e.g. ``client.dub``; generic in the kind's result type.

    Args:
        client: the client whose requests these are.
        kind: the task kind.
    """

    kind: TaskKind

    __slots__ = ("_client", "kind", "_status_prefix")

    def __init__(self, client: AsyncCambClient, kind: TaskKind) -> None:
        self._client = client
        self.kind = kind
        self._status_prefix = f"/{kind.value}/"

    def __repr__(self) -> str:
        return f"<TaskResource {self.kind.value}>"

    def status_path(self, task_id: str) -> str:
        """The checked, percent-encoded path of ``task_id``'s status.

        Args:
            task_id: the task's id.
        """
        return self._status_prefix + encode_segment(check_task_id(task_id))

    async def status(self, task_id: str) -> StatusResult:
        """One status check: ``GET /{kind}/{task_id}``.

        Args:
            task_id: the task's id.
        """
        return await self._fetch_status(task_id)

    async def _fetch_status(self, task_id: str, *, preacquired: bool = False) -> StatusResult:
        kind = self.kind
        try:
            path = self.status_path(task_id)
        except BaseException:
            if preacquired:
                self._client.budget.release()
            raise
        return await self._client._request(
            "GET",
            path,
            lambda data: parse_status(kind, task_id, data),
            preacquired=preacquired,
        )

    def task(self, task_id: str, *, hint: DurationHint | float | None = None) -> TaskHandle[R]:
        """A handle on task ``task_id``; makes no request.

        Args:
            task_id: the task's id.
            hint: what you know of its input size (``DurationHint``, or a number in the
                kind's natural unit), for polling.
        """
        from ._handle import TaskHandle

        return TaskHandle(self._client, self.kind, check_task_id(task_id), hint=hint)

    # ------------------------------------------------------------- results (issue 4)

    async def result(self, run_id: int, *, extra_headers: _Headers = None,
                     extra_query: _Query = None) -> R:
        """The result of run ``run_id`` as the kind's model: ``GET /{kind}-result/{run_id}``.

        Args:
            run_id: the run id a successful status carries.
            extra_headers: headers added to the request (never ``x-api-key``).
            extra_query: query parameters added to the request.
        """
        return cast(R, await self._result(run_id, extra_headers=extra_headers,
                                          extra_query=extra_query))

    async def results(self, run_ids: Iterable[int], *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                      extra_headers: _Headers = None, extra_query: _Query = None,
                      extra_body: _Body = None) -> dict[int, R]:
        """``{run_id: result}`` through the kind's batch endpoint, in chunks of ``chunk_size``
        run ids sent concurrently under the client's budget. Runs the API does not answer
        for are absent.

        Args:
            run_ids: the runs to fetch (duplicates are fetched once).
            chunk_size: run ids per request, 1 to 1000.
            extra_headers: headers added to every request (never ``x-api-key``).
            extra_query: query parameters added to every request.
            extra_body: fields added to every request's JSON body.
        """
        return await self._results(run_ids, chunk_size=chunk_size, extra_headers=extra_headers,
                                   extra_query=extra_query, extra_body=extra_body)

    async def _result(self, run_id: int, *, extra_headers: _Headers = None,
                      extra_query: _Query = None) -> Any:
        """``GET /{kind}-result/{run_id}``, parsed into the kind's result model."""
        route = _ROUTES[self.kind]
        return await self._client._request(
            "GET", route.result_prefix + str(check_run_id(run_id)), route.parse,
            params=route.result_params, extra_headers=extra_headers, extra_query=extra_query,
        )

    async def _results(self, run_ids: Iterable[int], *, chunk_size: int = 100,
                       extra_headers: _Headers = None, extra_query: _Query = None,
                       extra_body: _Body = None) -> dict[int, R]:
        ids = check_run_ids(run_ids)
        got = await self._fetch_batches(ids, check_chunk_size(chunk_size),
                                        collect_errors=False, extra_headers=extra_headers,
                                        extra_query=extra_query, extra_body=extra_body)
        return {run_id: got[run_id] for run_id in ids if run_id in got}  # caller's order

    async def _fetch_batches(self, ids: Sequence[int], chunk_size: int, *,
                             collect_errors: bool, extra_headers: _Headers = None,
                             extra_query: _Query = None, extra_body: _Body = None
                             ) -> dict[int, Any]:
        """Fetch ``ids`` through the kind's batch endpoint, ``chunk_size`` ids a request.

        Chunks go out concurrently, as many at once as the budget lets requests be in flight;
        the budget itself still paces them. With ``collect_errors`` a failed chunk's error is
        stored under each of its run ids (except errors that would fail every chunk, which
        raise); otherwise the first failure cancels the other chunks and is raised. Run ids
        the answers leave out are absent from the returned mapping.
        """
        route = _ROUTES[self.kind]
        client = self._client
        chunks = [list(ids[i:i + chunk_size]) for i in range(0, len(ids), chunk_size)]
        out: dict[int, Any] = {}
        if not chunks:
            return out
        failures: list[BaseException] = []
        pending = iter(chunks)
        n_workers = max(1, min(getattr(client.budget, "max_concurrency", 16), len(chunks)))

        async def worker(scope: anyio.CancelScope) -> None:
            for chunk in pending:
                requested = frozenset(chunk)

                def parse(data: Any, requested: frozenset[int] = requested) -> dict[int, Any]:
                    return parse_batch(data, requested, route.parse)

                try:
                    got = await client._request("POST", route.batch_path, parse,
                                                json_body={"run_ids": chunk},
                                                extra_headers=extra_headers,
                                                extra_query=extra_query,
                                                extra_body=extra_body)
                except Exception as exc:  # stored, then raised alone: never an ExceptionGroup
                    from ._polling import _fatal

                    if collect_errors and isinstance(exc, CambError) and not _fatal(exc):
                        out.update(dict.fromkeys(chunk, exc))
                        continue
                    failures.append(exc)
                    scope.cancel()
                    return
                out.update(got)

        async with anyio.create_task_group() as tg:
            for _ in range(n_workers):
                tg.start_soon(worker, tg.cancel_scope)
        if failures:
            raise failures[0]
        return out

    async def _create(self, path: str, *, json_body: Any = None, files: Any = None,
                      retry_unsafe: bool = False, max_retries: int | None = None,
                      reopen_body: Callable[[], Awaitable[Any]] | None = None,
                      hint: DurationHint | float | None = None,
                      extra_headers: _Headers = None, extra_query: _Query = None,
                      extra_body: _Body = None) -> TaskHandle[R]:
        """POST a create request and wrap the new task id in a handle.

        Not idempotent: unless ``retry_unsafe``, only failures that prove the server never saw
        the request (no connection, 429) are retried, so a lost answer cannot make two jobs.
        ``created_at`` is taken before sending: the task is at least that old, never younger.
        ``hint`` (what the input says of the task's size) is checked before sending too.
        """
        from ._handle import TaskHandle

        hint = as_hint(self.kind, hint)
        created_at = anyio.current_time()
        created = await self._client._request(
            "POST", path, _parse_task_id, json_body=json_body, files=files,
            idempotent=retry_unsafe, max_retries=max_retries, reopen_body=reopen_body,
            extra_headers=extra_headers, extra_query=extra_query, extra_body=extra_body,
        )
        return TaskHandle(self._client, self.kind, created, created_at=created_at, hint=hint)


# ---------------------------------------------------------------------------- per kind


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
            "source_language": check_language(source_language, "source_language",
                                              allow_auto=True),
        }
        if (target_language is None) == (target_languages is None):
            raise ValueError("pass exactly one of target_language= or target_languages=")
        if target_language is not None:
            body["target_language"] = check_language(target_language, "target_language",
                                                     allow_auto=False)
        else:
            body["target_languages"] = _language_list(target_languages, "target_languages")
        body.update(_project_fields(project_name, project_description, folder_id))
        _put(body, "selected_audio_tracks",
             _opt_int_list(selected_audio_tracks, "selected_audio_tracks"))
        _put(body, "add_output_as_an_audio_track",
             _opt_bool(add_output_as_an_audio_track, "add_output_as_an_audio_track"))
        _put(body, "chosen_dictionaries",
             _opt_int_list(chosen_dictionaries, "chosen_dictionaries"))
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
                {"content": _required_str(text, "target_transcripts value"), "format": "srt",
                 "language": check_language(lang, "target_transcripts key", allow_auto=False)}
                for lang, text in target_transcripts.items()
            ]
        _check_flag(retry_unsafe)
        return await self._create(_ROUTES[self.kind].create_path, json_body=body,
                                  retry_unsafe=retry_unsafe, hint=hint,
                                  extra_headers=extra_headers, extra_query=extra_query,
                                  extra_body=extra_body)


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


    async def audio(self, run_id: int, *, extra_headers: _Headers = None,
                    extra_query: _Query = None) -> AsyncIterator[bytes]:
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

    async def save_audio(self, run_id: int, path: str | os.PathLike[str], *,
                         deadline: float | None = None,
                         extra_headers: _Headers = None, extra_query: _Query = None) -> int:
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
        if (isinstance(deadline, bool) or not isinstance(deadline, (int, float))
                or not 0 < deadline < math.inf):
            raise ValueError(f"deadline must be a finite positive number, got {deadline!r}")
        with anyio.move_on_after(deadline):
            return await save_atomically(path, body)
        raise APITimeoutError(f"GET /tts-result/{run_id}: the audio did not arrive "
                              f"within deadline={deadline}s")

    async def _audio_body(self, run_id: int, extra_headers: _Headers = None,
                          extra_query: _Query = None) -> BodyStream:
        path = _ROUTES[self.kind].result_prefix + str(check_run_id(run_id))
        body: BodyStream = await self._client._request(
            "GET", path, _as_body, params=_RAW_AUDIO, stream=True,
            extra_headers=extra_headers, extra_query=extra_query)
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
        return await self._create(_ROUTES[self.kind].create_path, json_body=body,
                                  retry_unsafe=retry_unsafe, hint=hint,
                                  extra_headers=extra_headers, extra_query=extra_query,
                                  extra_body=extra_body)


class TranslationResource(TaskResource[TranslationResult]):
    """``client.translation``: translate batches of texts."""

    __slots__ = ()



    async def create(
        self,
        *,
        texts: Sequence[str],
        source_language: LanguageArg,
        target_language: LanguageArg,
        age: int | None = None,
        formality: int | None = None,
        gender: int | None = None,
        chosen_dictionaries: Sequence[int] | None = None,
        project_name: str | None = None,
        project_description: str | None = None,
        folder_id: int | None = None,
        retry_unsafe: bool = False,
        hint: DurationHint | float | None = None,
        extra_headers: _Headers = None,
        extra_query: _Query = None,
        extra_body: _Body = None,
    ) -> TaskHandle[TranslationResult]:
        """``POST /translate``: translate ``texts``; returns a handle.

        ``target_language`` must be a concrete language (not ``"auto"``). The handle's
        duration hint is the texts' total length in characters unless ``hint`` is given.
        """
        if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
            raise TypeError("texts must be a list of strings, not a single string")
        if not texts:
            raise ValueError("texts must not be empty")
        body: dict[str, Any] = {
            "texts": [_required_str(t, "texts item", allow_blank=True) for t in texts],
            "source_language": check_language(source_language, "source_language",
                                              allow_auto=True),
            "target_language": check_language(target_language, "target_language",
                                              allow_auto=False),
        }
        _put(body, "age", _opt_int(age, "age"))
        _put(body, "formality", _opt_int(formality, "formality"))
        _put(body, "gender", _opt_int(gender, "gender"))
        _put(body, "chosen_dictionaries",
             _opt_int_list(chosen_dictionaries, "chosen_dictionaries"))
        body.update(_project_fields(project_name, project_description, folder_id))
        _check_flag(retry_unsafe)
        chars = sum(len(t) for t in body["texts"])
        if hint is None and chars:
            hint = DurationHint(chars, "chars")
        return await self._create(_ROUTES[self.kind].create_path, json_body=body,
                                  retry_unsafe=retry_unsafe, hint=hint,
                                  extra_headers=extra_headers, extra_query=extra_query,
                                  extra_body=extra_body)


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
            ("language", str(check_language(language, "language", allow_auto=True))),
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
            return await self._create(path, files=parts, retry_unsafe=retry_unsafe,
                                      hint=hint, extra_headers=extra_headers,
                                      extra_query=extra_query, extra_body=extra_body)
        upload = _Upload.prepare(file, filename, content_type)
        try:
            if hint is None:
                size = upload.size()
                hint = DurationHint(size, "bytes") if size else None
            return await self._create(
                path, files=[*parts, upload.part()], retry_unsafe=retry_unsafe,
                max_retries=None if upload.resendable else 0,
                reopen_body=lambda: upload.reopen(parts), hint=hint,
                extra_headers=extra_headers, extra_query=extra_query, extra_body=extra_body,
            )
        finally:
            upload.close()


# ------------------------------------------------------------------------ routes and checks

LanguageArg = int | str
"""A language: an API id (``int`` or ``Language``) or, where the endpoint accepts it, a locale
tag such as ``"es-es"`` (or ``"auto"`` for transcription)."""

FileArg = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]


class _Route:
    __slots__ = ("create_path", "result_prefix", "batch_path", "parse", "result_params")

    def __init__(self, create_path: str, result_prefix: str, batch_path: str,
                 parse: Callable[[Any], Any],
                 result_params: Mapping[str, str | int] | None = None) -> None:
        self.create_path = create_path
        self.result_prefix = result_prefix
        self.batch_path = batch_path
        self.parse = parse
        self.result_params = result_params


_ROUTES: dict[TaskKind, _Route] = {
    TaskKind.DUB: _Route("/dub", "/dub-result/", "/dubbing-results", parse_dubbing_result),
    # The API's OutputType enum is lower case (raw_bytes | file_url) and FastAPI checks it
    # case-sensitively: FILE_URL is answered 422.
    TaskKind.TTS: _Route("/tts", "/tts-result/", "/tts-results", parse_tts_result,
                         {"output_type": "file_url"}),
    TaskKind.TRANSLATION: _Route("/translate", "/translation-result/", "/translation-results",
                                 parse_translation_result),
    TaskKind.TRANSCRIPTION: _Route("/transcribe", "/transcription-result/",
                                   "/transcription-results", parse_transcription_result),
}


_RAW_AUDIO: Mapping[str, str] = {"output_type": "raw_bytes"}


def _as_body(body: Any) -> BodyStream:
    return cast("BodyStream", body)


def _parse_task_id(data: Any) -> str:
    task_id = parse_created(data).task_id
    try:
        return check_task_id(task_id)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"task_id: {exc}") from None


def check_run_id(run_id: object) -> int:
    """Return ``run_id`` if it is a usable run id (a non-negative integer), else raise."""
    if isinstance(run_id, bool) or not isinstance(run_id, int):
        raise TypeError(f"run_id must be an integer, got {type(run_id).__name__}")
    if not 0 <= run_id <= _MAX_RUN_ID:
        raise ValueError(f"run_id out of range: {run_id}")
    return int(run_id)


def check_run_ids(run_ids: Iterable[int]) -> list[int]:
    """Validated run ids, duplicates dropped, first-seen order kept."""
    if isinstance(run_ids, (str, bytes)) or not isinstance(run_ids, Iterable):
        raise TypeError("run_ids must be an iterable of integers")
    return list(dict.fromkeys(check_run_id(r) for r in run_ids))


def check_chunk_size(chunk_size: object) -> int:
    if (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
            or not 1 <= chunk_size <= MAX_CHUNK_SIZE):
        raise ValueError(f"chunk_size must be an integer from 1 to {MAX_CHUNK_SIZE}, "
                         f"got {chunk_size!r}")
    return chunk_size


def check_language(value: object, name: str, *, allow_str: bool = True,
                   allow_auto: bool = False) -> int | str:
    """A language argument as sent on the wire: an ``int`` id, or a locale tag string."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a language id, got a bool")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"{name} must be a positive language id, got {value}")
        return int(value)  # a Language member goes out as its plain number
    if isinstance(value, str) and allow_str:
        tag = value.strip()
        if not tag or len(tag) > 35 or not all(c.isalnum() or c in "-_" for c in tag):
            raise ValueError(f"{name} must be a language id or a locale tag like 'es-es', "
                             f"got {value[:40]!r}")
        if tag.lower() == "auto" and not allow_auto:
            raise ValueError(f"{name} must be a concrete language, not 'auto'")
        return tag
    expected = "a language id (int or Language)" + (" or a locale tag" if allow_str else "")
    raise TypeError(f"{name} must be {expected}, got {type(value).__name__}")


def _language_list(values: object, name: str) -> list[int | str]:
    if isinstance(values, (str, bytes, int)) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a list of languages")
    out = [check_language(v, f"{name} item", allow_auto=False) for v in values]
    if not out:
        raise ValueError(f"{name} must not be empty")
    return out


def _required_str(value: object, name: str, *, allow_blank: bool = False) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    if not allow_blank and not value.strip():
        raise ValueError(f"{name} must not be empty")
    return value


def _required_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    return int(value)


def _opt_str(value: object, name: str) -> str | None:
    return None if value is None else _required_str(value, name, allow_blank=True)


def _opt_int(value: object, name: str) -> int | None:
    return None if value is None else _required_int(value, name)


def _opt_bool(value: object, name: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise TypeError(f"{name} must be True or False, got {type(value).__name__}")


def _opt_int_list(values: object, name: str) -> list[int] | None:
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a list of integers")
    return [_required_int(v, f"{name} item") for v in values]


def _opt_mode(value: object) -> str | None:
    if value is None:
        return None
    if value != "fast" and value != "slow":
        raise ValueError(f"transcription_mode must be 'fast' or 'slow', got {value!r}")
    return value


def _opt_formatting(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except ValueError:
            raise ValueError("formatting_options must be a mapping or JSON text") from None
        if not isinstance(decoded, dict):
            raise ValueError("formatting_options must be a JSON object")
        return value
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError("formatting_options keys must be strings")
            if (isinstance(item, bool) or not isinstance(item, (int, float))
                    or not math.isfinite(item)):
                raise TypeError(f"formatting_options[{key!r}] must be a finite number")
        return json.dumps(dict(value))
    raise TypeError("formatting_options must be a mapping or JSON text")


def _form_text(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _project_fields(project_name: object, project_description: object, folder_id: object
                    ) -> dict[str, str | int]:
    """The optional project fields every create takes, checked; absent ones left out."""
    fields = {"project_name": _opt_str(project_name, "project_name"),
              "project_description": _opt_str(project_description, "project_description"),
              "folder_id": _opt_int(folder_id, "folder_id")}
    return {name: value for name, value in fields.items() if value is not None}


def _put(body: dict[str, Any], name: str, value: object) -> None:
    if value is not None:
        body[name] = value


def _check_flag(retry_unsafe: object) -> None:
    if not isinstance(retry_unsafe, bool):
        raise TypeError("retry_unsafe must be True or False")


class _Upload:
    """The ``media_file`` part of a transcription upload, and how to resend it.

    Paths are opened here and closed after the request (reopened for a retry); bytes are
    reused; a caller's file object is rewound by httpx before each send (it seeks to 0), so
    only one that cannot seek is not resendable.
    """

    __slots__ = ("filename", "content_type", "_path", "_data", "_file", "resendable")

    def __init__(self, filename: str, content_type: str, path: str | None,
                 data: bytes | None, file: IO[bytes] | None, resendable: bool) -> None:
        self.filename = filename
        self.content_type = content_type
        self._path = path
        self._data = data
        self._file = file
        self.resendable = resendable

    @classmethod
    def prepare(cls, file: object, filename: str | None, content_type: str | None
                ) -> _Upload:
        if filename is not None:
            _required_str(filename, "filename")
            if any(c in filename for c in '\r\n"'):
                raise ValueError("filename must not contain quotes or line breaks")
        if content_type is not None:
            _required_str(content_type, "content_type")
            if any(c in content_type for c in "\r\n"):
                raise ValueError("content_type must not contain line breaks")
        if isinstance(file, (str, os.PathLike)):
            path = os.fspath(file)
            if not isinstance(path, str):
                raise TypeError("file paths must be str or os.PathLike[str]")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no such file to upload: {path!r}")
            name = filename or os.path.basename(path) or "upload"
            handle = open(path, "rb")  # noqa: SIM115 - closed by close(), after the request
            return cls(name, content_type or _guess_type(name), path, None, handle, True)
        if isinstance(file, (bytes, bytearray, memoryview)):
            name = filename or "upload"
            return cls(name, content_type or _guess_type(name), None, bytes(file), None, True)
        if isinstance(file, io.TextIOBase):
            raise TypeError("file objects must be opened in binary mode ('rb')")
        read = getattr(file, "read", None)
        if not callable(read):
            raise TypeError("file must be a path, bytes, or a binary file object, "
                            f"got {type(file).__name__}")
        fobj = cast("IO[bytes]", file)
        given = getattr(fobj, "name", None)
        name = filename or (os.path.basename(given) if isinstance(given, str) else "") \
            or "upload"
        seekable = getattr(fobj, "seekable", None)
        resendable = bool(seekable()) if callable(seekable) else False
        return cls(name, content_type or _guess_type(name), None, None, fobj, resendable)

    def size(self) -> int | None:
        """Bytes to upload, if known without reading (a duration hint), else None."""
        if self._data is not None:
            return len(self._data)
        fobj = self._file
        if fobj is None:
            return None
        try:
            return os.fstat(fobj.fileno()).st_size
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            pass
        if not self.resendable:  # cannot seek: the size is unknown until it is sent
            return None
        try:  # httpx rewinds the file before sending, so the position needn't be kept
            here = fobj.tell()
            end = fobj.seek(0, io.SEEK_END)
            fobj.seek(here)
            return end
        except (AttributeError, OSError, ValueError):
            return None

    def part(self) -> tuple[str, tuple[str, Any, str]]:
        body: Any = self._data if self._data is not None else self._file
        return ("media_file", (self.filename, body, self.content_type))

    async def reopen(self, parts: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        if self._path is not None:
            if self._file is not None:
                self._file.close()
            self._file = open(self._path, "rb")  # noqa: SIM115, ASYNC230 - a local file
        return [*parts, self.part()]

    def close(self) -> None:
        if self._path is not None and self._file is not None:
            self._file.close()
            self._file = None


def _guess_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"
