"""Fixtures for tests over real sockets: real time, a served FakeCambAPI, redis-server.

Everything under ``tests/tcp/`` talks over loopback TCP (uvicorn in a thread, subprocesses,
``redis-server``), so no virtual clock can jump over its waits: ``anyio_backend`` here runs
both loops on real time, overriding the virtual-time one in ``tests/conftest.py``.

* ``api`` / ``base_url``: a ``FakeCambAPI`` on ``time.monotonic`` (its log on the same clock
  as the test's) served by uvicorn in a thread; ``base_url`` is its ``http://127.0.0.1:PORT``.
* ``refused_url``: a loopback port nobody listens on (connections refused).
* ``redis_server``: one throwaway ``redis-server`` per test module (tests/tcp/redis_server.py);
  ``fresh_redis_server``: one per test, for tests that stop, kill or restart it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from camb_async.testing import FakeCambAPI, serve_in_thread

from ..conftest import API_KEY
from .redis_server import RedisServer


@pytest.fixture(params=[pytest.param("asyncio", id="asyncio"), pytest.param("trio", id="trio")])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on asyncio and on trio, on real time (real sockets)."""
    return str(request.param)


@pytest.fixture
def api() -> FakeCambAPI:
    return FakeCambAPI(api_key=API_KEY, clock=time.monotonic)


@pytest.fixture
def base_url(api: FakeCambAPI) -> Iterator[str]:
    """``api`` served over loopback TCP for the duration of the test."""
    with serve_in_thread(api, log_level="critical") as url:
        yield url


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A loopback port with nothing listening: bound, then closed, so connects are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def fresh_redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server
