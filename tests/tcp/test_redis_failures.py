"""Every way Redis fails, for real: each is an outage handled by ``on_redis_error``.

Each test gets its own redis-server (they reconfigure it) and runs on asyncio and on trio, on
real time. The error replies are Redis's own: OOM from ``maxmemory``, READONLY from a replica,
MASTERDOWN from a replica cut off from its master, BUSY from a long script, LOADING from a
slowed-down ``DEBUG RELOAD``, max clients from ``maxclients``; a slow Redis from
``DEBUG SLEEP``. With ``"raise"`` the error is a ``CambError`` that names the Redis error; with
``"wait"`` no request starts until Redis is healthy again. And no lease outlives its holder:
acquires cancelled or timed out while their script waits in Redis give it back.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
import coredis
import coredis.exceptions
import pytest

from camb_async import CambError
from camb_async.redis import RedisBudgetUnavailableError, RedisRateBudget, RedisReplyError

from .redis_server import RedisServer, free_port

pytestmark = [pytest.mark.redis, pytest.mark.anyio]


@pytest.fixture
def server(fresh_redis_server: RedisServer) -> RedisServer:
    """Each test breaks its server: a fresh one per test (tests/tcp/conftest.py)."""
    return fresh_redis_server


@pytest.fixture
async def make_budget(server: RedisServer) -> AsyncIterator[Callable[..., RedisRateBudget]]:
    made: list[RedisRateBudget] = []
    name = f"fail-{uuid.uuid4().hex[:8]}"

    def make(**options: Any) -> RedisRateBudget:
        options.setdefault("name", name)
        options.setdefault("rate", 100)
        options.setdefault("reset_hold", 0.0)
        options.setdefault("retry_interval", 0.2)
        budget = RedisRateBudget.from_url(options.pop("url", server.url), **options)
        made.append(budget)
        return budget

    yield make
    for budget in made:
        await budget.aclose()


async def blocked(budget: RedisRateBudget, seconds: float = 0.5) -> bool:
    with anyio.move_on_after(seconds) as scope:
        await budget.acquire()
    if scope.cancelled_caught:
        return True
    budget.release()
    return False


async def leases(server: RedisServer, name: str) -> int:
    async with coredis.Redis.from_url(server.url) as raw:
        return await raw.zcard(f"camb-async:{{{name}}}:leases")


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# ------------------------------------------------------------------ Redis's error replies


class Scenario:
    """Puts a healthy Redis into a failure (``start``) and takes it out again (``stop``)."""

    code = ""
    or_else = ""  # another name the same failure may come under

    def start(self, server: RedisServer) -> None:
        raise NotImplementedError

    def stop(self, server: RedisServer) -> None:
        raise NotImplementedError


class OutOfMemory(Scenario):
    """maxmemory reached with noeviction: the first write of a name's state is refused."""

    code = "OOM"

    def start(self, server: RedisServer) -> None:
        assert server.cli("CONFIG", "SET", "maxmemory-policy", "noeviction") == "OK"
        assert server.cli("CONFIG", "SET", "maxmemory", "1") == "OK"

    def stop(self, server: RedisServer) -> None:
        server.cli("CONFIG", "SET", "maxmemory", "0")


class ReadOnly(Scenario):
    """Our Redis became a replica (a failover elsewhere, a misrouted URL): writes refused."""

    code = "READONLY"

    def start(self, server: RedisServer) -> None:
        self.master = RedisServer()
        self.master.start()
        server.cli("REPLICAOF", "127.0.0.1", str(self.master.port))
        wait_until(lambda: "master_link_status:up" in server.cli("INFO", "replication"))

    def stop(self, server: RedisServer) -> None:
        server.cli("REPLICAOF", "NO", "ONE")
        self.master.close()


class MasterDown(Scenario):
    """A replica that lost its master and must not serve stale data."""

    code = "MASTERDOWN"

    def start(self, server: RedisServer) -> None:
        server.cli("CONFIG", "SET", "replica-serve-stale-data", "no")
        server.cli("REPLICAOF", "127.0.0.1", str(free_port()))  # nobody there

    def stop(self, server: RedisServer) -> None:
        server.cli("REPLICAOF", "NO", "ONE")


class Busy(Scenario):
    """Another client's script runs past busy-reply-threshold."""

    code = "BUSY"

    def start(self, server: RedisServer) -> None:
        server.cli("CONFIG", "SET", "busy-reply-threshold", "100")
        self.proc = server.cli_in_background("EVAL", "while true do end", "0")
        wait_until(lambda: server.cli("PING").startswith("BUSY"))

    def stop(self, server: RedisServer) -> None:
        server.cli("SCRIPT", "KILL")
        self.proc.wait(10)


