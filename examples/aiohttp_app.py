"""camb-async inside an aiohttp service.

Same shape as the FastAPI example: one ``AsyncCambClient`` for the whole process, opened and
closed by a ``cleanup_ctx`` (so every handler shares its pool and rate budget), an endpoint
that awaits a task with a timeout, and a bulk status endpoint.

Run it (``pip install 'camb-async[examples]'``)::

    CAMB_API_KEY=... python examples/aiohttp_app.py --port 8080
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

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

CLIENT = web.AppKey("camb_client", AsyncCambClient)
MAX_BULK = 1000


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


def _kind(value: object) -> TaskKind:
    try:
        return TaskKind(value)
    except ValueError:
        raise web.HTTPBadRequest(text=f"unknown task kind {value!r}") from None


def create_app(
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    rate_limit: float = 20.0,
    policy: PollPolicy | None = None,
    max_wait: float = 60.0,
) -> web.Application:
    """Build the app. ``api_key``/``base_url`` default to CAMB_API_KEY / CAMB_BASE_URL."""

    async def camb_client(app: web.Application) -> AsyncIterator[None]:
        async with AsyncCambClient(
            api_key=api_key, base_url=base_url, rate_limit=rate_limit
        ) as client:
            app[CLIENT] = client
            yield

    async def wait_for_task(request: web.Request) -> web.Response:
        kind = _kind(request.match_info["kind"])
        task_id = request.match_info["task_id"]
        try:
            timeout = float(request.query.get("timeout", "10"))
        except ValueError:
            raise web.HTTPBadRequest(text="timeout must be a number") from None
        if not timeout > 0:
            raise web.HTTPBadRequest(text="timeout must be > 0")
        handle = request.app[CLIENT].task(kind, task_id)
        try:
            result = await handle.wait(timeout=min(timeout, max_wait), policy=policy)
        except WaitTimeoutError as exc:
            body = (
                status_json(exc.last)
                if exc.last is not None
                else {"kind": kind.value, "task_id": task_id, "done": False}
            )
            return web.json_response(body, status=202)
        except NotFoundError:
            raise web.HTTPNotFound(text=f"no {kind.value} task {task_id!r}") from None
        except AuthenticationError:
            raise web.HTTPBadGateway(text="the service's CAMB.AI API key was rejected") from None
        except CambError as exc:
            raise web.HTTPBadGateway(text=f"CAMB.AI API error: {type(exc).__name__}") from None
        return web.json_response(status_json(result))

    async def bulk_status(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            kind = _kind(body["kind"])
            task_ids = body["task_ids"]
        except (ValueError, KeyError, TypeError):
            raise web.HTTPBadRequest(text='expected {"kind": ..., "task_ids": [...]}') from None
        if (
            not isinstance(task_ids, list)
            or not 0 < len(task_ids) <= MAX_BULK
            or not all(isinstance(t, str) for t in task_ids)
        ):
            raise web.HTTPBadRequest(text=f"task_ids must be 1 to {MAX_BULK} strings")
        try:
            results = await gather_statuses(
                request.app[CLIENT], task_ids, kind=kind, wait=False, return_exceptions=True
            )
        except AuthenticationError:
            raise web.HTTPBadGateway(text="the service's CAMB.AI API key was rejected") from None
        except ValueError as exc:  # an id the client refuses to put in a URL
            raise web.HTTPBadRequest(text=str(exc)) from None
        out = [
            status_json(item)
            if isinstance(item, StatusResult)
            else {"kind": kind.value, "task_id": task_id, "error": type(item).__name__}
            for task_id, item in zip(task_ids, results, strict=True)
        ]
        return web.json_response({"results": out})

    app = web.Application()
    app.cleanup_ctx.append(camb_client)
    app.router.add_get("/tasks/{kind}/{task_id}", wait_for_task)
    app.router.add_post("/tasks/status", bulk_status)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    options = parser.parse_args()
    web.run_app(create_app(), host=options.host, port=options.port)
