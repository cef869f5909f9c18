"""One TaskResource per task kind: paths and the calls that use them.

Task ids come from callers and end up in URL paths, so they are checked before any request
and then percent-encoded as exactly one path segment: no id can reach another route or
another task (``..``, ``%2F``, ``?``, ``#`` and friends are refused or encoded).

This module: the base class (paths, status, single and batched results, create) and the
routes of each kind; one module per kind (``_dub``, ``_tts``, ``_translation``,
``_transcription``) adds its ``create`` and extras.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast
from urllib.parse import quote

import anyio

from .._budget import concurrency_of
from .._errors import CambError, is_fatal
from .._models import (
    DurationHint,
    ModelError,
    StatusResult,
    TaskKind,
    as_hint,
    parse_batch,
    parse_created,
    parse_dubbing_result,
    parse_status,
    parse_transcription_result,
    parse_translation_result,
    parse_tts_result,
)
from .._validation import _PLAIN_ID, DEFAULT_CHUNK_SIZE, check_chunk_size, check_task_id
from ..polling._handle import TaskHandle
from ._args import check_run_id, check_run_ids

if TYPE_CHECKING:
    from .._client import AsyncCambClient
    from .._reading import BodyStream

__all__ = ["TaskResource", "encode_segment"]


def encode_segment(value: str) -> str:
    """Percent-encode ``value`` as one path segment (``%`` itself included)."""
    if _PLAIN_ID.fullmatch(value) is not None:
        return value
    return quote(value, safe="-_.~")


#: A kind's result type: ``DubbingOutcome``, ``TTSResult``, ...
R = TypeVar("R")
_Headers = Mapping[str, str] | None
_Query = Mapping[str, "str | int"] | None
_Body = Mapping[str, Any] | None


class TaskResource(Generic[R]):
    """The calls for one task kind, e.g. ``client.dub``; generic in the kind's result type.

    Args:
        client: the client whose requests these are.
        kind: the task kind.
    """

    kind: TaskKind

    __slots__ = ("_client", "kind", "_status_prefix")

    def __init__(self, client: AsyncCambClient, kind: TaskKind) -> None:
        self._client = client
        self.kind = kind
        self._status_prefix = f"/{kind.value}/"

    def __repr__(self) -> str:
        return f"<TaskResource {self.kind.value}>"

    def status_path(self, task_id: str) -> str:
        """The checked, percent-encoded path of ``task_id``'s status.

        Args:
            task_id: the task's id.
        """
        return self._status_prefix + encode_segment(check_task_id(task_id))

    async def status(self, task_id: str) -> StatusResult:
        """One status check: ``GET /{kind}/{task_id}``.

        Args:
            task_id: the task's id.
        """
        return await self._fetch_status(task_id)

    async def _fetch_status(
        self, task_id: str, *, preacquired: bool = False, in_client_scope: bool = False
    ) -> StatusResult:
        """``status``; ``preacquired`` and ``in_client_scope`` as ``_request.request``'s."""
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
            in_client_scope=in_client_scope,
        )

    def task(self, task_id: str, *, hint: DurationHint | float | None = None) -> TaskHandle[R]:
        """A handle on task ``task_id``; makes no request.

        Args:
            task_id: the task's id.
            hint: what you know of its input size (``DurationHint``, or a number in the
                kind's natural unit), for polling.
        """
        return TaskHandle(self._client, self.kind, check_task_id(task_id), hint=hint)

    # ------------------------------------------------------------- results (issue 4)

    async def result(
        self, run_id: int, *, extra_headers: _Headers = None, extra_query: _Query = None
    ) -> R:
        """The result of run ``run_id`` as the kind's model: ``GET /{kind}-result/{run_id}``.

        Args:
            run_id: the run id a successful status carries.
            extra_headers: headers added to the request (never ``x-api-key``).
            extra_query: query parameters added to the request.
        """
        return cast(
            R, await self._result(run_id, extra_headers=extra_headers, extra_query=extra_query)
        )

    async def results(
        self,
        run_ids: Iterable[int],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        extra_headers: _Headers = None,
        extra_query: _Query = None,
        extra_body: _Body = None,
    ) -> dict[int, R]:
        """``{run_id: result}`` through the kind's batch endpoint, in chunks of ``chunk_size``
        run ids sent concurrently under the client's budget. Runs the API does not answer
        for are absent.

        Args:
            run_ids: the runs to fetch (duplicates are fetched once).
            chunk_size: run ids per request, 1 to 1000.
            extra_headers: headers added to every request (never ``x-api-key``).
            extra_query: query parameters added to every request.
            extra_body: fields added to every request's JSON body.
        """
        return await self._results(
            run_ids,
            chunk_size=chunk_size,
            extra_headers=extra_headers,
            extra_query=extra_query,
            extra_body=extra_body,
        )

    async def _result(
        self, run_id: int, *, extra_headers: _Headers = None, extra_query: _Query = None
    ) -> Any:
        """``GET /{kind}-result/{run_id}``, parsed into the kind's result model."""
        route = _ROUTES[self.kind]
        return await self._client._request(
            "GET",
            route.result_prefix + str(check_run_id(run_id)),
            route.parse,
            params=route.result_params,
            extra_headers=extra_headers,
            extra_query=extra_query,
        )

    async def _results(
        self,
        run_ids: Iterable[int],
        *,
        chunk_size: int = 100,
        extra_headers: _Headers = None,
        extra_query: _Query = None,
        extra_body: _Body = None,
    ) -> dict[int, R]:
        ids = check_run_ids(run_ids)
        got = await self._fetch_batches(
            ids,
            check_chunk_size(chunk_size),
            collect_errors=False,
            extra_headers=extra_headers,
            extra_query=extra_query,
            extra_body=extra_body,
        )
        return {run_id: got[run_id] for run_id in ids if run_id in got}  # caller's order

    async def _fetch_batches(
        self,
        ids: Sequence[int],
        chunk_size: int,
        *,
        collect_errors: bool,
        extra_headers: _Headers = None,
        extra_query: _Query = None,
        extra_body: _Body = None,
    ) -> dict[int, Any]:
        """Fetch ``ids`` through the kind's batch endpoint, ``chunk_size`` ids a request.

        Chunks go out concurrently, as many at once as the budget lets requests be in flight;
        the budget itself still paces them. With ``collect_errors`` a failed chunk's error is
        stored under each of its run ids (except errors that would fail every chunk, which
        raise); otherwise the first failure cancels the other chunks and is raised. Run ids
        the answers leave out are absent from the returned mapping.
        """
        route = _ROUTES[self.kind]
        client = self._client
        chunks = [list(ids[i : i + chunk_size]) for i in range(0, len(ids), chunk_size)]
        out: dict[int, Any] = {}
        if not chunks:
            return out
        failures: list[BaseException] = []
        pending = iter(chunks)
        n_workers = max(1, min(concurrency_of(client.budget), len(chunks)))

        async def worker(scope: anyio.CancelScope) -> None:
            for chunk in pending:
                requested = frozenset(chunk)

                def parse(data: Any, requested: frozenset[int] = requested) -> dict[int, Any]:
                    return parse_batch(data, requested, route.parse)

                try:
                    got = await client._request(
                        "POST",
                        route.batch_path,
                        parse,
                        json_body={"run_ids": chunk},
                        extra_headers=extra_headers,
                        extra_query=extra_query,
                        extra_body=extra_body,
                    )
                except Exception as exc:  # stored, then raised alone: never an ExceptionGroup
                    if collect_errors and isinstance(exc, CambError) and not is_fatal(exc):
                        out.update(dict.fromkeys(chunk, exc))
                        continue
                    failures.append(exc)
                    scope.cancel()
                    return
                out.update(got)

        async with anyio.create_task_group() as tg:
            for _ in range(n_workers):
                tg.start_soon(worker, tg.cancel_scope)
        if failures:
            raise failures[0]
        return out

    async def _create(
        self,
        path: str,
        *,
        json_body: Any = None,
        files: Any = None,
        retry_unsafe: bool = False,
        max_retries: int | None = None,
        reopen_body: Callable[[], Awaitable[Any]] | None = None,
        hint: DurationHint | float | None = None,
        extra_headers: _Headers = None,
        extra_query: _Query = None,
        extra_body: _Body = None,
    ) -> TaskHandle[R]:
        """POST a create request and wrap the new task id in a handle.

        Not idempotent: unless ``retry_unsafe``, only failures that prove the server never saw
        the request (no connection, 429) are retried, so a lost answer cannot make two jobs.
        ``created_at`` is taken before sending: the task is at least that old, never younger.
        ``hint`` (what the input says of the task's size) is checked before sending too.
        """
        hint = as_hint(self.kind, hint)
        created_at = anyio.current_time()
        created = await self._client._request(
            "POST",
            path,
            _parse_task_id,
            json_body=json_body,
            files=files,
            idempotent=retry_unsafe,
            max_retries=max_retries,
            reopen_body=reopen_body,
            extra_headers=extra_headers,
            extra_query=extra_query,
            extra_body=extra_body,
        )
        return TaskHandle(self._client, self.kind, created, created_at=created_at, hint=hint)


