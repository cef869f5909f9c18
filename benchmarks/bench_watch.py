"""Fleet watch-list benchmark (issue 19's acceptance figures).

    .venv/bin/python benchmarks/bench_watch.py [--tasks 20000] [--scale 0.1]
    # -> results/watch.json too

Every process is a real one: a redis-server with AOF on (``appendfsync everysec``; ``always``
in the crash run), the
FakeCambAPI on uvicorn in its own process (this file, ``serve``), 3 worker processes
(``worker``: ``RedisWatchList.run`` under one ``RedisRateBudget`` of 200 req/s) and one
consumer process (``consumer``: ``completions(group="bench")``, writing every delivery with
its arrival time). Each worker reaches the API under its own path prefix (``/w0``...), which
the server strips and logs, so the server's log says who polled what, when.

The 20,000 tasks have scripted timelines of the four kinds (the demo's mix and realistic
durations, compressed by ``--scale``; the polling policies are compressed alike) and end
SUCCESS, ERROR or TIMEOUT. The web tier (this process) adds them all with ``add_many``.

Runs (each on a fresh server and a fresh Redis):

* ``baseline``: one process, ``gather_statuses`` over the same timelines, 200 req/s local
  budget: the request count the fleet is compared with.
* ``sigkill``: the fleet; worker 1 is SIGKILLed ``--kill-at`` seconds after the first request.
* ``restart``: the fleet; Redis is stopped (SIGTERM: AOF flushed) and started again on
  its AOF ``--restart-at`` seconds in, 1 s down.
* ``crash``: the same with Redis SIGKILLed (no shutdown flush) and started again on its AOF,
  written with ``appendfsync always``.
* ``steady``: the fleet on tasks the web tier creates over time (``--steady-arrival`` per
  second, ``--steady-tasks``), so the budget is not the bottleneck: the latency figures are
  then the pipeline's, not a backlog's. (The 20,000 tasks of the other runs are all there at
  the start: their first polls alone take 100 s at 200 req/s, and every latency in them is
  mostly that queue, in the baseline as in the fleet.)

Figures per run: tasks delivered / expected (every terminal status at least once, matching
its script), duplicate deliveries, consecutive polls of one task closer than its schedule
allows (after its k-th poll a task is due no sooner than the policy's k-th interval less
jitter, however busy the fleet; a shorter gap is a second poll within the first one's lease),
by two workers and in all, the busiest 1-s window at the server, total requests (and the
ratio to the baseline), and latencies, p50 and p95: from a task's scripted completion to the
poll that saw it, from that poll to the consumer, and end to end.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._servers import FakeServer, wait_for_port  # noqa: E402
from camb_async import TaskKind, TaskStatus  # noqa: E402
from camb_async.cli import DEMO_MIX, REAL_DURATIONS, scaled_policy  # noqa: E402
from camb_async.testing import peak_per_window  # noqa: E402

RATE = 200.0
WORKERS = 3
API_KEY = "bench-watch-key"


def script(n: int, scale: float, seed: int = 19) -> list[dict[str, Any]]:
    """``n`` tasks of the four kinds: ``FakeCambAPI.add_task`` keyword arguments."""
    rng = random.Random(seed)
    kinds, weights = list(DEMO_MIX), list(DEMO_MIX.values())
    out = []
    for i in range(n):
        kind = rng.choices(kinds, weights)[0]
        low, high = REAL_DURATIONS[kind]
        draw = rng.random()
        status = (
            TaskStatus.ERROR
            if draw < 0.02
            else TaskStatus.TIMEOUT
            if draw < 0.03
            else TaskStatus.SUCCESS
        )
        out.append(
            {
                "kind": kind.value,
                "task_id": f"{kind.value}-{i:05d}",
                "status": status.value,
                "after": round(rng.uniform(low, high) * scale, 3),
            }
        )
    return out


class TaggedServer(FakeServer):
    """``FakeServer`` whose requests under ``/wN/`` are logged as worker ``wN``'s."""

    def __enter__(self) -> str:
        self._proc = subprocess.Popen([sys.executable, __file__, "serve", self._spec_path])
        wait_for_port(self.port, self._proc)
        return f"http://127.0.0.1:{self.port}"

    def tagged_log(self) -> list[tuple[float, str, str, int]]:
        """(arrival, worker, path without the prefix, status) of every request."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_bench/log") as r:
            return [tuple(x) for x in json.loads(r.read())]  # type: ignore[misc]


def _serve(spec_path: str) -> None:
    import uvicorn

    from camb_async.testing import FakeCambAPI

    spec = json.loads(Path(spec_path).read_text())
    api = FakeCambAPI(api_key=spec["api_key"], clock=time.monotonic)
    for task in spec["tasks"]:
        api.add_task(**task)
    log: list[tuple[float, str, str, int]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/_bench/log":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": json.dumps(log).encode()})
            return
        worker = "-"
        if scope["type"] == "http" and scope["path"].startswith("/w"):
            worker, _, rest = scope["path"][1:].partition("/")
            scope = {**scope, "path": "/" + rest, "raw_path": ("/" + rest).encode()}
        status = [0]

        async def tap(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        await api(scope, receive, tap)
        if scope["type"] == "http":
            log.append(
                (
                    api.log[-1].time if api.log else time.monotonic(),
                    worker,
                    scope["path"],
                    status[0],
                )
            )

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=spec["port"],
        log_level="warning",
        access_log=False,
        lifespan="off",
    )


# ----------------------------------------------------------------------------- processes


def _policies(scale: float) -> dict[TaskKind, Any]:
    return {kind: scaled_policy(kind, scale) for kind in TaskKind}


async def _worker(config: dict[str, Any]) -> None:
    from camb_async import AsyncCambClient
    from camb_async.redis import RedisRateBudget, RedisWatchList

    budget = RedisRateBudget.from_url(
        config["redis"], rate=RATE, name=config["name"], margin=config["margin"]
    )
    watch = RedisWatchList.from_url(
        config["redis"], name=config["name"], lease_ttl=config["lease_ttl"]
    )
    async with (
        budget,
        watch,
        AsyncCambClient(API_KEY, base_url=config["api"], budget=budget) as client,
    ):
        await watch.run(client, policy=_policies(config["scale"]))


async def _consumer(config: dict[str, Any]) -> None:
    from camb_async.redis import RedisWatchList

    watch = RedisWatchList.from_url(config["redis"], name=config["name"])
    with open(config["out"], "a", buffering=1) as out:  # noqa: ASYNC230 - a local file
        async with watch, watch.completions(group="bench", consumer="c1") as events:
            async for event in events:
                status = event.result.raw_status if event.result else f"error:{event.error}"
                out.write(f"{time.monotonic():.6f} {event.kind.value} {event.task_id} {status}\n")


async def _web(config: dict[str, Any]) -> None:
    """The web tier of the steady run: adds each task at its creation time."""
    import anyio

    from camb_async.redis import RedisWatchList

    text = Path(config["tasks"]).read_text()  # noqa: ASYNC240 - before anything runs
    tasks = sorted(json.loads(text), key=lambda t: t["created_at"])
    async with RedisWatchList.from_url(config["redis"], name=config["name"]) as watch:
        i = 0
        while i < len(tasks):
            now = time.monotonic()
            batch = []
            while i < len(tasks) and tasks[i]["created_at"] <= now:
                batch.append((tasks[i]["kind"], tasks[i]["task_id"], {"n": str(i)}))
                i += 1
            if batch:
                await watch.add_many(batch)
            else:
                await anyio.sleep(min(0.01, tasks[i]["created_at"] - now))


def _spawn(role: str, config: dict[str, Any]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, __file__, role, json.dumps(config)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


# ----------------------------------------------------------------------------- runs


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run_baseline(tasks: list[dict[str, Any]], scale: float) -> dict[str, Any]:
    import anyio

    from camb_async import AsyncCambClient, gather_statuses

    async def go(url: str) -> list[Any]:
        async with AsyncCambClient(API_KEY, base_url=url, rate_limit=RATE) as client:
            handles = [client.task(t["kind"], t["task_id"]) for t in tasks]
            return await gather_statuses(
                client, handles, policy=_policies(scale), return_exceptions=True
            )

    server = TaggedServer(tasks, api_key=API_KEY)
    with server as url:
        began = time.monotonic()
        results = anyio.run(go, url)
        wall = time.monotonic() - began
        log = server.tagged_log()
    epoch = min(r[0] for r in log)
    polls: dict[str, list[float]] = {}
    for t, _, path, _ in log:
        polls.setdefault(path, []).append(t)
    seen_after = []
    for t in tasks:
        done = epoch + t["after"]
        later = [p for p in polls.get(f"/{t['kind']}/{t['task_id']}", []) if p >= done]
        if later:
            seen_after.append(min(later) - done)
    return {
        "scenario": "baseline (1 process, gather_statuses)",
        "requests": len(log),
        "completion->terminal poll p50 s": round(_pct(seen_after, 0.5), 3),
        "completion->terminal poll p95 s": round(_pct(seen_after, 0.95), 3),
        "wall s": round(wall, 1),
        "busiest 1s": peak_per_window([r[0] for r in log], 1.0),
        "matching": sum(
            1
            for t, r in zip(tasks, results, strict=True)
            if getattr(r, "raw_status", None) == t["status"]
        ),
    }


def run_fleet(
    tasks: list[dict[str, Any]],
    scale: float,
    *,
    label: str,
    kill_at: float | None,
    restart_at: float | None,
    lease_ttl: float,
    timeout: float,
    margin: float = 0.1,
    fsync: str = "everysec",
    crash: bool = False,
) -> dict[str, Any]:
    import anyio
    from tests.redis_server import RedisServer

    from camb_async.redis import RedisWatchList

    name = f"bench-{uuid.uuid4().hex[:6]}"
    out_path = tempfile.mktemp(prefix="camb-watch-events-", suffix=".txt")
    expected = {(t["kind"], t["task_id"]): t for t in tasks}
    events: dict[str, float] = {}
    server = TaggedServer(tasks, api_key=API_KEY)
    aof = ["--appendonly", "yes", "--appendfsync", fsync]
    with RedisServer(args=aof) as redis, server as url:

        async def add() -> None:
            async with RedisWatchList.from_url(redis.url, name=name) as watch:
                await watch.add_many(
                    [(t["kind"], t["task_id"], {"n": str(i)}) for i, t in enumerate(tasks)]
                )

        web = None
        if any("created_at" in t for t in tasks):  # steady: the web tier adds them as created
            tasks_path = tempfile.mktemp(prefix="camb-watch-tasks-", suffix=".json")
            Path(tasks_path).write_text(json.dumps(tasks))
            web = _spawn("web", {"redis": redis.url, "name": name, "tasks": tasks_path})
        else:
            anyio.run(add)
        consumer = _spawn("consumer", {"redis": redis.url, "name": name, "out": out_path})
        workers = [
            _spawn(
                "worker",
                {
                    "redis": redis.url,
                    "name": name,
                    "api": f"{url}/w{w}",
                    "lease_ttl": lease_ttl,
                    "scale": scale,
                    "margin": margin,
                },
            )
            for w in range(WORKERS)
        ]
        started = time.monotonic()
        first: float | None = None
        seen: set[tuple[str, str]] = set()
        position = 0
        try:
            while time.monotonic() - started < timeout:
                time.sleep(0.5)
                if first is None:
                    log = server.tagged_log()
                    if log:
                        first = log[0][0]
                if (
                    first is not None
                    and kill_at is not None
                    and "kill" not in events
                    and time.monotonic() >= first + kill_at
                ):
                    workers[1].send_signal(signal.SIGKILL)
                    events["kill"] = time.monotonic()
                if (
                    first is not None
                    and restart_at is not None
                    and "restart" not in events
                    and time.monotonic() >= first + restart_at
                ):
                    events["restart"] = time.monotonic()
                    if crash:  # SIGKILL: only what the fsync policy wrote survives
                        redis.kill()
                        time.sleep(1.0)
                        redis.start()
                    else:
                        redis.restart(down_for=1.0)
                    events["restart:done"] = time.monotonic()
                if os.path.exists(out_path):
                    with open(out_path) as f:
                        f.seek(position)
                        chunk = f.read()
                        cut = chunk.rfind("\n") + 1
                        position += cut
                    for line in chunk[:cut].splitlines():
                        _, kind, task_id, _ = line.split(" ", 3)
                        seen.add((kind, task_id))
                if len(seen) >= len(expected):
                    break
            wall = time.monotonic() - (first or started)
            time.sleep(1.0)  # late duplicates, if any, land in the file too
            log = server.tagged_log()

            async def figures() -> Any:
                async with RedisWatchList.from_url(redis.url, name=name) as watch:
                    return await watch.stats()

            stats = anyio.run(figures)
        finally:
            for proc in [*workers, consumer, *([web] if web else [])]:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
    deliveries = [line.split(" ", 3) for line in Path(out_path).read_text().splitlines()]
    os.unlink(out_path)
    raw = Path(tempfile.gettempdir()) / f"camb-watch-{label}-raw.json"  # for re-analysis
    raw.write_text(json.dumps({"log": log, "deliveries": deliveries, "events": events}))
    return summarize(label, tasks, expected, deliveries, log, wall, stats, events, scale)


def summarize(
    label: str,
    tasks: list[dict[str, Any]],
    expected: dict[tuple[str, str], dict[str, Any]],
    deliveries: list[list[str]],
    log: list[Any],
    wall: float,
    stats: Any,
    events: dict[str, float],
    scale: float,
) -> dict[str, Any]:
    epoch = min(r[0] for r in log)
    by_task: dict[str, list[tuple[float, str]]] = {}
    for t, worker, path, _status in log:
        by_task.setdefault(path, []).append((t, worker))
    first_delivery: dict[tuple[str, str], float] = {}
    matching = 0
    for received, kind, task_id, status in deliveries:
        key = (kind, task_id)
        if key not in first_delivery:
            first_delivery[key] = float(received)
            matching += expected[key]["status"] == status
    from_done: list[float] = []
    from_poll: list[float] = []
    seen_after: list[float] = []
    overlaps = 0
    for (kind, task_id), at in first_delivery.items():
        task = expected[(kind, task_id)]
        done = task.get("created_at", epoch) + task["after"]
        from_done.append(at - done)
        polls = by_task.get(f"/{kind}/{task_id}", [])
        terminal = [t for t, _ in polls if t >= done]
        if terminal:
            from_poll.append(at - min(terminal))
            seen_after.append(min(terminal) - done)
    # A task is rescheduled after each poll by its policy: the k-th gap is at least the
    # policy's k-th interval less its jitter, however busy the fleet. A shorter gap means a
    # second poll while the first poll's lease was still live (no faults are injected, so
    # no error retries shift the schedule).
    close = 0
    for path, polls in by_task.items():
        policy = scaled_policy(TaskKind(path.split("/")[1]), scale)
        schedule = policy._schedule
        polls.sort()
        for k, ((t1, w1), (t2, w2)) in enumerate(itertools.pairwise(polls), 1):
            if t2 - t1 < schedule[min(k, len(schedule)) - 1] * (1 - policy.jitter) - 0.002:
                close += 1
                overlaps += w1 != w2
    row = {
        "scenario": label,
        "delivered": f"{len(first_delivery)}/{len(expected)}",
        "matching script": matching,
        "duplicates": len(deliveries) - len(first_delivery),
        "duplicates %": round(100 * (len(deliveries) - len(first_delivery)) / len(expected), 3),
        "two workers within a lease": overlaps,
        "two polls within a lease (any workers)": close,
        "busiest 1s": peak_per_window([r[0] for r in log], 1.0),
        "requests": len(log),
        "wall s": round(wall, 1),
        "completion->consumer p50 s": round(_pct(from_done, 0.5), 3),
        "completion->consumer p95 s": round(_pct(from_done, 0.95), 3),
        "completion->terminal poll p50 s": round(_pct(seen_after, 0.5), 3),
        "completion->terminal poll p95 s": round(_pct(seen_after, 0.95), 3),
        "terminal poll->consumer p50 s": round(_pct(from_poll, 0.5), 3),
        "terminal poll->consumer p95 s": round(_pct(from_poll, 0.95), 3),
        "stats at end": stats.as_dict(),
        "requests by worker": {
            w: sum(1 for r in log if r[1] == w) for w in sorted({r[1] for r in log})
        },
    }
    if "kill" in events:
        row["killed worker 1 at s"] = round(events["kill"] - epoch, 1)
    if "restart" in events:
        row["redis restarted at s"] = round(events["restart"] - epoch, 1)
        row["redis down s"] = round(events["restart:done"] - events["restart"], 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument("--kill-at", type=float, default=40.0)
    parser.add_argument("--restart-at", type=float, default=60.0)
    parser.add_argument("--lease-ttl", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument(
        "--margin",
        type=float,
        default=0.1,
        help="the RedisRateBudget's window margin (its default: 0.1)",
    )
    parser.add_argument("--steady-tasks", type=int, default=1500)
    parser.add_argument(
        "--steady-arrival",
        type=float,
        default=15.0,
        help="tasks/s the web tier creates in the steady run",
    )
    parser.add_argument(
        "--only", choices=["baseline", "sigkill", "restart", "crash", "steady"], action="append"
    )
    args = parser.parse_args()
    tasks = script(args.tasks, args.scale)
    only = set(args.only or ["baseline", "sigkill", "restart", "crash", "steady"])
    rows = []
    if "baseline" in only:
        rows.append(run_baseline(tasks, args.scale))
        print(json.dumps(rows[-1]), flush=True)
    for label, kill, restart in (
        ("sigkill", args.kill_at, None),
        ("restart", None, args.restart_at),
    ):
        if label in only:
            rows.append(
                run_fleet(
                    tasks,
                    args.scale,
                    label=label,
                    kill_at=kill,
                    restart_at=restart,
                    lease_ttl=args.lease_ttl,
                    timeout=args.timeout,
                    margin=args.margin,
                )
            )
            print(json.dumps(rows[-1]), flush=True)
    if "crash" in only:
        rows.append(
            run_fleet(
                tasks,
                args.scale,
                label="redis crash",
                kill_at=None,
                restart_at=args.restart_at,
                lease_ttl=args.lease_ttl,
                timeout=args.timeout,
                margin=args.margin,
                fsync="always",
                crash=True,
            )
        )
        print(json.dumps(rows[-1]), flush=True)
    if "steady" in only:
        # Not budget-bound: tasks created over time, so the latency is the pipeline's.
        steady = script(args.steady_tasks, args.scale, seed=20)
        t0 = time.monotonic() + 10.0  # servers and workers are up by then
        for i, t in enumerate(steady):
            t["created_at"] = t0 + i / args.steady_arrival
        rows.append(
            run_fleet(
                steady,
                args.scale,
                label="steady",
                kill_at=None,
                restart_at=None,
                lease_ttl=args.lease_ttl,
                timeout=args.timeout,
                margin=args.margin,
            )
        )
        print(json.dumps(rows[-1]), flush=True)
    base = next((r["requests"] for r in rows if r["scenario"].startswith("baseline")), None)
    for row in rows:
        if base and row["scenario"] in ("sigkill", "restart", "redis crash"):
            row["requests / baseline"] = round(row["requests"] / base, 3)
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    (results / "watch.json").write_text(
        json.dumps(
            {
                "tasks": args.tasks,
                "scale": args.scale,
                "rate": RATE,
                "workers": WORKERS,
                "margin": args.margin,
                "lease_ttl": args.lease_ttl,
                "rows": rows,
            },
            indent=2,
        )
    )
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    role = sys.argv[1] if len(sys.argv) > 1 else ""
    if role == "serve":
        _serve(sys.argv[2])
    elif role in ("worker", "consumer", "web"):
        import anyio

        anyio.run(
            {"worker": _worker, "consumer": _consumer, "web": _web}[role], json.loads(sys.argv[2])
        )
    else:
        main()
