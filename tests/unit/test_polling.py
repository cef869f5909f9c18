"""gather_statuses / iter_statuses and the budget, on virtual time (deterministic)."""

from __future__ import annotations

import itertools
import random
from contextlib import aclosing
from typing import Any, cast

import anyio
import anyio.lowlevel
import httpx
import pytest

from camb_async import (
    AsyncCambClient,
    AuthenticationError,
    NotFoundError,
    PollPolicy,
    RateBudget,
    StatusResult,
    TaskKind,
    TaskStatus,
    gather_statuses,
    iter_statuses,
)
from camb_async.testing import FakeCambAPI

from ..conftest import API_KEY, ClientFactory

pytestmark = pytest.mark.anyio

FAST = PollPolicy(initial=1.0, factor=2.0, max_interval=4.0, jitter=0.0)


def _script(api: FakeCambAPI, n: int, seed: int = 1) -> dict[str, tuple[TaskKind, str]]:
    rng = random.Random(seed)
    truth = {}
    kinds = list(dict.fromkeys(TaskKind))
    for i in range(n):
        kind = kinds[i % 4]
        status = rng.choice(
            ["SUCCESS", "SUCCESS", "SUCCESS", "ERROR", "TIMEOUT", "PAYMENT_REQUIRED"]
        )
        task_id = api.add_task(kind, f"t{i}", status=status, after=rng.uniform(0, 30))
        truth[task_id] = (kind, status)
    return truth


async def test_gather_mixed_kinds_in_input_order(api: FakeCambAPI, client: AsyncCambClient) -> None:
    truth = _script(api, 200)
    handles = [client.task(kind, tid) for tid, (kind, _) in truth.items()]
    handles.reverse()
    out = await client.gather_statuses(handles, policy=FAST)
    assert [r.task_id for r in out] == [h.task_id for h in handles]
    assert all(r.raw_status == truth[r.task_id][1] for r in out)
    assert all(r.kind is truth[r.task_id][0] for r in out)


