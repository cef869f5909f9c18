"""A throwaway redis-server, and a fleet of worker processes sharing one RedisRateBudget.

Used by tests/test_redis.py and benchmarks/bench_fleet.py. ``RedisServer`` runs the Debian
``redis-server`` binary on a free loopback port with a temporary directory and no persistence
(so a restart loses every key, the worst case for the budget). ``run_fleet`` serves a
FakeCambAPI over loopback TCP from this process (uvicorn in a thread, ``clock=time.monotonic``
so its log is on the same clock as the workers'), starts N worker processes
(``python -m tests.tcp.redis_server worker CONFIG``) that each poll their own tasks through one
AsyncCambClient with a RedisRateBudget, and returns the server's log and each worker's report.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from camb_async import TaskKind
from camb_async.testing import FakeCambAPI, LoggedRequest, peak_per_window, serve_in_thread

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "sk-fleet-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@attrs.frozen
class TLSFiles:
    """A CA, a server certificate for 127.0.0.1/localhost and a client one, made by trustme."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    client_certs_required: bool = False

    @classmethod
    def make(
        cls,
        directory: str,
        *,
        server_names: Sequence[str] = ("127.0.0.1", "localhost"),
        client_certs_required: bool = False,
    ) -> TLSFiles:
        import trustme

        ca = trustme.CA()
        server = ca.issue_cert(*server_names)
        client = ca.issue_cert("camb-async-client")
        paths = {
            name: os.path.join(directory, f"{name}.pem")
            for name in ("ca", "server_cert", "server_key", "client_cert", "client_key")
        }
        ca.cert_pem.write_to_path(paths["ca"])
        server.cert_chain_pems[0].write_to_path(paths["server_cert"])
        server.private_key_pem.write_to_path(paths["server_key"])
        client.cert_chain_pems[0].write_to_path(paths["client_cert"])
        client.private_key_pem.write_to_path(paths["client_key"])
        return cls(**paths, client_certs_required=client_certs_required)

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.ca)
        context.check_hostname = False  # the harness' own PING; the tests check names
        context.load_cert_chain(self.client_cert, self.client_key)
        return context


