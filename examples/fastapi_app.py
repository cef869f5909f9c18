"""camb-async inside a FastAPI service.

The points it shows:

- **One client per process, opened in the lifespan.** Every HTTP request of the service
  shares its connection pool and its rate budget, so a burst of incoming requests cannot
  push the API key over its limit.
- **An endpoint that awaits a task with a timeout** (``GET /tasks/{kind}/{task_id}``): it
  answers 200 with the final status, or 202 with the last observed one when the task is not
  done within ``?timeout=`` seconds — the caller can come back later, the worker is freed.
- **A bulk status endpoint** (``POST /tasks/status``): one snapshot of many tasks through
  ``gather_statuses(wait=False)``, with per-task errors reported in place.

Run it (``pip install 'camb-async[examples]'``)::

    CAMB_API_KEY=... uvicorn examples.fastapi_app:app

or against the fake API: ``camb-async fake-server --tasks 5 --ids-file ids.txt`` and
``CAMB_API_KEY=fake-key CAMB_BASE_URL=http://127.0.0.1:8000 uvicorn examples.fastapi_app:app
--port 8001``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from camb_async import (
    AsyncCambClient,
    AuthenticationError,
    CambError,
    NotFoundError,
    PollPolicy,
    StatusResult,
    TaskKind,
    WaitTimeoutError,
    gather_statuses,
)


def status_json(result: StatusResult) -> dict[str, Any]:
    return {
        "kind": result.kind.value,
        "task_id": result.task_id,
        "status": result.status.value,
        "done": result.is_terminal,
        "run_id": result.run_id,
        "message": result.message,
        "exception_reason": result.exception_reason,
    }


class BulkStatusRequest(BaseModel):
    kind: TaskKind
    task_ids: list[str] = Field(min_length=1, max_length=1000)


def create_app(
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    rate_limit: float = 20.0,
    policy: PollPolicy | None = None,
    max_wait: float = 60.0,
) -> FastAPI:
    """Build the app. ``api_key``/``base_url`` default to CAMB_API_KEY / CAMB_BASE_URL."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncCambClient(
            api_key=api_key, base_url=base_url, rate_limit=rate_limit
        ) as client:
            app.state.camb = client
            yield

    app = FastAPI(title="camb-async example", lifespan=lifespan)

    def client_of(request: Request) -> AsyncCambClient:
        client: AsyncCambClient = request.app.state.camb
        return client

    @app.get("/tasks/{kind}/{task_id}")
    async def wait_for_task(
        kind: TaskKind, task_id: str, request: Request, timeout: float = Query(10.0, gt=0)
    ) -> JSONResponse:
        """Wait up to ``timeout`` seconds (capped at ``max_wait``) for the task to end."""
        handle = client_of(request).task(kind, task_id)
        try:
            result = await handle.wait(timeout=min(timeout, max_wait), policy=policy)
        except WaitTimeoutError as exc:
            body: dict[str, Any] = (
                status_json(exc.last)
                if exc.last is not None
                else {"kind": kind.value, "task_id": task_id, "done": False}
            )
            return JSONResponse(body, status_code=202)
        except NotFoundError:
            raise HTTPException(404, f"no {kind.value} task {task_id!r}") from None
        except AuthenticationError:
            raise HTTPException(502, "the service's CAMB.AI API key was rejected") from None
        except CambError as exc:
            raise HTTPException(502, f"CAMB.AI API error: {type(exc).__name__}") from None
        return JSONResponse(status_json(result))

    @app.post("/tasks/status")
    async def bulk_status(body: BulkStatusRequest, request: Request) -> dict[str, Any]:
        """One status check per task, all under the shared budget; errors reported in place."""
        try:
            results = await gather_statuses(
                client_of(request),
                body.task_ids,
                kind=body.kind,
                wait=False,
                return_exceptions=True,
            )
        except AuthenticationError:
            raise HTTPException(502, "the service's CAMB.AI API key was rejected") from None
        except ValueError as exc:  # an id the client refuses to put in a URL
            raise HTTPException(400, str(exc)) from None
        out = []
        for task_id, item in zip(body.task_ids, results, strict=True):
            if isinstance(item, StatusResult):
                out.append(status_json(item))
            else:
                out.append(
                    {"kind": body.kind.value, "task_id": task_id, "error": type(item).__name__}
                )
        return {"results": out}

    return app


#: ``uvicorn examples.fastapi_app:app`` — the client is created at startup, not at import.
app = create_app()
