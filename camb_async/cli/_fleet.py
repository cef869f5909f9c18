"""``camb-async worker`` and ``watch --redis``: a fleet watch list on Redis."""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from typing import Any

import anyio

from .._errors import AuthenticationError
from ._common import EXIT_OK, RequestMeter, UsageError, _auth_failed, _client, _print_json

# ----------------------------------------------------------------------------- fleet (Redis)


def _watch_list(args: argparse.Namespace, **options: Any) -> Any:
    """The ``RedisWatchList`` named by ``--redis`` and ``--name``."""
    from ..redis import RedisWatchList

    if not args.name:
        raise UsageError("--redis needs --name (the watch list's name)")
    try:
        return RedisWatchList.from_url(args.redis, name=args.name, **options)
    except ValueError as exc:
        raise UsageError(f"--redis/--name: {exc}") from None


async def _cmd_watch_list(args: argparse.Namespace) -> int:
    """``watch --redis URL --name NAME``: the watch list's figures, refreshed every second."""
    if args.kind or args.ids or args.from_file:
        raise UsageError("give task ids or --redis/--name (a watch list's figures), not both")
    watch = _watch_list(args)
    async with watch:
        with anyio.move_on_after(math.inf if args.timeout is None else args.timeout):
            while True:
                stats = await watch.stats()
                if args.json:
                    _print_json({"watch_list": args.name, **stats.as_dict()})
                    return EXIT_OK
                sys.stdout.write(
                    f"{args.name}: {stats.tracked} tracked, {stats.due} due (oldest waiting "
                    f"{stats.oldest_due_age:.1f}s), {stats.leased} leased, "
                    f"{stats.completed} completed, {stats.events} events\n"
                )
                sys.stdout.flush()
                await anyio.sleep(1.0)
    return EXIT_OK


async def _cmd_worker(args: argparse.Namespace) -> int:
    """``worker``: poll a Redis watch list under a fleet budget until interrupted."""
    from ..redis import RedisRateBudget

    watch = _watch_list(args, lease_ttl=args.lease_ttl)
    budget = None
    if args.rate_limit > 0:
        budget = RedisRateBudget.from_url(
            args.redis,
            rate=args.rate_limit,
            name=args.budget_name or args.name,
            local_concurrency=args.max_concurrency,
        )
    meter = RequestMeter()
    started = time.monotonic()
    async with watch, contextlib.AsyncExitStack() as stack:
        if budget is not None:
            await stack.enter_async_context(budget)
        client = await stack.enter_async_context(_client(args, meter, budget))
        try:
            await watch.run(client, until_empty=args.until_empty)
        except AuthenticationError as exc:
            return _auth_failed(args, exc)
    summary = {
        "watch_list": args.name,
        "polls": watch.polls,
        "events_written": watch.events_written,
        "requests": meter.requests,
        "elapsed": round(time.monotonic() - started, 3),
    }
    if args.json:
        _print_json(summary)
    else:
        sys.stdout.write(" ".join(f"{k}={v}" for k, v in summary.items()) + "\n")
    return EXIT_OK
