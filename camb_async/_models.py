"""Typed models and the one cattrs converter: the only place JSON meets types.

The converter is strict about primitives (a number where a string belongs is an error, not
``str(3)``) and ignores unknown keys, because the API adds fields over time and a client that
breaks on a new field is worse than one that drops it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

import attrs
import cattrs

from ._language import Language

__all__ = [
    "CreatedTask",
    "DubbingOutcome",
    "DubbingResult",
    "Language",
    "ModelError",
    "StatusResult",
    "TTSResult",
    "TaskKind",
    "TaskResult",
    "TaskStatus",
    "TranscriptSegment",
    "TranscriptionResult",
    "TranslationResult",
    "ValidationDetail",
    "converter",
    "parse_status",
    "structure",
]

T = TypeVar("T")


class TaskKind(str, enum.Enum):
    """The four polled task kinds; values are the API's path words."""

    DUB = "dub"
    TTS = "tts"
    TRANSLATION = "translate"
    TRANSCRIPTION = "transcribe"

    # Aliases spelled like the path words.
    TRANSLATE = "translate"
    TRANSCRIBE = "transcribe"

    def __str__(self) -> str:
        return self.value


class TaskStatus(str, enum.Enum):
    """A task's status. ``UNKNOWN`` stands for any value this version does not know."""

    SUCCESS = "SUCCESS"
    PENDING = "PENDING"
    TIMEOUT = "TIMEOUT"
    ERROR = "ERROR"
    PAYMENT_REQUIRED = "PAYMENT_REQUIRED"
    UNKNOWN = "UNKNOWN"

    @property
    def is_terminal(self) -> bool:
        """SUCCESS, ERROR, TIMEOUT or PAYMENT_REQUIRED: the task will not change again."""
        return self in _TERMINAL

    def __str__(self) -> str:
        return self.value


_TERMINAL = frozenset(
    {TaskStatus.SUCCESS, TaskStatus.ERROR, TaskStatus.TIMEOUT, TaskStatus.PAYMENT_REQUIRED}
)
_STATUS_BY_TEXT: dict[str, TaskStatus] = {s.value: s for s in TaskStatus}


@attrs.frozen(slots=True)
class StatusResult:
    """One observed status of one task.

    ``raw_status`` is the text the API sent; it differs from ``status.value`` only when the
    status is ``UNKNOWN`` (a value newer than this client), which is deliberately not terminal:
    polling on is safer than declaring a job finished that may not be.
    """

    kind: TaskKind
    task_id: str
    status: TaskStatus
    raw_status: str
    run_id: int | None = None
    message: str | dict[str, Any] | None = None
    exception_reason: str | None = None

    @property
    def is_terminal(self) -> bool:
        """Whether the task has finished (successfully or not)."""
        return self.status in _TERMINAL

    @property
    def is_success(self) -> bool:
        """Whether the task finished with SUCCESS (its ``run_id`` names the result)."""
        return self.status is TaskStatus.SUCCESS


@attrs.frozen(slots=True)
class ValidationDetail:
    """One entry of a 422 answer's ``detail`` list."""

    loc: list[str | int]
    msg: str
    type: str


class ModelError(Exception):
    """A JSON document did not match the model; turned into ``APIError`` by the client."""


# --------------------------------------------------------------------------------- converter


def _strict_str(value: Any, _: Any) -> str:
    if isinstance(value, str):
        return value
    raise TypeError(f"expected a string, got {type(value).__name__}")


