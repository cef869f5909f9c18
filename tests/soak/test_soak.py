"""Fault soak: 10,000 tasks over loopback TCP with 20 % injected transient faults.

Not part of the default ``pytest`` run (``norecursedirs`` excludes this folder); run it with
``nox -s soak`` or ``pytest -s tests/soak/`` (``.ci/run`` does). Bounded to a few minutes.

The server is ``FakeCambAPI`` under uvicorn in a thread (real sockets, real time). Every fifth
request on average gets one of: 500, 502, 503, 504, 429 with a Retry-After, a connection reset
mid-answer, or an answer slower than the client's read timeout. What must hold:

- every task ends with its true (scripted) final status, through ``gather_statuses`` and
  ``iter_statuses`` running side by side on one client; none lost, none reported twice;
- nothing but ``CambError`` subclasses ever escapes (here: nothing escapes at all, because
  the retries absorb every transient fault);
- every socket the client opened is closed once it is closed.

The figures (tasks, faults by type from the server's log, retries, wall time, sockets) are
printed at the end; ``-s`` shows them.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections import Counter
from typing import Any

import anyio
import pytest

from camb_async import (
    AsyncCambClient,
    CambError,
    PollPolicy,
    StatusResult,
    TaskKind,
    TaskStatus,
    iter_statuses,
)
from camb_async.testing import FakeCambAPI, Fault, serve_in_thread

pytestmark = pytest.mark.anyio

API_KEY = "sk-soak-0123456789abcdef"
N_TASKS = int(os.environ.get("CAMB_SOAK_TASKS", "10000"))
SEED = 20261124
READ_TIMEOUT = 0.5
FAULTS = (
    Fault(status=500),
    Fault(status=502),
    Fault(status=503),
    Fault(status=504),
    Fault(status=429, retry_after="0.05"),
    Fault(status=None, reset=True),  # answer starts, then the connection is dropped mid-body
    Fault(status=None, delay=READ_TIMEOUT * 1.6),  # answer slower than the read timeout
)
TERMINAL = (TaskStatus.SUCCESS, TaskStatus.ERROR, TaskStatus.TIMEOUT, TaskStatus.PAYMENT_REQUIRED)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def tcp_sockets() -> list[tuple[str, str]]:
    """(local, remote) addresses of this process's TCP sockets, from /proc."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[9] in inodes:
                out.append((fields[1], fields[2]))
    return out


def count_sockets(port: int) -> tuple[int, int]:
    """(client-side, server-side) connections to/from ``port``, listener excluded."""
    hexport = f":{port:04X}"
    client = server = 0
    for local, remote in tcp_sockets():
        if remote.endswith(hexport):
            client += 1
        elif local.endswith(hexport) and not remote.endswith(":0000"):
            server += 1
    return client, server


