"""Cancellation and shutdown: nothing outlives the call, nothing stays checked out.

Cancelling ``gather_statuses``, ``iter_statuses``, ``handle.wait`` or ``handle.watch`` at any
point must leave no task running, no budget slot held and no HTTP connection checked out, so
the next call on the same client works even with ``max_concurrency=1``. ``aclose()`` ends the
polls in flight with ``ClientClosedError``; closing twice is fine; a closed client refuses work.

The seeded random trials run in-process on virtual time (cheap, deterministic); a second set
runs over real sockets (uvicorn) to check the HTTP connection pool itself.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

import anyio
import httpx
import pytest
import sniffio

from camb_async import (
    AsyncCambClient,
    CambError,
    ClientClosedError,
    PollPolicy,
    RateBudget,
    StatusResult,
    gather_statuses,
    iter_statuses,
)
from camb_async.testing import FakeCambAPI, Fault

from ..conftest import API_KEY

pytestmark = pytest.mark.anyio

TRIALS = 100
POLICY = PollPolicy(initial=0.5, factor=2.0, max_interval=4.0)
FAULTS = (
    Fault(status=503),
    Fault(status=429, retry_after="0.5"),
    Fault(status=None, delay=3.0),
    Fault(status=None, delay=40.0),
    Fault(status=502),
)


def running_tasks() -> int:
    """Tasks alive in this event loop (asyncio or trio), the caller's own included."""
    if sniffio.current_async_library() == "asyncio":
        return len(asyncio.all_tasks())
    import trio

    def count(task: Any) -> int:
        return 1 + sum(
            count(child) for nursery in task.child_nurseries for child in nursery.child_tasks
        )

    return count(trio.lowlevel.current_root_task())


def checked_out(client: AsyncCambClient) -> int:
    """Connections of the client's HTTP pool that are lent to a request right now."""
    http = client._http
    if http is None:
        return 0
    transport: Any = http._transport
    shards = getattr(transport, "_pools", None)  # trio default: several small httpcore pools
    pools = (
        [shard._pool for shard in shards]
        if shards is not None
        else ([transport._pool] if hasattr(transport, "_pool") else [])
    )
    if pools:  # httpx's own (httpcore) pools
        busy = [c for pool in pools for c in pool.connections if not (c.is_idle() or c.is_closed())]
        return len(busy) + sum(len(pool._requests) for pool in pools)
    if hasattr(transport, "get_client"):  # httpx-aiohttp: an aiohttp session
        session = transport.client
        if session is None or session.connector is None:
            return 0
        return len(session.connector._acquired)
    if isinstance(transport, (httpx.ASGITransport, httpx.MockTransport)):
        return 0  # in-process transports lend no connections
    raise AssertionError(f"don't know how to inspect {type(transport).__name__}'s pool")


Operation = Callable[[AsyncCambClient, list[str]], Awaitable[Any]]


async def op_gather(client: AsyncCambClient, ids: list[str]) -> Any:
    return await gather_statuses(client, ids, kind="translate", policy=POLICY)


async def op_iter(client: AsyncCambClient, ids: list[str]) -> Any:
    async with aclosing(iter_statuses(client, ids, kind="translate", policy=POLICY)) as it:
        return [r async for r in it]


async def op_wait(client: AsyncCambClient, ids: list[str]) -> Any:
    async with anyio.create_task_group() as tg:
        for task_id in ids[:6]:
            tg.start_soon(functools.partial(client.translation.task(task_id).wait, policy=POLICY))


async def op_watch(client: AsyncCambClient, ids: list[str]) -> Any:
    seen: list[StatusResult] = []

    async def follow(task_id: str) -> None:
        async with aclosing(client.translation.task(task_id).watch(policy=POLICY)) as it:
            seen.extend([r async for r in it])

    async with anyio.create_task_group() as tg:
        for task_id in ids[:6]:
            tg.start_soon(follow, task_id)
    return seen


OPERATIONS = {"gather": op_gather, "iter": op_iter, "wait": op_wait, "watch": op_watch}


def make_api(
    rng: random.Random, clock: Callable[[], float] | None = None
) -> tuple[FakeCambAPI, list[str]]:
    api = FakeCambAPI(
        api_key=API_KEY, fault_rate=0.3, faults=FAULTS, seed=rng.randrange(10**9), clock=clock
    )
    ids = [api.add_task("translate", f"t{i}", after=rng.uniform(0, 20)) for i in range(8)]
    return api, ids


