"""The ``camb-async`` command: check, watch, demo, and a fake server for local development.

Why a command at all: the first thing a new user wants is to see the client work (``demo``,
no key, no network), and the second is to check on jobs from a shell or a CI step (``status``,
``watch`` with exit codes a script can branch on). Polling is never re-implemented here:
``status`` is ``gather_statuses(wait=False)``, ``watch`` and ``demo`` are ``iter_statuses`` /
``gather_statuses``, and the request rate shown comes from ``RequestHooks``.

Exit codes (``status`` and ``watch``; precedence from top to bottom):

====  ===================================================================================
 3    authentication failed (401/403), or no API key was given
 1    ``watch``: at least one task ended ERROR, TIMEOUT or PAYMENT_REQUIRED
 5    at least one task could not be checked (unknown id, invalid request, server or
      connection failures that outlasted the retries)
 4    ``watch --timeout``: the deadline passed with tasks still unfinished
 0    ``watch``: every task succeeded; ``status``: every task was checked
 2    bad command line or ids file (any command)
130   interrupted (Ctrl-C; any command)
 70   internal error: a bug in camb-async (traceback on stderr; any command)
====  ===================================================================================

``EXIT_CODES`` holds this table; docs/cli.md and ``--help`` show the same. Bad input never
prints a traceback: one line on stderr, or with ``--json`` one object on stdout,
``{"error": NAME, "detail": MESSAGE, "exit_code": CODE}``.

The API key comes from ``--api-key`` or the ``CAMB_API_KEY`` environment variable and is
never printed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import math
import os
import random
import secrets
import shlex
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

import anyio
import httpx

from ._budget import RateBudget
from ._client import AsyncCambClient
from ._errors import AuthenticationError, CambError
from ._handle import TaskHandle
from ._hooks import RequestHooks
from ._models import StatusResult, TaskKind, TaskStatus, converter
from ._validation import check_task_id
from ._version import __version__
from .polling._policy import PollPolicy
from .polling._stream import gather_statuses, iter_statuses

__all__ = [
    "EXIT_AUTH",
    "EXIT_ERRORS",
    "EXIT_CODES",
    "EXIT_FAILED",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "main",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_TIMEOUT = 4
EXIT_ERRORS = 5
EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 70  # EX_SOFTWARE (sysexits.h)

#: code -> meaning, in precedence order for ``status``/``watch``; README and ``--help`` match.
EXIT_CODES: dict[int, str] = {
    EXIT_AUTH: "authentication failed (401/403), or no API key",
    EXIT_FAILED: "watch: a task ended ERROR, TIMEOUT or PAYMENT_REQUIRED",
    EXIT_ERRORS: "a task could not be checked (unknown id, or failures that outlasted the "
                 "retries)",
    EXIT_TIMEOUT: "watch --timeout: the deadline passed with tasks unfinished",
    EXIT_OK: "watch: every task succeeded; status: every task was checked",
    EXIT_USAGE: "bad command line or ids file",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
    EXIT_INTERNAL: "internal error: a bug in camb-async (traceback on stderr)",
}

KINDS = [k.value for k in TaskKind]
_STATUS_STYLES = {
    "SUCCESS": "green",
    "PENDING": "yellow",
    "ERROR": "red",
    "TIMEOUT": "magenta",
    "PAYMENT_REQUIRED": "red",
    "UNKNOWN": "cyan",
}

logger: logging.Logger = logging.getLogger("camb_async")


class UsageError(Exception):
    """A problem with the command line or its input files (exit code 2)."""

    def __init__(self, message: str, prog: str | None = None) -> None:
        super().__init__(message)
        self.prog = prog  # the (sub)command whose syntax was wrong, when argparse knows it


class MissingKeyError(Exception):
    """No API key anywhere (exit code 3, like a rejected key)."""


# ----------------------------------------------------------------------------- helpers


class RequestMeter:
    """Counts the client's HTTP attempts through ``RequestHooks``; O(1) per request."""

    requests: int
    throttles: int
    retries: int
    failures: int

    def __init__(self) -> None:
        self.requests = 0
        self.throttles = 0
        self.retries = 0
        self.failures = 0  # attempts with no answer or a 5xx/429 one
        self._recent: collections.deque[float] = collections.deque()

    def hooks(self) -> RequestHooks:
        """The ``RequestHooks`` that feed this meter."""
        return RequestHooks(on_request_start=self._start, on_request_end=self._end,
                            on_retry=self._retry, on_throttle=self._throttle)

    def _start(self, method: str, path: str) -> None:
        self.requests += 1
        self._recent.append(time.monotonic())

    def _end(self, method: str, path: str, duration: float, status: int | None) -> None:
        if status is None or status == 429 or status >= 500:
            self.failures += 1

    def _retry(self, method: str, path: str, attempt: int, delay: float,
               error: BaseException) -> None:
        self.retries += 1

    def _throttle(self, method: str, path: str, retry_after: float | None) -> None:
        self.throttles += 1

    def rate(self) -> int:
        """Requests started in the last second."""
        edge = time.monotonic() - 1.0
        recent = self._recent
        while recent and recent[0] <= edge:
            recent.popleft()
        return len(recent)


