"""Small checks shared by every configuration object and every argument that reaches a URL.

The predicates (``is_number``, ``is_int``) are the one definition of "a number" in the
package: ``bool`` is an ``int`` to Python but never a count or a rate here. The attrs
validators (``positive``, ``int_at_least``) build on them; call sites that keep their own
wording (error messages are part of what tests and users match) use the predicates directly.
Nothing here imports another module of the package: it sits at the bottom of the layers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, TypeGuard

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_CHUNK_SIZE",
    "MAX_TASK_ID_LENGTH",
    "check_chunk_size",
    "check_positive",
    "check_task_id",
    "int_at_least",
    "is_int",
    "is_number",
    "positive",
]

#: Longest task id accepted (ids end up in URL paths).
MAX_TASK_ID_LENGTH = 512
#: Run ids per batch-result request by default, and at most.
DEFAULT_CHUNK_SIZE = 100
MAX_CHUNK_SIZE = 1000


def is_number(value: object) -> TypeGuard[int | float]:
    """An ``int`` or ``float`` that is not a ``bool``."""
    return not isinstance(value, bool) and isinstance(value, (int, float))


def is_int(value: object) -> TypeGuard[int]:
    """An ``int`` that is not a ``bool``."""
    return not isinstance(value, bool) and isinstance(value, int)


def check_positive(name: str, value: object) -> None:
    """Raise unless ``value`` is a finite number > 0 (``TypeError`` if not a number)."""
    if not is_number(value):
        raise TypeError(f"{name} must be a number")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def positive(name: str) -> Callable[[Any, Any, float], None]:
    """attrs validator: a finite number > 0."""

    def check(_: Any, __: Any, value: float) -> None:
        check_positive(name, value)

    return check


def int_at_least(name: str, minimum: int) -> Callable[[Any, Any, int], None]:
    """attrs validator: an ``int`` (not ``bool``) >= ``minimum``."""

    def check(_: Any, __: Any, value: int) -> None:
        if not is_int(value) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")

    return check


_PLAIN_ID = re.compile(r"[A-Za-z0-9_.~-]+")  # unreserved characters: nothing to encode
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


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


def check_chunk_size(chunk_size: object) -> int:
    """Return ``chunk_size`` if it is an ``int`` from 1 to ``MAX_CHUNK_SIZE``, else raise."""
    if not is_int(chunk_size) or not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(
            f"chunk_size must be an integer from 1 to {MAX_CHUNK_SIZE}, got {chunk_size!r}"
        )
    return chunk_size
