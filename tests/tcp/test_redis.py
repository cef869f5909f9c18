"""RedisRateBudget against a real redis-server (started on a free loopback port).

Two budgets built from two Redis clients stand in for two processes in the in-process tests;
the fleet tests start real worker processes. Everything runs on real time (Redis's clock is
real), so pass/fail never hangs on a delay being short: the tests use long windows and
pauses (10-30 s) and check that a call is still blocked, or use counts from the server's log.

Every async test runs on asyncio and on trio (coredis: one code path), both on real time.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import anyio
import coredis
import pytest

from camb_async import AsyncCambClient, Budget, CambError
from camb_async.redis import RedisBudgetUnavailableError, RedisRateBudget, RedisReplyError

from .redis_server import RedisServer, free_port

pytestmark = [pytest.mark.redis, pytest.mark.anyio]


@pytest.fixture
def name() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def make_budget(redis_server: RedisServer, name: str) -> AsyncIterator[Any]:
    """Budgets on the shared server (one per simulated process), closed after the test."""
    made: list[RedisRateBudget] = []

    def make(url: str | None = None, **options: Any) -> RedisRateBudget:
        options.setdefault("name", name)
        options.setdefault("rate", 5)
        options.setdefault("reset_hold", 0.0)
        budget = RedisRateBudget.from_url(url or redis_server.url, **options)
        made.append(budget)
        return budget

    yield make
    for budget in made:
        await budget.aclose()


async def blocked(budget: RedisRateBudget, seconds: float = 0.5) -> bool:
    """True if ``acquire`` does not return within ``seconds`` (then nothing is held)."""
    with anyio.move_on_after(seconds) as scope:
        await budget.acquire()
    if scope.cancelled_caught:
        return True
    budget.release()
    return False


async def state(redis_server: RedisServer, name: str) -> dict[str, float]:
    """The budget's state hash, and Redis's clock."""
    async with coredis.Redis.from_url(redis_server.url, decode_responses=True) as raw:
        fields = await raw.hgetall(f"camb-async:{{{name}}}:state")
        # Not raw.time(): coredis 6.9 reads its microseconds as milliseconds.
        seconds, micros = cast(Any, await raw.eval("return redis.call('TIME')"))
    out = {str(k): float(v) for k, v in fields.items()}
    out["now"] = int(seconds) + int(micros) / 1e6
    return out


async def wait_for_pauses(redis_server: RedisServer, name: str, pauses: int) -> None:
    """Until Redis has counted ``pauses`` penalties for ``name`` (10 s at most)."""
    with anyio.fail_after(10):
        while (await state(redis_server, name)).get("pauses") != pauses:  # noqa: ASYNC110
            await anyio.sleep(0.05)


# ------------------------------------------------------------------ in-process behaviour


async def test_is_a_budget_the_client_accepts(make_budget: Any) -> None:
    budget = make_budget()
    assert (budget.max_concurrency, budget.fleet_concurrency) == (16, None)
    assert isinstance(budget, Budget)
    client = AsyncCambClient("k", base_url="http://127.0.0.1:1", budget=budget)
    assert client.budget is budget


async def test_rate_is_shared_by_processes_and_keyed_by_name(make_budget: Any) -> None:
    # A 10-second window: everything below happens well inside one window.
    a = make_budget(rate=5, window=10.0, smooth=0)
    b = make_budget(rate=5, window=10.0, smooth=0)
    for budget in (a, a, a, b, b):
        with anyio.fail_after(5):
            await budget.acquire()
        budget.release()
    assert await blocked(a) and await blocked(b)  # the fleet spent its 5
    other = make_budget(rate=5, window=10.0, smooth=0, name="another-" + uuid.uuid4().hex)
    assert not await blocked(other, 5.0)  # another name, another budget
    assert a.grants + b.grants == 5


async def test_smoothing_spreads_a_burst(make_budget: Any) -> None:
    # rate 10 per 10 s with smooth=0.5: at most 5 starts in any 5 s.
    budget = make_budget(rate=10, window=10.0, margin=0.0, smooth=0.5)
    for _ in range(5):
        with anyio.fail_after(5):
            await budget.acquire()
        budget.release()
    assert await blocked(budget)


async def test_429_in_one_process_pauses_the_other_and_cuts_the_rate(
    make_budget: Any, redis_server: RedisServer, name: str
) -> None:
    a = make_budget(rate=10)
    b = make_budget(rate=10)
    assert not await blocked(a, 5.0)  # creates the shared state
    a.penalize(30.0)
    assert await blocked(a, 0.2)  # a pauses itself at once, without Redis
    await a.flush()
    assert await blocked(b)  # ...and now the fleet is paused
    s = await state(redis_server, name)
    assert 25 < s["paused_until"] - s["now"] <= 30
    assert s["rate_at_cut"] == 5.0 and s["cuts"] == 1 and s["pauses"] == 1
    a.penalize(30.0)  # a second 429 in the same window: pause again, no second cut
    await a.flush()
    s = await state(redis_server, name)
    assert s["cuts"] == 1 and s["pauses"] == 2


async def test_penalty_reaches_redis_through_a_waiting_acquire(
    make_budget: Any, redis_server: RedisServer, name: str
) -> None:
    """No ``async with``, no flush: a task of the same process waiting in acquire carries it."""
    a = make_budget(rate=1, window=10.0, smooth=0)
    assert not await blocked(a, 5.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(blocked, a, 20.0)  # waits ~10 s for the window
        await anyio.sleep(0.2)
        a.penalize(30.0)
        await wait_for_pauses(redis_server, name, 1)
        tg.cancel_scope.cancel()


async def test_penalty_reaches_redis_from_an_idle_process_inside_async_with(
    make_budget: Any, redis_server: RedisServer, name: str
) -> None:
    a = make_budget(rate=10)
    async with a:
        assert not await blocked(a, 5.0)
        a.penalize(30.0)  # nobody in this process acquires again: the courier carries it
        await wait_for_pauses(redis_server, name, 1)


async def test_fleet_concurrency_and_release(make_budget: Any) -> None:
    a = make_budget(rate=100, max_concurrency=2)
    b = make_budget(rate=100, max_concurrency=2)
    with anyio.fail_after(5):
        await a.acquire()
        await a.acquire()
    assert await blocked(b)  # two leases out, fleet-wide
    a.release()
    await a.flush()
    assert not await blocked(b, 5.0)
    a.release()


async def test_idle_process_hands_leases_back_inside_async_with(make_budget: Any) -> None:
    a = make_budget(rate=100, max_concurrency=1)
    b = make_budget(rate=100, max_concurrency=1)
    async with a:
        with anyio.fail_after(5):
            await a.acquire()
        assert await blocked(b)
        a.release()  # a is idle from now on; its courier hands the lease back
        assert not await blocked(b, 5.0)


async def test_a_long_request_keeps_its_lease_inside_async_with(make_budget: Any) -> None:
    a = make_budget(rate=100, max_concurrency=1, lease_ttl=2.0)
    b = make_budget(rate=100, max_concurrency=1, lease_ttl=2.0)
    async with a:
        with anyio.fail_after(5):
            await a.acquire()
        await anyio.sleep(2.5)  # longer than the lease: the courier renewed it
        assert await blocked(b)
        a.release()


async def test_leases_of_a_crashed_worker_expire(make_budget: Any) -> None:
    crashed = make_budget(rate=100, max_concurrency=2, lease_ttl=1.0)
    with anyio.fail_after(5):
        await crashed.acquire()
        await crashed.acquire()
    await crashed.aclose()  # dies holding both leases: never releases
    survivor = make_budget(rate=100, max_concurrency=2, lease_ttl=1.0)
    with anyio.fail_after(10):
        await survivor.acquire()
        await survivor.acquire()


async def test_local_concurrency_limit(make_budget: Any) -> None:
    budget = make_budget(rate=100, local_concurrency=2)
    with anyio.fail_after(5):
        await budget.acquire()
        await budget.acquire()
    assert budget.in_flight == 2
    assert await blocked(budget)
    budget.release()
    assert not await blocked(budget, 5.0)
    budget.release()


async def test_first_use_holds_the_fleet(make_budget: Any) -> None:
    """No state in Redis may mean it lost its data: starts just before aren't in the log."""
    budget = make_budget(reset_hold=30.0)
    assert await blocked(budget)
    assert budget.resets_seen == 1


