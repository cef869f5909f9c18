"""FakeCambAPI: an in-memory CAMB.AI task API for tests, demos and benchmarks.

A plain ASGI app (no framework), so it runs in-process through ``httpx.ASGITransport`` — on
trio's ``MockClock`` too, because it reads time from the running event loop — and over real
sockets with uvicorn. Tasks follow scripted timelines; faults are injected deterministically
(``inject``) or at random (``fault_rate``); every request is logged with its arrival time.

Timeline times are relative to the task's creation (``POST``) or, for tasks added with
``add_task``, to the first request the API serves (its epoch), so a script can be prepared
before the server starts.

Where things live (all private; import from ``camb_async.testing``):

* ``_app``: ``FakeCambAPI`` — the ASGI app, scripting (``add_task``, ``inject``,
  ``script_create``, ``set_result``, ``set_audio``) and the request handlers;
* ``_routing``: which path names which handler and task kind;
* ``_validation``: the FastAPI-like checks of path, query and body (422 bodies);
* ``_multipart``: the streaming multipart reader for uploads;
* ``_asgi``: ASGI types, JSON and streamed-audio answers, the injected reset;
* ``_faults``: ``Fault`` and ``TRANSIENT_FAULTS``;
* ``_tasks``: ``FakeTask``, ``LoggedRequest``, ``peak_per_window``, generated results;
* ``_server``: ``serve_in_thread`` (uvicorn on a loopback port in a thread).
"""

from __future__ import annotations

from ._app import FakeCambAPI
from ._faults import TRANSIENT_FAULTS, Fault
from ._server import serve_in_thread
from ._tasks import FakeTask, LoggedRequest, peak_per_window

__all__ = [
    "Fault",
    "FakeCambAPI",
    "FakeTask",
    "LoggedRequest",
    "TRANSIENT_FAULTS",
    "peak_per_window",
    "serve_in_thread",
]
