"""``async with AsyncCambClient(budget=redis_budget)`` enters the budget's own ``async with``
(which holds its Redis connections open) when no one has, and leaves it on exit; a budget the
caller entered is left to the caller. Measured at the server: connections it accepted."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import coredis
import httpx
import pytest

from camb_async import AsyncCambClient, TaskKind
from camb_async.redis import RedisRateBudget
from camb_async.testing import FakeCambAPI

from ..conftest import API_KEY
from .redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture
async def accepted(redis_server: RedisServer) -> AsyncIterator[coredis.Redis[str]]:
    """A connection of our own that reads the server's count of accepted connections."""
    async with coredis.Redis.from_url(redis_server.url, decode_responses=True) as raw:
        yield raw


async def connections(raw: coredis.Redis[str]) -> int:
    info = await raw.info("stats")
    return int(str(info["total_connections_received"]))


def make(redis_server: RedisServer) -> tuple[RedisRateBudget, FakeCambAPI, list[str]]:
    budget = RedisRateBudget.from_url(
        redis_server.url, rate=1000, name=f"life-{uuid.uuid4().hex[:8]}", reset_hold=0.0
    )
    api = FakeCambAPI(api_key=API_KEY, clock=time.monotonic)
    ids = [api.add_task(TaskKind.DUB, polls=0) for _ in range(20)]
    return budget, api, ids


async def test_the_client_enters_and_leaves_the_budget(
    redis_server: RedisServer, accepted: coredis.Redis[str]
) -> None:
    budget, api, ids = make(redis_server)
    assert not budget.entered
    async with AsyncCambClient(
        api_key=API_KEY,
        base_url="http://localhost",
        budget=budget,
        transport=httpx.ASGITransport(app=api),
    ) as client:
        assert budget.entered
        await client.dub.status(ids[0])
        before = await connections(accepted)
        for task_id in ids:
            await client.dub.status(task_id)
        assert await connections(accepted) == before  # one held connection, no new ones
    assert not budget.entered
    # Outside any `async with`, each call opens (and closes) a connection of its own: the
    # difference the client's entering makes.
    async with AsyncCambClient(
        api_key=API_KEY,
        base_url="http://localhost",
        budget=budget,
        transport=httpx.ASGITransport(app=api),
    ) as client:
        pass
    before = await connections(accepted)
    bare = AsyncCambClient(
        api_key=API_KEY,
        base_url="http://localhost",
        budget=budget,
        transport=httpx.ASGITransport(app=api),
    )
    for task_id in ids[:5]:
        await bare.dub.status(task_id)
    await bare.aclose()
    assert await connections(accepted) > before


async def test_a_budget_the_caller_entered_is_left_to_the_caller(
    redis_server: RedisServer, accepted: coredis.Redis[str]
) -> None:
    budget, api, ids = make(redis_server)
    async with budget:
        async with AsyncCambClient(
            api_key=API_KEY,
            base_url="http://localhost",
            budget=budget,
            transport=httpx.ASGITransport(app=api),
        ) as client:
            await client.dub.status(ids[0])
            before = await connections(accepted)
            for task_id in ids:
                await client.dub.status(task_id)
            assert await connections(accepted) == before
        assert budget.entered  # the client did not leave what it did not enter
        # Two clients on one budget, one after another: neither enters it twice.
        async with AsyncCambClient(
            api_key=API_KEY,
            base_url="http://localhost",
            budget=budget,
            transport=httpx.ASGITransport(app=api),
        ) as client:
            await client.dub.status(ids[1])
        assert budget.entered
    assert not budget.entered


async def test_views_do_not_enter_the_budget(redis_server: RedisServer) -> None:
    budget, api, ids = make(redis_server)
    client = AsyncCambClient(
        api_key=API_KEY,
        base_url="http://localhost",
        budget=budget,
        transport=httpx.ASGITransport(app=api),
    )
    async with client.with_options(timeout=5) as view:
        assert not budget.entered
        await view.dub.status(ids[0])
    assert not client.closed
    await client.aclose()
    await budget.aclose()
