"""Raw TTS audio over real loopback sockets (uvicorn in a thread), through each loop's default
transport (aiohttp on asyncio, httpx pools on trio): whole files, and a connection reset
mid-body that must leave no file at the target. (The 200 MB memory figure is
benchmarks/bench_audio.py.)"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from camb_async import APIConnectionError, AsyncCambClient, PollPolicy, TaskKind
from camb_async.testing import FakeCambAPI

from ..conftest import API_KEY

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

MB = 1 << 20


def tts_run(api: FakeCambAPI, size: int, reset_after: int | None = None) -> int:
    task_id = api.add_task("tts")
    run_id = api.tasks[(TaskKind.TTS, task_id)].run_id
    assert run_id is not None
    api.set_audio(run_id, size, reset_after=reset_after)
    return run_id


async def test_save_audio_over_loopback(api: FakeCambAPI, base_url: str, tmp_path: Path) -> None:
    run_id = tts_run(api, 12 * MB + 123)
    target = tmp_path / "speech.flac"
    async with AsyncCambClient(API_KEY, base_url=base_url) as client:
        written = await client.tts.save_audio(run_id, target)
        handle_target = tmp_path / "again.flac"
        task_id = next(iter(api.tasks))[1]
        again = await client.tts.task(task_id).save_audio(
            handle_target, timeout=30, policy=PollPolicy(initial=0.05)
        )
    assert written == again == 12 * MB + 123
    digest = hashlib.sha256(api.audio_bytes(run_id)).hexdigest()
    assert hashlib.sha256(target.read_bytes()).hexdigest() == digest
    assert sorted(os.listdir(tmp_path)) == ["again.flac", "speech.flac"]


async def test_reset_mid_body_leaves_no_file(
    api: FakeCambAPI, base_url: str, tmp_path: Path
) -> None:
    # The acceptance case is a reset after 50 MB; 5 MB into a 10 MB answer is the same path.
    run_id = tts_run(api, 10 * MB, reset_after=5 * MB)
    target = tmp_path / "speech.flac"
    async with AsyncCambClient(API_KEY, base_url=base_url) as client:
        with pytest.raises(APIConnectionError):
            await client.tts.save_audio(run_id, target)
        got = 0
        with pytest.raises(APIConnectionError):
            async for chunk in client.tts.audio(run_id):
                got += len(chunk)
    assert not target.exists() and os.listdir(tmp_path) == []
    assert 0 < got <= 5 * MB
    assert [r.status for r in api.requests("GET", "/tts-result/")] == [200, 200]  # no retry
