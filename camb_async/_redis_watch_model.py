"""What the fleet watch list stores and hands out: its errors, ``WatchStats``, ``WatchEvent``,
and the encodings of members, metadata and results in Redis."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import attrs

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup


from ._errors import CambError
from ._models import ModelError, StatusResult, TaskKind, parse_status
from ._validation import check_task_id

if TYPE_CHECKING:
    pass

__all__ = ["RedisWatchReplyError", "RedisWatchUnavailableError", "WatchEvent", "WatchStats"]

#: ``meta`` is carried in every event: keep it small.
MAX_META_BYTES = 4096


class RedisWatchUnavailableError(CambError):
    """The watch list could not use Redis (and ``on_redis_error="raise"``, or a call such as
    ``add`` or ``stats`` that reports to its caller).

    ``redis_error`` names what went wrong: the code of Redis's error reply (``"OOM"``,
    ``"READONLY"``...) or the kind of failure (``"ConnectionError"``, ``"TimeoutError"``).
    """

    def __init__(self, message: str, *, redis_error: str = "") -> None:
        super().__init__(message)
        self.redis_error = redis_error


class RedisWatchReplyError(RedisWatchUnavailableError):
    """Redis answered with an error (``redis_error`` is its code); raised at once, whatever
    ``on_redis_error``, when Redis refuses the credentials (WRONGPASS, NOAUTH, NOPERM)."""


@attrs.frozen(kw_only=True, slots=True)
class WatchStats:
    """A snapshot of a watch list (``RedisWatchList.stats()``).

    ``tracked``: tasks not yet terminal; ``due``: of those, waiting for a worker now (expired
    leases included); ``leased``: being polled by a live worker; ``completed``: events ever
    written; ``added``: tasks ever added; ``events``: entries in the stream;
    ``oldest_due_age``: seconds the longest-waiting due task has waited (0: none waits).
    """

    tracked: int
    due: int
    leased: int
    completed: int
    added: int
    events: int
    oldest_due_age: float

    def as_dict(self) -> dict[str, float]:
        """The figures as a plain dict (for JSON)."""
        return attrs.asdict(self)


@attrs.frozen(kw_only=True, slots=True)
class WatchEvent:
    """A task of the watch list ended: its final ``StatusResult`` and the ``meta`` given to
    ``add``.

    ``result`` is ``None`` only when the task could not be checked (a 404, 422, or transient
    errors beyond its policy's ``max_errors``); ``error`` then names the ``CambError``.
    ``added`` and ``completed`` are Redis times (Unix seconds) of the ``add`` and of the poll
    that saw the end; ``id`` is the stream entry's id. Unpacks as ``result, meta = event``.
    """

    id: str
    kind: TaskKind
    task_id: str
    result: StatusResult | None
    meta: dict[str, str]
    error: str | None = None
    added: float = 0.0
    completed: float = 0.0

    def __iter__(self) -> Iterator[Any]:
        """``result, meta = event``."""
        return iter((self.result, self.meta))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _member(kind: TaskKind, task_id: str) -> str:
    return f"{kind.value}:{task_id}"


def _split(member: str) -> tuple[TaskKind, str]:
    kind, _, task_id = member.partition(":")
    return TaskKind(kind), task_id


def _entry(item: object) -> tuple[str, str]:
    """The member and meta JSON of one ``add_many`` item; a TypeError/ValueError that says
    what is wrong with a malformed one."""
    if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
        raise TypeError(
            f"add_many takes (kind, task_id) or (kind, task_id, meta) tuples, got {item!r:.80}"
        )
    kind, task_id = TaskKind(item[0]), check_task_id(item[1])
    return _member(kind, task_id), _meta_json(item[2] if len(item) == 3 else None)


def _meta_json(meta: Mapping[str, str] | None) -> str:
    if meta is None:
        return "{}"
    if not isinstance(meta, Mapping):
        raise TypeError("meta must be a mapping of str to str")
    for key, value in meta.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError("meta must map str to str")
    text = json.dumps(dict(meta), separators=(",", ":"), ensure_ascii=False)
    try:
        size = len(text.encode())
    except UnicodeEncodeError:
        raise ValueError("meta must be valid Unicode text (it has a lone surrogate)") from None
    if size > MAX_META_BYTES:
        raise ValueError(
            f"meta is larger than {MAX_META_BYTES} bytes as JSON: keep it small (ids, not payloads)"
        )
    return text


def _result_json(result: StatusResult) -> str:
    return json.dumps(
        {
            "status": result.raw_status,
            "run_id": result.run_id,
            "message": result.message,
            "exception_reason": result.exception_reason,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def _event(entry_id: str, fields: Mapping[str, str]) -> WatchEvent:
    kind, task_id = TaskKind(fields.get("kind", "")), fields.get("task_id", "")
    result: StatusResult | None = None
    error = fields.get("error") or None
    if fields.get("result"):
        try:
            result = parse_status(kind, task_id, json.loads(fields["result"]))
        except (ValueError, ModelError) as exc:
            error = f"unreadable event: {exc}"
    try:
        meta = json.loads(fields.get("meta") or "{}")
    except ValueError:
        meta = {}
    return WatchEvent(
        id=entry_id,
        kind=kind,
        task_id=task_id,
        result=result,
        meta=meta if isinstance(meta, dict) else {},
        error=error,
        added=float(fields.get("added") or 0.0),
        completed=float(fields.get("completed") or 0.0),
    )


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that ended a worker (not a group of it and the cancellations it caused)."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    errors = [exc for exc in leaves if isinstance(exc, Exception)]
    if len(errors) == len(leaves):
        return next((exc for exc in errors if isinstance(exc, CambError)), errors[0])
    return group


class _Claimed:
    """A task this worker holds a lease on."""

    __slots__ = ("member", "kind", "task_id", "age0", "at", "polls", "errors")

    def __init__(self, member: str, age0: float, at: float, polls: int, errors: int) -> None:
        self.member = member
        self.kind, self.task_id = _split(member)
        self.age0 = age0  # the task's age (Redis time) when claimed
        self.at = at  # when claimed, on this process' clock
        self.polls = polls
        self.errors = errors
