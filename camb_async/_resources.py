"""One TaskResource per task kind: paths and the calls that use them.

Task ids come from callers and end up in URL paths, so they are checked before any request
and then percent-encoded as exactly one path segment: no id can reach another route or
another task (``..``, ``%2F``, ``?``, ``#`` and friends are refused or encoded).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

from ._models import StatusResult, TaskKind, parse_status

if TYPE_CHECKING:
    from ._client import AsyncCambClient
    from ._handle import TaskHandle

__all__ = ["MAX_TASK_ID_LENGTH", "TaskResource", "check_task_id"]

MAX_TASK_ID_LENGTH = 512


def check_task_id(task_id: object) -> str:
    """Return ``task_id`` if it is usable as a task id, else raise ``TypeError``/``ValueError``."""
    if not isinstance(task_id, str):
        raise TypeError(f"task_id must be a string, got {type(task_id).__name__}")
    if not task_id or task_id.isspace():
        raise ValueError("task_id must not be empty or whitespace")
    if len(task_id) > MAX_TASK_ID_LENGTH:
        raise ValueError(f"task_id is longer than {MAX_TASK_ID_LENGTH} characters")
    if "/" in task_id or "\\" in task_id:
        raise ValueError(f"task_id must not contain '/' or '\\': {task_id[:60]!r}")
    if task_id in (".", ".."):
        raise ValueError(f"task_id {task_id!r} is a relative path segment")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in task_id):
        raise ValueError(f"task_id contains control characters: {task_id[:60]!r}")
    return task_id


def encode_segment(value: str) -> str:
    """Percent-encode ``value`` as one path segment (``%`` itself included)."""
    return quote(value, safe="-_.~")


class TaskResource:
    """The calls for one task kind, e.g. ``client.dub``."""

    __slots__ = ("_client", "kind", "_status_prefix")

    def __init__(self, client: AsyncCambClient, kind: TaskKind) -> None:
        self._client = client
        self.kind = kind
        self._status_prefix = f"/{kind.value}/"

    def __repr__(self) -> str:
        return f"<TaskResource {self.kind.value}>"

    def status_path(self, task_id: str) -> str:
        return self._status_prefix + encode_segment(check_task_id(task_id))

    async def status(self, task_id: str) -> StatusResult:
        """One status check: ``GET /{kind}/{task_id}``."""
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

    def task(self, task_id: str) -> TaskHandle:
        """A handle on task ``task_id``; makes no request."""
        from ._handle import TaskHandle

        return TaskHandle(self._client, self.kind, check_task_id(task_id))