class RetryCounter(logging.Handler):
    """Counts the client's request retries (its INFO log), by the error that caused each."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.retries = 0
        self.causes: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("retrying"):
            self.retries += 1
            error = record.args[-1] if isinstance(record.args, tuple) and record.args else None
            self.causes[type(error).__name__] += 1


def script(api: FakeCambAPI, rng: random.Random) -> dict[tuple[TaskKind, str], TaskStatus]:
    truth = {}
    kinds = [TaskKind.DUB, TaskKind.TTS, TaskKind.TRANSLATION, TaskKind.TRANSCRIPTION]
    for i in range(N_TASKS):
        kind = kinds[i % 4]
        status = rng.choice(TERMINAL)
        task_id = f"soak-{i}"
        api.add_task(
            kind,
            task_id,
            status=status,
            polls=rng.randrange(3),
            exception_reason=None if status is TaskStatus.SUCCESS else "INTERNAL_ERROR",
        )
        truth[(kind, task_id)] = status
    return truth


async def test_soak_10k_tasks_with_faults(anyio_backend: str) -> None:
    rng = random.Random(SEED)
    api = FakeCambAPI(
        api_key=API_KEY, clock=time.monotonic, fault_rate=0.2, faults=FAULTS, seed=SEED
    )
    truth = script(api, rng)
    keys = list(truth)
    half = len(keys) // 2
    policy = PollPolicy(initial=0.05, factor=1.5, max_interval=0.3, max_errors=10)
    counter = RetryCounter()
    logger = logging.getLogger("camb_async")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(counter)
    try:
        with serve_in_thread(api, log_level="critical") as url:
            port = int(url.rsplit(":", 1)[1])
            before = count_sockets(port)
            started = time.monotonic()
            gathered: list[Any] = []
            streamed: list[Any] = []
            async with AsyncCambClient(
                API_KEY,
                base_url=url,
                timeout=READ_TIMEOUT,
                max_retries=3,
                rate_limit=None,
                max_concurrency=32,
            ) as client:
                handles = [client.task(kind, task_id) for kind, task_id in keys[:half]]
                ids_by_kind: dict[TaskKind, list[str]] = {}
                for kind, task_id in keys[half:]:
                    ids_by_kind.setdefault(kind, []).append(task_id)

                async def gather() -> None:
                    gathered.extend(
                        await client.gather_statuses(handles, policy=policy, return_exceptions=True)
                    )

                async def stream(kind: TaskKind, ids: list[str]) -> None:
                    async with iter_statuses(
                        client, ids, kind=kind, policy=policy, return_exceptions=True
                    ) as items:
                        streamed.extend([item async for item in items])

                try:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(gather)
                        for kind, ids in ids_by_kind.items():
                            tg.start_soon(stream, kind, ids)
                except BaseException as exc:  # anything escaping must be a CambError
                    errors = getattr(exc, "exceptions", [exc])  # a group, or one error
                    assert all(isinstance(e, CambError) for e in errors), errors
                    raise
                pooled_client_sockets = count_sockets(port)[0]
            wall = time.monotonic() - started
            after_close = count_sockets(port)
            for _ in range(200):  # the server closes its ends once it sees EOF: <= 10 s
                if count_sockets(port) == before:
                    break
                await anyio.sleep(0.05)
            settled = count_sockets(port)
    finally:
        logger.removeHandler(counter)
        logger.setLevel(old_level)

    # Every task: its true final status, exactly once, no errors.
    assert len(gathered) == half
    assert len(streamed) == len(keys) - half
    errors = [r for r in gathered + streamed if not isinstance(r, StatusResult)]
    assert not errors, errors[:5]
    for handle, result in zip(handles, gathered, strict=True):
        assert (result.kind, result.task_id) == (handle.kind, handle.task_id)
    seen = Counter((r.kind, r.task_id) for r in gathered + streamed)
    assert set(seen) == set(truth)
    assert max(seen.values()) == 1, [k for k, n in seen.items() if n > 1][:5]
    wrong = [
        (r.task_id, r.status, truth[(r.kind, r.task_id)])
        for r in gathered + streamed
        if r.status is not truth[(r.kind, r.task_id)]
    ]
    assert not wrong, wrong[:5]

    # Sockets: the client holds none after aclose(); the server side drains to the baseline.
    assert after_close[0] == before[0] == 0, (before, after_close)
    assert settled == before, (before, settled)

    faults: Counter[str] = Counter()
    for entry in api.log:
        if entry.fault == "fault":
            faults[str(entry.status)] += 1
        elif entry.fault is not None:
            faults[entry.fault] += 1
    assert {"500", "502", "503", "504", "429", "reset", "slow"} <= set(faults)
    assert counter.retries >= sum(faults.values()) * 0.9  # nearly every fault cost a retry
    print(
        f"\nsoak [{anyio_backend}]: tasks={len(truth)} requests={len(api.log)} "
        f"faults={sum(faults.values())} ({dict(sorted(faults.items()))}) "
        f"fault_share={sum(faults.values()) / len(api.log):.3f} retries={counter.retries} "
        f"({dict(sorted(counter.causes.items()))}) "
        f"wall={wall:.1f}s sockets client/server before={before} "
        f"pooled_client={pooled_client_sockets} after_close={after_close} settled={settled}"
    )