class RedisServer:
    """``redis-server`` on 127.0.0.1:<free port>, data in a temp dir, nothing persisted."""

    def __init__(
        self,
        port: int | None = None,
        password: str | None = None,
        args: Sequence[str] = (),
        tls: TLSFiles | None = None,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: apt-get install redis-server")
        self.binary = binary
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="camb-redis-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.password = password
        self.args = list(args)  # more redis-server options, e.g. ["--replicaof", ...]
        self.tls = tls  # TLS only (--port 0 --tls-port PORT)

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        ports = ["--port", str(self.port)]
        if self.tls is not None:
            ports = [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                self.tls.server_cert,
                "--tls-key-file",
                self.tls.server_key,
                "--tls-ca-cert-file",
                self.tls.ca,
                "--tls-auth-clients",
                "yes" if self.tls.client_certs_required else "no",
            ]
        self.proc = subprocess.Popen(
            [
                self.binary,
                *ports,
                "--bind",
                "127.0.0.1",
                "--dir",
                self.dir,
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--protected-mode",
                "yes",
                "--loglevel",
                "warning",
                "--enable-debug-command",
                "local",  # DEBUG SLEEP: a slow Redis, in the tests
                *(["--requirepass", self.password] if self.password else []),
                *self.args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
                sock = raw
                if self.tls is not None:
                    sock = self.tls.client_context().wrap_socket(raw, server_hostname="127.0.0.1")
                sock.sendall(b"PING\r\n")
                answer = sock.recv(64)
                return answer.startswith((b"+PONG", b"-NOAUTH", b"-MASTERDOWN", b"-LOADING"))
        except OSError:
            return False

    def _cli(self) -> list[str]:
        cli = [shutil.which("redis-cli") or "redis-cli", "-p", str(self.port)]
        if self.tls is not None:
            cli += [
                "--tls",
                "--cacert",
                self.tls.ca,
                "--cert",
                self.tls.client_cert,
                "--key",
                self.tls.client_key,
            ]
        return cli

    def cli(self, *command: str, timeout: float = 30.0) -> str:
        """Run one command with redis-cli; its output."""
        return subprocess.run(
            [*self._cli(), *command],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **({"REDISCLI_AUTH": self.password} if self.password else {})},
        ).stdout.strip()

    def cli_in_background(self, *command: str) -> subprocess.Popen[bytes]:
        """Start one redis-cli command without waiting for it (DEBUG SLEEP, a busy script)."""
        return subprocess.Popen(
            [*self._cli(), *command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **({"REDISCLI_AUTH": self.password} if self.password else {})},
        )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self) -> None:
        """SIGKILL: a crash, nothing said to anyone."""
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait()

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    import random

    for _ in range(1000):
        port = random.randint(20000, 55000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class LocalCluster:
    """A Redis Cluster on loopback: 3 masters + 3 replicas, each a ``RedisServer``.

    ``cluster-node-timeout`` is 1 s, so a replica takes over ~1-2 s after its master dies.
    ``redis-cli --cluster create`` pairs the nodes; ``master_of``/``replica_of`` find who
    serves a key's slot now.
    """

    def __init__(self, masters: int = 3, node_timeout_ms: int = 1000) -> None:
        self.nodes: list[RedisServer] = []
        for _ in range(masters * 2):
            port = free_cluster_port()
            self.nodes.append(
                RedisServer(
                    port=port,
                    args=[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        f"nodes-{port}.conf",
                        "--cluster-node-timeout",
                        str(node_timeout_ms),
                        "--cluster-require-full-coverage",
                        "no",
                    ],
                )
            )

    @property
    def url(self) -> str:
        return self.nodes[0].url.rsplit("/", 1)[0]  # any node; no db in a Cluster

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli") or "redis-cli"
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every running node says cluster_state:ok and agrees on the masters."""
        deadline = time.monotonic() + timeout
        while True:
            running = [n for n in self.nodes if n.proc is not None]
            if all("cluster_state:ok" in n.cli("CLUSTER", "INFO") for n in running):
                views = {tuple(sorted(self._masters(n))) for n in running}
                if len(views) == 1:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not become ok")
            time.sleep(0.1)

    def _masters(self, node: RedisServer) -> list[str]:
        out = []
        for line in node.cli("CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "master" in fields[2] and "fail" not in fields[2]:
                out.append(fields[1].split("@")[0])
        return out

    def master_of(self, key: str) -> RedisServer:
        """The node that serves ``key``'s slot now (asked of a running node)."""
        asker = next(n for n in self.nodes if n.proc is not None)
        slot = int(asker.cli("CLUSTER", "KEYSLOT", key))
        for line in asker.cli("CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for spec in fields[8:]:
                lo, _, hi = spec.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    return self.node(int(fields[1].split("@")[0].rsplit(":", 1)[1]))
        raise RuntimeError(f"no master serves slot {slot}")

    def replica_of(self, master: RedisServer) -> RedisServer:
        node_id = master.cli("CLUSTER", "MYID")
        for line in master.cli("CLUSTER", "NODES").splitlines():
            fields = line.split()
            if fields[3] == node_id and "fail" not in fields[2]:
                return self.node(int(fields[1].split("@")[0].rsplit(":", 1)[1]))
        raise RuntimeError(f"no replica of {master.port}")

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@attrs.frozen
class FleetRun:
    log: list[LoggedRequest]
    workers: list[dict[str, Any]]
    start: float  # time.monotonic() at which the workers were told to go
    events: dict[str, float]  # what the harness did mid-run, and when (time.monotonic)
    api: FakeCambAPI

    @property
    def began(self) -> float:
        """When the first worker had its client open and began polling."""
        return float(min(w["began"] for w in self.workers))

    @property
    def wall(self) -> float:
        return float(max(w["finished"] for w in self.workers)) - self.began

    def peak(self, window: float = 1.0, since: float = -1e18) -> int:
        return peak_per_window([r.time for r in self.log if r.time >= since], window)

    @staticmethod
    def peak_of(times: Sequence[float], window: float = 1.0) -> int:
        return peak_per_window(list(times), window)


def run_fleet(
    redis_url: str,
    *,
    workers: int = 3,
    tasks: int | Sequence[int] = 300,
    rate: float = 100.0,
    name: str = "fleet",
    budget_options: dict[str, Any] | None = None,
    local_rate: float | None = None,
    backends: Sequence[str] = ("asyncio",),
    during: Sequence[tuple[float, str, Callable[[FakeCambAPI], object]]] = (),
    timeout: float = 120.0,
) -> FleetRun:
    """Run ``workers`` processes polling ``tasks`` tasks each through one shared budget.

    ``local_rate``: the peer setup instead - no Redis, each worker its own
    ``RateBudget(local_rate)`` (a static split of the rate when ``local_rate = rate / workers``).
    ``backends``: the event loop of each worker, in turn (``"asyncio"``, ``"trio"``).
    ``during``: ``(seconds after the server's first request, label, action(api))`` run by the
    harness mid-run (restart Redis, inject a 429); when each started is in ``FleetRun.events``.
    """
    counts = [tasks] * workers if isinstance(tasks, int) else list(tasks)
    api = FakeCambAPI(api_key=API_KEY, clock=time.monotonic)
    for w in range(workers):
        for i in range(counts[w]):
            api.add_task(TaskKind.TTS, f"w{w}-{i}")
    events: dict[str, float] = {}
    with serve_in_thread(api) as base_url:
        procs = []
        for w in range(workers):
            config = {
                "redis_url": redis_url,
                "api_url": base_url,
                "name": name,
                "rate": rate,
                "prefix": f"w{w}",
                "tasks": counts[w],
                "options": budget_options or {},
                "local_rate": local_rate,
                "backend": backends[w % len(backends)],
            }
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tests.tcp.redis_server", "worker", json.dumps(config)],
                    cwd=ROOT,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                )
            )
        # Start together once every worker has imported everything (a start line each).
        for w, proc in enumerate(procs):
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != b"ready":
                raise RuntimeError(f"worker {w} did not start: {proc.communicate()[1]!r}")
        start = time.monotonic()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        threads = []
        for at, label, action in during:

            def act(
                at: float = at, label: str = label, action: Callable[[FakeCambAPI], object] = action
            ) -> None:
                while not api.log and time.monotonic() < start + timeout:
                    time.sleep(0.005)
                time.sleep(max(0.0, api.log[0].time + at - time.monotonic()))
                events[label] = time.monotonic()
                action(api)
                events[label + ":done"] = time.monotonic()

            thread = threading.Thread(target=act, daemon=True)
            thread.start()
            threads.append(thread)
        reports = []
        try:
            for w, proc in enumerate(procs):
                out, err = proc.communicate(timeout=max(1.0, start + timeout - time.monotonic()))
                if proc.returncode != 0:
                    raise RuntimeError(f"worker {w} exited {proc.returncode}:\n{err.decode()}")
                reports.append(json.loads(out.decode().strip().splitlines()[-1]))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            for thread in threads:
                thread.join(timeout=30)
    return FleetRun(log=list(api.log), workers=reports, start=start, events=events, api=api)


# ----------------------------------------------------------------------------- worker side


async def _worker(config: dict[str, Any]) -> dict[str, Any]:
    from contextlib import AsyncExitStack

    from camb_async import AsyncCambClient, PollPolicy, RateBudget, gather_statuses
    from camb_async.redis import RedisRateBudget

    budget: Any
    if config["local_rate"] is not None:
        budget = RateBudget(config["local_rate"], 16)
    else:
        budget = RedisRateBudget.from_url(
            config["redis_url"], rate=config["rate"], name=config["name"], **config["options"]
        )
    ids = [f"{config['prefix']}-{i}" for i in range(config["tasks"])]
    async with AsyncExitStack() as stack:
        if isinstance(budget, RedisRateBudget):
            await stack.enter_async_context(budget)
        client = await stack.enter_async_context(
            AsyncCambClient(API_KEY, base_url=config["api_url"], budget=budget)
        )
        began = time.monotonic()
        results = await gather_statuses(
            client,
            ids,
            kind=TaskKind.TTS,
            policy=PollPolicy(initial=0.5, max_interval=2.0),
            return_exceptions=True,
        )
        finished = time.monotonic()
    return {
        "prefix": config["prefix"],
        "backend": config["backend"],
        "began": began,
        "finished": finished,
        "results": len(results),
        "success": sum(1 for r in results if getattr(r, "is_success", False)),
        "errors": [repr(r) for r in results if isinstance(r, BaseException)][:5],
        **{
            k: getattr(budget, k, 0)
            for k in (
                "grants",
                "local_grants",
                "pauses",
                "redis_errors",
                "outages",
                "resets_seen",
                "redis_calls",
            )
        },
    }


def main(argv: list[str]) -> None:
    import logging

    import anyio

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if argv[:1] != ["worker"] or len(argv) != 2:
        raise SystemExit("usage: python -m tests.tcp.redis_server worker CONFIG_JSON")
    import camb_async.redis  # noqa: F401  (imported before the start, not timed)

    print("ready", flush=True)
    sys.stdin.readline()
    config = json.loads(argv[1])
    report = anyio.run(_worker, config, backend=config["backend"])
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
