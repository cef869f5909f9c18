"""An anyio worker pool that waits on tasks as their ids arrive on a memory stream.

Use this shape when task ids trickle in (from a queue consumer, a webhook, a producer that
creates jobs one by one) and each finished task needs follow-up work. When you already hold
the whole list, ``gather_statuses`` / ``iter_statuses`` are simpler and cheaper.

- ``workers`` bounds how many tasks are being waited on at once; the client's rate budget
  still bounds the requests, whatever the number of workers.
- Structured: ``run_pool`` returns when the producer closed its end of the stream and every
  received task was handled; cancelling it cancels every worker. Runs on asyncio and trio.

Run it: ``python examples/worker_pool.py`` (in-process FakeCambAPI, no key, no network).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from camb_async import AsyncCambClient, CambError, PollPolicy, StatusResult, TaskKind

Outcome = StatusResult | CambError
Job = tuple[TaskKind | str, str]


async def run_pool(
    client: AsyncCambClient,
    jobs: MemoryObjectReceiveStream[Job],
    *,
    workers: int = 8,
    timeout: float | None = None,
    policy: PollPolicy | None = None,
    on_done: Callable[[Job, Outcome], Awaitable[None]] | None = None,
) -> dict[tuple[str, str], Outcome]:
    """Wait on every ``(kind, task_id)`` received from ``jobs`` with ``workers`` workers.

    Returns ``{(kind, task_id): final StatusResult or the CambError}``. A task that does not
    end within ``timeout`` seconds gets a ``WaitTimeoutError`` (its ``last`` status inside).
    ``on_done`` is awaited by the worker after each task — the place for follow-up work.
    """
    if workers < 1:
        raise ValueError("workers must be >= 1")
    outcomes: dict[tuple[str, str], Outcome] = {}

    async def worker(receive: MemoryObjectReceiveStream[Job]) -> None:
        async with receive:
            async for kind, task_id in receive:
                handle = client.task(kind, task_id)
                outcome: Outcome
                try:
                    outcome = await handle.wait(timeout=timeout, policy=policy)
                except CambError as exc:  # one task's failure is recorded, not fatal
                    outcome = exc
                outcomes[(handle.kind.value, task_id)] = outcome
                if on_done is not None:
                    await on_done((kind, task_id), outcome)

    async with jobs, anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(worker, jobs.clone())
    return outcomes


async def _main() -> None:
    import httpx

    from camb_async.testing import FakeCambAPI

    api = FakeCambAPI(api_key="demo-key")
    send, receive = anyio.create_memory_object_stream[Job](max_buffer_size=16)

    async def producer() -> None:
        async with send:
            for i in range(40):  # jobs appear over time, as from a queue
                kind = ("tts", "translate")[i % 2]
                await send.send((kind, api.add_task(kind, after=1.0 + i % 5)))
                await anyio.sleep(0.05)

    async def report(job: Job, outcome: Outcome) -> None:
        status = outcome.status.value if isinstance(outcome, StatusResult) else repr(outcome)
        print(f"{job[0]:<10} {job[1]:<16} {status}")

    async with (
        AsyncCambClient(
            api_key="demo-key",
            base_url="http://fake",
            allow_insecure=True,
            rate_limit=20,
            transport=httpx.ASGITransport(app=api),
        ) as client,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(producer)
        outcomes = await run_pool(client, receive, workers=8, timeout=30, on_done=report)
    print(f"{len(outcomes)} tasks, {len(api.log)} requests")


if __name__ == "__main__":
    anyio.run(_main)
