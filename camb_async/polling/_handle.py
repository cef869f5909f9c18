"""TaskHandle: an awaitable reference to one task. Creating one makes no request."""

from __future__ import annotations

import math
import os
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import anyio

from .._errors import (
    APIError,
    CambError,
    ClientClosedError,
    TaskFailedError,
    WaitTimeoutError,
    is_transient,
    unanswered,
)
from .._models import DurationHint, StatusResult, TaskKind, as_hint
from ._policy import PollPolicy, final_poll_time, next_poll_delay

if TYPE_CHECKING:
    from .._client import AsyncCambClient

__all__ = ["TaskHandle"]

#: The result type of a handle's task: ``TTSResult`` for ``client.tts``, and so on.
R_co = TypeVar("R_co", covariant=True)


class TaskHandle(Generic[R_co]):
    """One task of one kind on one client.

    ``await handle`` polls with the kind's default ``PollPolicy`` until the task is terminal
    and returns its final ``StatusResult``. ``created_at`` (the event loop's clock) is set for
    handles returned by ``create()``; it tells polling policies how old the task is.
    ``hint`` (a ``DurationHint``, or a number in the kind's natural unit) is what is known of
    the task's input size; adaptive policies use it to expect the task's duration.

    Generic in its result type: ``client.tts.task(id)`` is a ``TaskHandle[TTSResult]``,
    so ``await handle.result()`` is a ``TTSResult`` to a type checker. Handles come from
    ``client.<kind>.task()``, ``client.task()`` and ``create()``; build one directly only
    when the kind is known at run time (it is then ``TaskHandle[Any]``).

    Args:
        client: the client whose budget and connections the handle's requests use.
        kind: the task's kind.
        task_id: the id the API gave the task.
        created_at: when the task was created, on the event loop's clock (``None`` if
            unknown).
        hint: what is known of the task's input size, for adaptive polling.
    """

    __slots__ = ("_client", "kind", "task_id", "created_at", "hint")

    def __init__(
        self,
        client: AsyncCambClient,
        kind: TaskKind,
        task_id: str,
        created_at: float | None = None,
        hint: DurationHint | float | None = None,
    ) -> None:
        self._client = client
        self.kind = kind
        self.task_id = task_id
        self.created_at = created_at
        self.hint: DurationHint | None = as_hint(kind, hint)

    def __repr__(self) -> str:
        return f"<TaskHandle {self.kind.value} {self.task_id!r}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TaskHandle):
            return NotImplemented
        return (
            self._client is other._client
            and self.kind is other.kind
            and self.task_id == other.task_id
        )

    def __hash__(self) -> int:
        return hash((id(self._client), self.kind, self.task_id))

    kind: TaskKind
    task_id: str
    created_at: float | None

    @property
    def client(self) -> AsyncCambClient:
        """The client this handle polls through."""
        return self._client

    async def status(self) -> StatusResult:
        """One status check, no waiting: ``GET /{kind}/{task_id}``."""
        return await self._client.resource(self.kind).status(self.task_id)

    def watch(self, *, policy: PollPolicy | None = None) -> AsyncGenerator[StatusResult, None]:
        """Yield every observed status until (and including) the terminal one.

        Transient failures (429, 5xx, connection problems, garbled answers) that outlast the
        client's own retries are retried at the policy's pace up to ``policy.max_errors``
        times in a row before they are raised; a connection failure while the server answered
        nothing at all (unreachable) is raised at once.

        Args:
            policy: the polling schedule; the kind's default ``PollPolicy`` if ``None``.
        """
        return self._watch(policy, math.inf)

    async def _watch(
        self, policy: PollPolicy | None, final_at: float
    ) -> AsyncGenerator[StatusResult, None]:
        # ``final_at``: a poll the policy would schedule after it goes out at ``final_at``
        # instead (the last chance before ``wait``'s deadline; see final_poll_time).
        kind = self.kind
        policy = (policy or PollPolicy.for_kind(kind))._bind(self._client, kind)
        resource = self._client.resource(kind)
        stats = self._client.completion_stats
        known_start = self.created_at is not None
        start = self.created_at if self.created_at is not None else anyio.current_time()
        hint = self.hint
        if known_start:
            first = next_poll_delay(
                policy.first_interval(anyio.current_time() - start, hint), final_at
            )
            if first > 0:
                await self._client._sleep(first)
        polls = errors = 0
        last_pending = 0.0  # age at the last poll that saw the task pending
        watching = False  # counted as pending in the completion statistics
        try:
            while True:
                answers = self._client._answers
                try:
                    result = await resource.status(self.task_id)
                except CambError as exc:
                    if (
                        isinstance(exc, ClientClosedError)
                        or not is_transient(exc)
                        or errors >= policy.max_errors
                        or unanswered(exc, self._client, answers)
                    ):
                        raise
                    errors += 1
                    await self._client._sleep(
                        next_poll_delay(
                            policy.next_interval(
                                polls + errors, anyio.current_time() - start, hint
                            ),
                            final_at,
                        )
                    )
                    continue
                polls += 1
                errors = 0
                age = anyio.current_time() - start
                if result.is_terminal:
                    stats.completed(
                        kind,
                        start,
                        last_pending if polls > 1 else 0.0,
                        age,
                        known_start=known_start,
                        tracked=watching,
                        hint=hint,
                    )
                    watching = False
                    yield result
                    return
                if not watching:
                    stats.started(kind, start, hint)
                    watching = True
                last_pending = age
                yield result
                await self._client._sleep(
                    next_poll_delay(
                        policy.next_interval(polls, anyio.current_time() - start, hint), final_at
                    )
                )
        finally:
            if watching:  # stopped while pending (timeout, cancel, error): it ran longer
                stats.abandoned(kind, start, last_pending, hint)

    async def wait(
        self, timeout: float | None = None, *, policy: PollPolicy | None = None
    ) -> StatusResult:
        """Poll until terminal and return the final status.

        Raises ``WaitTimeoutError`` (a ``TimeoutError``) carrying the last observed status if
        ``timeout`` seconds pass first. When the policy's next poll would come after the
        deadline, the task is polled once more just before it (up to a second early), so a
        task that finished during a long gap is not reported unfinished.

        Args:
            timeout: seconds to wait at most; ``None`` waits as long as the task runs.
            policy: the polling schedule; the kind's default ``PollPolicy`` if ``None``.
        """
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0
        ):
            raise ValueError(f"timeout must be a non-negative number of seconds, got {timeout!r}")
        last: StatusResult | None = None
        now = anyio.current_time()
        final_at = final_poll_time(timeout, now)
        with anyio.move_on_at(now + timeout if timeout is not None else math.inf) as scope:
            async with aclosing(self._watch(policy, final_at)) as statuses:
                async for last in statuses:  # noqa: B007
                    pass
        if scope.cancelled_caught or last is None or not last.is_terminal:
            state = last.raw_status if last is not None else "not yet polled"
            raise WaitTimeoutError(
                f"{self.kind.value} task {self.task_id!r} not finished after {timeout}s "
                f"(last status: {state})",
                last,
            )
        return last

    def __await__(self) -> Generator[Any, None, StatusResult]:
        return self.wait().__await__()

    async def result(
        self,
        timeout: float | None = None,
        *,
        policy: PollPolicy | None = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, str | int] | None = None,
    ) -> R_co:
        """Wait until the task is terminal, then fetch its result (one more request).

        Returns the kind's result model: ``DubbingResult`` (or a per-language map of them),
        ``TTSResult``, ``TranslationResult`` or ``TranscriptionResult``. ``timeout`` bounds
        the wait (``WaitTimeoutError``); the fetch is one ordinary request. A task that ended
        ERROR, TIMEOUT or PAYMENT_REQUIRED raises ``TaskFailedError`` carrying its final
        status, so callers never mistake a failed job for a missing result.

        Args:
            timeout: seconds to wait for the task at most (the fetch is not counted).
            policy: the polling schedule; the kind's default ``PollPolicy`` if ``None``.
            extra_headers: headers added to the result request (never ``x-api-key``).
            extra_query: query parameters added to the result request.
        """
        final = await self.wait(timeout, policy=policy)
        result = await self._client.resource(self.kind)._result(
            run_id_of(final, self._client._redact),
            extra_headers=extra_headers,
            extra_query=extra_query,
        )
        return cast(R_co, result)

    async def save_audio(
        self,
        path: str | os.PathLike[str],
        timeout: float | None = None,
        *,
        policy: PollPolicy | None = None,
        deadline: float | None = None,
        extra_headers: Mapping[str, str] | None = None,
        extra_query: Mapping[str, str | int] | None = None,
    ) -> int:
        """TTS tasks: wait until terminal, then stream the FLAC audio to ``path`` (see
        ``client.tts.save_audio``); returns the bytes written. ``TaskFailedError`` and
        ``WaitTimeoutError`` as for ``result()``.

        Args:
            path: where the audio ends up (written beside it first, renamed when complete).
            timeout: seconds to wait for the task at most.
            policy: the polling schedule; the kind's default ``PollPolicy`` if ``None``.
            deadline: seconds the download may take at most, retries included (default
                none: each chunk must still arrive within the client's ``timeout``).
            extra_headers: headers added to the audio request (never ``x-api-key``).
            extra_query: query parameters added to the audio request.
        """
        if self.kind is not TaskKind.TTS:
            raise TypeError(f"save_audio() is for text-to-speech tasks, not {self.kind.value}")
        final = await self.wait(timeout, policy=policy)
        return await self._client.tts.save_audio(
            run_id_of(final, self._client._redact),
            path,
            deadline=deadline,
            extra_headers=extra_headers,
            extra_query=extra_query,
        )


def run_id_of(final: StatusResult, redact: Callable[[str], str] | None = None) -> int:
    """The run id of a terminal status, or the error that explains why there is none
    (``redact``: the client's, for the message)."""
    if not final.is_success:
        raise TaskFailedError(final, redact)
    if final.run_id is None:
        raise APIError(
            f"{final.kind.value} task {final.task_id!r} is SUCCESS but the API sent no run_id",
            status_code=200,
            method="GET",
            path=f"/{final.kind.value}/{final.task_id}",
        )
    return final.run_id
