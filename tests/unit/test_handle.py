"""TaskHandle: await / wait / watch / status, on virtual time."""

from __future__ import annotations

import anyio
import pytest

from camb_async import (
    AsyncCambClient,
    InternalServerError,
    NotFoundError,
    PollPolicy,
    TaskKind,
    TaskStatus,
    WaitTimeoutError,
)
from camb_async.polling._policy import DEFAULT_POLICIES
from camb_async.testing import FakeCambAPI

from ..conftest import ClientFactory

pytestmark = pytest.mark.anyio

NO_JITTER = PollPolicy(initial=1.0, factor=2.0, max_interval=8.0, jitter=0.0)


async def test_await_handle_returns_final_status(api: FakeCambAPI, client: AsyncCambClient) -> None:
    task_id = api.add_task("tts", after=12.0, run_id=9)
    handle = client.tts.task(task_id)
    assert api.log == []  # a handle makes no request until awaited
    final = await handle
    assert final.is_success and final.run_id == 9
    assert len(api.log) >= 2


async def test_watch_yields_every_observed_status_on_policy_schedule(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    task_id = api.add_task("dub", polls=5, status="TIMEOUT")
    seen = [r.status async for r in client.dub.task(task_id).watch(policy=NO_JITTER)]
    assert seen == [TaskStatus.PENDING] * 5 + [TaskStatus.TIMEOUT]
    gaps = [b.time - a.time for a, b in zip(api.log, api.log[1:], strict=False)]
    assert gaps == pytest.approx([1, 2, 4, 8, 8], abs=1e-6)


async def test_wait_timeout_expires_with_last_status(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    task_id = api.add_task("translate", after=1000)
    start = anyio.current_time()
    with pytest.raises(WaitTimeoutError) as info:
        await client.translation.task(task_id).wait(timeout=30, policy=NO_JITTER)
    assert anyio.current_time() - start == pytest.approx(30, abs=1e-6)
    assert isinstance(info.value, TimeoutError)
    assert info.value.last is not None and info.value.last.status is TaskStatus.PENDING


async def test_wait_with_default_policy_per_kind(api: FakeCambAPI, client: AsyncCambClient) -> None:
    for kind in (TaskKind.TTS, TaskKind.TRANSLATION, TaskKind.TRANSCRIPTION, TaskKind.DUB):
        api.log.clear()
        task_id = api.add_task(kind, polls=4)
        final = await client.task(kind, task_id).wait()
        assert final.is_success
        policy = DEFAULT_POLICIES[kind]
        gaps = [b.time - a.time for a, b in zip(api.log, api.log[1:], strict=False)]
        assert len(gaps) == 4
        for n, gap in enumerate(gaps, 1):
            base = min(policy.initial * policy.factor ** (n - 1), policy.max_interval)
            assert base * (1 - policy.jitter) - 1e-6 <= gap <= base * (1 + policy.jitter) + 1e-6


async def test_watch_rides_out_transient_errors(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    client = make_client(max_retries=0)
    task_id = api.add_task("tts", polls=1)
    api.inject(status=503, count=2)
    final = await client.tts.task(task_id).wait(policy=NO_JITTER)
    assert final.is_success
    assert [r.status for r in api.log] == [503, 503, 200, 200]


async def test_watch_gives_up_after_max_errors(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    client = make_client(max_retries=0)
    task_id = api.add_task("tts")
    api.inject(status=500, count=100)
    with pytest.raises(InternalServerError):
        await client.tts.task(task_id).wait(policy=PollPolicy(initial=1, max_errors=3))
    assert len(api.log) == 4


async def test_not_found_is_raised_at_once(api: FakeCambAPI, client: AsyncCambClient) -> None:
    with pytest.raises(NotFoundError):
        await client.dub.task("missing")
    assert len(api.log) == 1


async def test_status_is_one_request(api: FakeCambAPI, client: AsyncCambClient) -> None:
    task_id = api.add_task("transcribe", after=50)
    handle = client.transcription.task(task_id)
    assert (await handle.status()).status is TaskStatus.PENDING
    assert len(api.log) == 1
    assert handle == client.task("transcribe", task_id) and len({handle, handle}) == 1


def test_poll_policy_validation() -> None:
    with pytest.raises(ValueError):
        PollPolicy(initial=0)
    with pytest.raises(ValueError):
        PollPolicy(factor=0.5)
    with pytest.raises(ValueError):
        PollPolicy(initial=10, max_interval=5)
    with pytest.raises(ValueError):
        PollPolicy(jitter=1.5)
    with pytest.raises(TypeError):
        PollPolicy(initial="1")  # type: ignore[arg-type]
    policy = PollPolicy(initial=0.5, factor=3, max_interval=10, jitter=0)
    assert [policy.next_interval(n) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10, 10]
    constant = PollPolicy(initial=2, factor=1, max_interval=2, jitter=0)
    assert constant.next_interval(1000) == 2


@pytest.mark.parametrize("timeout", [8.0, 10.0, 25.0])
async def test_wait_polls_once_more_before_a_deadline_the_schedule_would_skip(
    api: FakeCambAPI, client: AsyncCambClient, timeout: float
) -> None:
    """A dub task done at 0.3 s: dub's first gap is ~10 s (and the next ~15 s), past the
    deadline, so ``wait`` polls once more just before the deadline instead of timing out
    with the PENDING it saw at 0 s. The deadline stays hard."""
    task_id = api.add_task("dub", after=0.3)
    start = anyio.current_time()
    final = await client.dub.task(task_id).wait(timeout=timeout)
    assert final.is_success
    assert anyio.current_time() - start <= timeout
    assert len(api.log) <= 3


async def test_wait_deadline_poll_then_timeout(api: FakeCambAPI, client: AsyncCambClient) -> None:
    """Still pending at that last poll: ``WaitTimeoutError`` exactly at the deadline, with
    that poll's status; the poll went out before the deadline (within its last second)."""
    task_id = api.add_task("dub", after=1e6)
    start = anyio.current_time()
    with pytest.raises(WaitTimeoutError) as info:
        await client.dub.task(task_id).wait(timeout=10)
    assert anyio.current_time() - start == pytest.approx(10, abs=1e-6)
    assert info.value.last is not None and info.value.last.status is TaskStatus.PENDING
    times = [r.time - start for r in api.log]
    assert len(times) == 2 and times[0] == pytest.approx(0, abs=1e-6)
    assert 9 <= times[1] < 10
