"""``camb-async status``: one status check of each task (``gather_statuses(wait=False)``)."""

from __future__ import annotations

import argparse
import json

from .._models import StatusResult
from ..polling._stream import gather_statuses
from ._common import (
    _STATUS_STYLES,
    EXIT_ERRORS,
    EXIT_OK,
    RequestMeter,
    _auth_failed,
    _auth_in,
    _client,
    _console,
    _print_json,
    _result_json,
    _targets,
)

# ----------------------------------------------------------------------------- status


async def _cmd_status(args: argparse.Namespace) -> int:
    targets = _targets(args)
    meter = RequestMeter()
    async with _client(args, meter) as client:
        handles = [client.task(kind, task_id) for kind, task_id in targets]
        try:
            results = await gather_statuses(client, handles, wait=False, return_exceptions=True)
        except Exception as exc:
            auth = _auth_in(exc)
            if auth is None:
                raise
            return _auth_failed(args, auth)
    errors = sum(1 for r in results if isinstance(r, BaseException))
    if args.json:
        _print_json(
            {
                "results": [
                    _result_json(r, k, i) for r, (k, i) in zip(results, targets, strict=True)
                ],
                "requests": meter.requests,
            }
        )
    else:
        from rich.table import Table
        from rich.text import Text

        # Text, not markup: ids and server-sent strings may contain "[...]".
        table = Table("kind", "task id", "status", "run id", "detail")
        for r, (kind, task_id) in zip(results, targets, strict=True):
            if isinstance(r, StatusResult):
                style = _STATUS_STYLES.get(r.status.value, "")
                detail = r.exception_reason or (
                    r.message
                    if isinstance(r.message, str)
                    else json.dumps(r.message)
                    if r.message
                    else ""
                )
                table.add_row(
                    kind.value,
                    Text(task_id),
                    Text(r.raw_status, style=style),
                    "" if r.run_id is None else str(r.run_id),
                    Text(detail or ""),
                )
            else:
                table.add_row(
                    kind.value, Text(task_id), Text(type(r).__name__, style="red"), "", Text(str(r))
                )
        _console().print(table)
    return EXIT_ERRORS if errors else EXIT_OK
