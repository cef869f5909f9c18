"""RedisWatchList against a real redis-server, and real worker processes (the CLI's `worker`).

In-process tests run each worker's client on a FakeCambAPI through ``httpx.ASGITransport``;
tasks end after a number of polls (``polls=``), so outcomes never depend on timing. Redis's
clock is real, so these tests use real time with short leases and fast policies, and assert
on counts, never on durations. Every async test runs on asyncio and on trio.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import anyio
import httpx
import pytest

from camb_async import (
    AsyncCambClient,
    AuthenticationError,
    CambError,
    PollPolicy,
    StatusResult,
    TaskStatus,
)
from camb_async.redis import (
    RedisWatchList,
    RedisWatchReplyError,
    RedisWatchUnavailableError,
    WatchEvent,
)
from camb_async.testing import FakeCambAPI, serve_in_thread

from .redis_server import ROOT, RedisServer, free_port

pytestmark = [pytest.mark.redis]

FAST = PollPolicy(initial=0.02, factor=1.0, max_interval=0.02, jitter=0.0)
KEY = "sk-watch-0123456789"


@pytest.fixture
def name() -> str:
    return f"watch-{uuid.uuid4().hex[:8]}"


def scripted(n: int, polls: int = 2) -> FakeCambAPI:
    """``n`` TTS tasks t0..: every third ends ERROR, the rest SUCCESS, after ``polls`` polls."""
    api = FakeCambAPI(api_key=KEY)
    for i in range(n):
        api.add_task(
            "tts",
            f"t{i}",
            polls=polls,
            status="ERROR" if i % 3 == 0 else "SUCCESS",
            exception_reason="BadMedia" if i % 3 == 0 else None,
        )
    return api


def client_for(api: FakeCambAPI, rate_limit: float | None = None) -> AsyncCambClient:
    return AsyncCambClient(
        KEY, base_url="http://fake", transport=httpx.ASGITransport(app=api), rate_limit=rate_limit
    )


async def collect(
    watch: RedisWatchList, n: int, *, group: str = "g", consumer: str = "c", **options: Any
) -> list[WatchEvent]:
    out: list[WatchEvent] = []
    with anyio.fail_after(20):
        async with watch.completions(group=group, consumer=consumer, **options) as events:
            async for event in events:
                out.append(event)
                if len(out) == n:
                    break
    return out


# ------------------------------------------------------------------ in-process


@pytest.mark.anyio
async def test_each_task_is_polled_until_it_ends_then_is_one_event(
    redis_server: RedisServer, name: str
) -> None:
    api = scripted(12, polls=2)
    async with RedisWatchList.from_url(redis_server.url, name=name) as watch:
        assert await watch.add_many([("tts", f"t{i}", {"user": f"u{i}"}) for i in range(12)]) == 12
        before = await watch.stats()
        assert (before.tracked, before.due, before.leased, before.completed) == (12, 12, 0, 0)
        async with client_for(api) as client:
            with anyio.fail_after(30):
                await watch.run(client, policy=FAST, until_empty=True)
        after = await watch.stats()
        assert (after.tracked, after.due, after.leased, after.completed, after.events) == (
            0,
            0,
            0,
            12,
            12,
        )
        events = await collect(watch, 12)
    # Pending twice, then the end: three polls each, none more (each poll settled once).
    assert sorted(r.path for r in api.log) == sorted(
        f"/tts/t{i}" for i in range(12) for _ in range(3)
    )
    by_id = {e.task_id: e for e in events}
    assert len(by_id) == 12
    for i in range(12):
        result, meta = by_id[f"t{i}"]
        assert isinstance(result, StatusResult) and meta == {"user": f"u{i}"}
        assert result.status is (TaskStatus.ERROR if i % 3 == 0 else TaskStatus.SUCCESS)
        assert result.run_id is not None if i % 3 else result.exception_reason == "BadMedia"
        assert by_id[f"t{i}"].error is None and by_id[f"t{i}"].completed >= by_id[f"t{i}"].added


@pytest.mark.anyio
async def test_add_is_idempotent_and_checks_its_input(redis_server: RedisServer, name: str) -> None:
    watch = RedisWatchList.from_url(redis_server.url, name=name)
    assert await watch.add("dub", "d1", {"a": "1"}) is True
    assert await watch.add("dub", "d1", {"a": "2"}) is False
    assert await watch.add_many([("dub", "d1"), ("tts", "d1")]) == 1  # another kind, another task
    assert (await watch.stats()).tracked == 2
    with pytest.raises(TypeError):
        await watch.add("dub", "d2", {"a": 1})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        await watch.add("dub", "d2", {"a": "x" * 5000})
    with pytest.raises(ValueError):
        await watch.add("dub", "a/b")
    with pytest.raises(ValueError):
        await watch.add("video", "d3")
    with pytest.raises(ValueError, match="lone surrogate"):
        await watch.add("dub", "d4", {"k": "\udcff"})
    with pytest.raises(TypeError, match=r"\(kind, task_id\) or \(kind, task_id, meta\)"):
        await watch.add_many([("tts", "d5"), ("tts",)])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="tuples"):
        await watch.add_many(["tts:d6"])  # type: ignore[list-item]
    assert (await watch.stats()).tracked == 2


@pytest.mark.anyio
async def test_a_failed_body_leaves_its_event_pending_for_the_same_consumer(
    redis_server: RedisServer, name: str
) -> None:
    api = scripted(3, polls=0)
    async with RedisWatchList.from_url(redis_server.url, name=name) as watch:
        await watch.add_many([("tts", f"t{i}") for i in range(3)])
        async with client_for(api) as client:
            await watch.run(client, policy=FAST, until_empty=True)
        seen: list[str] = []
        with pytest.raises(RuntimeError, match="body failed"):
            async with watch.completions(group="g", consumer="c") as events:
                async for event in events:
                    seen.append(event.task_id)
                    if len(seen) == 2:
                        raise RuntimeError("body failed")
        # The first was acknowledged (its body ended); the second was not: delivered again.
        again = await collect(watch, 2)
    assert [e.task_id for e in again] == [
        seen[1],
        next(f"t{i}" for i in range(3) if f"t{i}" not in seen),
    ]
    assert len({*seen, *(e.task_id for e in again)}) == 3


@pytest.mark.anyio
async def test_a_dead_consumers_events_are_claimed_by_another(
    redis_server: RedisServer, name: str
) -> None:
    api = scripted(4, polls=0)
    async with RedisWatchList.from_url(redis_server.url, name=name) as watch:
        await watch.add_many([("tts", f"t{i}") for i in range(4)])
        async with client_for(api) as client:
            await watch.run(client, policy=FAST, until_empty=True)
        # "dead" takes two events and never acknowledges them (its body never ended).
        dead = watch.completions(group="g", consumer="dead", batch=2)
        taken = [await dead.__anext__(), await dead.__anext__()]
        # "alive" gets the other two at once, and the dead one's after claim_idle.
        events = await collect(watch, 4, consumer="alive", claim_idle=0.3)
    assert {e.task_id for e in events} == {f"t{i}" for i in range(4)}
    assert {e.id for e in taken} <= {e.id for e in events}


@pytest.mark.anyio
async def test_an_expired_lease_is_taken_over(redis_server: RedisServer, name: str) -> None:
    api = scripted(5, polls=1)
    async with RedisWatchList.from_url(redis_server.url, name=name, lease_ttl=0.5) as watch:
        await watch.add_many([("tts", f"t{i}") for i in range(5)])
        # A worker claims everything and dies: nothing is settled, nothing given back.
        await watch._call(["claim", "a-dead-worker", 10, 0.5])
        stats = await watch.stats()
        assert (stats.due, stats.leased) == (0, 5)
        async with client_for(api) as client:
            with anyio.fail_after(20):
                await watch.run(client, policy=FAST, until_empty=True)
        assert (await watch.stats()).completed == 5
    assert len(api.log) == 10  # polled by the live worker only: two polls each


@pytest.mark.anyio
async def test_a_stopped_worker_gives_back_what_it_did_not_poll(
    redis_server: RedisServer, name: str
) -> None:
    api = scripted(40, polls=50)
    async with RedisWatchList.from_url(redis_server.url, name=name, lease_ttl=60) as watch:
        await watch.add_many([("tts", f"t{i}") for i in range(40)])
        async with client_for(api, rate_limit=10) as client:  # 10 req/s: few polled
            with anyio.move_on_after(0.5):
                await watch.run(
                    client, policy=PollPolicy(initial=30, max_interval=30), concurrency=4
                )
        stats = await watch.stats()
    # Polled tasks were rescheduled (not due for 30 s), claimed ones not polled came back due
    # (and a poll cut short by the stop, if any: due again too); no lease is left to expire.
    polled = len({r.path for r in api.log})
    assert stats.leased == 0 and stats.tracked == 40
    assert 0 < 40 - polled <= stats.due < 40


@pytest.mark.anyio
async def test_a_refused_api_key_stops_the_worker_and_gives_its_leases_back(
    redis_server: RedisServer, name: str
) -> None:
    api = scripted(5)
    async with RedisWatchList.from_url(redis_server.url, name=name, lease_ttl=60) as watch:
        await watch.add_many([("tts", f"t{i}") for i in range(5)])
        async with AsyncCambClient(
            "sk-not-the-key", base_url="http://fake", transport=httpx.ASGITransport(app=api)
        ) as client:
            with anyio.fail_after(20), pytest.raises(AuthenticationError):
                await watch.run(client, policy=FAST)
        stats = await watch.stats()
    assert (stats.tracked, stats.due, stats.leased, stats.completed) == (5, 5, 0, 0)


@pytest.mark.anyio
async def test_redis_unavailable_is_a_camb_error_without_the_password() -> None:
    url = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"
    watch = RedisWatchList.from_url(url, name="nowhere", redis_timeout=2.0, on_redis_error="raise")
    assert "s3cret" not in repr(watch)
    for call in (watch.add("tts", "t1"), watch.stats()):
        with pytest.raises(RedisWatchUnavailableError) as info:
            await call
        assert isinstance(info.value, CambError) and "s3cret" not in str(info.value)
        assert info.value.redis_error
    async with client_for(scripted(1)) as client:
        with pytest.raises(RedisWatchUnavailableError):
            await watch.run(client)
    with pytest.raises(RedisWatchUnavailableError):
        await watch.completions(group="g", consumer="c").__anext__()


@pytest.mark.anyio
async def test_refused_credentials_raise_at_once(caplog: pytest.LogCaptureFixture) -> None:
    with RedisServer(password="right-pw") as server:
        url = f"redis://:wrong-pw@127.0.0.1:{server.port}/0"
        watch = RedisWatchList.from_url(url, name="w")  # "wait": still raised at once
        with caplog.at_level(logging.WARNING), pytest.raises(RedisWatchReplyError) as info:
            await watch.add("tts", "t1")
        unavailable = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
        assert unavailable and all(m.endswith("; raising") for m in unavailable)  # no "waiting"
        assert info.value.redis_error in ("WRONGPASS", "NOAUTH", "ERR")
        assert "wrong-pw" not in str(info.value)
        with anyio.fail_after(10), pytest.raises(RedisWatchReplyError):
            await watch.completions(group="g", consumer="c").__anext__()


# ------------------------------------------------------------------ real processes


def _cli(*args: str, **popen: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "camb_async.cli", *args],
        cwd=ROOT,
        env={**os.environ, "CAMB_API_KEY": KEY, "PYTHONPATH": str(ROOT)},
        **popen,
    )


def test_a_killed_worker_and_a_redis_restart_lose_nothing() -> None:
    """Worker 0 is SIGKILLed holding leases; worker 1 (trio) takes over once they expire;
    Redis (AOF, fsync always) restarts mid-run. Every task's end reaches the group."""
    api = FakeCambAPI(api_key=KEY, clock=time.monotonic)
    n = 30
    for i in range(n):
        api.add_task("tts", f"t{i}", polls=2, status="TIMEOUT" if i % 5 == 0 else "SUCCESS")
    name = f"proc-{uuid.uuid4().hex[:6]}"
    aof = ["--appendonly", "yes", "--appendfsync", "always"]
    with RedisServer(args=aof) as redis, serve_in_thread(api) as base_url:
        watch = RedisWatchList.from_url(redis.url, name=name)

        async def stats() -> Any:
            return await watch.stats()

        anyio.run(watch.add_many, [("tts", f"t{i}", {"i": str(i)}) for i in range(n)])
        common = ["--redis", redis.url, "--name", name, "--base-url", base_url, "--lease-ttl", "2"]
        # Slow (2 req/s): it holds its claimed leases for seconds.
        first = _cli(
            "worker",
            *common,
            "--rate-limit",
            "2",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        second: subprocess.Popen[bytes] | None = None
        try:
            deadline = time.monotonic() + 30
            while anyio.run(stats).leased == 0 or not api.log:
                assert time.monotonic() < deadline and first.poll() is None
                time.sleep(0.05)
            first.send_signal(signal.SIGKILL)
            first.wait()
            killed_with = anyio.run(stats)
            assert killed_with.leased > 0 and killed_with.tracked == n
            second = _cli(
                "worker",
                *common,
                "--rate-limit",
                "50",
                "--backend",
                "trio",
                "--budget-name",
                name + "-2",
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            while len(api.log) < 40:  # mid-run
                assert time.monotonic() < deadline + 30 and second.poll() is None
                time.sleep(0.05)
            redis.restart(down_for=0.5)
            events = anyio.run(collect, watch, n)
            watched = _cli(
                "watch", "--redis", redis.url, "--name", name, "--json", stdout=subprocess.PIPE
            )
            figures = json.loads(watched.communicate(timeout=30)[0])
        finally:
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
                    proc.wait(timeout=30)
    assert {e.task_id for e in events} == {f"t{i}" for i in range(n)}
    for e in events:
        assert e.result is not None and e.meta == {"i": e.task_id[1:]}
        i = int(e.task_id[1:])
        assert e.result.status is (TaskStatus.TIMEOUT if i % 5 == 0 else TaskStatus.SUCCESS)
    assert figures["tracked"] == 0 and figures["completed"] == n and figures["leased"] == 0


@pytest.mark.anyio
async def test_sharing_an_unopened_watch_list_between_tasks_is_refused_clearly(
    redis_server: RedisServer, name: str
) -> None:
    """A worker and a consumer in two tasks without ``async with watch``: the client's pool
    would belong to whichever opened it first, and stopping that one broke the other's cancel
    scopes (a raw RuntimeError). The second user is told to hold the watch list open; inside
    ``async with watch`` the same pair works and stops cleanly."""
    api = scripted(3, polls=1)
    watch = RedisWatchList.from_url(redis_server.url, name=name)
    await watch.add_many([("tts", f"t{i}") for i in range(3)])
    async with client_for(api) as client, anyio.create_task_group() as tg:
        started = anyio.Event()

        async def work() -> None:
            started.set()
            await watch.run(client, policy=FAST)

        tg.start_soon(work)
        await started.wait()
        with anyio.fail_after(10):
            while not watch._client_is_open():  # noqa: ASYNC110 - coredis offers no event
                await anyio.sleep(0.01)
        with pytest.raises(RuntimeError, match="async with watch"):
            async with watch.completions(group="g", consumer="c"):
                pass
        tg.cancel_scope.cancel()
    # Held open: the same pair in two tasks works (a fresh list: the stopped worker above may
    # still hold leases until they expire).
    shared = RedisWatchList.from_url(redis_server.url, name=f"{name}-shared")
    async with shared, client_for(scripted(3, polls=1)) as client, anyio.create_task_group() as tg:
        await shared.add_many([("tts", f"t{i}") for i in range(3)])
        tg.start_soon(lambda: shared.run(client, policy=FAST))
        events = await collect(shared, 3)
        tg.cancel_scope.cancel()
    assert sorted(e.task_id for e in events) == ["t0", "t1", "t2"]