async def cancel_after(
    delay: float, op: Operation, client: AsyncCambClient, ids: list[str]
) -> bool:
    """Run ``op`` and cancel it after ``delay`` s; True if requests were in flight just then."""
    budget = client.budget
    assert isinstance(budget, RateBudget)
    in_flight = 0

    async def cancel_later(scope: anyio.CancelScope) -> None:
        nonlocal in_flight
        await anyio.sleep(delay)
        in_flight = budget.in_flight
        scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(cancel_later, tg.cancel_scope)
        await op(client, ids)
        tg.cancel_scope.cancel()  # finished before the deadline
    return in_flight > 0


async def assert_clean(client: AsyncCambClient, api: FakeCambAPI, baseline_tasks: int) -> None:
    budget = client.budget
    assert isinstance(budget, RateBudget)
    assert budget.in_flight == 0, "a budget slot outlived the cancelled call"
    assert not client._scopes, "a request scope outlived the cancelled call"
    assert checked_out(client) == 0, "an HTTP connection is still checked out"
    assert running_tasks() == baseline_tasks, "a task outlived the cancelled call"


async def test_cancel_at_random_points_leaves_nothing_behind() -> None:
    """100 seeded trials, cycling gather / iter / wait / watch, each cancelled at random."""
    rng = random.Random(20261124)
    baseline = running_tasks()
    cancelled_mid_request = 0
    for trial in range(TRIALS):
        op = list(OPERATIONS.values())[trial % len(OPERATIONS)]
        api, ids = make_api(rng)
        async with AsyncCambClient(
            API_KEY,
            base_url="http://localhost",
            max_concurrency=3,
            rate_limit=10,
            timeout=20,
            transport=httpx.ASGITransport(app=api),
        ) as client:
            budget = client.budget
            assert isinstance(budget, RateBudget)
            cancelled_mid_request += await cancel_after(rng.uniform(0, 25), op, client, ids)
            await anyio.lowlevel.checkpoint()
            await assert_clean(client, api, baseline)
            # Nothing keeps polling in the background ...
            requests = len(api.log)
            await anyio.sleep(120)
            assert len(api.log) == requests
            await assert_clean(client, api, baseline)
            # ... and the client still works, with one slot, at once.
            api.fault_rate = 0.0
            one = api.add_task("tts", "after", status="ERROR")
            with anyio.fail_after(30):
                assert (await client.tts.status(one)).raw_status == "ERROR"
        await assert_clean(client, api, baseline)
    # The trials did hit the interesting case: cancellation with requests in flight.
    assert cancelled_mid_request >= 10


# ----------------------------------------------------------------------------- aclose()


async def _started(budget: RateBudget) -> None:
    for _ in range(6000):
        if budget.in_flight:
            return
        await anyio.sleep(0.01)
    raise AssertionError("no request started")


@pytest.mark.parametrize("operation", list(OPERATIONS))
async def test_aclose_ends_polls_in_flight_with_client_closed_error(operation: str) -> None:
    api = FakeCambAPI(api_key=API_KEY)
    ids = [api.add_task("translate", f"t{i}", after=1e6) for i in range(12)]
    api.inject(status=None, delay=1e6, count=100)  # every request hangs until closed
    client = AsyncCambClient(
        API_KEY,
        base_url="http://localhost",
        max_concurrency=4,
        rate_limit=None,
        timeout=1e5,
        transport=httpx.ASGITransport(app=api),
    )
    budget = client.budget
    assert isinstance(budget, RateBudget)
    baseline = running_tasks()
    outcome: list[BaseException] = []

    async def run() -> None:
        try:
            await OPERATIONS[operation](client, ids)
        except BaseException as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await _started(budget)
        started = anyio.current_time()
        await client.aclose()
        await client.aclose()  # twice is fine
    assert anyio.current_time() - started < 1.0  # ended at once, not at the next timeout
    assert len(outcome) == 1
    error = outcome[0]
    leaves = getattr(error, "exceptions", [error])  # several waits fail together as a group
    assert all(isinstance(e, ClientClosedError) for e in leaves), leaves
    assert budget.in_flight == 0 and not client._scopes
    assert running_tasks() == baseline
    with pytest.raises(ClientClosedError, match="closed"):
        await client.translation.status(ids[0])


