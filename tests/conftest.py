"""What every test shares: the API key, the in-process client fixtures, virtual time.

``tests/unit/`` runs in-process (``httpx.ASGITransport``) on virtual time, both loops, with the
fixtures here. ``tests/tcp/`` (real sockets, subprocesses, redis-server) overrides
``anyio_backend`` with real time and adds the served ``FakeCambAPI`` and Redis fixtures in
its own conftest. ``tests/soak/`` is the long fault soak, not collected by default.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import trio.testing

from camb_async import AsyncCambClient
from camb_async.testing import FakeCambAPI

from .virtual_clock import VirtualTimeLoop

API_KEY = "sk-test-0123456789abcdef"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as module ``example_<name>``."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(params=[pytest.param("asyncio", id="asyncio"), pytest.param("trio", id="trio")])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """Every async test runs on asyncio and on trio, both on virtual time.

    In-process tests do no real I/O, so the clock jumps to the next timer whenever the loop is
    idle: trio's MockClock(autojump_threshold=0), and its asyncio twin VirtualTimeLoop.
    Tests over real sockets (``tests/tcp/``) override this in ``tests/tcp/conftest.py``
    with real time.
    """
    if request.param == "trio":
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return ("asyncio", {"loop_factory": VirtualTimeLoop})


@pytest.fixture
def api() -> FakeCambAPI:
    return FakeCambAPI(api_key=API_KEY)


ClientFactory = Callable[..., AsyncCambClient]


@pytest.fixture
async def make_client(api: FakeCambAPI) -> AsyncIterator[ClientFactory]:
    """Build clients wired in-process to ``api``; closed at the end of the test."""
    made: list[AsyncCambClient] = []

    def make(**kwargs: Any) -> AsyncCambClient:
        kwargs.setdefault("api_key", API_KEY)
        kwargs.setdefault("base_url", "http://localhost")
        kwargs.setdefault("rate_limit", None)
        if "http_client" not in kwargs:
            kwargs.setdefault("transport", httpx.ASGITransport(app=api))
        client = AsyncCambClient(**kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


@pytest.fixture
async def client(make_client: ClientFactory) -> AsyncCambClient:
    return make_client()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The count of README/docs snippets executed (tests/tcp/test_doc_snippets.py)."""
    snippets = sys.modules.get("tests.tcp.test_doc_snippets")
    if snippets is not None:
        executed = len(snippets.EXECUTED)
        terminalreporter.write_line(
            f"doc snippets: {executed} of {len(snippets.SNIPPETS)} executed (README.md and docs/)"
        )
