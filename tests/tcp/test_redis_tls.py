"""RedisRateBudget over TLS (``rediss://``) with a CA of our own, on asyncio and on trio.

trustme makes a CA, a certificate for 127.0.0.1 and a client certificate; redis-server listens
on TLS only. The CA comes in the URL (coredis' ``ssl_ca_certs``) or as an ``ssl_context``;
the server's name is checked by default; client certificates when the server asks for them.
A certificate the client cannot verify is an outage like any other: never unlimited, and
with ``"raise"`` a ``CambError``.
"""

from __future__ import annotations

import ssl
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import quote

import anyio
import attrs
import pytest

from camb_async.redis import RedisBudgetUnavailableError, RedisRateBudget

from .redis_server import RedisServer, TLSFiles

pytestmark = [pytest.mark.redis, pytest.mark.anyio]


@pytest.fixture(scope="module")
def certs() -> Iterator[TLSFiles]:
    with tempfile.TemporaryDirectory() as directory:
        yield TLSFiles.make(directory)


@pytest.fixture(scope="module")
def tls_server(certs: TLSFiles) -> Iterator[RedisServer]:
    with RedisServer(tls=certs) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(certs: TLSFiles) -> Iterator[RedisServer]:
    """Asks every client for a certificate signed by the CA."""
    with RedisServer(tls=attrs.evolve(certs, client_certs_required=True)) as server:
        yield server


@pytest.fixture
async def make_budget() -> AsyncIterator[Callable[..., RedisRateBudget]]:
    made: list[RedisRateBudget] = []

    def make(url: str, **options: Any) -> RedisRateBudget:
        budget = RedisRateBudget.from_url(
            url, rate=50, name=f"tls-{uuid.uuid4().hex[:8]}", reset_hold=0.0, **options
        )
        made.append(budget)
        return budget

    yield make
    for budget in made:
        await budget.aclose()


async def granted(budget: RedisRateBudget, held_open: bool = False) -> bool:
    async def take() -> None:
        with anyio.fail_after(5):
            await budget.acquire()
        budget.release()

    if held_open:
        async with budget:
            await take()
    else:
        await take()
    return budget.grants == 1


@pytest.mark.parametrize("held_open", [False, True], ids=["per-call", "async-with"])
async def test_a_custom_ca_in_the_url(
    tls_server: RedisServer,
    certs: TLSFiles,
    make_budget: Callable[..., RedisRateBudget],
    held_open: bool,
) -> None:
    budget = make_budget(f"{tls_server.url}?ssl_ca_certs={quote(certs.ca)}")
    assert await granted(budget, held_open)


async def test_a_custom_ssl_context(
    tls_server: RedisServer, certs: TLSFiles, make_budget: Callable[..., RedisRateBudget]
) -> None:
    context = ssl.create_default_context(cafile=certs.ca)
    budget = make_budget(tls_server.url, redis_options={"ssl_context": context})
    assert await granted(budget)


async def test_an_unknown_ca_is_an_outage(
    tls_server: RedisServer, make_budget: Callable[..., RedisRateBudget]
) -> None:
    budget = make_budget(tls_server.url, on_redis_error="raise")  # the system's CAs only
    with pytest.raises(RedisBudgetUnavailableError) as info:
        await budget.acquire()
    assert info.value.redis_error == "ConnectionError"
    waiting = make_budget(tls_server.url)
    with anyio.move_on_after(0.5) as scope:
        await waiting.acquire()
    assert scope.cancelled_caught and waiting.outages == 1


async def test_the_server_name_is_checked(
    certs: TLSFiles, make_budget: Callable[..., RedisRateBudget]
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        elsewhere = TLSFiles.make(directory, server_names=["redis.elsewhere.example"])
        with RedisServer(tls=elsewhere) as server:
            url = f"{server.url}?ssl_ca_certs={quote(elsewhere.ca)}"
            budget = make_budget(url, on_redis_error="raise")
            with pytest.raises(RedisBudgetUnavailableError):
                await budget.acquire()
            unchecked = make_budget(url + "&ssl_check_hostname=false")
            assert await granted(unchecked)


@pytest.mark.parametrize("held_open", [False, True], ids=["per-call", "async-with"])
async def test_client_certificates(
    mtls_server: RedisServer,
    certs: TLSFiles,
    make_budget: Callable[..., RedisRateBudget],
    held_open: bool,
) -> None:
    url = (
        f"{mtls_server.url}?ssl_ca_certs={quote(certs.ca)}"
        f"&ssl_certfile={quote(certs.client_cert)}&ssl_keyfile={quote(certs.client_key)}"
    )
    assert await granted(make_budget(url), held_open)
    anonymous = make_budget(
        f"{mtls_server.url}?ssl_ca_certs={quote(certs.ca)}", on_redis_error="raise"
    )
    with pytest.raises(RedisBudgetUnavailableError):
        await anonymous.acquire()