@pytest.mark.parametrize("operation", list(OPERATIONS))
async def test_aclose_between_polls_ends_the_wait_promptly(operation: str) -> None:
    """A poll that is only waiting for its next turn ends too, not at its next due time."""
    api = FakeCambAPI(api_key=API_KEY)
    ids = [api.add_task("translate", f"t{i}", after=1e6) for i in range(12)]
    client = AsyncCambClient(
        API_KEY,
        base_url="http://localhost",
        rate_limit=None,
        transport=httpx.ASGITransport(app=api),
    )
    slow = PollPolicy(initial=500, max_interval=500)
    outcome: list[BaseException] = []

    async def run() -> None:
        try:
            if operation in ("gather", "iter"):
                if operation == "gather":
                    await gather_statuses(client, ids, kind="translate", policy=slow)
                else:
                    async with aclosing(
                        iter_statuses(client, ids, kind="translate", policy=slow)
                    ) as it:
                        async for _ in it:
                            pass
            elif operation == "wait":
                await client.translation.task(ids[0]).wait(policy=slow)
            else:
                async with aclosing(client.translation.task(ids[0]).watch(policy=slow)) as it2:
                    async for _ in it2:
                        pass
        except BaseException as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await anyio.sleep(10)  # first polls done; next ones due in ~500 s
        assert api.log
        started = anyio.current_time()
        await client.aclose()
    assert anyio.current_time() - started < 1.0
    assert len(outcome) == 1 and isinstance(outcome[0], ClientClosedError), outcome


async def test_closing_twice_and_context_manager_reentry() -> None:
    api = FakeCambAPI(api_key=API_KEY)
    client = AsyncCambClient(
        API_KEY, base_url="http://localhost", transport=httpx.ASGITransport(app=api)
    )
    async with client:
        pass
    assert client.closed
    await client.aclose()
    await client.aclose()
    with pytest.raises(ClientClosedError):
        async with client:
            pass
    with pytest.raises(ClientClosedError):
        await client.dub.status("x")
    assert api.log == []
    assert isinstance(ClientClosedError("x"), CambError)
    assert isinstance(ClientClosedError("x"), RuntimeError)


async def test_closed_callers_own_http_client_is_left_open() -> None:
    api = FakeCambAPI(api_key=API_KEY)
    api.add_task("dub", "t")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=api), headers={"x-api-key": API_KEY}
    ) as http:
        client = AsyncCambClient(API_KEY, base_url="http://localhost", http_client=http)
        assert (await client.dub.status("t")).is_success
        await client.aclose()
        assert not http.is_closed
        with pytest.raises(ClientClosedError):
            await client.dub.status("t")


async def test_aclose_while_the_caller_holds_a_watched_status() -> None:
    """Closed between two steps of ``watch()``: the next step fails at once, it does not
    sleep out the policy's interval first."""
    api = FakeCambAPI(api_key=API_KEY)
    task_id = api.add_task("dub", after=1e6)
    client = AsyncCambClient(
        API_KEY, base_url="http://localhost", transport=httpx.ASGITransport(app=api)
    )
    slow = PollPolicy(initial=500, max_interval=500)
    async with aclosing(client.dub.task(task_id).watch(policy=slow)) as statuses:
        first = await statuses.__anext__()
        assert first.raw_status == "PENDING"
        await client.aclose()
        started = anyio.current_time()
        with pytest.raises(ClientClosedError):
            await statuses.__anext__()
    assert anyio.current_time() - started < 1.0
    assert len(api.log) == 1


class _BlockingBudget:
    """A budget backend (as a fleet budget may be) whose grant never comes."""

    max_concurrency = 4

    def __init__(self) -> None:
        self.waiting = 0
        self.held = 0

    async def acquire(self) -> None:
        self.waiting += 1
        try:
            await anyio.sleep_forever()
        finally:
            self.waiting -= 1

    def release(self) -> None:  # pragma: no cover - never granted
        self.held -= 1

    def penalize(self, retry_after: float | None) -> None:
        pass


BUDGET_WAITS = ["429-pause", "pacing", "concurrency", "backend"]


