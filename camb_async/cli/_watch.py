"""``camb-async watch``: follow tasks until they end (``iter_statuses``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import Any

from .._models import StatusResult, TaskKind
from ..polling._handle import TaskHandle
from ..polling._stream import iter_statuses
from ._common import (
    EXIT_ERRORS,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    RequestMeter,
    _auth_failed,
    _auth_in,
    _client,
    _print_json,
    _result_json,
    _targets,
)
from ._display import Progress, _plain_line, _run_with_display, _use_live
from ._fleet import _cmd_watch_list

# ----------------------------------------------------------------------------- watch


async def _cmd_watch(args: argparse.Namespace) -> int:
    if args.redis is not None:
        return await _cmd_watch_list(args)
    targets = _targets(args)
    meter = RequestMeter()
    live = _use_live(args)
    plain = not live and not args.json
    final: dict[tuple[TaskKind, str], StatusResult | BaseException] = {}
    async with _client(args, meter) as client:
        handles: list[TaskHandle[Any]] = [client.task(k, i) for k, i in targets]
        budget = getattr(client.budget, "rate", None)
        progress = Progress(
            len(set(targets)), budget, meter, f"camb-async watch: {len(set(targets))} tasks"
        )

        async def body() -> None:
            async with iter_statuses(
                client,
                handles,
                timeout=args.timeout,
                return_exceptions=True,
                on_update=progress.update,
            ) as stream:
                async for item in stream:
                    # errors carry kind and task_id, refused ids' ValueErrors included
                    final[(getattr(item, "kind"), getattr(item, "task_id"))] = item  # noqa: B009
                    progress.finish(item)
                    if plain:
                        sys.stdout.write(_plain_line(item) + "\n")
                        sys.stdout.flush()

        try:
            await _run_with_display(
                progress, body, live=live, plain_every=10.0 if plain else None, out=sys.stdout
            )
        except Exception as exc:
            auth = _auth_in(exc)
            if auth is None:
                raise
            return _auth_failed(args, auth)

    items = [final[key] for key in dict.fromkeys(targets)]
    code = _watch_exit_code(items)
    if args.json:
        _print_json(
            {
                "results": [_result_json(item) for item in items],
                "counts": progress.counts(),
                "requests": meter.requests,
                "retries": meter.retries,
                "elapsed": round(progress.elapsed(), 3),
                "exit_code": code,
            }
        )
    else:
        sys.stdout.write(progress.line() + f" | exit {code}\n")
    return code


def _watch_exit_code(items: Iterable[StatusResult | BaseException]) -> int:
    failed = errors = unfinished = False
    for item in items:
        if not isinstance(item, StatusResult):
            errors = True
        elif not item.is_terminal:
            unfinished = True
        elif not item.is_success:
            failed = True
    if failed:
        return EXIT_FAILED
    if errors:
        return EXIT_ERRORS
    if unfinished:
        return EXIT_TIMEOUT
    return EXIT_OK