class Loading(Scenario):
    """Redis is loading its dataset (a restart, a full resync), slowed down to ~2 s here."""

    code = "LOADING"

    def start(self, server: RedisServer) -> None:
        server.cli("DEBUG", "POPULATE", "5000")
        server.cli("CONFIG", "SET", "key-load-delay", "400")
        server.cli("CONFIG", "SET", "loading-process-events-interval-bytes", "1024")
        self.proc = server.cli_in_background("DEBUG", "RELOAD")
        wait_until(lambda: server.cli("PING").startswith("LOADING"))

    def stop(self, server: RedisServer) -> None:
        self.proc.wait(30)


class MaxClients(Scenario):
    """maxclients reached: a new connection is refused with an error reply, then closed.

    The reply may be lost to the race between Redis closing and the client's first command
    (a reset): then it is a plain connection failure, an outage all the same.
    """

    code = "ERR"
    or_else = "ConnectionError"

    def start(self, server: RedisServer) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port))
        self.command(b"CONFIG SET maxclients 1\r\n")

    def command(self, line: bytes) -> None:
        self.sock.sendall(line)
        assert self.sock.recv(64).startswith(b"+OK")

    def stop(self, server: RedisServer) -> None:
        self.command(b"CONFIG SET maxclients 10000\r\n")
        self.sock.close()


SCENARIOS = [OutOfMemory, ReadOnly, MasterDown, Busy, Loading, MaxClients]