def _result_json(item: StatusResult | BaseException, kind: TaskKind | None = None,
                 task_id: str | None = None) -> dict[str, Any]:
    if isinstance(item, StatusResult):
        out: dict[str, Any] = converter.unstructure(item)
        out["kind"] = item.kind.value
        out["status"] = item.status.value
        return out
    item_kind = getattr(item, "kind", None) or kind
    return {
        "kind": item_kind.value if item_kind is not None else None,
        "task_id": getattr(item, "task_id", None) or task_id,
        "error": type(item).__name__,
        "detail": str(item),
    }


def _read_ids(path: str, kind: TaskKind | None) -> list[tuple[TaskKind, str]]:
    """Lines of ``ID`` (the command's KIND applies) or ``KIND ID``; ``#`` starts a comment.

    UTF-8 (a leading byte-order mark is ignored); anything else is a usage error, as is a
    line that does not parse or an id the API could not be asked about.
    """
    try:
        if path == "-":
            stdin = sys.stdin
            buffer = getattr(stdin, "buffer", None)
            data: bytes | str = buffer.read() if buffer is not None else stdin.read()
        else:
            data = Path(path).read_bytes()
        text = data.decode("utf-8-sig") if isinstance(data, bytes) else data
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1 if isinstance(data, bytes) else "?"
        raise UsageError(f"{path}:{line}: not UTF-8 text (byte {exc.object[exc.start]:#04x} "
                         f"at offset {exc.start})") from None
    out: list[tuple[TaskKind, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{path}:{number}"
        if len(fields) == 2:
            out.append((_kind(fields[0], where), _check_id(fields[1], where)))
        elif len(fields) == 1 and kind is not None:
            out.append((kind, _check_id(fields[0], where)))
        else:
            raise UsageError(f"{where}: expected 'KIND ID' or 'ID' (with a KIND "
                             f"argument), got {line.strip()!r}")
    return out


def _check_id(task_id: str, where: str | None = None) -> str:
    """``task_id`` if the client can ask about it, else a ``UsageError`` saying why.

    Checked before any request, so that one bad id does not fail a run half way. A lone
    surrogate is what undecodable bytes in argv or a file name become: it cannot be sent.
    """
    prefix = f"{where}: " if where else ""
    try:
        task_id.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{prefix}task id {task_id[:60]!r} is not valid UTF-8 text") from None
    try:
        return check_task_id(task_id)
    except ValueError as exc:
        raise UsageError(f"{prefix}invalid task id: {exc}") from None


def _kind(word: str, where: str | None = None) -> TaskKind:
    try:
        return TaskKind(word)
    except ValueError:
        prefix = f"{where}: " if where else ""
        raise UsageError(f"{prefix}unknown task kind {word[:60]!r}; expected one of "
                         f"{', '.join(KINDS)}") from None


def _targets(args: argparse.Namespace) -> list[tuple[TaskKind, str]]:
    kind = _kind(args.kind) if args.kind is not None else None
    targets: list[tuple[TaskKind, str]] = []
    if args.ids:
        if kind is None:
            raise UsageError("task ids need a KIND first, e.g. `camb-async status dub ID`")
        targets += [(kind, _check_id(task_id)) for task_id in args.ids]
    if getattr(args, "from_file", None):
        from_file = _read_ids(args.from_file, kind)
        if not from_file:
            raise UsageError(f"no task ids in {args.from_file}")
        targets += from_file
    if not targets:
        raise UsageError("no task ids given")
    return targets


def _client(args: argparse.Namespace, meter: RequestMeter, budget: Any = None
            ) -> AsyncCambClient:
    if args.base_url is not None and not args.base_url.strip():
        raise UsageError("--base-url is empty")
    key = args.api_key if args.api_key is not None else os.environ.get("CAMB_API_KEY")
    if key is not None and not key.isascii():  # HTTP headers carry ASCII; never echo the key
        source = "--api-key" if args.api_key is not None else "CAMB_API_KEY"
        raise UsageError(f"the API key in {source} has non-ASCII characters")
    try:
        return AsyncCambClient(
            api_key=args.api_key,
            base_url=args.base_url,
            rate_limit=args.rate_limit if args.rate_limit > 0 else None,
            max_concurrency=args.max_concurrency,
            budget=budget,
            allow_insecure=args.allow_insecure,
            hooks=meter.hooks(),
        )
    except httpx.InvalidURL as exc:  # the base URL did not parse (port, host, characters)
        source = "--base-url" if args.base_url is not None else "CAMB_BASE_URL"
        raise UsageError(f"{source} is not a valid URL: {exc}") from None
    except ValueError as exc:
        message = str(exc)
        if "no API key" in message:
            raise MissingKeyError("no API key: set CAMB_API_KEY or pass --api-key") from None
        # The library speaks to callers in keyword arguments; here the switch is a flag.
        raise UsageError(message.replace("pass allow_insecure=True",
                                         "pass --allow-insecure")) from None


def _auth_in(exc: BaseException) -> AuthenticationError | None:
    """The AuthenticationError in ``exc`` or in an exception group around it."""
    if isinstance(exc, AuthenticationError):
        return exc
    for inner in getattr(exc, "exceptions", ()):
        found = _auth_in(inner)
        if found is not None:
            return found
    return None


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _print_json(document: Any, out: TextIO | None = None) -> None:
    (out or sys.stdout).write(json.dumps(document, indent=2) + "\n")


# ----------------------------------------------------------------------------- status


async def _cmd_status(args: argparse.Namespace) -> int:
    targets = _targets(args)
    meter = RequestMeter()
    async with _client(args, meter) as client:
        handles = [client.task(kind, task_id) for kind, task_id in targets]
        try:
            results = await gather_statuses(client, handles, wait=False,
                                            return_exceptions=True)
        except Exception as exc:
            auth = _auth_in(exc)
            if auth is None:
                raise
            return _auth_failed(args, auth)
    errors = sum(1 for r in results if isinstance(r, BaseException))
    if args.json:
        _print_json({"results": [_result_json(r, k, i) for r, (k, i) in zip(results, targets,
                                                                                strict=True)],
                     "requests": meter.requests})
    else:
        from rich.table import Table
        from rich.text import Text

        # Text, not markup: ids and server-sent strings may contain "[...]".
        table = Table("kind", "task id", "status", "run id", "detail")
        for r, (kind, task_id) in zip(results, targets, strict=True):
            if isinstance(r, StatusResult):
                style = _STATUS_STYLES.get(r.status.value, "")
                detail = r.exception_reason or (r.message if isinstance(r.message, str) else
                                                json.dumps(r.message) if r.message else "")
                table.add_row(kind.value, Text(task_id), Text(r.raw_status, style=style),
                              "" if r.run_id is None else str(r.run_id), Text(detail or ""))
            else:
                table.add_row(kind.value, Text(task_id), Text(type(r).__name__, style="red"),
                              "", Text(str(r)))
        _console().print(table)
    return EXIT_ERRORS if errors else EXIT_OK


def _auth_failed(args: argparse.Namespace, exc: AuthenticationError) -> int:
    message = f"authentication failed (HTTP {exc.status_code}): check CAMB_API_KEY / --api-key"
    return _report(EXIT_AUTH, "AuthenticationError", message, as_json=args.json)


def _report(code: int, error: str, detail: str, *, as_json: bool,
            command: str = "camb-async") -> int:
    """Tell the user why the command stops: one line on stderr, or one JSON object on stdout.

    The object is ``{"error": NAME, "detail": MESSAGE, "exit_code": CODE}`` (documented in the
    README); NAME is ``UsageError``, ``MissingKeyError``, ``AuthenticationError``,
    ``KeyboardInterrupt``, ``InternalError`` or the name of the ``CambError`` that ended it.
    """
    if as_json:
        _print_json({"error": error, "detail": detail, "exit_code": code})
    else:
        sys.stderr.write(f"{command}: {detail}\n")
    return code


# ----------------------------------------------------------------------------- progress


class Progress:
    """Live counts per status, fed by ``on_update``; rendered by rich or as plain lines."""

    finished: int
    errors: int
    started: float
    peak_rate: int

    def __init__(self, total: int, budget: float | None, meter: RequestMeter,
                 title: str) -> None:
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
        return (f"[{self.elapsed():6.1f}s] {self.finished}/{self.total} done ({counts}) "
                f"| {self.rate()} req/s of {budget} | {self.meter.requests} requests{failed}")

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        grid = Table.grid(padding=(0, 2))
        grid.add_column(justify="right")
        grid.add_column()
        for status, n in sorted(self.counts().items()):
            grid.add_row(Text(str(n), style="bold"),
                         Text(status, style=_STATUS_STYLES.get(status, "dim")))
        rate = self.rate()
        budget = "unlimited" if self.budget is None else f"{self.budget:g}"
        done = Text.assemble((f"{self.finished}/{self.total} done", "bold"), "   elapsed ",
                             (f"{self.elapsed():.1f}s", "bold"))
        stats = Text.assemble(
            (f"{rate} req/s", "bold cyan"), f" (budget {budget}, peak {self.peak_rate})   ",
            f"{self.meter.requests} requests",
            (f" ({self.meter.failures} failed: see -v)" if self.meter.failures else "", "red"),
        )
        bar = ProgressBar(total=max(self.total, 1), completed=self.finished, width=50)
        return Group(Text(self.title, style="bold"), bar, done, stats, grid)


async def _run_with_display(progress: Progress, body: Callable[[], Any], *, live: bool,
                            plain_every: float | None, out: TextIO) -> Any:
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
        progress = Progress(len(set(targets)), budget, meter,
                            f"camb-async watch: {len(set(targets))} tasks")

        async def body() -> None:
            async with iter_statuses(client, handles, timeout=args.timeout,
                                     return_exceptions=True,
                                     on_update=progress.update) as stream:
                async for item in stream:
                    # errors carry kind and task_id, refused ids' ValueErrors included
                    final[(getattr(item, "kind"), getattr(item, "task_id"))] = item  # noqa: B009
                    progress.finish(item)
                    if plain:
                        sys.stdout.write(_plain_line(item) + "\n")
                        sys.stdout.flush()

        try:
            await _run_with_display(progress, body, live=live,
                                    plain_every=10.0 if plain else None, out=sys.stdout)
        except Exception as exc:
            auth = _auth_in(exc)
            if auth is None:
                raise
            return _auth_failed(args, auth)

    items = [final[key] for key in dict.fromkeys(targets)]
    code = _watch_exit_code(items)
    if args.json:
        _print_json({
            "results": [_result_json(item) for item in items],
            "counts": progress.counts(),
            "requests": meter.requests,
            "retries": meter.retries,
            "elapsed": round(progress.elapsed(), 3),
            "exit_code": code,
        })
    else:
        sys.stdout.write(progress.line() + f" | exit {code}\n")
    return code


# ----------------------------------------------------------------------------- fleet (Redis)


def _watch_list(args: argparse.Namespace, **options: Any) -> Any:
    """The ``RedisWatchList`` named by ``--redis`` and ``--name``."""
    from .redis import RedisWatchList

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
                    f"{stats.completed} completed, {stats.events} events\n")
                sys.stdout.flush()
                await anyio.sleep(1.0)
    return EXIT_OK


async def _cmd_worker(args: argparse.Namespace) -> int:
    """``worker``: poll a Redis watch list under a fleet budget until interrupted."""
    from .redis import RedisRateBudget

    watch = _watch_list(args, lease_ttl=args.lease_ttl)
    budget = None
    if args.rate_limit > 0:
        budget = RedisRateBudget.from_url(args.redis, rate=args.rate_limit,
                                          name=args.budget_name or args.name,
                                          local_concurrency=args.max_concurrency)
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
    summary = {"watch_list": args.name, "polls": watch.polls,
               "events_written": watch.events_written, "requests": meter.requests,
               "elapsed": round(time.monotonic() - started, 3)}
    if args.json:
        _print_json(summary)
    else:
        sys.stdout.write(" ".join(f"{k}={v}" for k, v in summary.items()) + "\n")
    return EXIT_OK


def _fleet_options(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("--redis", metavar="URL", required=required, default=None,
                   help="Redis URL of the fleet's watch list (rediss:// for TLS)")
    p.add_argument("--name", default=None, required=required,
                   help="the watch list's name (the web tier and every worker use the same)")


def _plain_line(item: StatusResult | BaseException) -> str:
    if isinstance(item, StatusResult):
        extra = f" run_id={item.run_id}" if item.run_id is not None else ""
        if item.exception_reason:
            extra += f" reason={item.exception_reason!r}"
        return f"{item.raw_status:<16} {item.kind.value:<10} {item.task_id}{extra}"
    kind = getattr(item, "kind", None)
    return (f"{'CHECK FAILED':<16} {kind.value if kind else '?':<10} "
            f"{getattr(item, 'task_id', '?')} {type(item).__name__}: {item}")


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


# ----------------------------------------------------------------------------- scripted tasks

#: Realistic durations in seconds (how long such jobs take on the real service, roughly):
#: TTS and translation are done in seconds, a transcription in a minute or few, a dub in
#: several minutes. The demo compresses these (and the polling schedules) by one factor.
REAL_DURATIONS: dict[TaskKind, tuple[float, float]] = {
    TaskKind.TTS: (4.0, 40.0),
    TaskKind.TRANSLATION: (4.0, 30.0),
    TaskKind.TRANSCRIPTION: (30.0, 240.0),
    TaskKind.DUB: (120.0, 900.0),
}
DEMO_MIX: dict[TaskKind, float] = {
    TaskKind.TTS: 0.3,
    TaskKind.TRANSLATION: 0.3,
    TaskKind.TRANSCRIPTION: 0.2,
    TaskKind.DUB: 0.2,
}
_ERROR_REASONS = ("source media could not be decoded", "no speech detected",
                  "unsupported language pair")


def script_tasks(api: Any, n: int, *, scale: float, rng: random.Random, error_rate: float,
                 timeout_rate: float, created_at: float | None,
                 kinds: Sequence[TaskKind] | None = None) -> list[tuple[TaskKind, str, str]]:
    """Add ``n`` tasks to a FakeCambAPI; returns ``(kind, task_id, final_status)`` each."""
    mix = {k: w for k, w in DEMO_MIX.items() if kinds is None or k in kinds}
    population, weights = list(mix), list(mix.values())
    out = []
    for i in range(n):
        kind = population[i % len(population)] if n <= len(population) else rng.choices(
            population, weights)[0]
        low, high = REAL_DURATIONS[kind]
        after = rng.uniform(low, high) * scale
        draw = rng.random()
        if draw < error_rate:
            status, reason = TaskStatus.ERROR, rng.choice(_ERROR_REASONS)
        elif draw < error_rate + timeout_rate:
            status, reason = TaskStatus.TIMEOUT, "processing took too long"
        else:
            status, reason = TaskStatus.SUCCESS, None
        task_id = f"{kind.value}-{i + 1:05d}-{rng.getrandbits(32):08x}"
        api.add_task(kind, task_id, status=status, after=after, exception_reason=reason,
                     created_at=created_at)
        out.append((kind, task_id, status.value))
    return out


def scaled_policy(kind: TaskKind, scale: float) -> PollPolicy:
    """The kind's default polling schedule, compressed by ``scale`` like the demo's clock."""
    p = PollPolicy.for_kind(kind)
    return PollPolicy(initial=p.initial * scale, factor=p.factor,
                      max_interval=p.max_interval * scale, jitter=p.jitter,
                      max_errors=p.max_errors)


# ----------------------------------------------------------------------------- demo


async def _cmd_demo(args: argparse.Namespace) -> int:
    from .testing import TRANSIENT_FAULTS, FakeCambAPI, serve_in_thread

    if args.tasks < 1 or args.duration <= 0 or args.rate_limit <= 0:
        raise UsageError("--tasks, --duration and --rate-limit must be positive")
    rng = random.Random(args.seed)
    key = secrets.token_urlsafe(16)  # a throwaway key for the loopback fake; never shown
    # The server enforces the same limit as the client's budget, as the real API would.
    # Injected faults are 5xx only: 429s come from the server's own limiter, as in real life.
    faults = [f for f in TRANSIENT_FAULTS if f.status != 429]
    api = FakeCambAPI(api_key=key, clock=time.monotonic, rate_limit=args.rate_limit,
                      fault_rate=args.fault_rate, faults=faults, seed=args.seed)
    # Compress real durations so the longest dub ends at ~80 % of the target wall time.
    scale = args.duration * 0.8 / REAL_DURATIONS[TaskKind.DUB][1]
    live = _use_live(args)
    plain = not live and not args.json
    out = sys.stdout
    with serve_in_thread(api) as url:
        if plain:
            out.write(f"camb-async demo: FakeCambAPI on {url} (loopback, no API key needed); "
                      f"{args.tasks} tasks, budget {args.rate_limit:g} requests/s\n")
            out.flush()
        meter = RequestMeter()
        budget = RateBudget(args.rate_limit, args.max_concurrency, margin=args.margin)
        async with AsyncCambClient(api_key=key, base_url=url, budget=budget,
                                   hooks=meter.hooks()) as client:
            scripted = script_tasks(api, args.tasks, scale=scale, rng=rng,
                                    error_rate=args.error_rate, timeout_rate=args.timeout_rate,
                                    created_at=time.monotonic())
            progress = Progress(len(scripted), args.rate_limit, meter,
                                f"camb-async demo: {len(scripted)} tasks against FakeCambAPI "
                                f"on {url}")
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
                results = await gather_statuses(client, handles, policy=policies,
                                                return_exceptions=True, on_update=on_update)
                for (kind, task_id, _), item in zip(scripted, results, strict=True):
                    final[(kind, task_id)] = item
                    if not isinstance(item, StatusResult):
                        progress.finish(item)

            started = time.monotonic()
            await _run_with_display(progress, body, live=live,
                                    plain_every=2.0 if plain else None, out=out)
            wall = time.monotonic() - started

    statuses = collections.Counter(
        item.status.value if isinstance(item, StatusResult) else type(item).__name__
        for item in final.values())
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
    if args.json:
        _print_json(summary)
    else:
        _print_demo_summary(summary, scripted)
    return EXIT_OK if matches == len(scripted) else EXIT_FAILED


def _print_demo_summary(s: dict[str, Any], scripted: list[tuple[TaskKind, str, str]]) -> None:
    from rich.table import Table

    console = _console()
    table = Table(title="camb-async demo summary", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("tasks", f"{s['tasks']} (" + ", ".join(
        f"{n} {k.value}" for k, n in sorted(collections.Counter(k for k, _, _ in scripted
                                                                ).items())) + ")")
    table.add_row("final statuses", ", ".join(f"{k} {v}" for k, v in
                                              s["final_statuses"].items()))
    table.add_row("as scripted", f"{s['matching_script']}/{s['tasks']}")
    table.add_row("requests made", f"{s['requests']} (server log; client counted "
                                   f"{s['client_requests']})")
    table.add_row("requests per task", f"{s['requests_per_task']:.2f}")
    table.add_row("retries", f"{s['retries']} ({s['injected_faults']} injected faults, "
                             f"{s['http_429']} answers 429)")
    table.add_row("peak req/s", f"{s['peak_requests_per_second']} in any 1 s at the server "
                                f"(budget {s['budget_requests_per_second']:g})")
    table.add_row("wall time", f"{s['wall_seconds']:.1f} s (real durations x "
                               f"{s['time_scale']:g})")
    console.print(table)


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

    from .testing import FakeCambAPI

    if args.min_duration > args.max_duration:
        raise UsageError("--min-duration must not exceed --max-duration")
    key_source = "--api-key" if args.api_key else ("CAMB_API_KEY" if os.environ.get(
        "CAMB_API_KEY") else None)
    key = args.api_key or os.environ.get("CAMB_API_KEY") or "fake-key"
    api = FakeCambAPI(api_key=key, clock=time.monotonic, fault_rate=args.fault_rate,
                      rate_limit=args.rate_limit, seed=args.seed)
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
            status, reason = rng.choice([(TaskStatus.ERROR, rng.choice(_ERROR_REASONS)),
                                         (TaskStatus.TIMEOUT, "processing took too long")])
        task_id = api.add_task(kind, f"{kind.value}-{i + 1:05d}", status=status, after=after,
                               exception_reason=reason, created_at=now)
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
        err.write(f"  {args.tasks} scripted tasks ({args.min_duration:g}-{args.max_duration:g}"
                  f" s) written to {where} as 'KIND ID' lines\n")
    err.write("  api key: " + (f"from {key_source}" if key_source else
                               "'fake-key' (set CAMB_API_KEY or --api-key to choose)") + "\n")
    err.write(f"  {_fake_server_hint(url, key, key_source, args.ids_file, args.tasks)}\n")
    err.flush()
    config = uvicorn.Config(api, log_level="warning", lifespan="off", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
    return EXIT_OK


def _fake_server_hint(url: str, key: str, key_source: str | None, ids_file: str | None,
                      tasks: int) -> str:
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


# ----------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse, but a syntax error is a ``UsageError`` (one line, or JSON with ``--json``)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, prog=self.prog)


def _number(convert: Callable[[str], float], what: str, *, low: float = 0.0,
            high: float | None = None, exclusive: bool = False) -> Callable[[str], Any]:
    """An argparse ``type=``: a finite number in ``[low, high]`` (``(low, high]``)."""

    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if (not math.isfinite(value) or value < low or (exclusive and value == low)
                or (high is not None and value > high)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


_SECONDS = _number(float, "a number of seconds >= 0")
_POSITIVE_SECONDS = _number(float, "a number of seconds > 0", exclusive=True)
_RATE_OR_ZERO = _number(float, "requests per second >= 0 (0 = unlimited)")
_RATE = _number(float, "requests per second > 0", exclusive=True)
_SHARE = _number(float, "a share between 0 and 1", high=1.0)
_COUNT = _number(int, "an integer >= 0")
_POSITIVE_COUNT = _number(int, "an integer >= 1", low=1)
_PORT = _number(int, "a port number 0-65535", high=65535)


def _epilog() -> str:
    rows = "".join(f"  {code:<4} {meaning}\n" for code, meaning in EXIT_CODES.items())
    return f"exit codes (status and watch: the first that applies wins):\n{rows}"


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true",
                        help="log retries, 429 pauses and budget changes to stderr")

    client = _Parser(add_help=False)
    client.add_argument("--api-key", default=None,
                        help="API key (default: $CAMB_API_KEY; the environment is safer: "
                             "command lines are visible to other users)")
    client.add_argument("--base-url", default=None,
                        help="API base URL (default: $CAMB_BASE_URL or the CAMB.AI API)")
    client.add_argument("--rate-limit", type=_RATE_OR_ZERO, default=20.0,
                        help="requests per second for this process (0 = unlimited; "
                             "default 20)")
    client.add_argument("--max-concurrency", type=_POSITIVE_COUNT, default=16,
                        help="requests in flight (default 16)")
    client.add_argument("--allow-insecure", action="store_true",
                        help="allow a plain-http --base-url on a non-loopback host (the key "
                             "then crosses the network unencrypted)")
    client.add_argument("--json", action="store_true", help="machine-readable output")

    backend = _Parser(add_help=False)
    backend.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio",
                         help="event loop to run on (trio needs the trio package)")

    parser = _Parser(
        prog="camb-async",
        description="Check and watch CAMB.AI tasks; run a no-network demo or a fake API.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"camb-async {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("status", parents=[common, client, backend], help="check tasks once",
                       description="One status check per task; a table, or --json.")
    p.add_argument("kind", nargs="?", metavar="KIND", help=" | ".join(KINDS))
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--from-file", metavar="PATH",
                   help="task ids, one per line: 'ID' or 'KIND ID' ('-' = stdin)")

    p = sub.add_parser("watch", parents=[common, client, backend],
                       help="poll tasks until they end",
                       description="Poll until every task has ended, with live progress on a "
                                   "terminal and plain lines otherwise.")
    p.add_argument("kind", nargs="?", metavar="KIND", help=" | ".join(KINDS))
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--from-file", metavar="PATH",
                   help="task ids, one per line: 'ID' or 'KIND ID' ('-' = stdin)")
    p.add_argument("--timeout", type=_SECONDS, default=None,
                   help="give up after this many seconds (exit 4 if tasks are unfinished)")
    p.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    _fleet_options(p, required=False)

    p = sub.add_parser("worker", parents=[common, client, backend],
                       help="poll a Redis watch list (one worker of a fleet)",
                       description="Claim due tasks of a Redis watch list, poll them under a "
                                   "fleet rate budget (--rate-limit is the whole fleet's rate, "
                                   "shared through the same Redis) and write their completion "
                                   "events; runs until interrupted.")
    _fleet_options(p, required=True)
    p.add_argument("--budget-name", default=None,
                   help="the fleet rate budget's name (default: --name); one per API key")
    p.add_argument("--lease-ttl", type=_POSITIVE_SECONDS, default=30.0,
                   help="seconds a claimed task stays this worker's (default 30)")
    p.add_argument("--until-empty", action="store_true",
                   help="exit once the watch list tracks no task")

    p = sub.add_parser("demo", parents=[common, backend],
                       help="poll ~500 fake tasks (no key, no network)",
                       description="Serve FakeCambAPI on loopback and poll scripted tasks of "
                                   "all four kinds through the real client.")
    p.add_argument("--tasks", type=_POSITIVE_COUNT, default=500,
                   help="number of tasks (default 500)")
    p.add_argument("--duration", type=_POSITIVE_SECONDS, default=20.0,
                   help="target wall time in seconds; real durations are scaled to fit")
    p.add_argument("--rate-limit", type=_RATE, default=100.0,
                   help="the rate budget, requests/s (the fake server enforces it too)")
    p.add_argument("--max-concurrency", type=_POSITIVE_COUNT, default=16)
    p.add_argument("--margin", type=_SECONDS, default=0.25,
                   help="budget window margin, so that client-to-server delay jitter cannot "
                        "push the server's count over the budget (default 0.25 = 250 ms)")
    p.add_argument("--fault-rate", type=_SHARE, default=0.01,
                   help="share of requests answered with a transient fault (default 0.01)")
    p.add_argument("--error-rate", type=_SHARE, default=0.02, help="tasks ending ERROR")
    p.add_argument("--timeout-rate", type=_SHARE, default=0.01, help="tasks ending TIMEOUT")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--json", action="store_true", help="print only the summary, as JSON")
    p.add_argument("--plain", action="store_true", help="plain lines even on a terminal")

    p = sub.add_parser("fake-server", parents=[common],
                       help="serve FakeCambAPI for local development",
                       description="Serve FakeCambAPI with scripted tasks. Point clients at it "
                                   "with CAMB_BASE_URL=http://HOST:PORT.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_PORT, default=8000, help="0 = any free port (default 8000)")
    p.add_argument("--api-key", default=None,
                   help="the key the fake accepts (default: $CAMB_API_KEY or 'fake-key')")
    p.add_argument("--fault-rate", type=_SHARE, default=0.0,
                   help="share of requests answered 5xx/429 (default 0)")
    p.add_argument("--rate-limit", type=_RATE, default=None,
                   help="answer 429 above this many requests/s (default: no limit)")
    p.add_argument("--tasks", type=_COUNT, default=0, help="scripted tasks to create")
    p.add_argument("--kinds", default=None, help=f"comma-separated kinds (default: "
                                                 f"{','.join(KINDS)})")
    p.add_argument("--min-duration", type=_SECONDS, default=0.0)
    p.add_argument("--max-duration", type=_SECONDS, default=30.0,
                   help="each task ends after a uniform random time up to this (seconds)")
    p.add_argument("--error-rate", type=_SHARE, default=0.0,
                   help="share of tasks ending ERROR or TIMEOUT")
    p.add_argument("--ids-file", default=None,
                   help="write the 'KIND ID' lines here instead of stdout")
    p.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``camb-async`` console script; returns the exit code.

    Bad input of any kind (syntax, values, ids, files, URLs) is exit 2 with one line on
    stderr, never a traceback; with ``--json`` the reason is one JSON object on stdout. An
    exception nobody expected is a bug: its traceback stays visible, with exit 70.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # Before parsing succeeds, --json is known only from the raw arguments.
    as_json = "--json" in argv[:argv.index("--")] if "--" in argv else "--json" in argv
    command = "camb-async"
    try:
        parser = _parser()
        args = parser.parse_args(argv)
        command = f"camb-async {args.command}"
        as_json = bool(getattr(args, "json", False))
        return _run(args)
    except UsageError as exc:
        return _report(EXIT_USAGE, "UsageError", str(exc) if as_json else f"error: {exc}",
                       as_json=as_json, command=exc.prog or command)
    except MissingKeyError as exc:
        return _report(EXIT_AUTH, "MissingKeyError", str(exc), as_json=as_json,
                       command=command)
    except SystemExit:
        raise  # --help, --version
    except BaseException as exc:
        if _interrupted(exc):
            return _report(EXIT_INTERRUPTED, "KeyboardInterrupt", "interrupted",
                           as_json=as_json, command=command)
        leaf = _only(exc)
        if isinstance(leaf, CambError):  # not mapped by the command: no traceback needed
            return _report(EXIT_ERRORS, type(leaf).__name__,
                           f"{type(leaf).__name__}: {leaf}", as_json=as_json, command=command)
        if not isinstance(exc, Exception) and leaf is exc:
            raise  # GeneratorExit and the like are not ours to report
        traceback.print_exception(type(exc), exc, exc.__traceback__)
        return _report(EXIT_INTERNAL, "InternalError",
                       f"internal error (a bug in camb-async {__version__}; please report it "
                       f"with the traceback above): {type(leaf).__name__}: {leaf}",
                       as_json=as_json, command=command)


def _run(args: argparse.Namespace) -> int:
    try:
        import rich  # noqa: F401
        if args.command in ("demo", "fake-server"):
            import uvicorn  # noqa: F401
        if getattr(args, "backend", None) == "trio":
            import trio  # noqa: F401
        if getattr(args, "redis", None) is not None:
            import coredis  # noqa: F401
    except ImportError as exc:
        extra = {"trio": "trio", "coredis": "'camb-async[redis]'"}.get(
            exc.name or "", "'camb-async[cli]'")
        raise UsageError(f"needs {exc.name}: pip install {extra}") from None
    if args.verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    commands: dict[str, Callable[[argparse.Namespace], Any]] = {
        "status": _cmd_status,
        "watch": _cmd_watch,
        "worker": _cmd_worker,
        "demo": _cmd_demo,
    }
    if args.command == "fake-server":
        return _cmd_fake_server(args)
    return int(anyio.run(commands[args.command], args, backend=args.backend))


def _leaves(exc: BaseException) -> Iterable[BaseException]:
    """The exceptions inside (nested) exception groups, or ``exc`` itself."""
    inner = getattr(exc, "exceptions", None)
    if isinstance(inner, tuple):
        for item in inner:
            yield from _leaves(item)
    else:
        yield exc


def _interrupted(exc: BaseException) -> bool:
    """Ctrl-C, plain (asyncio) or inside a task group's exception group (trio)."""
    return any(isinstance(leaf, KeyboardInterrupt) for leaf in _leaves(exc))


def _only(exc: BaseException) -> BaseException:
    """The single exception inside exception groups, else ``exc``."""
    leaves = list(_leaves(exc))
    return leaves[0] if len(leaves) == 1 else exc


if __name__ == "__main__":
    sys.exit(main())