def _strict_int(value: Any, _: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TypeError(f"expected an integer, got {type(value).__name__}")


def _strict_float(value: Any, _: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"expected a number, got {type(value).__name__}")


def _strict_bool(value: Any, _: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise TypeError(f"expected a boolean, got {type(value).__name__}")


def _str_or_int(value: Any, _: Any) -> str | int:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return value
    raise TypeError(f"expected a string or integer, got {type(value).__name__}")


#: Run ids are positive and fit the API's 64-bit signed integers.
_MAX_RUN_ID = 2**63 - 1


def _optional_run_id(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        run_id = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 20:
        run_id = int(value)  # isascii: int() also reads other scripts' digits, and not "²"
    else:
        raise TypeError(f"run_id: expected an integer, got {type(value).__name__}")
    if not 0 < run_id <= _MAX_RUN_ID:
        raise ValueError(f"run_id out of range (1 to 2**63-1): {str(run_id)[:30]}")
    return run_id


def _optional_message(value: Any) -> str | dict[str, Any] | None:
    if value is None or isinstance(value, (str, dict)):
        return value
    raise TypeError(f"message: expected a string or object, got {type(value).__name__}")


def _optional_str(value: Any, field: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"{field}: expected a string, got {type(value).__name__}")


converter = cattrs.Converter(forbid_extra_keys=False)
converter.register_structure_hook(str, _strict_str)
converter.register_structure_hook(int, _strict_int)
converter.register_structure_hook(float, _strict_float)
converter.register_structure_hook(bool, _strict_bool)
converter.register_structure_hook(str | int, _str_or_int)


def structure(data: Any, cls: type[T]) -> T:
    """Structure ``data`` into ``cls`` with the converter; any mismatch is a ``ModelError``."""
    try:
        return converter.structure(data, cls)
    except Exception as exc:  # cattrs raises ClassValidationError / TypeError / KeyError ...
        raise ModelError(_describe(exc)) from None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        parts = [_describe(e) for e in exc.exceptions[:3]]
        return "; ".join(parts)
    return f"{type(exc).__name__}: {exc}"[:200]


def parse_status(kind: TaskKind, task_id: str, data: Any) -> StatusResult:
    """Turn a status answer into a ``StatusResult``.

    Hand-written rather than generated: this runs once per poll, so it is the hottest
    structuring in the package, and it must also keep unknown status text verbatim.
    """
    if not isinstance(data, Mapping):
        raise ModelError(f"expected a JSON object, got {type(data).__name__}")
    raw = data.get("status")
    if not isinstance(raw, str):
        raise ModelError("status: missing or not a string")
    try:
        return StatusResult(
            kind,
            task_id,
            _STATUS_BY_TEXT.get(raw, TaskStatus.UNKNOWN),
            raw,
            _optional_run_id(data.get("run_id")),
            _optional_message(data.get("message")),
            _optional_str(data.get("exception_reason"), "exception_reason"),
        )
    except (TypeError, ValueError) as exc:
        raise ModelError(str(exc)) from None


def parse_validation_details(data: Any) -> list[ValidationDetail]:
    """The ``detail`` entries of a 422 answer.

    Entry by entry, so one malformed entry does not hide the others; a plain-text
    ``detail`` (as some servers send) becomes one entry with an empty ``loc``, so the
    server's reason is never lost.
    """
    if not isinstance(data, Mapping):
        return []
    detail = data.get("detail")
    if isinstance(detail, str):
        return [ValidationDetail(loc=[], msg=detail[:500], type="")]
    if not isinstance(detail, list):
        return []
    return [d for d in map(_detail_or_none, detail[:100]) if d is not None]


def _detail_or_none(entry: Any) -> ValidationDetail | None:
    try:
        return structure(entry, ValidationDetail)
    except ModelError:
        return None


Parser = Callable[[Any], T]


# ------------------------------------------------------------------------ results (issue 4)
#
# Result models of the four task kinds and the ``Language`` ids. Results are rare next to
# status checks (one per finished task), so they go through the generated cattrs structuring
# rather than hand-written parsers. Sequences are tuples so the frozen models really are
# immutable; unknown keys are ignored like everywhere else.


@attrs.frozen(slots=True)
class TranscriptSegment:
    """One timed line of a transcript (dubbing and transcription results); times in seconds."""

    start: float
    end: float
    text: str
    speaker: str


@attrs.frozen(slots=True)
class DubbingResult:
    """A finished dub: the dubbed audio, the dubbed video if one was made, the transcript."""

    audio_url: str
    transcript: tuple[TranscriptSegment, ...]
    video_url: str | None = None


@attrs.frozen(slots=True)
class TTSResult:
    """A finished text-to-speech run: a pre-signed URL of the audio (``output_type=file_url``;
    the audio itself comes from ``client.tts.audio()`` / ``save_audio()``)."""

    output_url: str


@attrs.frozen(slots=True)
class TranslationResult:
    """A finished translation: one translated text per input text, in input order."""

    texts: tuple[str, ...]


@attrs.frozen(slots=True)
class TranscriptionResult:
    """A finished transcription: its timed transcript segments."""

    transcript: tuple[TranscriptSegment, ...]


DubbingOutcome = DubbingResult | dict[str, DubbingResult]
"""What a dubbing run yields: one ``DubbingResult``, or (for a run with several target
languages) a mapping from the API's per-language key to each language's ``DubbingResult``."""

TaskResult = DubbingOutcome | TTSResult | TranslationResult | TranscriptionResult


@attrs.frozen(slots=True)
class CreatedTask:
    """The answer of a create call (``POST /dub``, ``/tts``, ``/translate``, ``/transcribe``)."""

    task_id: str


def _sequence_of(item: type[T]) -> Callable[[Any, Any], tuple[T, ...]]:
    """Structure a JSON list into a tuple, refusing a string (which cattrs would split)."""
    def hook(value: Any, _: Any) -> tuple[T, ...]:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        return tuple(converter.structure(v, item) for v in value)
    return hook


def _is_type(wanted: Any) -> Callable[[Any], bool]:
    return lambda t: bool(t == wanted)


converter.register_structure_hook_func(_is_type(tuple[str, ...]), _sequence_of(str))
converter.register_structure_hook_func(_is_type(tuple[TranscriptSegment, ...]),
                                       _sequence_of(TranscriptSegment))


def parse_dubbing_result(data: Any) -> DubbingOutcome:
    """A ``DubbingResult`` or, when the answer is keyed per target language, a map of them.

    The two shapes are told apart by ``audio_url``: a single result must carry it, and a
    language key is never spelled like a result field. ``{}`` is the map with no languages
    (the API's schema allows it, and the official SDK reads it so), not an error.
    """
    if isinstance(data, Mapping) and "audio_url" not in data:
        return {str(k): structure(v, DubbingResult) for k, v in data.items()}
    return structure(data, DubbingResult)


def parse_tts_result(data: Any) -> TTSResult:
    """``{"output_url": ...}``; a bare URL string (the other shape the API's schema allows)
    is accepted as the output URL, any other string is refused rather than guessed at."""
    if isinstance(data, str):
        if data.startswith(("https://", "http://")):
            return TTSResult(data)
        raise ModelError(f"tts result: expected an object or a URL, got {data[:60]!r}")
    return structure(data, TTSResult)


def parse_translation_result(data: Any) -> TranslationResult:
    return structure(data, TranslationResult)


def parse_transcription_result(data: Any) -> TranscriptionResult:
    return structure(data, TranscriptionResult)


def parse_created(data: Any) -> CreatedTask:
    return structure(data, CreatedTask)


def parse_batch(data: Any, requested: Collection[int], parse_one: Callable[[Any], T]
                ) -> dict[int, T]:
    """A batch answer ``{"<run_id>": result}`` -> ``{run_id: parsed}``.

    Keys are run ids as strings. Keys that were not asked for are dropped (a server cannot
    slip in results for runs the caller did not name); runs the answer leaves out are simply
    absent, and the caller decides what that means.
    """
    if not isinstance(data, Mapping):
        raise ModelError(f"batch results: expected a JSON object, got {type(data).__name__}")
    out: dict[int, T] = {}
    for key, value in data.items():
        try:
            run_id = int(key)
        except (TypeError, ValueError):
            raise ModelError(f"batch results: key {str(key)[:40]!r} is not a run id") from None
        if run_id in requested and value is not None:  # null = no result: leave it absent
            try:
                out[run_id] = parse_one(value)
            except ModelError as exc:
                raise ModelError(f"run {run_id}: {exc}") from None
    return out


# ------------------------------------------------------------------------ duration hints

#: Units a ``DurationHint`` may be in. A kind's durations are related to one unit at a time
#: (characters do not predict what bytes do), so each unit has its own learned relation.
HINT_UNITS = ("chars", "bytes", "seconds")


def _hint_size(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"hint size must be a number, got {type(value).__name__}")
    if not (value > 0 and value < float("inf")):
        raise ValueError(f"hint size must be a positive finite number, got {value!r}")
    return float(value)


@attrs.frozen(slots=True)
class DurationHint:
    """What is known of a task's input, so polling can expect how long it will take.

    ``size`` is in ``unit``: ``"chars"`` (text to speak or translate), ``"bytes"`` (an
    uploaded file) or ``"seconds"`` (media duration). Handles from ``create()`` carry one
    when the input tells (text length, upload size); pass your own to ``create(hint=...)``
    or ``client.task(kind, id, hint=...)``. A bare number means the kind's natural unit:
    characters for TTS and translation, media seconds for dubbing and transcription. The
    adaptive policies learn, per kind and unit, how duration grows with size.
    """

    size: float = attrs.field(converter=_hint_size)
    unit: str = attrs.field(default="seconds",
                            validator=attrs.validators.in_(HINT_UNITS))


_NATURAL_UNIT = {TaskKind.TTS: "chars", TaskKind.TRANSLATION: "chars",
                 TaskKind.DUB: "seconds", TaskKind.TRANSCRIPTION: "seconds"}


def as_hint(kind: TaskKind, hint: DurationHint | float | None) -> DurationHint | None:
    """``hint=`` as the callers may give it: a ``DurationHint``, a number (the kind's natural
    unit) or ``None``."""
    if hint is None or isinstance(hint, DurationHint):
        return hint
    if isinstance(hint, bool) or not isinstance(hint, (int, float)):
        raise TypeError(f"hint must be a DurationHint or a number, got {type(hint).__name__}")
    return DurationHint(hint, _NATURAL_UNIT[kind])