async def test_ids_need_kind_and_repeated_ids_are_polled_once(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    a = api.add_task("tts", "a", polls=2)
    b = api.add_task("tts", "b")
    with pytest.raises(TypeError, match="kind"):
        await gather_statuses(client, [a, b])
    out = await gather_statuses(client, [a, b, a, a], kind="tts", policy=FAST)
    assert [r.task_id for r in out] == ["a", "b", "a", "a"]
    assert out[0] is out[2] is out[3]
    assert sum(r.path == "/tts/a" for r in api.log) == 3
    assert sum(r.path == "/tts/b" for r in api.log) == 1


async def test_wait_false_is_one_snapshot_each(api: FakeCambAPI, client: AsyncCambClient) -> None:
    ids = [api.add_task("dub", after=100) for _ in range(50)]
    seen: list[StatusResult] = []
    out = await gather_statuses(client, ids, kind=TaskKind.DUB, wait=False, on_update=seen.append)
    assert all(r.status is TaskStatus.PENDING for r in out)
    assert len(api.log) == 50 and len(seen) == 50


async def test_timeout_returns_last_observed_status(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    client = make_client(rate_limit=10, max_concurrency=4)
    done = [api.add_task("tts", after=0) for _ in range(5)]
    slow = [api.add_task("tts", after=10_000) for _ in range(200)]
    start = anyio.current_time()
    out = await gather_statuses(client, done + slow, kind="tts", timeout=5, policy=FAST)
    assert anyio.current_time() - start == pytest.approx(5, abs=1e-6)
    assert [r.status for r in out[:5]] == [TaskStatus.SUCCESS] * 5
    assert all(r.status is TaskStatus.PENDING for r in out[5:])
    # ~50 requests fit in 5 s at 10/s; the rest were never polled and still come back PENDING
    assert len(api.log) <= 61


async def test_return_exceptions_and_first_error(api: FakeCambAPI, client: AsyncCambClient) -> None:
    ok = api.add_task("dub", after=50)
    out = await gather_statuses(
        client, [ok, "nope"], kind="dub", return_exceptions=True, policy=FAST
    )
    assert isinstance(out[0], StatusResult) and out[0].is_success
    assert isinstance(out[1], NotFoundError) and out[1].task_id == "nope"

    api.log.clear()
    with pytest.raises(NotFoundError):
        await gather_statuses(
            client,
            [ok, "nope", *[api.add_task("dub", after=500) for _ in range(5)]],
            kind="dub",
            policy=FAST,
        )
    requests_at_failure = len(api.log)
    await anyio.sleep(100)
    assert len(api.log) == requests_at_failure  # everything else was cancelled


async def test_authentication_error_raises_even_with_return_exceptions(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    client = make_client(api_key="wrong-key", max_concurrency=2)
    ids = [api.add_task("tts", after=5) for _ in range(20)]
    with pytest.raises(AuthenticationError):
        await gather_statuses(client, ids, kind="tts", return_exceptions=True)
    assert len(api.log) <= 2


async def test_transient_errors_are_repolled(api: FakeCambAPI, make_client: ClientFactory) -> None:
    client = make_client(max_retries=0)
    ids = [api.add_task("translate", after=3) for _ in range(20)]
    api.inject(status=503, count=15)
    api.inject(status=429, retry_after="2", count=3)
    out = await gather_statuses(client, ids, kind="translate", policy=FAST)
    assert all(r.is_success for r in out)


async def test_handles_must_belong_to_this_client(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    one, two = make_client(), make_client()
    task_id = api.add_task("dub")
    with pytest.raises(ValueError, match="another AsyncCambClient"):
        await gather_statuses(one, [two.dub.task(task_id)])
    with pytest.raises(TypeError):
        await gather_statuses(one, [42], kind="dub")  # type: ignore[list-item]
    with pytest.raises(TypeError):
        await gather_statuses(one, "abc", kind="dub")
    with pytest.raises(ValueError):
        await gather_statuses(one, ["ok", "a/b"], kind="dub")
    assert api.log == []  # validation happens before any request


async def test_rate_bound_holds_in_every_window(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    client = make_client(rate_limit=25, max_concurrency=8)
    ids = [api.add_task("tts", after=random.Random(i).uniform(0, 20)) for i in range(300)]
    start = anyio.current_time()
    out = await gather_statuses(client, ids, kind="tts", policy=FAST)
    assert all(r.is_success for r in out)
    assert api.peak_per_window(1.0) <= 25
    # The budget, not the schedule, is the bottleneck: it is used nearly fully.
    assert anyio.current_time() - start <= len(api.log) / 25 * 1.05 + 1


async def test_retry_after_pauses_every_task_of_the_budget(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    client = make_client(rate_limit=50, max_concurrency=1)
    ids = [api.add_task("dub", after=1) for _ in range(30)]
    api.inject(status=429, retry_after="10")
    await gather_statuses(client, ids, kind="dub", policy=FAST)
    first = api.log[0]
    assert first.status == 429
    assert all(r.time - first.time >= 10 - 1e-6 for r in api.log[1:])
    assert isinstance(client.budget, RateBudget) and client.budget.pauses == 1


async def test_due_order_and_no_starvation_under_a_tight_budget(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    # 10 requests/s; 5 tasks re-polled every second and 40 never polled: the new ones must
    # all go out before any task is polled for a second time.
    client = make_client(rate_limit=10, max_concurrency=1)
    ids = [api.add_task("tts", after=1000) for _ in range(45)]
    await gather_statuses(
        client,
        ids,
        kind="tts",
        timeout=6,
        policy=PollPolicy(initial=0.1, factor=1, max_interval=0.1, jitter=0),
    )
    first_45 = [r.path for r in api.log[:45]]
    assert len(set(first_45)) == 45


async def test_cancellation_at_random_points_leaves_nothing_running(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    client = make_client(rate_limit=40, max_concurrency=6)
    budget = client.budget
    assert isinstance(budget, RateBudget)
    ids = [api.add_task("translate", after=random.Random(i).uniform(0, 60)) for i in range(60)]
    rng = random.Random(7)
    for _ in range(20):
        with anyio.move_on_after(rng.uniform(0, 5)):
            await gather_statuses(client, ids, kind="translate", policy=FAST)
        assert budget.in_flight == 0
        before = len(api.log)
        await anyio.sleep(30)
        assert len(api.log) == before  # no worker survived the cancellation


async def test_iter_statuses_streams_terminal_results_as_they_land(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    ids = [api.add_task("tts", f"t{i}", after=float(40 - i)) for i in range(20)]
    order = []
    async with aclosing(
        iter_statuses(
            client,
            ids,
            kind="tts",
            policy=PollPolicy(initial=0.5, factor=1, max_interval=0.5, jitter=0),
        )
    ) as it:
        async for result in it:
            assert result.is_terminal
            order.append(result.task_id)
    assert sorted(order) == sorted(ids)
    assert order[0] == "t19" and order[-1] == "t0"  # shortest first


async def test_iter_statuses_break_stops_polling(api: FakeCambAPI, client: AsyncCambClient) -> None:
    ids = [api.add_task("tts", after=float(i)) for i in range(50)]
    async with aclosing(iter_statuses(client, ids, kind="tts", policy=FAST)) as it:
        async for _ in it:
            break
    before = len(api.log)
    await anyio.sleep(60)
    assert len(api.log) == before


async def test_iter_statuses_timeout_yields_every_task_once(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    ids = [api.add_task("dub", after=5)] + [api.add_task("dub", after=1e6) for _ in range(9)]
    got = [r async for r in iter_statuses(client, ids, kind="dub", timeout=20, policy=FAST)]
    assert sorted(r.task_id for r in got) == sorted(ids)
    assert sum(r.is_success for r in got) == 1


async def test_iter_statuses_raises_first_error(api: FakeCambAPI, client: AsyncCambClient) -> None:
    ids = [api.add_task("dub", after=50), "ghost"]
    with pytest.raises(NotFoundError):
        async with aclosing(iter_statuses(client, ids, kind="dub", policy=FAST)) as it:
            async for _ in it:
                pass


async def test_on_update_may_be_async_and_sees_every_status(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    task_id = api.add_task("tts", polls=3)
    seen = []

    async def record(result: StatusResult) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(result.status)

    await gather_statuses(client, [task_id], kind="tts", policy=FAST, on_update=record)
    assert seen == [TaskStatus.PENDING] * 3 + [TaskStatus.SUCCESS]


async def test_no_request_for_empty_input(api: FakeCambAPI, client: AsyncCambClient) -> None:
    assert await gather_statuses(client, [], kind="dub") == []
    assert api.log == []


async def test_budget_is_shared_with_other_calls(api: FakeCambAPI) -> None:
    async with AsyncCambClient(
        API_KEY, base_url="http://localhost", rate_limit=5, transport=httpx.ASGITransport(app=api)
    ) as client:
        ids = [api.add_task("tts", after=1e6) for _ in range(20)]
        single = api.add_task("dub", after=1e6)
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: gather_statuses(client, ids, kind="tts", timeout=10))
            for _ in range(10):
                await client.dub.status(single)
        assert api.peak_per_window(1.0) <= 5


async def test_policy_per_kind_mapping(api: FakeCambAPI, client: AsyncCambClient) -> None:
    fast = PollPolicy(initial=1, factor=1, max_interval=1, jitter=0)
    slow = PollPolicy(initial=7, factor=1, max_interval=7, jitter=0)
    tts = api.add_task("tts", "a", polls=2)
    dub = api.add_task("dub", "b", polls=2)
    out = await gather_statuses(
        client,
        [client.tts.task(tts), client.dub.task(dub)],
        policy={"tts": fast, TaskKind.DUB: slow},
    )
    assert [r.is_success for r in out] == [True, True]
    for path, gap in (("/tts/a", 1), ("/dub/b", 7)):
        times = [r.time for r in api.log if r.path == path]
        assert [b - a for a, b in itertools.pairwise(times)] == pytest.approx([gap, gap], abs=1e-6)
    with pytest.raises(TypeError):
        await gather_statuses(client, [tts], kind="tts", policy=cast(Any, {"tts": 3}))
    with pytest.raises(ValueError):
        await gather_statuses(client, [tts], kind="tts", policy={"sing": fast})


async def test_iter_statuses_break_without_aclosing_is_safe(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    ids = [api.add_task("tts", after=float(i)) for i in range(30)]
    got = []
    async for result in iter_statuses(client, ids, kind="tts", policy=FAST):
        got.append(result)
        if len(got) == 2:
            break
    before = len(api.log)
    await anyio.sleep(60)  # no stray cancellation reaches us, nothing polls on
    assert len(api.log) == before
    assert isinstance(client.budget, RateBudget) and client.budget.in_flight == 0

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async for _ in iter_statuses(client, ids, kind="tts", policy=FAST):
            raise Boom
    await anyio.sleep(60)
    assert (await client.tts.status(ids[-1])).is_success


async def test_iter_statuses_cancelled_mid_item_loses_nothing(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    client = make_client(max_concurrency=4)
    ids = [api.add_task("dub", after=float(i % 7)) for i in range(40)]
    stream = iter_statuses(client, ids, kind="dub", policy=FAST)
    seen: list[str] = []
    rng = random.Random(3)
    while True:
        with anyio.move_on_after(rng.uniform(0, 0.7)):
            try:
                seen.append((await stream.__anext__()).task_id)
            except StopAsyncIteration:
                break
    assert sorted(seen) == sorted(ids)  # every task exactly once, despite the cancellations


async def test_iter_statuses_as_a_context_keeps_polling_while_items_are_handled(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    ids = [api.add_task("tts", f"s{i}", after=float(i)) for i in range(20)]
    got = []
    async with iter_statuses(client, ids, kind="tts", policy=FAST) as stream:
        async for result in stream:
            got.append(result.task_id)
            await anyio.sleep(5)  # slow consumer: polling goes on in the background
    assert sorted(got) == sorted(ids)
    # ...so the last task was seen soon after it finished, not 20 x 5 s later.
    last_poll = max(r.time for r in api.log)
    assert last_poll - api.log[0].time < 25


async def test_iter_statuses_context_break_error_and_fatal(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    ids = [api.add_task("dub", after=float(i)) for i in range(30)]
    async with iter_statuses(client, ids, kind="dub", policy=FAST) as stream:
        async for _ in stream:
            break
    before = len(api.log)
    await anyio.sleep(60)
    assert len(api.log) == before  # leaving the block stopped every worker
    with pytest.raises(NotFoundError):
        async with iter_statuses(client, [*ids, "ghost"], kind="dub", policy=FAST) as stream:
            async for _ in stream:
                pass
    with pytest.raises(RuntimeError, match="before iterating"):
        stream = iter_statuses(client, ids, kind="dub", policy=FAST)
        await stream.__anext__()
        async with stream:
            pass
    slow = api.add_task("dub", after=1e6)
    async with iter_statuses(
        client, [*ids[:3], slow], kind="dub", timeout=30, policy=FAST
    ) as stream:
        got = [r async for r in stream]
    assert len(got) == 4 and sum(r.is_success for r in got) == 3


async def test_bare_iteration_is_not_held_back_by_budget_waits(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    from camb_async.testing import Fault

    client = make_client(rate_limit=1.0, max_concurrency=4)
    ids = [api.add_task("tts", after=0) for _ in range(4)]
    api.inject(Fault(status=None, delay=0.1), count=4)
    start = anyio.current_time()
    times = [
        anyio.current_time() - start
        async for _ in iter_statuses(client, ids, kind="tts", policy=FAST)
    ]
    # One request a second is the budget; an item must not also wait out the next slot.
    assert times[-1] < 3.5


@pytest.mark.parametrize("mode", ["bare-deadline", "bare-break", "context-aclose"])
async def test_unfinished_tasks_are_reported_to_the_stats_exactly_once(
    api: FakeCambAPI, make_client: ClientFactory, mode: str
) -> None:
    import gc

    from camb_async import CompletionStats

    calls: list[str] = []

    class SpyStats(CompletionStats):
        """Counts this client's reports only: iterators that earlier tests left for the
        garbage collector report to their own clients' stats, never to this one."""

        __slots__ = ()

        def abandoned(self, *args: Any, **kwargs: Any) -> None:
            calls.append("abandoned")
            super().abandoned(*args, **kwargs)

    client = make_client(completion_stats=SpyStats())
    ids = [api.add_task("dub", after=1000) for _ in range(3)] + [api.add_task("dub", after=0)]
    if mode == "bare-deadline":
        got = [r async for r in iter_statuses(client, ids, kind="dub", timeout=10, policy=FAST)]
        assert len(got) == 4
    elif mode == "bare-break":
        await anyio.lowlevel.checkpoint()
        async for _ in iter_statuses(client, ids, kind="dub", policy=FAST):
            break
        gc.collect()
    else:
        async with iter_statuses(client, ids, kind="dub", policy=FAST) as stream:
            async for _ in stream:
                await anyio.sleep(5)  # the others have been polled by now
                await stream.aclose()
                break
            assert [r async for r in stream] == []  # closed: no further items
    assert calls == ["abandoned"] * 3


@pytest.mark.parametrize("mode", ["gather", "iter-bare", "iter-context"])
async def test_bulk_timeout_polls_once_more_before_a_deadline_the_schedule_would_skip(
    api: FakeCambAPI, client: AsyncCambClient, mode: str
) -> None:
    """Dub tasks done at 0.3 s, ``timeout=8``: dub's first gap (~10 s) lies past the
    deadline, so each task is polled once more just before it, not reported PENDING."""
    ids = [api.add_task("dub", after=0.3) for _ in range(5)]
    start = anyio.current_time()
    if mode == "gather":
        out = await gather_statuses(client, ids, kind="dub", timeout=8)
    elif mode == "iter-bare":
        out = [r async for r in iter_statuses(client, ids, kind="dub", timeout=8)]
    else:
        async with iter_statuses(client, ids, kind="dub", timeout=8) as stream:
            out = [r async for r in stream]
    assert [r.status for r in out] == [TaskStatus.SUCCESS] * 5
    assert anyio.current_time() - start <= 8
    assert len(api.log) == 10


async def test_the_poller_lets_other_tasks_run_between_polls(make_client: ClientFactory) -> None:
    """A transport that answers without ever waiting (in-process) must not let the bulk
    poller hold the event loop for a whole round: every poll is a checkpoint."""
    answer = b'{"status": "PENDING"}'
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=answer))
    turns = 0
    done = False

    async def other() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await anyio.lowlevel.checkpoint()

    async with make_client(transport=transport) as client, anyio.create_task_group() as tg:
        tg.start_soon(other)
        await anyio.lowlevel.checkpoint()
        before = turns
        out = await gather_statuses(client, [f"t{i}" for i in range(200)], kind="tts", wait=False)
        done = True
    assert [r.raw_status for r in out] == ["PENDING"] * 200
    # Workers (one per concurrency slot, 16) each poll once per turn of the loop.
    assert turns - before >= 200 // 16 - 1
