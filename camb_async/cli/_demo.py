"""``camb-async demo``: the client against an in-process fake API, no key, no network."""

from __future__ import annotations

import argparse
import collections
import random
import secrets
import sys
import time
from typing import Any

from .._budget import RateBudget
from .._client import AsyncCambClient
from .._models import StatusResult, TaskKind
from ..polling._stream import gather_statuses
from ._common import EXIT_FAILED, EXIT_OK, RequestMeter, UsageError, _console, _print_json
from ._display import Progress, _run_with_display, _use_live
from ._scenario import REAL_DURATIONS, scaled_policy, script_tasks

# ----------------------------------------------------------------------------- demo


async def _cmd_demo(args: argparse.Namespace) -> int:
    from ..testing import TRANSIENT_FAULTS, FakeCambAPI, serve_in_thread

    if args.tasks < 1 or args.duration <= 0 or args.rate_limit <= 0:
        raise UsageError("--tasks, --duration and --rate-limit must be positive")
    rng = random.Random(args.seed)
    key = secrets.token_urlsafe(16)  # a throwaway key for the loopback fake; never shown
    # The server enforces the same limit as the client's budget, as the real API would.
    # Injected faults are 5xx only: 429s come from the server's own limiter, as in real life.
    faults = [f for f in TRANSIENT_FAULTS if f.status != 429]
    api = FakeCambAPI(
        api_key=key,
        clock=time.monotonic,
        rate_limit=args.rate_limit,
        fault_rate=args.fault_rate,
        faults=faults,
        seed=args.seed,
    )
    # Compress real durations so the longest dub ends at ~80 % of the target wall time.
    scale = args.duration * 0.8 / REAL_DURATIONS[TaskKind.DUB][1]
    live = _use_live(args)
    plain = not live and not args.json
    out = sys.stdout
    with serve_in_thread(api) as url:
        if plain:
            out.write(
                f"camb-async demo: FakeCambAPI on {url} (loopback, no API key needed); "
                f"{args.tasks} tasks, budget {args.rate_limit:g} requests/s\n"
            )
            out.flush()
        meter = RequestMeter()
        budget = RateBudget(args.rate_limit, args.max_concurrency, margin=args.margin)
        async with AsyncCambClient(
            api_key=key, base_url=url, budget=budget, hooks=meter.hooks()
        ) as client:
            scripted = script_tasks(
                api,
                args.tasks,
                scale=scale,
                rng=rng,
                error_rate=args.error_rate,
                timeout_rate=args.timeout_rate,
                created_at=time.monotonic(),
            )
            progress = Progress(
                len(scripted),
                args.rate_limit,
                meter,
                f"camb-async demo: {len(scripted)} tasks against FakeCambAPI on {url}",
            )
            final: dict[tuple[TaskKind, str], StatusResult | BaseException] = {}
            # One poller for every kind (each with its own time-scaled schedule), so first
            # polls of one kind are never starved by re-polls of another.
            handles = [client.task(kind, task_id) for kind, task_id, _ in scripted]
            policies = {kind: scaled_policy(kind, scale) for kind in {k for k, _, _ in scripted}}

            def on_update(result: StatusResult) -> None:
                progress.update(result)
                if result.is_terminal:
                    progress.finish(result)

            async def body() -> None:
                results = await gather_statuses(
                    client, handles, policy=policies, return_exceptions=True, on_update=on_update
                )
                for (kind, task_id, _), item in zip(scripted, results, strict=True):
                    final[(kind, task_id)] = item
                    if not isinstance(item, StatusResult):
                        progress.finish(item)

            started = time.monotonic()
            await _run_with_display(
                progress, body, live=live, plain_every=2.0 if plain else None, out=out
            )
            wall = time.monotonic() - started

    summary, matches = _demo_summary(api, meter, scripted, final, args, wall, scale)
    if args.json:
        _print_json(summary)
    else:
        _print_demo_summary(summary, scripted)
    return EXIT_OK if matches == len(scripted) else EXIT_FAILED


def _demo_summary(
    api: Any,
    meter: RequestMeter,
    scripted: list[tuple[TaskKind, str, str]],
    final: dict[tuple[TaskKind, str], StatusResult | BaseException],
    args: argparse.Namespace,
    wall: float,
    scale: float,
) -> tuple[dict[str, Any], int]:
    """The demo's figures, and how many tasks ended as scripted."""
    statuses = collections.Counter(
        item.status.value if isinstance(item, StatusResult) else type(item).__name__
        for item in final.values()
    )
    expected = collections.Counter(status for _, _, status in scripted)
    matches = 0
    for kind, task_id, status in scripted:
        item = final.get((kind, task_id))
        if isinstance(item, StatusResult) and item.status.value == status:
            matches += 1
    log = api.log
    summary = {
        "tasks": len(scripted),
        "final_statuses": dict(sorted(statuses.items())),
        "scripted_statuses": dict(sorted(expected.items())),
        "matching_script": matches,
        "requests": len(log),
        "client_requests": meter.requests,
        "requests_per_task": round(len(log) / len(scripted), 2),
        "http_429": sum(1 for r in log if r.status == 429),
        "injected_faults": sum(1 for r in log if r.fault == "fault"),
        "retries": meter.retries,
        "peak_requests_per_second": api.peak_per_window(1.0),
        "budget_requests_per_second": args.rate_limit,
        "wall_seconds": round(wall, 2),
        "time_scale": round(scale, 5),
    }
    return summary, matches


def _print_demo_summary(s: dict[str, Any], scripted: list[tuple[TaskKind, str, str]]) -> None:
    from rich.table import Table

    console = _console()
    table = Table(title="camb-async demo summary", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row(
        "tasks",
        f"{s['tasks']} ("
        + ", ".join(
            f"{n} {k.value}"
            for k, n in sorted(collections.Counter(k for k, _, _ in scripted).items())
        )
        + ")",
    )
    table.add_row("final statuses", ", ".join(f"{k} {v}" for k, v in s["final_statuses"].items()))
    table.add_row("as scripted", f"{s['matching_script']}/{s['tasks']}")
    table.add_row(
        "requests made", f"{s['requests']} (server log; client counted {s['client_requests']})"
    )
    table.add_row("requests per task", f"{s['requests_per_task']:.2f}")
    table.add_row(
        "retries",
        f"{s['retries']} ({s['injected_faults']} injected faults, {s['http_429']} answers 429)",
    )
    table.add_row(
        "peak req/s",
        f"{s['peak_requests_per_second']} in any 1 s at the server "
        f"(budget {s['budget_requests_per_second']:g})",
    )
    table.add_row("wall time", f"{s['wall_seconds']:.1f} s (real durations x {s['time_scale']:g})")
    console.print(table)
