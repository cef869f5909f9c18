"""``camb-async fake-server``: the fake API on a real socket, for local development."""

from __future__ import annotations

import argparse
import os
import random
import shlex
import socket
import sys
import time
from pathlib import Path

from .._models import TaskKind, TaskStatus
from ._common import EXIT_OK, KINDS, UsageError, _kind
from ._scenario import _ERROR_REASONS

# ----------------------------------------------------------------------------- fake-server


def _listen_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket for uvicorn whose connections answer without Nagle's delay.

    ``IPPROTO_TCP`` makes asyncio set ``TCP_NODELAY`` on each accepted connection, and the
    option set here is inherited by accepted sockets on Linux (and other stacks that copy
    it). Without both, every answer after a connection's first waited ~40 ms for the
    client's delayed ACK (headers and body leave as two writes): 44 ms per keep-alive status
    check, against ~1 ms now (``benchmarks/bench_fake_server_latency.py``).
    """
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except (OSError, UnicodeError) as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc}") from None
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _cmd_fake_server(args: argparse.Namespace) -> int:
    import uvicorn

    from ..testing import FakeCambAPI

    if args.min_duration > args.max_duration:
        raise UsageError("--min-duration must not exceed --max-duration")
    key_source = (
        "--api-key"
        if args.api_key
        else ("CAMB_API_KEY" if os.environ.get("CAMB_API_KEY") else None)
    )
    key = args.api_key or os.environ.get("CAMB_API_KEY") or "fake-key"
    api = FakeCambAPI(
        api_key=key,
        clock=time.monotonic,
        fault_rate=args.fault_rate,
        rate_limit=args.rate_limit,
        seed=args.seed,
    )
    kinds = [_kind(k) for k in args.kinds.split(",")] if args.kinds else None
    rng = random.Random(args.seed)
    now = time.monotonic()
    lines = []
    for i in range(args.tasks):
        kind = kinds[i % len(kinds)] if kinds else TaskKind(KINDS[i % len(KINDS)])
        after = rng.uniform(args.min_duration, args.max_duration)
        draw = rng.random()
        status = TaskStatus.SUCCESS
        reason = None
        if draw < args.error_rate:
            status, reason = rng.choice(
                [
                    (TaskStatus.ERROR, rng.choice(_ERROR_REASONS)),
                    (TaskStatus.TIMEOUT, "processing took too long"),
                ]
            )
        task_id = api.add_task(
            kind,
            f"{kind.value}-{i + 1:05d}",
            status=status,
            after=after,
            exception_reason=reason,
            created_at=now,
        )
        lines.append(f"{kind.value} {task_id}\n")

    sock = _listen_socket(args.host, args.port)
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{port}"
    if args.ids_file:
        try:
            Path(args.ids_file).write_text("".join(lines), encoding="utf-8")
        except OSError as exc:
            sock.close()
            raise UsageError(f"cannot write {args.ids_file}: {exc.strerror or exc}") from None
    else:
        sys.stdout.write("".join(lines))
        sys.stdout.flush()
    err = sys.stderr
    err.write(f"camb-async fake-server listening on {url}\n")
    if args.tasks:
        where = args.ids_file or "stdout"
        err.write(
            f"  {args.tasks} scripted tasks ({args.min_duration:g}-{args.max_duration:g}"
            f" s) written to {where} as 'KIND ID' lines\n"
        )
    err.write(
        "  api key: "
        + (
            f"from {key_source}"
            if key_source
            else "'fake-key' (set CAMB_API_KEY or --api-key to choose)"
        )
        + "\n"
    )
    err.write(f"  {_fake_server_hint(url, key, key_source, args.ids_file, args.tasks)}\n")
    err.flush()
    config = uvicorn.Config(api, log_level="warning", lifespan="off", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
    return EXIT_OK


def _fake_server_hint(
    url: str, key: str, key_source: str | None, ids_file: str | None, tasks: int
) -> str:
    """A command that works when pasted into the shell that started the fake server.

    The key is spelled out when it is the fake's default or was typed on the command line;
    a key taken from the environment is not printed (it may be a real one), and the pasted
    command finds it in the same environment.
    """
    env = "" if key_source == "CAMB_API_KEY" else f"CAMB_API_KEY={shlex.quote(key)} "
    env += f"CAMB_BASE_URL={shlex.quote(url)}"
    if not tasks:
        return f"clients use it with: {env} (e.g. {env} camb-async status KIND ID)"
    command = f"{env} camb-async watch --from-file "
    if ids_file:
        return f"try: {command}{shlex.quote(ids_file)}"
    return f"try: save the 'KIND ID' lines printed on stdout as ids.txt, then: {command}ids.txt"