class _Route:
    __slots__ = ("create_path", "result_prefix", "batch_path", "parse", "result_params")

    def __init__(
        self,
        create_path: str,
        result_prefix: str,
        batch_path: str,
        parse: Callable[[Any], Any],
        result_params: Mapping[str, str | int] | None = None,
    ) -> None:
        self.create_path = create_path
        self.result_prefix = result_prefix
        self.batch_path = batch_path
        self.parse = parse
        self.result_params = result_params


_ROUTES: dict[TaskKind, _Route] = {
    TaskKind.DUB: _Route("/dub", "/dub-result/", "/dubbing-results", parse_dubbing_result),
    # The API's OutputType enum is lower case (raw_bytes | file_url) and FastAPI checks it
    # case-sensitively: FILE_URL is answered 422.
    TaskKind.TTS: _Route(
        "/tts", "/tts-result/", "/tts-results", parse_tts_result, {"output_type": "file_url"}
    ),
    TaskKind.TRANSLATION: _Route(
        "/translate", "/translation-result/", "/translation-results", parse_translation_result
    ),
    TaskKind.TRANSCRIPTION: _Route(
        "/transcribe",
        "/transcription-result/",
        "/transcription-results",
        parse_transcription_result,
    ),
}


_RAW_AUDIO: Mapping[str, str] = {"output_type": "raw_bytes"}


def _as_body(body: Any) -> BodyStream:
    return cast("BodyStream", body)


def _parse_task_id(data: Any) -> str:
    task_id = parse_created(data).task_id
    try:
        return check_task_id(task_id)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"task_id: {exc}") from None
