"""The routes of the task API: which path segments name which handler and task kind."""

from __future__ import annotations

from urllib.parse import parse_qsl

from .._models import TaskKind

_KINDS = {k.value: k for k in TaskKind}
_RESULT_ROUTES = {
    "dub-result": TaskKind.DUB,
    "tts-result": TaskKind.TTS,
    "translation-result": TaskKind.TRANSLATION,
    "transcription-result": TaskKind.TRANSCRIPTION,
}
_BATCH_ROUTES = {
    "dubbing-results": TaskKind.DUB,
    "tts-results": TaskKind.TTS,
    "translation-results": TaskKind.TRANSLATION,
    "transcription-results": TaskKind.TRANSCRIPTION,
}


_NOT_FOUND = b'{"detail":"Not Found"}'


def _match(segments: list[str]) -> tuple[str, str] | None:
    """``(method, handler)`` of the route ``segments`` name, or None (404)."""
    if not segments or any(not part for part in segments):
        return None
    head = segments[0]
    if len(segments) == 1:
        if head in _KINDS:
            return "POST", "create"
        if head in _BATCH_ROUTES:
            return "POST", "batch"
    elif len(segments) == 2:
        if head in _KINDS:
            return "GET", "status"
        if head in _RESULT_ROUTES:
            return "GET", "result"
    return None


def _query_params(query: str) -> dict[str, str]:
    """Query parameters as Starlette reads a scalar one: the last value of a name wins."""
    return dict(parse_qsl(query, keep_blank_values=True, errors="replace"))