@pytest.mark.parametrize("held_open", [False, True], ids=["per-call", "async-with"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
async def test_an_error_reply_is_an_outage(
    scenario: type[Scenario],
    held_open: bool,
    server: RedisServer,
    make_budget: Callable[..., RedisRateBudget],
    caplog: pytest.LogCaptureFixture,
) -> None:
    raising = make_budget(on_redis_error="raise")
    waiting = make_budget(on_redis_error="wait", name=f"wait-{uuid.uuid4().hex[:8]}")
    failure = scenario()
    async with AsyncExitStack() as stack:
        if held_open:  # the connections are open before Redis fails
            await stack.enter_async_context(raising)
            await stack.enter_async_context(waiting)
        await anyio.to_thread.run_sync(failure.start, server)
        try:
            with pytest.raises(RedisBudgetUnavailableError) as info:
                await raising.acquire()
            error = info.value
            assert isinstance(error, CambError)
            assert not isinstance(error, coredis.exceptions.RedisError)
            if error.redis_error != scenario.or_else:
                assert error.redis_error == scenario.code, error
                assert isinstance(error, RedisReplyError)
            assert raising.in_flight == 0 and raising.outages == 1
            with pytest.raises(RedisBudgetUnavailableError):  # known down: at once
                await raising.acquire()

            assert await blocked(waiting)  # never unlimited
            assert waiting.outages == 1 and not waiting.redis_available
        finally:
            await anyio.to_thread.run_sync(failure.stop, server)
        with anyio.fail_after(15):
            await waiting.acquire()  # Redis is healthy again: requests go on
        waiting.release()
        assert waiting.redis_available and waiting.grants == 1
    assert (
        f"Redis unavailable ({scenario.code})" in caplog.text
        or f"Redis unavailable ({scenario.or_else})" in caplog.text
    )


async def test_an_error_reply_with_a_local_fallback(
    server: RedisServer, make_budget: Callable[..., RedisRateBudget]
) -> None:
    budget = make_budget(on_redis_error="local", fleet_size=2, rate=20, window=0.5)
    failure = OutOfMemory()
    failure.start(server)
    try:
        for _ in range(3):
            with anyio.fail_after(5):
                await budget.acquire()
            budget.release()
    finally:
        failure.stop(server)
    assert budget.local_grants == 3 and budget.grants == 0 and budget.outages == 1


# ------------------------------------------------------------------ timeouts, no connection


async def test_a_slow_redis_is_an_outage(
    server: RedisServer, make_budget: Callable[..., RedisRateBudget]
) -> None:
    raising = make_budget(on_redis_error="raise", redis_timeout=0.3)
    waiting = make_budget(on_redis_error="wait", redis_timeout=0.3)
    assert not await blocked(waiting, 5.0)  # the state exists
    sleeper = server.cli_in_background("DEBUG", "SLEEP", "1.5")
    try:
        await anyio.sleep(0.2)
        with pytest.raises(RedisBudgetUnavailableError) as info:
            await raising.acquire()
        assert info.value.redis_error == "TimeoutError"
        assert not isinstance(info.value, RedisReplyError)
        assert await blocked(waiting, 0.5)
        with anyio.fail_after(10):
            await waiting.acquire()
        waiting.release()
    finally:
        sleeper.wait(10)
    assert waiting.outages == 1 and waiting.grants == 2


async def test_no_redis_raises_a_camb_error_without_secrets(
    make_budget: Callable[..., RedisRateBudget], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "pa55-w0rd-xyz"
    budget = make_budget(
        url=f"redis://user:{secret}@127.0.0.1:{free_port()}/0", on_redis_error="raise"
    )
    with pytest.raises(RedisBudgetUnavailableError) as info:
        await budget.acquire()
    assert info.value.redis_error == "ConnectionError"
    assert secret not in str(info.value) and secret not in repr(budget)
    assert secret not in caplog.text


# ------------------------------------------------------------------ no lease outlives its holder


@pytest.mark.parametrize("held_open", [False, True], ids=["per-call", "async-with"])
async def test_a_cancelled_acquire_gives_its_lease_back(
    held_open: bool, server: RedisServer, make_budget: Callable[..., RedisRateBudget]
) -> None:
    """Cancelled while its script waits in Redis: Redis grants, and the grant comes back."""
    a = make_budget(max_concurrency=1, lease_ttl=60.0)
    b = make_budget(max_concurrency=1, lease_ttl=60.0)
    async with AsyncExitStack() as stack:
        if held_open:
            await stack.enter_async_context(a)
        assert not await blocked(a, 5.0)  # the state exists, and a's lease is back
        await a.flush()
        sleeper = server.cli_in_background("DEBUG", "SLEEP", "0.8")
        await anyio.sleep(0.2)
        with anyio.move_on_after(0.2) as scope:
            await a.acquire()  # its script is queued behind the sleep
        assert scope.cancelled_caught and a.in_flight == 0 and a.give_backs == 1
        sleeper.wait(10)
        with anyio.fail_after(2):  # not lease_ttl: the slot is free at once, fleet-wide
            await b.acquire()
        assert await leases(server, a.name) == 1  # b's
        b.release()


async def test_a_timed_out_acquire_gives_its_lease_back(
    server: RedisServer, make_budget: Callable[..., RedisRateBudget]
) -> None:
    a = make_budget(max_concurrency=1, on_redis_error="raise", redis_timeout=0.3)
    b = make_budget(max_concurrency=1)
    async with a:  # its connection stays open: Redis runs the script after the sleep
        assert not await blocked(a, 5.0)
        await a.flush()
        sleeper = server.cli_in_background("DEBUG", "SLEEP", "0.8")
        await anyio.sleep(0.2)
        with pytest.raises(RedisBudgetUnavailableError):
            await a.acquire()  # times out
        sleeper.wait(10)
        with anyio.fail_after(2):
            await b.acquire()
        b.release()


async def test_the_next_acquire_of_the_process_carries_a_late_give_back(
    server: RedisServer, make_budget: Callable[..., RedisRateBudget]
) -> None:
    """Redis too slow for the give-back too: the tombstone refuses the queued script, and the
    process' next call hands the lease back before it asks for one."""
    a = make_budget(max_concurrency=1, give_back_timeout=0.1)
    async with a:
        assert not await blocked(a, 5.0)
        await a.flush()
        sleeper = server.cli_in_background("DEBUG", "SLEEP", "1.0")
        await anyio.sleep(0.2)
        with anyio.move_on_after(0.2):
            await a.acquire()
        sleeper.wait(10)
        with anyio.fail_after(2):
            await a.acquire()
        assert await leases(server, a.name) == 1
        a.release()


async def test_cancellations_at_any_point_leak_nothing(
    server: RedisServer, make_budget: Callable[..., RedisRateBudget]
) -> None:
    a = make_budget(max_concurrency=1, rate=1000)
    async with a:
        assert not await blocked(a, 5.0)
        for i in range(40):
            with anyio.move_on_after(0.0002 * i):
                await a.acquire()
                a.release()
        await a.flush()
        with anyio.fail_after(2):
            await a.acquire()
        assert await leases(server, a.name) == 1
        a.release()
    assert await leases(server, a.name) == 0


def test_the_script_ships_with_the_package() -> None:
    import importlib.resources

    text = importlib.resources.files("camb_async").joinpath("redis_budget.lua").read_text()
    assert "redis.call('TIME')" in text


async def test_a_retried_acquire_is_granted_once(
    server: RedisServer, make_budget: Callable[..., RedisRateBudget]
) -> None:
    """A client retry of an acquire whose answer was lost: the same grant, not a second one
    (nor a refusal that would strand the first one's lease)."""
    a = make_budget(max_concurrency=1, rate=1, window=10.0, smooth=0)
    assert await a._call(acquire=True, member="m:1") == (True, 0.0, "ok")
    assert await a._call(acquire=True, member="m:1") == (True, 0.0, "ok")  # the retry
    assert (await a._call(acquire=True, member="m:2"))[0] is False
    assert await leases(server, a.name) == 1
