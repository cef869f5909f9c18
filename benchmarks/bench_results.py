"""Acceptance figures for results and creation (issue 4), beside the official SDK.

    .venv/bin/python benchmarks/bench_results.py            # full run (about a minute)
    .venv/bin/python benchmarks/bench_results.py --quick    # fewer repeats, 20 MB upload

1. Fetching the results of 1,000 finished translation runs: requests counted by the server
   and wall time, for camb-async's batch (``results()``, 100 ids a request, chunks in
   parallel), camb-async one ``result()`` per run, and the official SDK both ways (its batch
   call sends every id in one request; it neither chunks nor caps).
2. Uploading a large file for transcription: how much the process's peak RSS grows, for a
   path / an open file / bytes read whole (camb-async, asyncio and trio) and for the official
   SDK given an open file. Each upload runs in a fresh subprocess with the fake server in a
   thread of the same process, so the figure covers both ends.

The fake server (FakeCambAPI on uvicorn) runs in a separate process for (1), so client and
server do not share a GIL; it reports its own request counts. Each client is warmed with one
request first; the wall time covers the fetch only. Timings are medians of the repeats and
only meaningful as ratios between rows of one run. Writes
``benchmarks/results/bench_results.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

N_RUNS = 1000
KEY = "bench-key"
HERE = Path(__file__).resolve().parent

SERVER_CHILD = textwrap.dedent("""
    import json, sys, time
    from camb_async.testing import FakeCambAPI, serve_in_thread
    api = FakeCambAPI(api_key=sys.argv[1], clock=time.monotonic)
    runs = [api.tasks[("translate", api.add_task("translate"))].run_id
            for _ in range(int(sys.argv[2]))]
    with serve_in_thread(api) as url:
        print(json.dumps({"url": url, "runs": runs}), flush=True)
        seen = 0
        for line in sys.stdin:  # one line = "report the requests since the last report"
            new, seen = api.log[seen:], len(api.log)
            print(json.dumps({"requests": len(new),
                              "paths": sorted({r.path.split("/")[1] for r in new}),
                              "statuses": sorted({r.status for r in new})}), flush=True)
""")

UPLOAD_CHILD = textwrap.dedent("""
    import json, os, resource, sys, tempfile, time
    import anyio
    from camb_async.testing import FakeCambAPI, serve_in_thread

    client_name, backend, mode, size_mb = sys.argv[1:5]
    size = int(size_mb) * 1024 * 1024

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    async def ours(url, path):
        from camb_async import AsyncCambClient
        async with AsyncCambClient("k", base_url=url, rate_limit=None, timeout=300) as client:
            await client.transcription.create(language=1, file=b"warm-up" * 100_000)
            base = peak_mb()
            start = time.perf_counter()
            if mode == "path":
                await client.transcription.create(language=1, file=path)
            elif mode == "fileobj":
                with open(path, "rb") as f:
                    await client.transcription.create(language=1, file=f)
            else:
                with open(path, "rb") as f:
                    data = f.read()
                await client.transcription.create(language=1, file=data, filename="big.wav")
            return base, time.perf_counter() - start

    async def sdk(url, path):
        from camb.client import AsyncCambAI
        client = AsyncCambAI(api_key="k", base_url=url, timeout=300)
        await client.transcription.create_transcription(language=1,
                                                        media_file=b"warm-up" * 100_000)
        base = peak_mb()
        start = time.perf_counter()
        with open(path, "rb") as f:
            await client.transcription.create_transcription(language=1, media_file=f)
        return base, time.perf_counter() - start

    api = FakeCambAPI(api_key="k", clock=time.monotonic)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "big.wav")
        with open(path, "wb") as f:
            f.truncate(size)  # sparse: no disk, reads as zeros
        with serve_in_thread(api) as url:
            run = ours if client_name == "camb-async" else sdk
            base, seconds = anyio.run(run, url, path, backend=backend)
    received = api.created()[-1].request["media_file"]["size"]
    print(json.dumps({"delta_mb": peak_mb() - base, "seconds": seconds,
                      "received_ok": received == size}))
