"""RedisRateBudget on a Sentinel-managed Redis: the caller's ``Sentinel.primary_for`` client.

A master, its replica and one Sentinel (quorum 1) on loopback, once for the module. The budget
follows the primary through ``SENTINEL FAILOVER``: the old master refuses writes (READONLY) or
drops the connection, which is an outage; coredis asks the Sentinel again and the requests go
on against the new primary.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import anyio
import coredis
import pytest
from coredis.connection import TCPLocation

from camb_async.redis import RedisRateBudget

from .redis_server import RedisServer, free_port

pytestmark = [pytest.mark.redis, pytest.mark.anyio]

SERVICE = "camb"


class Sentinel:
    def __init__(self, master: RedisServer) -> None:
        self.port = free_port()
        self.dir = master.dir
        self.conf = os.path.join(self.dir, f"sentinel-{self.port}.conf")
        with open(self.conf, "w") as conf:
            conf.write(
                f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {master.port} 1\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 5000\n"
            )
        self.proc = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                self.conf,
                "--sentinel",
                "--loglevel",
                "warning",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def cli(self, *command: str) -> str:
        return subprocess.run(
            [shutil.which("redis-cli") or "redis-cli", "-p", str(self.port), *command],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()

    def primary_port(self) -> int:
        return int(self.cli("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE).split()[-1])

    def failover(self) -> None:
        """SENTINEL FAILOVER, once the previous one is over and a replica is ready."""
        deadline = time.monotonic() + 30
        while (answer := self.cli("SENTINEL", "FAILOVER", SERVICE)) != "OK":
            assert time.monotonic() < deadline, answer  # INPROG, NOGOODSLAVE: not yet
            time.sleep(0.2)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def sentinel() -> Iterator[Sentinel]:
    with (
        RedisServer() as master,
        RedisServer(args=["--replicaof", "127.0.0.1", str(master.port)]) as replica,
    ):
        deadline = time.monotonic() + 20
        while "master_link_status:up" not in replica.cli("INFO", "replication"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        watcher = Sentinel(master)
        try:
            while "slaves=1" not in watcher.cli("INFO", "sentinel"):
                assert time.monotonic() < deadline, "the Sentinel did not see the replica"
                time.sleep(0.1)
            yield watcher
        finally:
            watcher.close()


async def test_a_budget_follows_the_primary_through_a_failover(sentinel: Sentinel) -> None:
    manager: coredis.Sentinel[bytes] = coredis.Sentinel([TCPLocation("127.0.0.1", sentinel.port)])
    async with manager:  # the caller holds the Sentinel open; the budget opens the primary
        budget = RedisRateBudget(
            manager.primary_for(SERVICE, stream_timeout=1.0),
            rate=50,
            name=f"sen-{uuid.uuid4().hex[:8]}",
            reset_hold=0.0,
            max_concurrency=4,
            retry_interval=0.2,
        )
        for held_open in (False, True):
            async with budget if held_open else contextlib.nullcontext():
                with anyio.fail_after(5):
                    await budget.acquire()
                budget.release()
                before = sentinel.primary_port()
                await anyio.to_thread.run_sync(sentinel.failover)
                with anyio.fail_after(20):
                    while sentinel.primary_port() == before:  # noqa: ASYNC110
                        await anyio.sleep(0.05)
                with anyio.fail_after(20):  # requests go on, on the new primary
                    for _ in range(5):
                        await budget.acquire()
                        budget.release()
    assert budget.grants == 12
