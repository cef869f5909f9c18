"""The typed surface of ``AsyncCambClient`` that only dispatches: ``resource(kind)`` and
``task(kind, id)`` (typed per kind when ``kind`` is a literal) and ``gather_statuses``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, cast, overload

from ._models import (
    DubbingOutcome,
    StatusResult,
    TaskKind,
    TranscriptionResult,
    TranslationResult,
    TTSResult,
)
from .polling._stream import gather_statuses
from .resources._base import TaskResource
from .resources._dub import DubResource
from .resources._transcription import TranscriptionResource
from .resources._translation import TranslationResource
from .resources._tts import TTSResource

if TYPE_CHECKING:
    from ._client import AsyncCambClient
    from ._errors import CambError
    from ._models import DurationHint
    from .polling._handle import TaskHandle
    from .polling._policy import PolicyArg

__all__ = ["_ClientSurface"]


class _ClientSurface:
    """Base of ``AsyncCambClient``: lookups by kind and the bulk call, nothing stateful."""

    _resources: dict[TaskKind, TaskResource[Any]]

    @overload
    def resource(self, kind: Literal[TaskKind.DUB, "dub"]) -> DubResource: ...

    @overload
    def resource(self, kind: Literal[TaskKind.TTS, "tts"]) -> TTSResource: ...

    @overload
    def resource(self, kind: Literal[TaskKind.TRANSLATION, "translate"]) -> TranslationResource: ...

    @overload
    def resource(
        self, kind: Literal[TaskKind.TRANSCRIPTION, "transcribe"]
    ) -> TranscriptionResource: ...

    @overload
    def resource(self, kind: TaskKind | str) -> TaskResource[Any]: ...

    def resource(self, kind: TaskKind | str) -> TaskResource[Any]:
        """The resource for ``kind`` (a ``TaskKind`` or its path word).

        Args:
            kind: a ``TaskKind`` or its path word (``"dub"``, ``"tts"``, ``"translate"``,
                ``"transcribe"``).
        """
        try:
            return self._resources[TaskKind(kind)]
        except ValueError:
            raise ValueError(
                f"unknown task kind {kind!r}; expected one of "
                f"{', '.join(k.value for k in self._resources)}"
            ) from None

    @overload
    def task(
        self,
        kind: Literal[TaskKind.DUB, "dub"],
        task_id: str,
        *,
        hint: DurationHint | float | None = None,
    ) -> TaskHandle[DubbingOutcome]: ...

    @overload
    def task(
        self,
        kind: Literal[TaskKind.TTS, "tts"],
        task_id: str,
        *,
        hint: DurationHint | float | None = None,
    ) -> TaskHandle[TTSResult]: ...

    @overload
    def task(
        self,
        kind: Literal[TaskKind.TRANSLATION, "translate"],
        task_id: str,
        *,
        hint: DurationHint | float | None = None,
    ) -> TaskHandle[TranslationResult]: ...

    @overload
    def task(
        self,
        kind: Literal[TaskKind.TRANSCRIPTION, "transcribe"],
        task_id: str,
        *,
        hint: DurationHint | float | None = None,
    ) -> TaskHandle[TranscriptionResult]: ...

    @overload
    def task(
        self, kind: TaskKind | str, task_id: str, *, hint: DurationHint | float | None = None
    ) -> TaskHandle[Any]: ...

    def task(
        self, kind: TaskKind | str, task_id: str, *, hint: DurationHint | float | None = None
    ) -> TaskHandle[Any]:
        """A handle on an existing task of any kind; makes no request.

        Typed per kind when ``kind`` is a literal: ``client.task("tts", id)`` is a
        ``TaskHandle[TTSResult]``.

        Args:
            kind: a ``TaskKind`` or its path word.
            task_id: the task's id.
            hint: what you know of its input size (a ``DurationHint``, or a number in the
                kind's natural unit: characters for TTS and translation, media seconds for
                dubbing and transcription).
        """
        return self.resource(kind).task(task_id, hint=hint)

    @overload
    async def gather_statuses(
        self,
        tasks: Iterable[str | TaskHandle[Any]],
        *,
        kind: TaskKind | str | None = None,
        wait: bool = True,
        timeout: float | None = None,
        policy: PolicyArg = None,
        return_exceptions: Literal[False] = False,
        on_update: Callable[[StatusResult], object] | None = None,
    ) -> list[StatusResult]: ...

    @overload
    async def gather_statuses(
        self,
        tasks: Iterable[str | TaskHandle[Any]],
        *,
        kind: TaskKind | str | None = None,
        wait: bool = True,
        timeout: float | None = None,
        policy: PolicyArg = None,
        return_exceptions: bool,
        on_update: Callable[[StatusResult], object] | None = None,
    ) -> list[StatusResult | CambError | ValueError]: ...

    async def gather_statuses(
        self,
        tasks: Iterable[str | TaskHandle[Any]],
        *,
        kind: TaskKind | str | None = None,
        wait: bool = True,
        timeout: float | None = None,
        policy: PolicyArg = None,
        return_exceptions: bool = False,
        on_update: Callable[[StatusResult], object] | None = None,
    ) -> list[StatusResult] | list[StatusResult | CambError | ValueError]:
        """``gather_statuses(self, ...)``; see that function for the arguments.

        Args:
            tasks: task ids (with ``kind``) or ``TaskHandle`` objects.
            kind: the kind of every task id.
            wait: poll until terminal; ``False`` takes one snapshot each.
            timeout: overall deadline in seconds.
            policy: a ``PollPolicy`` or ``{kind: PollPolicy}``.
            return_exceptions: put a task's own error in its slot instead of raising it.
            on_update: called with every observed status (may be async).
        """
        return await gather_statuses(
            cast("AsyncCambClient", self),
            tasks,
            kind=kind,
            wait=wait,
            timeout=timeout,
            policy=policy,
            return_exceptions=return_exceptions,
            on_update=on_update,
        )