async def test_redis_down_wait_then_recovers(make_budget: Any) -> None:
    port = free_port()
    budget = make_budget(f"redis://127.0.0.1:{port}/0", on_redis_error="wait", retry_interval=0.2)
    assert await blocked(budget)  # never unlimited: waits
    assert not budget.redis_available and budget.outages == 1 and budget.redis_errors >= 1
    server = RedisServer(port=port)
    server.start()
    try:
        with anyio.fail_after(20):
            await budget.acquire()
        budget.release()
        assert budget.redis_available and budget.grants == 1
    finally:
        server.close()


async def test_redis_down_raise(make_budget: Any) -> None:
    budget = make_budget(f"redis://127.0.0.1:{free_port()}/0", on_redis_error="raise")
    with pytest.raises(RedisBudgetUnavailableError) as info:
        await budget.acquire()
    assert isinstance(info.value, CambError)
    assert budget.in_flight == 0  # the local slot was given back
    with pytest.raises(RedisBudgetUnavailableError, match="next try"):
        await budget.acquire()  # still known to be down: raises without waiting


async def test_redis_down_local_share(make_budget: Any) -> None:
    budget = make_budget(
        f"redis://127.0.0.1:{free_port()}/0",
        on_redis_error="local",
        fleet_size=4,
        rate=8,
        window=2.0,
        margin=0.1,
    )
    # The fleet may have spent the rate just before Redis went: one window (2.2 s) first.
    assert await blocked(budget)
    for _ in range(2):  # then 8 / 4 = 2 per window for this process
        with anyio.fail_after(10):
            await budget.acquire()
        budget.release()
    assert budget.local_grants == 2 and budget.grants == 0
    assert await blocked(budget)


