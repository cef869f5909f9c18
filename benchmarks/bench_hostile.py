"""Hostile answers: peak memory and time of one status call against answers that never end.

    .venv/bin/python benchmarks/bench_hostile.py [--reference]

A raw-socket server in its own process (so its memory is not counted) answers
``GET /dub/{case}`` with:

* ``bomb``: a 300 MB JSON answer gzip'd to ~300 KB (``Content-Encoding: gzip``);
* ``endless``: a chunked answer of 64 KiB chunks, as fast as the socket takes them, forever;
* ``trickle``: a chunked answer of one byte every 50 ms, forever (no read ever times out);
* ``largest``: a valid status answer just under the cap (what an accepted answer costs: the
  body, then the json module's str copy and the parsed string).

Each (backend, case) runs in a fresh client process with the defaults (``max_response_bytes``
8 MiB, ``max_retries=3``) and ``timeout=2``: after a warm-up call it prints the error the call
ended with, the elapsed time, and how far the process's peak RSS (VmHWM) rose above its RSS
before the call.
RSS includes memory the allocator keeps after Python freed it (on trio httpcore's 64 KiB
reads leave ~1 cap of it for the largest answer); tracemalloc shows Python's own peak for
that answer at 2x the cap on both loops. ``--reference`` adds raw
``httpx.AsyncClient.get(...).json()`` on the bomb (what reading an answer whole costs;
several hundred MB).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _servers import free_port, wait_for_port  # noqa: E402

INFLATED = 300 * 1024 * 1024
TIMEOUT = 2.0
CASES = ("bomb", "endless", "trickle", "largest")
#: A valid answer just under the default cap: what an answer the client accepts can cost.
LARGEST = 8 * 1024 * 1024 - 64


# ----------------------------------------------------------------------------- the server


def make_bomb(inflated: int = INFLATED) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b" " * (1 << 20)
    parts = [packer.compress(b'{"status": "PENDING", "pad": "')]
    parts += [packer.compress(block) for _ in range(inflated // len(block))]
    return b"".join(parts) + packer.compress(b'"}') + packer.flush()


async def serve(port: int) -> None:
    bomb = make_bomb()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            case = head.split(b" ", 2)[1].rsplit(b"/", 1)[-1].decode()
            if case == "ok":  # the warm-up: transport imported, connection pool built
                body = b'{"status": "PENDING"}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n" % len(body) + body
                )
                await writer.drain()
                return
            if case == "largest":
                head = b'{"status": "PENDING", "pad": "'
                body = head + b"x" * (LARGEST - len(head) - 2) + b'"}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"connection: close\r\n"
                    b"content-length: %d\r\n\r\n" % len(body) + body
                )
                await writer.drain()
                return
            if case == "bomb":
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-encoding: gzip\r\nconnection: close\r\n"
                    b"content-length: %d\r\n\r\n" % len(bomb) + bomb
                )
                await writer.drain()
                return
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            )
            chunk, pause = (b"A" * 65536, 0.0) if case == "endless" else (b" ", 0.05)
            frame = b"%x\r\n%s\r\n" % (len(chunk), chunk)
            writer.write(b'c\r\n{"status": "\r\n')
            while True:
                writer.write(frame)
                await writer.drain()
                await asyncio.sleep(pause)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


# ----------------------------------------------------------------------------- a client


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def client(backend: str, case: str, url: str, reference: bool) -> dict[str, Any]:
    import anyio
    import httpx

    from camb_async import AsyncCambClient

    async def main() -> dict[str, Any]:
        async with (
            httpx.AsyncClient(timeout=TIMEOUT) as http,
            AsyncCambClient("bench-key", base_url=url, timeout=TIMEOUT, rate_limit=None) as camb,
        ):
            # Warm-up: imports done, transports built, before the baseline is taken.
            (await http.get(f"{url}/dub/ok")).json()
            await camb.dub.status("ok")
            before = rss_kib("VmRSS")
            started = time.perf_counter()
            try:
                if reference:
                    (await http.get(f"{url}/dub/{case}")).json()
                else:
                    await camb.dub.status(case)
            except Exception as exc:  # the figure is what it ended with
                outcome = f"{type(exc).__name__}: {str(exc)[:60]}"
            else:
                outcome = "returned"
            elapsed = time.perf_counter() - started
        return {
            "backend": backend,
            "case": case,
            "client": "httpx" if reference else "camb-async",
            "outcome": outcome,
            "elapsed_s": round(elapsed, 2),
            "rss_before_mib": round(before / 1024, 1),
            "peak_rise_mib": round((rss_kib("VmHWM") - before) / 1024, 1),
        }

    return anyio.run(main, backend=backend)


def spawn(backend: str, case: str, url: str, reference: bool) -> dict[str, Any]:
    args = [sys.executable, __file__, "--client", backend, case, url]
    if reference:
        args.append("--reference")
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--reference", action="store_true", help="also measure raw httpx reading the bomb whole"
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return 0
    if args.client:
        print(json.dumps(client(*args.client, reference=args.reference)))
        return 0

    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        wait_for_port(port, server)
        url = f"http://127.0.0.1:{port}"
        rows = [
            spawn(backend, case, url, False) for backend in ("asyncio", "trio") for case in CASES
        ]
        if args.reference:
            rows += [spawn(backend, "bomb", url, True) for backend in ("asyncio", "trio")]
    finally:
        server.terminate()
        server.wait()
    print(
        f"One status call, timeout={TIMEOUT} s, defaults otherwise (max_response_bytes "
        "8 MiB, max_retries=3); peak RSS (VmHWM) rise over the RSS before the call.\n"
    )
    print("| client | loop | answer | peak RSS rise | elapsed | ended with |")
    print("|---|---|---|---|---|---|")
    names = {
        "bomb": "gzip, 300 MB inflated",
        "endless": "endless, 64 KiB chunks",
        "trickle": "endless, 1 byte / 50 ms",
        "largest": "valid JSON, 8 MiB - 64 B (accepted)",
    }
    for row in rows:
        print(
            f"| {row['client']} | {row['backend']} | {names[row['case']]} | "
            f"{row['peak_rise_mib']} MiB | {row['elapsed_s']} s | {row['outcome']} |"
        )
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(None)
    sys.exit(main())
