"""Hostile ids over real sockets: what uvicorn decodes is the one id. The in-process cases
and the ids are in tests/unit/test_hostile_inputs.py.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from camb_async import AsyncCambClient, TaskKind, TaskStatus, gather_statuses
from camb_async.testing import FakeCambAPI, serve_in_thread

from ..conftest import API_KEY
from ..unit.test_hostile_inputs import ALLOWED_IDS

pytestmark = pytest.mark.anyio


def test_allowed_odd_ids_over_real_sockets() -> None:
    """Same promise through uvicorn's HTTP parser: what the server decodes is the one id."""
    api = FakeCambAPI(api_key=API_KEY, clock=time.monotonic)
    for task_id in ALLOWED_IDS:
        api.add_task("translate", task_id, status="PAYMENT_REQUIRED")
    api.add_task("translate", "victim")

    async def main() -> list[Any]:
        async with AsyncCambClient(API_KEY, base_url=url, rate_limit=None) as client:
            return await gather_statuses(client, ALLOWED_IDS, kind="translate", wait=False)

    with serve_in_thread(api) as url:
        for backend in ("asyncio", "trio"):
            api.log.clear()
            results = anyio.run(main, backend=backend)
            assert [r.task_id for r in results] == ALLOWED_IDS
            assert {r.status for r in results} == {TaskStatus.PAYMENT_REQUIRED}
            assert len(api.log) == len(ALLOWED_IDS)
            assert all(r.status == 200 and r.path.count("/") == 2 for r in api.log)
    assert api.tasks[(TaskKind.TRANSLATION, "victim")].seen == 0
