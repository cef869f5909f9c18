"""Raw TTS audio to disk: peak memory growth and event-loop lag of ``save_audio``.

    .venv/bin/python benchmarks/bench_audio.py [--mb 200] [--backends asyncio,trio]
                                               [--writes thread,inline] [--reset-mb 50]

FakeCambAPI on uvicorn in its own process (``_servers.FakeServer``) serves one TTS run's
FLAC body of ``--mb`` MB in the API's default ``raw_bytes`` mode, over real loopback TCP.
Each row is a fresh client process on one event loop and through that loop's default
transport (aiohttp on asyncio, httpx pools on trio): it warms up (one small download:
imports, pools, the first thread hand-off), then runs ``client.tts.save_audio(run_id, path)``
while a sampler thread reads the process's resident set (``/proc/self/statm``) every 2 ms
and a ticker task sleeps 10 ms at a time, recording how late it woke (event-loop lag).

Reported per row: peak RSS during the download minus RSS just before it (acceptance: under
20 MB for 200 MB), throughput, worst and 99th-percentile loop lag. ``--writes inline`` is the
comparison that justifies the worker threads: the same download with every file write done
on the event loop. ``--reset-mb N`` adds a row per loop where the server drops the connection
after N MB: ``APIConnectionError``, and no file (not even a temporary one) must be left.

Writes ``benchmarks/results/audio.json``; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parent / "results"
KEY = "bench-key"
MB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = rss()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(0.002)


async def _measure(
    base_url: str, run_id: int, warm_run: int, writes: str, expect_reset: bool
) -> dict[str, Any]:
    import anyio

    from camb_async import APIConnectionError, AsyncCambClient, _download

    if writes == "inline":

        async def inline(func: Any, *args: Any) -> Any:
            return func(*args)

        _download._offload = inline  # type: ignore[assignment]

    lags: list[float] = []

    async def ticker() -> None:
        while True:
            start = time.perf_counter()
            await anyio.sleep(0.01)
            lags.append(time.perf_counter() - start - 0.01)

    with tempfile.TemporaryDirectory(prefix="camb-bench-audio-") as tmp:
        target = Path(tmp) / "speech.flac"
        async with AsyncCambClient(KEY, base_url=base_url, timeout=60) as client:
            await client.tts.save_audio(warm_run, Path(tmp) / "warm.flac")
            os.unlink(Path(tmp) / "warm.flac")
            sampler = PeakSampler()
            before = rss()
            sampler.peak = before
            sampler.start()
            error = None
            async with anyio.create_task_group() as tg:
                tg.start_soon(ticker)
                started = time.perf_counter()
                try:
                    written = await client.tts.save_audio(run_id, target)
                except APIConnectionError as exc:
                    written, error = 0, type(exc).__name__
                elapsed = time.perf_counter() - started
                tg.cancel_scope.cancel()
            sampler.stop.set()
            sampler.join()
        left = sorted(os.listdir(tmp))
        size = target.stat().st_size if target.exists() else None
    lags.sort()
    return {
        "rss_before_mb": round(before / MB, 1),
        "peak_growth_mb": round((sampler.peak - before) / MB, 2),
        "written_mb": round(written / MB, 1),
        "file_size_mb": None if size is None else round(size / MB, 1),
        "files_left": left,
        "error": error,
        "expected_reset": expect_reset,
        "seconds": round(elapsed, 2),
        "mb_per_s": round(written / MB / elapsed, 1) if written else None,
        "lag_max_ms": round(lags[-1] * 1000, 1) if lags else None,
        "lag_p99_ms": round(lags[int(len(lags) * 0.99)] * 1000, 1) if lags else None,
    }


def _child(args: list[str]) -> None:
    import anyio

    backend, base_url, run_id, warm_run, writes, reset = args
    result = anyio.run(
        _measure, base_url, int(run_id), int(warm_run), writes, reset == "1", backend=backend
    )
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--backends", default="asyncio,trio")
    parser.add_argument("--writes", default="thread,inline")
    parser.add_argument("--reset-mb", type=int, default=50)
    options = parser.parse_args()

    from _servers import FakeServer

    run_id, warm_run, reset_run = 5001, 5002, 5003
    tasks = [
        {"kind": "tts", "task_id": f"tts-{r}", "run_id": r} for r in (run_id, warm_run, reset_run)
    ]
    audio = [{"run_id": run_id, "size": options.mb * MB}, {"run_id": warm_run, "size": 4 * MB}]
    if options.reset_mb:
        audio.append(
            {"run_id": reset_run, "size": options.mb * MB, "reset_after": options.reset_mb * MB}
        )
    rows: list[dict[str, Any]] = []
    with FakeServer(tasks, api_key=KEY, audio=audio) as url:
        plan = [
            (backend, writes, run_id, False)
            for backend in options.backends.split(",")
            for writes in options.writes.split(",")
        ]
        if options.reset_mb:
            plan += [
                (backend, "thread", reset_run, True) for backend in options.backends.split(",")
            ]
        for backend, writes, run, reset in plan:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    backend,
                    url,
                    str(run),
                    str(warm_run),
                    writes,
                    "1" if reset else "0",
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            row = {
                "backend": backend,
                "writes": writes,
                "size_mb": options.mb,
                "reset_after_mb": options.reset_mb if reset else None,
                **json.loads(out.stdout.strip().splitlines()[-1]),
            }
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)

    RESULTS.mkdir(exist_ok=True)
    machine = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    (RESULTS / "audio.json").write_text(
        json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n"
    )
    print("| loop | file writes | body | peak RSS growth | MB/s | loop lag max / p99 | outcome |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        body = (
            f"{r['size_mb']} MB"
            if r["reset_after_mb"] is None
            else f"{r['size_mb']} MB, reset after {r['reset_after_mb']} MB"
        )
        outcome = (
            f"{r['error']}; files left: {r['files_left'] or 'none'}"
            if r["error"]
            else f"{r['file_size_mb']} MB file"
        )
        print(
            f"| {r['backend']} | {r['writes']} | {body} | {r['peak_growth_mb']} MB | "
            f"{r['mb_per_s'] or '-'} | {r['lag_max_ms']} / {r['lag_p99_ms']} ms | "
            f"{outcome} |"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2:])
    else:
        main()
