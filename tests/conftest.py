from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import trio.testing

from camb_async import AsyncCambClient
from camb_async.testing import FakeCambAPI

from .virtual_clock import VirtualTimeLoop

API_KEY = "sk-test-0123456789abcdef"


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param("trio", id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """Every async test runs on asyncio and on trio, both on virtual time.

    In-process tests do no real I/O, so the clock jumps to the next timer whenever the loop is
    idle: trio's MockClock(autojump_threshold=0), and its asyncio twin VirtualTimeLoop.
    Modules that use real sockets override this with ``real_time_backend``.
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
    """The count of README/docs snippets executed (tests/test_doc_snippets.py)."""
    import sys

    snippets = sys.modules.get("tests.tcp.test_doc_snippets")
    if snippets is not None:
        executed = len(snippets.EXECUTED)  # type: ignore[attr-defined]
        terminalreporter.write_line(
            f"doc snippets: {executed} of {len(snippets.SNIPPETS)} executed "  # type: ignore[attr-defined]
            f"(README.md and docs/)")
