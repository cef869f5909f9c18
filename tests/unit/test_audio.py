"""Raw TTS audio: tts.audio(), tts.save_audio(), handle.save_audio() (in-process, virtual time).

The fake serves each TTS run's FLAC body in the API's default ``raw_bytes`` mode. A wrapping
transport re-chunks it and can fail or stall mid-body the way a network does, so the
all-or-nothing file and the retry-before-the-first-byte rule are exercised on both loops.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from pathlib import Path
from typing import TypeVar, cast

import anyio
import anyio.lowlevel
import httpx
import pytest

from camb_async import (
    APIConnectionError,
    APITimeoutError,
    AsyncCambClient,
    NotFoundError,
    PollPolicy,
    TaskFailedError,
    TaskKind,
    UnprocessableEntityError,
    _download,
)
from camb_async.testing import FakeCambAPI, Fault

from ..conftest import ClientFactory

pytestmark = pytest.mark.anyio

FAST = PollPolicy(initial=1.0, factor=1.0, max_interval=1.0, jitter=0.0)
CHUNK = 16 * 1024
T = TypeVar("T")


class ChunkedBody(httpx.AsyncByteStream):
    def __init__(self, body: bytes, fail_at: int | None, stall_at: int | None) -> None:
        self.body = body
        self.fail_at = fail_at
        self.stall_at = stall_at
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.body), CHUNK):
            if self.fail_at is not None and start >= self.fail_at:
                raise httpx.ReadError("connection reset by peer")
            if self.stall_at is not None and start >= self.stall_at:
                await anyio.sleep_forever()
            yield self.body[start : start + CHUNK]
            await anyio.sleep(0.01)  # bytes take time to arrive

    async def aclose(self) -> None:
        self.closed = True


class NetworkTransport(httpx.AsyncBaseTransport):
    """The fake in-process, with answers delivered in chunks; ``fail_at``/``stall_at``: the
    next ``failures`` answers break (or hang) at that byte offset."""

    def __init__(
        self,
        api: FakeCambAPI,
        *,
        fail_at: int | None = None,
        stall_at: int | None = None,
        failures: int = 1,
    ) -> None:
        self.inner = httpx.ASGITransport(app=api)
        self.fail_at = fail_at
        self.stall_at = stall_at
        self.failures = failures
        self.bodies: list[ChunkedBody] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        body = await response.aread()
        broken = self.failures > 0 and response.status_code < 300
        self.failures -= broken
        stream = ChunkedBody(
            body, self.fail_at if broken else None, self.stall_at if broken else None
        )
        self.bodies.append(stream)
        return httpx.Response(response.status_code, headers=response.headers, stream=stream)


@pytest.fixture(autouse=True)
def inline_file_writes(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """File writes in the test's own thread: on a virtual clock a worker-thread hand-off
    leaves the loop idle, and an idle virtual clock jumps to the next deadline. Tests
    marked ``real_threads`` keep the worker threads (and assert nothing about time)."""
    if request.node.get_closest_marker("real_threads") is not None:
        return

    async def inline(func: Callable[..., T], *args: object) -> T:
        await anyio.lowlevel.checkpoint()
        return func(*args)

    monkeypatch.setattr(_download, "_offload", inline)


def tts_run(api: FakeCambAPI, size: int | None = None, **task: object) -> int:
    task_id = api.add_task("tts", **task)  # type: ignore[arg-type]
    run_id = api.tasks[(TaskKind.TTS, task_id)].run_id
    assert run_id is not None
    if size is not None:
        api.set_audio(run_id, size)
    return run_id


def leftovers(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


async def test_audio_streams_the_flac_body_in_raw_bytes_mode(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    run_id = tts_run(api, size=200_000)
    client = make_client(transport=NetworkTransport(api, failures=0))
    chunks = [chunk async for chunk in client.tts.audio(run_id)]
    assert len(chunks) > 1 and max(map(len, chunks)) <= CHUNK
    assert b"".join(chunks) == api.audio_bytes(run_id)
    assert b"".join(chunks).startswith(b"fLaC")
    (request,) = api.log
    assert request.path == f"/tts-result/{run_id}" and request.status == 200


@pytest.mark.real_threads
async def test_save_audio_writes_the_whole_file(
    api: FakeCambAPI, client: AsyncCambClient, tmp_path: Path
) -> None:
    run_id = tts_run(api, size=300_000)
    target = tmp_path / "speech.flac"
    written = await client.tts.save_audio(run_id, target)
    assert written == 300_000 and target.read_bytes() == api.audio_bytes(run_id)
    assert leftovers(tmp_path) == ["speech.flac"]


async def test_save_audio_replaces_an_existing_file(
    api: FakeCambAPI, client: AsyncCambClient, tmp_path: Path
) -> None:
    run_id = tts_run(api)
    target = tmp_path / "speech.flac"
    target.write_bytes(b"old")
    await client.tts.save_audio(run_id, str(target))
    assert target.read_bytes() == api.audio_bytes(run_id)


async def test_retried_before_the_first_byte(
    api: FakeCambAPI, make_client: ClientFactory, tmp_path: Path
) -> None:
    run_id = tts_run(api, size=100_000)
    api.inject(Fault(status=503), path="/tts-result/")
    transport = NetworkTransport(api, fail_at=0, failures=1)  # then one reset before any byte
    client = make_client(transport=transport)
    target = tmp_path / "a.flac"
    assert await client.tts.save_audio(run_id, target) == 100_000
    assert [r.status for r in api.log] == [503, 200, 200]
    assert target.read_bytes() == api.audio_bytes(run_id)
    assert all(body.closed for body in transport.bodies)


async def test_a_drop_mid_body_is_not_retried_and_leaves_no_file(
    api: FakeCambAPI, make_client: ClientFactory, tmp_path: Path
) -> None:
    run_id = tts_run(api, size=500_000)
    transport = NetworkTransport(api, fail_at=5 * CHUNK, failures=1)
    client = make_client(transport=transport)
    target = tmp_path / "speech.flac"
    with pytest.raises(APIConnectionError) as info:
        await client.tts.save_audio(run_id, target)
    assert not isinstance(info.value, APITimeoutError)
    assert "ReadError" in str(info.value)
    assert leftovers(tmp_path) == []
    assert len(api.log) == 1  # after the first byte: never retried
    assert transport.bodies[0].closed


async def test_a_failed_download_keeps_the_old_file(
    api: FakeCambAPI, make_client: ClientFactory, tmp_path: Path
) -> None:
    run_id = tts_run(api, size=500_000)
    client = make_client(transport=NetworkTransport(api, fail_at=2 * CHUNK))
    target = tmp_path / "speech.flac"
    target.write_bytes(b"previous take")
    with pytest.raises(APIConnectionError):
        await client.tts.save_audio(run_id, target)
    assert target.read_bytes() == b"previous take"
    assert leftovers(tmp_path) == ["speech.flac"]


async def test_audio_iterator_raises_on_a_drop(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    run_id = tts_run(api, size=500_000)
    client = make_client(transport=NetworkTransport(api, fail_at=3 * CHUNK))
    got = 0
    with pytest.raises(APIConnectionError):
        async with aclosing(cast(AsyncGenerator[bytes, None], client.tts.audio(run_id))) as chunks:
            async for chunk in chunks:
                got += len(chunk)
    assert got == 3 * CHUNK


async def test_cancelled_download_leaves_no_file(
    api: FakeCambAPI, make_client: ClientFactory, tmp_path: Path
) -> None:
    run_id = tts_run(api, size=500_000)
    transport = NetworkTransport(api, stall_at=4 * CHUNK)
    client = make_client(transport=transport)
    target = tmp_path / "speech.flac"
    with anyio.move_on_after(5) as scope:
        await client.tts.save_audio(run_id, target)
    assert scope.cancelled_caught
    assert leftovers(tmp_path) == []
    assert transport.bodies[0].closed


async def test_a_stalled_body_times_out(
    api: FakeCambAPI, make_client: ClientFactory, tmp_path: Path
) -> None:
    run_id = tts_run(api, size=500_000)
    client = make_client(transport=NetworkTransport(api, stall_at=4 * CHUNK), timeout=10)
    start = anyio.current_time()
    with pytest.raises(APITimeoutError):
        await client.tts.save_audio(run_id, tmp_path / "speech.flac")
    assert 10 <= anyio.current_time() - start < 12  # per chunk, not per download
    assert leftovers(tmp_path) == []


async def test_closing_the_client_ends_a_download(
    api: FakeCambAPI, make_client: ClientFactory, tmp_path: Path
) -> None:
    from camb_async import ClientClosedError

    run_id = tts_run(api, size=500_000)
    client = make_client(transport=NetworkTransport(api, stall_at=4 * CHUNK))
    failures: list[BaseException] = []

    async def download() -> None:
        try:
            await client.tts.save_audio(run_id, tmp_path / "speech.flac")
        except ClientClosedError as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(download)
        await anyio.sleep(2)
        await client.aclose()
    assert len(failures) == 1 and leftovers(tmp_path) == []


async def test_unknown_run_is_not_found_and_leaves_no_file(
    client: AsyncCambClient, tmp_path: Path
) -> None:
    with pytest.raises(NotFoundError):
        await client.tts.save_audio(777, tmp_path / "x.flac")
    assert leftovers(tmp_path) == []


async def test_unwritable_target_fails_before_any_request(
    api: FakeCambAPI, client: AsyncCambClient, tmp_path: Path
) -> None:
    run_id = tts_run(api)
    with pytest.raises(FileNotFoundError):
        await client.tts.save_audio(run_id, tmp_path / "missing-dir" / "x.flac")
    with pytest.raises(IsADirectoryError):
        await client.tts.save_audio(run_id, tmp_path)
    assert api.log == []


async def test_save_audio_takes_any_legal_file_name(
    api: FakeCambAPI, client: AsyncCambClient, tmp_path: Path
) -> None:
    """A 250-character name (the limit is 255): before, the temporary name built from it
    (``.<name>.<12 hex>.part``) was too long and the call failed."""
    run_id = tts_run(api)
    target = tmp_path / ("n" * 245 + ".flac")
    await client.tts.save_audio(run_id, target)
    assert target.read_bytes() == api.audio_bytes(run_id)
    assert leftovers(tmp_path) == [target.name]


async def test_save_audio_keeps_the_mode_of_the_file_it_replaces(
    api: FakeCambAPI, client: AsyncCambClient, tmp_path: Path
) -> None:
    run_id = tts_run(api)
    target = tmp_path / "private.flac"
    target.write_bytes(b"old")
    target.chmod(0o600)
    await client.tts.save_audio(run_id, target)
    assert target.read_bytes() == api.audio_bytes(run_id)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # before: 0o644 (a new file's)
    fresh = tmp_path / "fresh.flac"
    umask = os.umask(0)
    os.umask(umask)
    await client.tts.save_audio(run_id, fresh)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask


async def test_save_audio_writes_through_a_symlink(
    api: FakeCambAPI, client: AsyncCambClient, tmp_path: Path
) -> None:
    """The file the link points to is replaced; the link stays a link (before, the link
    itself was replaced by a regular file)."""
    run_id = tts_run(api)
    (tmp_path / "store").mkdir()
    real = tmp_path / "store" / "real.flac"
    real.write_bytes(b"old")
    link = tmp_path / "link.flac"
    link.symlink_to(real)
    await client.tts.save_audio(run_id, link)
    assert link.is_symlink() and real.read_bytes() == api.audio_bytes(run_id)
    assert leftovers(tmp_path / "store") == ["real.flac"]
    assert leftovers(tmp_path) == ["link.flac", "store"]


async def test_a_trickled_download_ends_at_its_deadline(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """A byte every 0.9 x timeout never trips the per-chunk deadline (before: save_audio ran
    forever); ``deadline=`` bounds the whole download: APITimeoutError, no file left."""

    async def trickle() -> AsyncIterator[bytes]:
        yield b"fLaC"
        while True:
            await anyio.sleep(0.9 * 10.0)
            yield b"\x00"

    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=trickle()))
    client = make_client(transport=transport, timeout=10.0)
    target = tmp_path / "slow.flac"
    started = anyio.current_time()
    with anyio.fail_after(1000), pytest.raises(APITimeoutError, match="deadline"):
        await client.tts.save_audio(5, target, deadline=60.0)
    assert anyio.current_time() - started == pytest.approx(60.0, abs=0.01)
    assert leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="deadline"):
        await client.tts.save_audio(5, target, deadline=float("nan"))


async def test_raw_bytes_is_sent_and_file_url_for_result(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    run_id = tts_run(api)
    seen: list[httpx.URL] = []
    inner = httpx.ASGITransport(app=api)

    async def spy(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return await inner.handle_async_request(request)

    client = make_client(transport=httpx.MockTransport(spy))
    await client.tts.result(run_id)
    async with aclosing(cast(AsyncGenerator[bytes, None], client.tts.audio(run_id))) as chunks:
        async for _ in chunks:
            pass
    assert [dict(url.params) for url in seen] == [
        {"output_type": "file_url"},
        {"output_type": "raw_bytes"},
    ]


async def test_handle_save_audio_waits_then_saves(
    api: FakeCambAPI, client: AsyncCambClient, tmp_path: Path
) -> None:
    task_id = api.add_task("tts", after=30)
    run_id = api.tasks[(TaskKind.TTS, task_id)].run_id
    assert run_id is not None
    api.set_audio(run_id, 70_000)
    target = tmp_path / "speech.flac"
    written = await client.tts.task(task_id).save_audio(target, policy=FAST)
    assert written == 70_000 and target.read_bytes() == api.audio_bytes(run_id)
    assert anyio.current_time() >= 30


async def test_handle_save_audio_of_a_failed_task(
    api: FakeCambAPI, client: AsyncCambClient, tmp_path: Path
) -> None:
    task_id = api.add_task("tts", status="ERROR")
    with pytest.raises(TaskFailedError):
        await client.tts.task(task_id).save_audio(tmp_path / "x.flac", policy=FAST)
    assert leftovers(tmp_path) == []


async def test_handle_save_audio_is_for_tts_only(client: AsyncCambClient, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="text-to-speech"):
        await client.dub.task("d-1").save_audio(tmp_path / "x.flac")


async def test_file_url_spelled_in_upper_case_is_refused(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    run_id = tts_run(api)
    with pytest.raises(UnprocessableEntityError) as info:
        await client._request(
            "GET", f"/tts-result/{run_id}", lambda d: d, params={"output_type": "FILE_URL"}
        )
    (entry,) = info.value.detail
    assert (entry.loc, entry.type) == (["query", "output_type"], "enum")
