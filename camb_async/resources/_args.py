"""Argument checks and form building shared by the per-kind ``create`` calls."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import IO, Any

from .._validation import is_int, is_number

# ------------------------------------------------------------------------ routes and checks

_MAX_RUN_ID = 2**63 - 1

LanguageArg = int | str
"""A language: an API id (``int`` or ``Language``) or, where the endpoint accepts it, a locale
tag such as ``"es-es"`` (or ``"auto"`` for transcription)."""

FileArg = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]


def check_run_id(run_id: object) -> int:
    """Return ``run_id`` if it is a usable run id (a non-negative integer), else raise."""
    if not is_int(run_id):
        raise TypeError(f"run_id must be an integer, got {type(run_id).__name__}")
    if not 0 <= run_id <= _MAX_RUN_ID:
        raise ValueError(f"run_id out of range: {run_id}")
    return int(run_id)


def check_run_ids(run_ids: Iterable[int]) -> list[int]:
    """Validated run ids, duplicates dropped, first-seen order kept."""
    if isinstance(run_ids, (str, bytes)) or not isinstance(run_ids, Iterable):
        raise TypeError("run_ids must be an iterable of integers")
    return list(dict.fromkeys(check_run_id(r) for r in run_ids))


def check_language(
    value: object, name: str, *, allow_str: bool = True, allow_auto: bool = False
) -> int | str:
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
            raise ValueError(
                f"{name} must be a language id or a locale tag like 'es-es', got {value[:40]!r}"
            )
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
    if not is_int(value):
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
            if not is_number(item) or not math.isfinite(item):
                raise TypeError(f"formatting_options[{key!r}] must be a finite number")
        return json.dumps(dict(value))
    raise TypeError("formatting_options must be a mapping or JSON text")


def _form_text(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _project_fields(
    project_name: object, project_description: object, folder_id: object
) -> dict[str, str | int]:
    """The optional project fields every create takes, checked; absent ones left out."""
    fields = {
        "project_name": _opt_str(project_name, "project_name"),
        "project_description": _opt_str(project_description, "project_description"),
        "folder_id": _opt_int(folder_id, "folder_id"),
    }
    return {name: value for name, value in fields.items() if value is not None}


def _put(body: dict[str, Any], name: str, value: object) -> None:
    if value is not None:
        body[name] = value


def _check_flag(retry_unsafe: object) -> None:
    if not isinstance(retry_unsafe, bool):
        raise TypeError("retry_unsafe must be True or False")
