"""The live progress display of ``watch`` and ``demo`` (rich), and the plain lines."""

from __future__ import annotations

import argparse
import collections
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import anyio

from .._models import StatusResult, TaskKind
from ._common import _STATUS_STYLES, RequestMeter, _console

# ----------------------------------------------------------------------------- progress


class Progress:
    """Live counts per status, fed by ``on_update``; rendered by rich or as plain lines."""

    finished: int
    errors: int
    started: float
    peak_rate: int

    def __init__(self, total: int, budget: float | None, meter: RequestMeter, title: str) -> None:
        self.total = total
        self.budget = budget
        self.meter = meter
        self.title = title
        self.latest: dict[tuple[TaskKind, str], str] = {}
        self.finished = 0
        self.errors = 0
        self.started = time.monotonic()
        self.peak_rate = 0

    def update(self, result: StatusResult) -> None:
        """Note an observed status.

        Args:
            result: the status.
        """
        self.latest[(result.kind, result.task_id)] = result.raw_status

    def finish(self, item: StatusResult | BaseException) -> None:
        """Note a task's final status or error.

        Args:
            item: the final status or error.
        """
        self.finished += 1
        if not isinstance(item, StatusResult):
            self.errors += 1
            kind, task_id = getattr(item, "kind", None), getattr(item, "task_id", None)
            if kind is not None and task_id is not None:
                self.latest.pop((kind, task_id), None)

    def counts(self) -> dict[str, int]:
        """Tasks per status."""
        counts = collections.Counter(self.latest.values())
        unseen = self.total - len(self.latest) - self.errors
        if unseen > 0:
            counts["not yet polled"] = unseen
        if self.errors:
            counts["could not check"] = self.errors
        return dict(counts)

    def elapsed(self) -> float:
        """Seconds since the start."""
        return time.monotonic() - self.started

    def rate(self) -> int:
        """Requests in the last second."""
        rate = self.meter.rate()
        self.peak_rate = max(self.peak_rate, rate)
        return rate

    def line(self) -> str:
        """A one-line summary."""
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts().items()))
        budget = "unlimited" if self.budget is None else f"{self.budget:g}"
        failed = f" ({self.meter.failures} failed)" if self.meter.failures else ""
        return (
            f"[{self.elapsed():6.1f}s] {self.finished}/{self.total} done ({counts}) "
            f"| {self.rate()} req/s of {budget} | {self.meter.requests} requests{failed}"
        )

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        grid = Table.grid(padding=(0, 2))
        grid.add_column(justify="right")
        grid.add_column()
        for status, n in sorted(self.counts().items()):
            grid.add_row(
                Text(str(n), style="bold"), Text(status, style=_STATUS_STYLES.get(status, "dim"))
            )
        rate = self.rate()
        budget = "unlimited" if self.budget is None else f"{self.budget:g}"
        done = Text.assemble(
            (f"{self.finished}/{self.total} done", "bold"),
            "   elapsed ",
            (f"{self.elapsed():.1f}s", "bold"),
        )
        stats = Text.assemble(
            (f"{rate} req/s", "bold cyan"),
            f" (budget {budget}, peak {self.peak_rate})   ",
            f"{self.meter.requests} requests",
            (f" ({self.meter.failures} failed: see -v)" if self.meter.failures else "", "red"),
        )
        bar = ProgressBar(total=max(self.total, 1), completed=self.finished, width=50)
        return Group(Text(self.title, style="bold"), bar, done, stats, grid)


async def _run_with_display(
    progress: Progress,
    body: Callable[[], Any],
    *,
    live: bool,
    plain_every: float | None,
    out: TextIO,
) -> Any:
    """Run ``body()`` while refreshing the display from the event loop (no extra thread).

    ``body``'s own exception is re-raised as is, not inside an exception group.
    """
    result: Any = None
    error: Exception | None = None

    async def refresh(display: Any) -> None:
        while True:
            if display is not None:
                display.refresh()
                await anyio.sleep(0.25)
            elif plain_every is not None:
                await anyio.sleep(plain_every)
                out.write(progress.line() + "\n")
                out.flush()
            else:
                return

    async def run(display: Any) -> None:
        nonlocal result, error
        async with anyio.create_task_group() as tg:
            tg.start_soon(refresh, display)
            try:
                result = await body()
            except Exception as exc:
                error = exc
            finally:
                tg.cancel_scope.cancel()

    if live:
        from rich.live import Live

        with Live(progress, console=_console(), auto_refresh=False, transient=False) as display:
            await run(display)
            display.refresh()
    else:
        await run(None)
    if error is not None:
        raise error
    return result


def _use_live(args: argparse.Namespace) -> bool:
    return not args.json and not args.plain and sys.stdout.isatty()


def _plain_line(item: StatusResult | BaseException) -> str:
    if isinstance(item, StatusResult):
        extra = f" run_id={item.run_id}" if item.run_id is not None else ""
        if item.exception_reason:
            extra += f" reason={item.exception_reason!r}"
        return f"{item.raw_status:<16} {item.kind.value:<10} {item.task_id}{extra}"
    kind = getattr(item, "kind", None)
    return (
        f"{'CHECK FAILED':<16} {kind.value if kind else '?':<10} "
        f"{getattr(item, 'task_id', '?')} {type(item).__name__}: {item}"
    )
