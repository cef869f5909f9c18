"""Per-request latency of ``camb-async fake-server`` over one keep-alive connection.

    .venv/bin/python benchmarks/bench_fake_server_latency.py [--requests 200]

Why: a listening socket created without ``IPPROTO_TCP`` / ``TCP_NODELAY`` hands uvicorn
connections on which Nagle's algorithm holds back every answer after a connection's first
until the client's delayed ACK (~40 ms): headers and body leave as two writes. The fix
(``cli._listen_socket``) makes it ~1 ms, like ``testing.serve_in_thread``. This script starts
the installed command in a subprocess (as a user would), sends ``GET /tts/{id}`` status checks
one after another on one ``httpx.Client`` connection, and prints the median and p90 per
request, beside the same through ``serve_in_thread`` in this process. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from camb_async import TaskKind
from camb_async.testing import FakeCambAPI, serve_in_thread

BIN = Path(sys.executable).parent / "camb-async"
KEY = "bench-latency-key"


def measure(url: str, task_path: str, n: int) -> list[float]:
    samples = []
    with httpx.Client(base_url=url, headers={"x-api-key": KEY}) as http:
        http.get(task_path).raise_for_status()  # connect and warm up
        for _ in range(n):
            started = time.perf_counter()
            http.get(task_path).raise_for_status()
            samples.append((time.perf_counter() - started) * 1000)
    return samples


def fake_server_command(n: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        ids, log = Path(tmp) / "ids.txt", Path(tmp) / "server.log"
        with log.open("w") as err:
            proc = subprocess.Popen(
                [
                    str(BIN),
                    "fake-server",
                    "--port",
                    "0",
                    "--api-key",
                    KEY,
                    "--tasks",
                    "1",
                    "--kinds",
                    "tts",
                    "--ids-file",
                    str(ids),
                ],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={k: v for k, v in os.environ.items() if not k.startswith("CAMB_")},
            )
        try:
            deadline = time.monotonic() + 30
            while not (match := re.search(r"listening on (http://\S+)", log.read_text())):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(log.read_text())
                time.sleep(0.05)
            kind, task_id = ids.read_text().split()
            return measure(match.group(1), f"/{kind}/{task_id}", n)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def in_thread(n: int) -> list[float]:
    api = FakeCambAPI(api_key=KEY)
    task_id = api.add_task(TaskKind.TTS, "tts-1")
    with serve_in_thread(api) as url:
        return measure(url, f"/tts/{task_id}", n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    print("| server | median ms/request | p90 ms/request |")
    print("|---|---|---|")
    for name, run in (
        ("camb-async fake-server (subprocess)", fake_server_command),
        ("testing.serve_in_thread (same process)", in_thread),
    ):
        samples = sorted(run(args.requests))
        p90 = samples[int(len(samples) * 0.9)]
        print(f"| {name} | {statistics.median(samples):.2f} | {p90:.2f} |")


if __name__ == "__main__":
    main()
