"""Figure 1: client CPU per status check, camb-async beside the official SDK and raw clients.

    .venv/bin/python benchmarks/bench_cpu.py [--rounds 3] [--requests 2000] [--quick]

A static nginx on loopback answers every ``GET /dub/{id}`` with the same status JSON from
memory, so the server is never the bottleneck. Each measurement is a fresh process (one
peer, one concurrency): it warms up (connections open, imports done, caches filled), then
sends ``--requests`` status checks at the given concurrency and reports its own process CPU
time (user + system, ``time.process_time``) divided by the number of requests. Rounds are
interleaved (every peer at every concurrency once per round, in a rotated order) and the
median round is reported, so a noisy neighbour on the machine hits every peer alike.

Every peer decodes the JSON answer into something usable, as a caller would:

* ``official SDK``: ``camb`` 1.6.6 ``AsyncCambAI`` as its users drive it: an
  ``asyncio.Semaphore`` plus ``asyncio.gather`` over ``client.dub.get_dubbing_status``.
* ``httpx``: raw ``httpx.AsyncClient`` (keep-alive pool sized to the concurrency), ``.json()``.
* ``aiohttp``: raw ``aiohttp.ClientSession``, ``await response.json()``.
* ``httpx+aiohttp``: ``httpx.AsyncClient(transport=httpx_aiohttp.AiohttpTransport())``.
* ``camb-async``: the default install, ``asyncio.gather`` over ``client.dub.status`` (the
  client's budget, ``max_concurrency=C``, is the semaphore), ``rate_limit=None``.
* ``camb-async bulk``: ``gather_statuses(client, ids, kind="dub", wait=False)``.
* ``camb-async (native httpx)``: camb-async forced onto httpx's own transport on asyncio:
  the transport choice, isolated.
* ``camb-async (trio)``: the default install on trio (native httpx there).

Writes ``benchmarks/results/cpu.json``; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
KEY = "bench-key"

PEERS = {
    "official SDK": "official",
    "httpx": "httpx",
    "aiohttp": "aiohttp",
    "httpx+aiohttp": "httpx_aiohttp",
    "camb-async": "camb",
    "camb-async bulk": "camb_bulk",
    "camb-async (native httpx)": "camb_native",
    "camb-async (trio)": "camb_trio",
}


# ----------------------------------------------------------------------------- workers
# Each returns after `warmup + n` status checks; the measured window is the last `n`.


async def _drive_semaphore(one: Any, ids: list[str], concurrency: int) -> int:
    import asyncio

    sem = asyncio.Semaphore(concurrency)

    async def guarded(task_id: str) -> Any:
        async with sem:
            return await one(task_id)

    out = await asyncio.gather(*(guarded(i) for i in ids))
    return len(out)


async def _measure(run_batch: Any, warmup: int, n: int) -> dict[str, float]:
    await run_batch([f"w{i}" for i in range(warmup)])
    ids = [f"t{i}" for i in range(n)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    done = await run_batch(ids)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    assert done == n, (done, n)
    return {"cpu_us": cpu / n * 1e6, "wall_s": wall, "req_per_s": n / wall}


async def worker_official(url: str, c: int, warmup: int, n: int) -> dict[str, float]:
    from camb import AsyncCambAI

    client = AsyncCambAI(api_key=KEY, base_url=url)

    async def one(task_id: str) -> Any:
        result = await client.dub.get_dubbing_status(task_id)
        assert result.status == "SUCCESS"
        return result

    return await _measure(lambda ids: _drive_semaphore(one, ids, c), warmup, n)


async def worker_httpx(
    url: str, c: int, warmup: int, n: int, transport: Any = None
) -> dict[str, float]:
    import httpx

    limits = httpx.Limits(max_connections=max(c, 100), max_keepalive_connections=max(c, 20))
    async with httpx.AsyncClient(
        headers={"x-api-key": KEY}, limits=limits, transport=transport
    ) as client:

        async def one(task_id: str) -> Any:
            r = await client.get(f"{url}/dub/{task_id}")
            r.raise_for_status()
            data = r.json()
            assert data["status"] == "SUCCESS"
            return data

        return await _measure(lambda ids: _drive_semaphore(one, ids, c), warmup, n)


async def worker_httpx_aiohttp(url: str, c: int, warmup: int, n: int) -> dict[str, float]:
    import httpx
    from httpx_aiohttp import AiohttpTransport

    limits = httpx.Limits(max_connections=max(c, 100), max_keepalive_connections=max(c, 20))
    return await worker_httpx(url, c, warmup, n, transport=AiohttpTransport(limits=limits))


async def worker_aiohttp(url: str, c: int, warmup: int, n: int) -> dict[str, float]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=max(c, 100))
    async with aiohttp.ClientSession(connector=connector, headers={"x-api-key": KEY}) as session:

        async def one(task_id: str) -> Any:
            async with session.get(f"{url}/dub/{task_id}") as r:
                r.raise_for_status()
                data = await r.json()
            assert data["status"] == "SUCCESS"
            return data

        return await _measure(lambda ids: _drive_semaphore(one, ids, c), warmup, n)


async def worker_camb(
    url: str, c: int, warmup: int, n: int, *, bulk: bool = False, native: bool = False
) -> dict[str, float]:
    import asyncio

    import anyio
    import sniffio

    from camb_async import AsyncCambClient, gather_statuses

    transport = None
    if native:
        import httpx

        transport = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=max(c, 20))
        )
    async with AsyncCambClient(
        KEY, base_url=url, rate_limit=None, max_concurrency=c, transport=transport
    ) as client:

        async def batch(ids: list[str]) -> int:
            if bulk:
                out = await gather_statuses(client, ids, kind="dub", wait=False)
            elif sniffio.current_async_library() == "asyncio":
                # The peers' driver, asyncio.gather; the budget is the semaphore. (An anyio
                # task group here cost ~40 µs more per check in anyio's task bookkeeping,
                # none of it the library's.)
                out = await asyncio.gather(*(client.dub.status(task_id) for task_id in ids))
            else:  # trio: a nursery (anyio's task group) is how callers fan out
                out = [None] * len(ids)

                async def one(i: int, task_id: str) -> None:
                    out[i] = await client.dub.status(task_id)

                async with anyio.create_task_group() as tg:
                    for i, task_id in enumerate(ids):
                        tg.start_soon(one, i, task_id)
            assert all(r.is_success for r in out)
            return len(out)

        return await _measure(batch, warmup, n)


def run_worker(peer: str, url: str, c: int, warmup: int, n: int) -> dict[str, float]:
    import anyio

    if peer == "camb_trio":
        return anyio.run(lambda: worker_camb(url, c, warmup, n), backend="trio")
    funcs = {
        "official": worker_official,
        "httpx": worker_httpx,
        "aiohttp": worker_aiohttp,
        "httpx_aiohttp": worker_httpx_aiohttp,
        "camb": worker_camb,
    }
    import asyncio

    if peer == "camb_bulk":
        return asyncio.run(worker_camb(url, c, warmup, n, bulk=True))
    if peer == "camb_native":
        return asyncio.run(worker_camb(url, c, warmup, n, native=True))
    return asyncio.run(funcs[peer](url, c, warmup, n))


# ----------------------------------------------------------------------------- driver


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in (
        "camb-async",
        "camb-sdk",
        "httpx",
        "httpcore",
        "aiohttp",
        "httpx-aiohttp",
        "anyio",
        "trio",
        "uvicorn",
        "pydantic",
    ):
        out[dist] = _version(dist)
    return out


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_avg_at_start": os.getloadavg(),
    }


def spawn(peer: str, url: str, c: int, warmup: int, n: int) -> dict[str, float]:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        peer,
        "--url",
        url,
        "--concurrency",
        str(c),
        "--warmup",
        str(warmup),
        "--requests",
        str(n),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{peer} c={c} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def table(result: dict[str, Any]) -> str:
    concs = result["concurrency"]
    rows = result["median"]
    official = rows["official SDK"]
    lines = [
        "| client | "
        + " | ".join(f"c={c} µs/check" for c in concs)
        + f" | c={concs[-1]} vs official SDK |",
        "|---|" + "---:|" * (len(concs) + 1),
    ]
    for label, by_c in rows.items():
        ratio = by_c[str(concs[-1])] / official[str(concs[-1])]
        lines.append(
            f"| {label} | "
            + " | ".join(f"{by_c[str(c)]:.0f}" for c in concs)
            + f" | {ratio:.2f}x |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker")
    parser.add_argument("--url")
    parser.add_argument("--concurrency", default="1,10,50")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--peers", default=",".join(PEERS), help="comma-separated labels (default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="1 round, 600 requests")
    args = parser.parse_args()
    if args.worker:
        out = run_worker(args.worker, args.url, int(args.concurrency), args.warmup, args.requests)
        print(json.dumps(out))
        return 0

    sys.path.insert(0, str(HERE))
    from _servers import Nginx

    if args.quick:
        args.rounds, args.requests, args.warmup = 1, 600, 100
    concs = [int(c) for c in args.concurrency.split(",")]
    labels = [p for p in args.peers.split(",") if p]
    samples: dict[str, dict[str, list[dict[str, float]]]] = {
        label: {str(c): [] for c in concs} for label in labels
    }
    server = Nginx()
    started = time.time()
    with server as url:
        for rnd in range(args.rounds):
            order = labels[rnd % len(labels) :] + labels[: rnd % len(labels)]
            for c in concs:
                for label in order:
                    s = spawn(PEERS[label], url, c, args.warmup, args.requests)
                    samples[label][str(c)].append(s)
                    print(
                        f"round {rnd + 1}/{args.rounds} c={c:>2} {label:<26} "
                        f"{s['cpu_us']:7.0f} µs CPU/check  {s['req_per_s']:7.0f} req/s",
                        file=sys.stderr,
                        flush=True,
                    )
    median = {
        label: {c: statistics.median(s["cpu_us"] for s in runs) for c, runs in by_c.items()}
        for label, by_c in samples.items()
    }
    result: dict[str, Any] = {
        "figure": "CPU microseconds per status check (process CPU / requests), median round",
        "command": "python benchmarks/bench_cpu.py " + " ".join(sys.argv[1:]),
        "concurrency": concs,
        "requests_per_run": args.requests,
        "rounds": args.rounds,
        "median": median,
        "samples": samples,
        "machine": machine(),
        "versions": {**versions(), "nginx": server.version},
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
    }
    if "official SDK" in median and "camb-async" in median:
        top = str(concs[-1])
        result["camb_async_vs_official_at_max_concurrency"] = round(
            median["camb-async"][top] / median["official SDK"][top], 3
        )
    result["median_req_per_s"] = {
        label: {c: statistics.median(s["req_per_s"] for s in runs) for c, runs in by_c.items()}
        for label, by_c in samples.items()
    }
    lines = acceptance_18(result)
    result["issue_18"] = lines
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    if "official SDK" in median:
        print(table(result))
    for line in lines:
        print(line)
    return 0


def acceptance_18(result: dict[str, Any]) -> list[str]:
    """Issue 18's hot-path lines, from this run's medians: camb-async's CPU per check at
    most 1.5x raw aiohttp's (at c=50), and bulk ``gather_statuses`` throughput at least
    0.7x a hand-written aiohttp semaphore loop's (the ``aiohttp`` peer, one process, one
    core each) at every concurrency measured."""
    cpu, rate = result["median"], result["median_req_per_s"]
    lines = []
    for c in map(str, result["concurrency"]):
        if "aiohttp" not in cpu:
            break
        if "camb-async" in cpu:
            ratio = cpu["camb-async"][c] / cpu["aiohttp"][c]
            verdict = ("PASS" if ratio <= 1.5 else "FAIL") if c == "50" else "(bar is at c=50)"
            lines.append(
                f"c={c}: camb-async CPU/check {cpu['camb-async'][c]:.0f} µs = {ratio:.2f}x "
                f"raw aiohttp ({cpu['aiohttp'][c]:.0f} µs), bar <= 1.5x: {verdict}"
            )
        if "camb-async bulk" in rate:
            ratio = rate["camb-async bulk"][c] / rate["aiohttp"][c]
            lines.append(
                f"c={c}: bulk gather_statuses {rate['camb-async bulk'][c]:.0f} checks/s = "
                f"{ratio:.2f}x an aiohttp semaphore loop ({rate['aiohttp'][c]:.0f}/s), "
                f"bar >= 0.7x: {'PASS' if ratio >= 0.7 else 'FAIL'}"
            )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