""")


# ------------------------------------------------------------------------ 1. batch results


# Each runner opens its client, warms it with one single-result request (imports, connection,
# first-use compilation), then times only the fetch of all results. Returns (count, seconds).


async def _ours(url: str, runs: list[int], batch: bool) -> tuple[int, float]:
    from camb_async import AsyncCambClient

    async with AsyncCambClient(KEY, base_url=url, rate_limit=None) as client:
        await client.translation.result(runs[0])
        start = time.perf_counter()
        if batch:
            got = len(await client.translation.results(runs))
        else:
            got = len(await asyncio.gather(*(client.translation.result(r) for r in runs)))
        return got, time.perf_counter() - start


async def _sdk(url: str, runs: list[int], batch: bool) -> tuple[int, float]:
    from camb.client import AsyncCambAI

    client = AsyncCambAI(api_key=KEY, base_url=url)
    await client.translation.get_translation_result(runs[0])
    start = time.perf_counter()
    if batch:
        got = len(await client.translation.get_translation_results(run_ids=runs))
    else:
        limit = asyncio.Semaphore(16)  # the same concurrency as camb-async's default budget

        async def one(run_id: int) -> Any:
            async with limit:
                return await client.translation.get_translation_result(run_id)

        got = len(await asyncio.gather(*(one(r) for r in runs)))
    return got, time.perf_counter() - start


def bench_batch(repeats: int) -> list[dict[str, Any]]:
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER_CHILD, KEY, str(N_RUNS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None and server.stdout is not None
    try:
        hello = json.loads(server.stdout.readline())
        url, runs = hello["url"], hello["runs"]

        def server_report() -> dict[str, Any]:
            assert server.stdin is not None and server.stdout is not None
            server.stdin.write("report\n")
            server.stdin.flush()
            return dict(json.loads(server.stdout.readline()))

        rows = []
        for name, fn, batch in [
            ("camb-async results() (batch, 100 ids/request)", _ours, True),
            ("camb-async result() per run, 16 in flight", _ours, False),
            ("official SDK get_translation_results (all ids, 1 request)", _sdk, True),
            ("official SDK get_translation_result per run, 16 in flight", _sdk, False),
        ]:
            walls, requests = [], []
            for _ in range(repeats):
                got, wall = asyncio.run(fn(url, runs, batch))
                walls.append(wall)
                report = server_report()
                assert got == N_RUNS and report["statuses"] == [200], (name, got, report)
                requests.append(report["requests"] - 1)  # minus the warm-up request
            rows.append(
                {
                    "client": name,
                    "results": N_RUNS,
                    "requests": max(requests),
                    "wall_ms": statistics.median(walls) * 1000,
                }
            )
        base = rows[0]["wall_ms"]
        for row in rows:
            row["wall_vs_batch"] = row["wall_ms"] / base
        return rows
    finally:
        server.stdin.close()
        server.wait(timeout=30)


# ------------------------------------------------------------------------ 2. upload memory


def bench_upload(size_mb: int) -> list[dict[str, Any]]:
    cases = [
        ("camb-async", "asyncio", "path"),
        ("camb-async", "trio", "path"),
        ("camb-async", "asyncio", "fileobj"),
        ("camb-async", "trio", "fileobj"),
        ("camb-async", "asyncio", "bytes"),
        ("official SDK", "asyncio", "fileobj"),
    ]
    rows = []
    for client, backend, mode in cases:
        proc = subprocess.run(
            [sys.executable, "-c", UPLOAD_CHILD, client, backend, mode, str(size_mb)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
            rows.append(
                {
                    "client": client,
                    "backend": backend,
                    "source": mode,
                    "size_mb": size_mb,
                    "error": tail[0][:160],
                }
            )
            continue
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(
            {
                "client": client,
                "backend": backend,
                "source": mode,
                "size_mb": size_mb,
                "peak_rss_growth_mb": round(report["delta_mb"], 1),
                "seconds": round(report["seconds"], 2),
                "received_ok": report["received_ok"],
            }
        )
    return rows


def markdown(batch: list[dict[str, Any]], upload: list[dict[str, Any]]) -> str:
    lines = [
        "## Results of 1,000 finished runs (loopback, server in its own process)",
        "",
        "| client | requests (server count) | wall ms (median) | vs batch |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['client']} | {r['requests']} | {r['wall_ms']:.0f} | {r['wall_vs_batch']:.2f}x |"
        for r in batch
    ]
    lines += [
        "",
        "## Transcription upload: peak RSS growth (client + fake server, one process)",
        "",
        "| client | loop | source | size MB | peak RSS growth MB | seconds |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in upload:
        if "error" in r:
            lines.append(
                f"| {r['client']} | {r['backend']} | {r['source']} | "
                f"{r['size_mb']} | failed: {r['error']} | |"
            )
        else:
            lines.append(
                f"| {r['client']} | {r['backend']} | {r['source']} | {r['size_mb']} "
                f"| {r['peak_rss_growth_mb']} | {r['seconds']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, 20 MB upload")
    parser.add_argument("--size-mb", type=int, default=None, help="upload size (default 100)")
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    size_mb = args.size_mb or (20 if args.quick else 100)
    batch = bench_batch(repeats)
    upload = bench_upload(size_mb)
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    report = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "batch_results": batch,
        "upload": upload,
    }
    (out_dir / "bench_results.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(batch, upload)
    (out_dir / "bench_results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
