"""FastAPI-like validation of requests against the published API definition.

Path, query and body checked the way FastAPI with pydantic 2 does in its default (lax) mode,
refused with 422 and FastAPI's ``{"detail": [{"loc", "msg", "type"}]}`` body.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from .._models import TaskKind


def _unprocessable(loc: list[str | int], msg: str, kind: str) -> tuple[int, bytes]:
    return _unprocessable_all([{"loc": loc, "msg": msg, "type": kind}])


def _unprocessable_all(problems: list[dict[str, Any]]) -> tuple[int, bytes]:
    return 422, json.dumps({"detail": problems}).encode()


# ---------------------------------------------------------------- FastAPI-like validation
#
# The published API definition (the OpenAPI document camb-sdk is generated from) validated
# the way FastAPI with pydantic 2 does in its default (lax) mode: strings stay strings, an
# integer may come as a JSON integer, an integral float, a bool or a decimal string, enums
# and literals are case-sensitive. Errors carry pydantic's ``type`` and ``msg`` and a ``loc``
# starting with "path", "query" or "body". Validators append errors and return the value
# (converted) or ``_BAD``; none recurses into unknown structure, so no input can crash them.

_BAD: Any = object()
Loc = tuple[str | int, ...]
Validator = Callable[[Any, Loc, list[dict[str, Any]]], Any]
_INT_TEXT = re.compile(r"\s*[+-]?[0-9]+(?:_[0-9]+)*(?:\.0*)?\s*", re.ASCII)
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def _error(errors: list[dict[str, Any]], loc: Loc, kind: str, msg: str) -> Any:
    errors.append({"loc": list(loc), "msg": msg, "type": kind})
    return _BAD


def _v_int(value: Any, loc: Loc, errors: list[dict[str, Any]]) -> Any:
    if isinstance(value, int):  # bools included: pydantic's lax mode takes true as 1
        return int(value)
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        if not math.isfinite(value):
            return _error(errors, loc, "finite_number", "Input should be a finite number")
        return _error(
            errors,
            loc,
            "int_from_float",
            "Input should be a valid integer, got a number with a fractional part",
        )
    if isinstance(value, str):
        if _INT_TEXT.fullmatch(value):
            digits = value.strip().replace("_", "").split(".", 1)[0]
            if len(digits.lstrip("+-")) > 4300:  # pydantic's (and CPython's) digit limit
                return _error(
                    errors,
                    loc,
                    "int_parsing_size",
                    "Unable to parse input string as an integer, exceeded maximum size",
                )
            return int(digits)
        return _error(
            errors,
            loc,
            "int_parsing",
            "Input should be a valid integer, unable to parse string as an integer",
        )
    return _error(errors, loc, "int_type", "Input should be a valid integer")


def _v_str(value: Any, loc: Loc, errors: list[dict[str, Any]]) -> Any:
    if isinstance(value, str):
        return value
    return _error(errors, loc, "string_type", "Input should be a valid string")


def _v_float(value: Any, loc: Loc, errors: list[dict[str, Any]]) -> Any:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return _error(
                errors,
                loc,
                "float_parsing",
                "Input should be a valid number, unable to parse string as a number",
            )
    return _error(errors, loc, "float_type", "Input should be a valid number")


def _v_bool(value: Any, loc: Loc, errors: list[dict[str, Any]]) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
    if isinstance(value, (int, float, str)):
        return _error(
            errors,
            loc,
            "bool_parsing",
            "Input should be a valid boolean, unable to interpret input",
        )
    return _error(errors, loc, "bool_type", "Input should be a valid boolean")


def _v_language(value: Any, loc: Loc, errors: list[dict[str, Any]]) -> Any:
    """``LanguageInput = int | str`` (a smart union: an exact type match wins)."""
    if isinstance(value, (str, int)):
        return int(value) if isinstance(value, bool) else value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    mine: list[dict[str, Any]] = []
    _v_int(value, (*loc, "int"), mine)
    _v_str(value, (*loc, "str"), mine)
    errors.extend(mine)
    return _BAD


def _literal(*allowed: str, kind: str = "literal_error") -> Validator:
    expected = " or ".join(", ".join(repr(a) for a in allowed).rsplit(", ", 1))

    def check(value: Any, loc: Loc, errors: list[dict[str, Any]]) -> Any:
        if isinstance(value, str) and value in allowed:
            return value
        return _error(errors, loc, kind, f"Input should be {expected}")

    return check


def _optional(inner: Validator) -> Validator:
    def check(value: Any, loc: Loc, errors: list[dict[str, Any]]) -> Any:
        return None if value is None else inner(value, loc, errors)

    return check


def _list_of(inner: Validator) -> Validator:
    def check(value: Any, loc: Loc, errors: list[dict[str, Any]]) -> Any:
        if not isinstance(value, (list, tuple)):
            return _error(errors, loc, "list_type", "Input should be a valid list")
        out = [inner(item, (*loc, i), errors) for i, item in enumerate(value)]
        return _BAD if any(item is _BAD for item in out) else out

    return check


Fields = dict[str, tuple[bool, Validator]]  # name -> (required, validator)


def _model(fields: Fields) -> Validator:
    def check(value: Any, loc: Loc, errors: list[dict[str, Any]]) -> Any:
        if not isinstance(value, dict):
            return _error(
                errors,
                loc,
                "model_attributes_type",
                "Input should be a valid dictionary or object to extract fields from",
            )
        before = len(errors)
        _validate_fields(value, fields, loc, errors)
        return value if len(errors) == before else _BAD

    return check


def _validate_fields(
    value: dict[str, Any], fields: Fields, loc: Loc, errors: list[dict[str, Any]]
) -> None:
    for field, (required, validator) in fields.items():
        if field not in value:
            if required:
                _error(errors, (*loc, field), "missing", "Field required")
            continue
        validator(value[field], (*loc, field), errors)


def _validate_model(value: Any, fields: Fields, loc: Loc) -> list[dict[str, Any]]:
    """Errors of a request body against a model (FastAPI's single-model body)."""
    errors: list[dict[str, Any]] = []
    if value is None:
        return [{"loc": list(loc), "msg": "Field required", "type": "missing"}]
    if not isinstance(value, dict):
        return [
            {
                "loc": list(loc),
                "type": "model_attributes_type",
                "msg": "Input should be a valid dictionary or object to extract fields from",
            }
        ]
    _validate_fields(value, fields, loc, errors)
    return errors


def _check_query(params: dict[str, str], fields: dict[str, Validator]) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    for name, validator in fields.items():
        if name in params:
            validator(params[name], ("query", name), errors)
    return errors


def _json_body(
    body: bytes, form: dict[str, Any] | None, headers: dict[str, str]
) -> tuple[Any, list[dict[str, Any]]]:
    """A JSON route's body as FastAPI reads it: decoded when the content type is JSON (or
    absent), else the raw bytes, which then fail model validation."""
    if form is not None:
        return b"<form>", []
    if not body:
        return None, []
    content_type = headers.get("content-type")
    if content_type:
        main = content_type.split(";", 1)[0].strip().lower()
        if not (
            main == "application/json"
            or (main.startswith("application/") and main.endswith("+json"))
        ):
            return body, []
    try:
        return json.loads(body), []
    except json.JSONDecodeError as exc:
        return None, [
            {"loc": ["body", exc.pos], "msg": "JSON decode error", "type": "json_invalid"}
        ]
    except (ValueError, RecursionError):
        # Nesting deeper than the parser's stack, bytes that are no text: FastAPI answers
        # 400 "There was an error parsing the body".
        return None, _UNPARSABLE


_UNPARSABLE: list[dict[str, Any]] = [{"loc": ["body"], "msg": "unparsable", "type": "400"}]
_PARSE_ERROR = (400, b'{"detail":"There was an error parsing the body"}')
_MODE = _optional(_literal("fast", "slow"))
_PROJECT: Fields = {
    "project_name": (False, _optional(_v_str)),
    "project_description": (False, _optional(_v_str)),
    "folder_id": (False, _optional(_v_int)),
}
_SRT: Fields = {"content": (True, _v_str), "format": (False, _literal("srt"))}
_CREATE_MODELS: dict[TaskKind, Fields] = {
    TaskKind.DUB: {
        **_PROJECT,
        "video_url": (True, _v_str),
        "source_language": (True, _v_language),
        "target_language": (False, _optional(_v_language)),
        "target_languages": (False, _optional(_list_of(_v_language))),
        "selected_audio_tracks": (False, _optional(_list_of(_v_int))),
        "add_output_as_an_audio_track": (False, _optional(_v_bool)),
        "chosen_dictionaries": (False, _optional(_list_of(_v_int))),
        "ai_optimization": (False, _optional(_v_bool)),
        "transcription_mode": (False, _MODE),
        "source_transcript": (False, _optional(_model(_SRT))),
        "target_transcripts": (
            False,
            _optional(_list_of(_model({**_SRT, "language": (True, _v_language)}))),
        ),
    },
    TaskKind.TTS: {
        **_PROJECT,
        "text": (True, _v_str),
        "voice_id": (True, _v_int),
        "language": (True, _v_int),
        "gender": (False, _optional(_v_int)),
        "age": (False, _optional(_v_int)),
    },
    TaskKind.TRANSLATION: {
        **_PROJECT,
        "texts": (True, _list_of(_v_str)),
        "source_language": (True, _v_language),
        "target_language": (True, _v_language),
        "age": (False, _optional(_v_int)),
        "formality": (False, _optional(_v_int)),
        "gender": (False, _optional(_v_int)),
        "chosen_dictionaries": (False, _optional(_list_of(_v_int))),
    },
}
_BATCH_MODEL: Fields = {"run_ids": (True, _list_of(_v_int))}


def _v_upload(value: Any, loc: Loc, errors: list[dict[str, Any]]) -> Any:
    if isinstance(value, dict):  # a file part (summarised by _read_form)
        return value
    return _error(
        errors, loc, "value_error", f"Value error, Expected UploadFile, received: {type(value)}"
    )


def _v_form_str(value: Any, loc: Loc, errors: list[dict[str, Any]]) -> Any:
    if isinstance(value, str):
        return value
    return _error(errors, loc, "string_type", "Input should be a valid string")


_TRANSCRIBE_FORM: Fields = {
    **_PROJECT,
    "language": (True, _v_language),
    "media_file": (False, _v_upload),
    "file": (False, _v_upload),
    "media_url": (False, _v_form_str),
    "audio_url": (False, _v_form_str),
    "transcription_mode": (False, _MODE),
    "run_audio_cleaning": (False, _v_bool),
    "include_music_in_fg": (False, _v_bool),
    "formatting_options": (False, _v_form_str),
}
_RESULT_QUERIES: dict[TaskKind, dict[str, Validator]] = {
    TaskKind.DUB: {},
    TaskKind.TTS: {"output_type": _literal("raw_bytes", "file_url", kind="enum")},
    TaskKind.TRANSLATION: {},
    # format_type / data_type are left unchecked: the sources disagree on their values
    # (camb-sdk: data_type raw_data | file; the reference's prose: json | file) and both
    # type them as open strings. camb-async never sends them.
    TaskKind.TRANSCRIPTION: {},
}


def _missing(field: str) -> dict[str, Any]:
    return {"loc": ["body", field], "msg": "Field required", "type": "missing"}


def _check_dub(request: dict[str, Any]) -> list[dict[str, Any]]:
    # Past the schema (both target fields are optional there): a dub needs a target.
    if request.get("target_language") is None and not request.get("target_languages"):
        return [_missing("target_language")]
    return []


def _check_none(request: dict[str, Any]) -> list[dict[str, Any]]:
    return []


def _check_transcription(form: dict[str, Any]) -> list[dict[str, Any]]:
    # Past the schema (every source field is optional there): one source is needed.
    if not any(form.get(k) for k in ("media_file", "media_url", "file", "audio_url")):
        return [_missing("media_file")]
    return []


_CREATE_CHECKS: dict[TaskKind, Callable[[dict[str, Any]], list[dict[str, Any]]]] = {
    TaskKind.DUB: _check_dub,
    TaskKind.TTS: _check_none,
    TaskKind.TRANSLATION: _check_none,
    TaskKind.TRANSCRIPTION: _check_transcription,
}
