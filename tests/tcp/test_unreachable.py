"""An unreachable server fails bulk calls fast, over real sockets: a refused loopback port.

The in-process twins (virtual time, a transport that refuses) are in
tests/unit/test_unreachable.py, which also holds the helpers and the attempt bounds.
"""

from __future__ import annotations

import anyio
import pytest

from camb_async import APIConnectionError, gather_statuses, iter_statuses

from ..unit.test_unreachable import IDS, MAX_ATTEMPTS, MAX_RETRIES, Attempts, refused_client

pytestmark = pytest.mark.anyio


class TestRefusedPort:
    """Real sockets, real time (the default transports of both loops)."""

    @pytest.mark.parametrize("wait", [False, True])
    @pytest.mark.parametrize("return_exceptions", [False, True])
    async def test_bulk_poll_fails_fast(
        self, refused_url: str, wait: bool, return_exceptions: bool
    ) -> None:
        attempts = Attempts()
        async with refused_client(refused_url, attempts) as client:
            # Before the fix: every task re-polled on dub's schedule, minutes.
            with anyio.fail_after(30), pytest.raises(APIConnectionError):
                await gather_statuses(
                    client, IDS, kind="dub", wait=wait, return_exceptions=return_exceptions
                )
        assert 1 <= attempts.count <= MAX_ATTEMPTS

    async def test_iter_statuses_and_handle_wait_fail_fast(self, refused_url: str) -> None:
        attempts = Attempts()
        async with refused_client(refused_url, attempts) as client:
            with anyio.fail_after(30), pytest.raises(APIConnectionError):
                async with iter_statuses(client, IDS, kind="dub", return_exceptions=True) as stream:
                    async for _ in stream:
                        pass
            assert attempts.count <= MAX_ATTEMPTS
            attempts.count = 0
            with anyio.fail_after(30), pytest.raises(APIConnectionError):
                await client.dub.task(IDS[0]).wait()
            assert attempts.count == MAX_RETRIES + 1