@pytest.mark.parametrize("wait", BUDGET_WAITS)
async def test_aclose_ends_calls_waiting_on_the_budget(wait: str) -> None:
    """Calls parked in ``budget.acquire()`` (a 429 pause, rate pacing, a full concurrency
    limit, a budget backend) end with ``ClientClosedError`` within 1 s of ``aclose()``,
    whatever the call: single status checks, handle waits and bulk polls."""
    api = FakeCambAPI(api_key=API_KEY)
    ids = [api.add_task("dub", f"t{i}", after=1e6) for i in range(6)]
    options: dict[str, Any] = {"rate_limit": None, "max_concurrency": 4}
    if wait == "429-pause":
        api.inject(status=429, retry_after="20")
        options["rate_limit"] = 50
    elif wait == "pacing":
        options["rate_limit"] = 1 / 100  # one request per 100 s: everyone else waits
        options["max_concurrency"] = 16
    elif wait == "concurrency":
        api.inject(status=None, delay=1e6, count=1)  # the one slot is held for good
        options["max_concurrency"] = 1
    else:
        options = {"budget": _BlockingBudget()}
    client = AsyncCambClient(
        API_KEY,
        base_url="http://localhost",
        timeout=1e5,
        transport=httpx.ASGITransport(app=api),
        **options,
    )
    baseline = running_tasks()
    outcomes: list[BaseException | None] = []
    ended: list[float] = []

    async def run(call: Callable[[], Awaitable[Any]]) -> None:
        try:
            await call()
        except BaseException as exc:
            outcomes.append(exc)
        else:
            outcomes.append(None)
        ended.append(anyio.current_time())

    calls: list[Callable[[], Awaitable[Any]]] = [
        *(functools.partial(client.dub.status, task_id) for task_id in ids[:3]),
        client.dub.task(ids[3]).wait,
        functools.partial(gather_statuses, client, ids[4:], kind="dub"),
        functools.partial(client.dub.results, [1, 2]),
    ]
    with anyio.fail_after(60):  # virtual time: the 429 pause and the pacing end well before
        async with anyio.create_task_group() as tg:
            for call in calls:
                tg.start_soon(run, call)
            await anyio.sleep(2)  # everyone is parked behind the budget by now
            # With pacing, the first request was let through (its call may have ended); the
            # others wait ~100 s each.
            assert outcomes in (([], [None]) if wait == "pacing" else ([],))
            before = len(outcomes)
            started = anyio.current_time()
            await client.aclose()
    assert len(outcomes) == len(calls)
    assert max(ended) - started < 1.0
    assert all(isinstance(e, ClientClosedError) for e in outcomes[before:]), outcomes
    assert not client._scopes
    if isinstance(client.budget, RateBudget):
        assert client.budget.in_flight == 0
    assert running_tasks() == baseline


@pytest.mark.parametrize("closer", ["stream", "client"])
async def test_aclose_inside_iter_statuses_block_leaves_the_callers_code_running(
    closer: str,
) -> None:
    """``stream.aclose()`` (or the client's) inside ``async with iter_statuses(...)`` stops
    the polling, not the caller: the block's own awaits after it still run, and nothing
    (no ``Cancelled``) escapes the block."""
    api = FakeCambAPI(api_key=API_KEY)
    ids = [api.add_task("dub", after=0)] + [api.add_task("dub", after=1e6) for _ in range(5)]
    client = AsyncCambClient(
        API_KEY,
        base_url="http://localhost",
        rate_limit=None,
        transport=httpx.ASGITransport(app=api),
    )
    reached: list[str] = []
    async with iter_statuses(client, ids, kind="dub", policy=POLICY) as stream:
        async for first in stream:
            assert first.is_success
            break
        if closer == "stream":
            await stream.aclose()
        else:
            await client.aclose()
        await anyio.sleep(1)  # the caller's own code after aclose(): not cancelled
        reached.append("slept")
        if closer == "stream":
            assert [r async for r in stream] == []  # closed: no further items
        else:
            with pytest.raises(ClientClosedError):
                await stream.__anext__()
        requests = len(api.log)
        await anyio.sleep(60)
        assert len(api.log) == requests  # polling stopped
        reached.append("end of block")
    reached.append("after the block")
    assert reached == ["slept", "end of block", "after the block"]
    await client.aclose()


async def test_iter_statuses_block_passes_exceptions_and_cancellation_through() -> None:
    """What leaves the ``async with`` block is what the caller raised (not an exception
    group), and a cancellation of an enclosing scope is caught by that scope."""
    api = FakeCambAPI(api_key=API_KEY)
    ids = [api.add_task("dub", after=1e6) for _ in range(5)]
    async with AsyncCambClient(
        API_KEY,
        base_url="http://localhost",
        rate_limit=None,
        transport=httpx.ASGITransport(app=api),
    ) as client:

        class Boom(Exception):
            pass

        with pytest.raises(Boom):
            async with iter_statuses(client, ids, kind="dub", policy=POLICY) as stream:
                await stream.aclose()
                await anyio.sleep(1)
                raise Boom
        with anyio.CancelScope() as outer:
            async with iter_statuses(client, ids, kind="dub", policy=POLICY):
                outer.cancel()
                await anyio.sleep(1)
                raise AssertionError("not cancelled")  # pragma: no cover
        assert outer.cancelled_caught
        with anyio.move_on_after(5) as deadline:
            async with iter_statuses(client, ids, kind="dub", policy=POLICY) as stream:
                async for _ in stream:
                    raise AssertionError("nothing finishes")  # pragma: no cover
        assert deadline.cancelled_caught
