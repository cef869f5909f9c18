"""Task groups for our calls: a lone exception comes out as itself, not wrapped in a group."""

from __future__ import annotations

import builtins
import importlib
from types import TracebackType

import anyio
import anyio.abc

__all__ = ["EXCEPTION_GROUP", "create_task_group", "lone_exception"]

#: BaseExceptionGroup (built in from Python 3.11; anyio's ``exceptiongroup`` backport before).
EXCEPTION_GROUP: type[BaseException] = (
    getattr(builtins, "BaseExceptionGroup", None)
    or importlib.import_module("exceptiongroup").BaseExceptionGroup
)


def lone_exception(group: BaseException) -> BaseException | None:
    """The one exception inside a task group's exception group, or None if it holds more.

    Trio's nurseries wrap even a lone exception, e.g. a ``KeyboardInterrupt`` trio delivers to
    the main task while it waits on a task group; ``except KeyboardInterrupt`` would miss it.
    Our calls re-raise it alone, as on asyncio.
    """
    exc = group
    while isinstance(exc, EXCEPTION_GROUP):
        members = exc.exceptions  # type: ignore[attr-defined]
        if len(members) != 1:
            return None
        exc = members[0]
    return exc


class _UnwrappingTaskGroup:
    """An anyio task group that re-raises a lone exception as itself (see lone_exception)."""

    __slots__ = ("_group",)

    def __init__(self) -> None:
        self._group = anyio.create_task_group()

    async def __aenter__(self) -> anyio.abc.TaskGroup:
        return await self._group.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            return await self._group.__aexit__(exc_type, exc, tb)
        except EXCEPTION_GROUP as group:
            lone = lone_exception(group)
            if lone is None:
                raise
            raise lone from None


def create_task_group() -> _UnwrappingTaskGroup:
    """``anyio.create_task_group()`` for our calls: a lone exception leaves it unwrapped."""
    return _UnwrappingTaskGroup()