async def test_password_and_database_from_the_url(make_budget: Any) -> None:
    with RedisServer(password="s3cret") as server:
        budget = make_budget(f"redis://:s3cret@127.0.0.1:{server.port}/3")
        assert not await blocked(budget, 5.0)
        async with coredis.Redis.from_url(f"redis://:s3cret@127.0.0.1:{server.port}/3") as raw:
            assert await raw.exists([f"camb-async:{{{budget.name}}}:state"])
        wrong = make_budget(f"redis://:nope@127.0.0.1:{server.port}/3")
        with pytest.raises(RedisReplyError) as info:  # a misconfiguration, not an outage
            await wrong.acquire()
        assert wrong.outages == 0 and info.value.redis_error == "WRONGPASS"
        assert "nope" not in str(info.value)


async def test_a_unix_socket_url(make_budget: Any, tmp_path: Any) -> None:
    path = tmp_path / "redis.sock"
    with RedisServer(args=["--unixsocket", str(path), "--unixsocketperm", "700"]) as server:
        budget = make_budget(f"unix://{path}?db=2")
        assert not await blocked(budget, 5.0)
        async with coredis.Redis.from_url(server.url.replace("/0", "/2")) as raw:
            assert await raw.exists([f"camb-async:{{{budget.name}}}:state"])


def test_configuration_is_checked() -> None:
    url = "redis://127.0.0.1:1/0"
    with pytest.raises(ValueError, match="fleet_size"):
        RedisRateBudget.from_url(url, rate=10, name="x", on_redis_error="local")
    with pytest.raises(ValueError, match="on_redis_error"):
        RedisRateBudget.from_url(url, rate=10, name="x", on_redis_error="ignore")
    with pytest.raises(ValueError, match="rate"):
        RedisRateBudget.from_url(url, rate=0, name="x")
    with pytest.raises(ValueError, match="name"):
        RedisRateBudget.from_url(url, rate=10, name="")
    with pytest.raises(ValueError, match="max_concurrency"):
        RedisRateBudget.from_url(url, rate=10, name="x", max_concurrency=0)
    with pytest.raises(ValueError, match="braces"):
        RedisRateBudget.from_url(url, rate=10, name="}x")
    with pytest.raises(ValueError, match="scheme"):
        RedisRateBudget.from_url("http://127.0.0.1:1", rate=10, name="x")
    with pytest.raises(ValueError, match="Cluster"):
        RedisRateBudget.from_url("unix:///tmp/redis.sock", rate=10, name="x", cluster=True)


@pytest.mark.parametrize(
    "field",
    [
        "window",
        "margin",
        "lease_ttl",
        "retry_interval",
        "poll_interval",
        "redis_timeout",
        "give_back_timeout",
        "state_ttl",
        "min_rate",
        "default_pause",
        "max_pause",
        "recovery",
        "reset_hold",
    ],
)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_redis_budget_float_settings_must_be_finite(field: str, value: float) -> None:
    """Before, NaN passed the ``<= 0`` checks and every acquire then waited for Redis
    forever (the reviewer's r5_redis_nan_settings.py)."""
    with pytest.raises(ValueError, match=field):
        RedisRateBudget.from_url("redis://127.0.0.1:1/0", rate=10, name="x", **{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["bogus", "REQUIRED", ""])
def test_a_bad_ssl_cert_reqs_is_a_value_error(value: str) -> None:
    """Before: a raw KeyError from coredis' lookup table."""
    with pytest.raises(ValueError, match="ssl_cert_reqs"):
        RedisRateBudget.from_url(f"rediss://127.0.0.1:1/0?ssl_cert_reqs={value}", rate=10, name="x")


async def test_a_coredis_client_of_the_callers_own(redis_server: RedisServer, name: str) -> None:
    """Held open by the caller, or not: the budget uses it as it is, or opens it per call."""
    client = coredis.Redis.from_url(redis_server.url)
    budget = RedisRateBudget(client, rate=10, name=name, reset_hold=0.0)
    assert not await blocked(budget, 5.0)  # not open: opened for the call
    async with client:
        assert not await blocked(budget, 5.0)  # open: used as it is
        async with budget:
            assert not await blocked(budget, 5.0)
    assert budget.grants == 3
