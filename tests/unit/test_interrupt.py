"""Ctrl-C during a library call: the caller sees a plain ``KeyboardInterrupt``.

On trio a SIGINT that arrives while the scheduler runs (the usual case: waiting for I/O or a
timer) is delivered to the main task at its next checkpoint. If that task is waiting on one of
our task groups, trio's nursery wraps it: ``BaseExceptionGroup([KeyboardInterrupt()])``, which
``except KeyboardInterrupt`` does not catch. Our calls unwrap a lone exception. On asyncio the
runner's SIGINT handler cancels the main task and ``anyio.run`` raises ``KeyboardInterrupt``.
The signal is real (``signal.raise_signal``); the clocks are virtual.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httpx
import pytest
import trio
import trio.testing

from camb_async import AsyncCambClient, PollPolicy, gather_results, gather_statuses, iter_statuses
from camb_async.testing import FakeCambAPI

from ..conftest import API_KEY
from ..virtual_clock import VirtualTimeLoop

POLICY = PollPolicy(initial=0.5, factor=1, max_interval=0.5, jitter=0)


async def op_gather(client: AsyncCambClient, ids: list[str]) -> Any:
    return await gather_statuses(client, ids, kind="dub", policy=POLICY)


async def op_iter(client: AsyncCambClient, ids: list[str]) -> Any:
    return [r async for r in iter_statuses(client, ids, kind="dub", policy=POLICY)]


async def op_iter_context(client: AsyncCambClient, ids: list[str]) -> Any:
    async with iter_statuses(client, ids, kind="dub", policy=POLICY) as stream:
        return [r async for r in stream]


async def op_results(client: AsyncCambClient, ids: list[str]) -> Any:
    return await gather_results(client, ids, kind="dub", policy=POLICY)


async def op_wait(client: AsyncCambClient, ids: list[str]) -> Any:
    return await client.dub.task(ids[0]).wait(policy=POLICY)


OPERATIONS: dict[str, Callable[[AsyncCambClient, list[str]], Awaitable[Any]]] = {
    "gather": op_gather,
    "iter": op_iter,
    "iter-context": op_iter_context,
    "results": op_results,
    "wait": op_wait,
}


@trio.lowlevel.enable_ki_protection
def _sigint_from_protected_code() -> None:
    # As if Ctrl-C came while trio's scheduler ran: delivered to the main task.
    signal.raise_signal(signal.SIGINT)


async def _interrupt_later() -> None:
    await trio.sleep(3.2)
    _sigint_from_protected_code()


@pytest.mark.parametrize("operation", list(OPERATIONS))
@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_interrupted_call_raises_a_plain_keyboard_interrupt(backend: str, operation: str) -> None:
    api = FakeCambAPI(api_key=API_KEY)
    ids = [api.add_task("dub", after=1e6) for _ in range(5)]
    started: list[bool] = []

    async def main() -> None:
        async with AsyncCambClient(
            API_KEY,
            base_url="http://localhost",
            rate_limit=None,
            transport=httpx.ASGITransport(app=api),
        ) as client:
            if backend == "trio":
                trio.lowlevel.spawn_system_task(_interrupt_later)
            else:
                import asyncio

                asyncio.get_running_loop().call_later(3.2, signal.raise_signal, signal.SIGINT)
            started.append(True)
            await OPERATIONS[operation](client, ids)

    options: dict[str, Any] = (
        {"clock": trio.testing.MockClock(autojump_threshold=0)}
        if backend == "trio"
        else {"loop_factory": VirtualTimeLoop}
    )
    with pytest.raises(KeyboardInterrupt) as info:
        anyio.run(main, backend=backend, backend_options=options)
    assert type(info.value) is KeyboardInterrupt
    assert started and len(api.log) >= 5  # interrupted mid-call, not before it
