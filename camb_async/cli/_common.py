"""What every command shares: exit codes, usage errors, the request meter, reading ids,
building the client, printing JSON and reporting why a command stops."""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import httpx

from .._client import AsyncCambClient
from .._errors import AuthenticationError
from .._hooks import RequestHooks
from .._models import StatusResult, TaskKind, converter
from .._validation import check_task_id

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
    EXIT_ERRORS: "a task could not be checked (unknown id, or failures that outlasted the retries)",
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
        return RequestHooks(
            on_request_start=self._start,
            on_request_end=self._end,
            on_retry=self._retry,
            on_throttle=self._throttle,
        )

    def _start(self, method: str, path: str) -> None:
        self.requests += 1
        self._recent.append(time.monotonic())

    def _end(self, method: str, path: str, duration: float, status: int | None) -> None:
        if status is None or status == 429 or status >= 500:
            self.failures += 1

    def _retry(
        self, method: str, path: str, attempt: int, delay: float, error: BaseException
    ) -> None:
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


def _result_json(
    item: StatusResult | BaseException, kind: TaskKind | None = None, task_id: str | None = None
) -> dict[str, Any]:
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
        line = data[: exc.start].count(b"\n") + 1 if isinstance(data, bytes) else "?"
        raise UsageError(
            f"{path}:{line}: not UTF-8 text (byte {exc.object[exc.start]:#04x} "
            f"at offset {exc.start})"
        ) from None
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
            raise UsageError(
                f"{where}: expected 'KIND ID' or 'ID' (with a KIND argument), got {line.strip()!r}"
            )
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
        raise UsageError(
            f"{prefix}unknown task kind {word[:60]!r}; expected one of {', '.join(KINDS)}"
        ) from None


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


def _client(args: argparse.Namespace, meter: RequestMeter, budget: Any = None) -> AsyncCambClient:
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
        raise UsageError(
            message.replace("pass allow_insecure=True", "pass --allow-insecure")
        ) from None


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


def _auth_failed(args: argparse.Namespace, exc: AuthenticationError) -> int:
    message = f"authentication failed (HTTP {exc.status_code}): check CAMB_API_KEY / --api-key"
    return _report(EXIT_AUTH, "AuthenticationError", message, as_json=args.json)


def _report(
    code: int, error: str, detail: str, *, as_json: bool, command: str = "camb-async"
) -> int:
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
