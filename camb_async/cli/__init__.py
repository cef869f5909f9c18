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
import logging
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import anyio

from .._errors import CambError
from .._version import __version__
from ._common import (
    EXIT_AUTH,
    EXIT_CODES,
    EXIT_ERRORS,
    EXIT_FAILED,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    MissingKeyError,
    UsageError,
    _report,
    logger,
)
from ._common import RequestMeter as RequestMeter
from ._common import _client as _client
from ._demo import _cmd_demo
from ._fake_server import _cmd_fake_server
from ._fake_server import _listen_socket as _listen_socket
from ._fleet import _cmd_worker
from ._parser import _parser as _parser
from ._scenario import DEMO_MIX as DEMO_MIX
from ._scenario import REAL_DURATIONS as REAL_DURATIONS
from ._scenario import scaled_policy as scaled_policy
from ._scenario import script_tasks as script_tasks
from ._status import _cmd_status
from ._watch import _cmd_watch

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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``camb-async`` console script; returns the exit code.

    Bad input of any kind (syntax, values, ids, files, URLs) is exit 2 with one line on
    stderr, never a traceback; with ``--json`` the reason is one JSON object on stdout. An
    exception nobody expected is a bug: its traceback stays visible, with exit 70.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # Before parsing succeeds, --json is known only from the raw arguments.
    as_json = "--json" in argv[: argv.index("--")] if "--" in argv else "--json" in argv
    command = "camb-async"
    try:
        parser = _parser()
        args = parser.parse_args(argv)
        command = f"camb-async {args.command}"
        as_json = bool(getattr(args, "json", False))
        return _run(args)
    except UsageError as exc:
        return _report(
            EXIT_USAGE,
            "UsageError",
            str(exc) if as_json else f"error: {exc}",
            as_json=as_json,
            command=exc.prog or command,
        )
    except MissingKeyError as exc:
        return _report(EXIT_AUTH, "MissingKeyError", str(exc), as_json=as_json, command=command)
    except SystemExit:
        raise  # --help, --version
    except BaseException as exc:
        if _interrupted(exc):
            _quiet_late_finalizers()
            return _report(
                EXIT_INTERRUPTED,
                "KeyboardInterrupt",
                "interrupted",
                as_json=as_json,
                command=command,
            )
        leaf = _only(exc)
        if isinstance(leaf, CambError):  # not mapped by the command: no traceback needed
            return _report(
                EXIT_ERRORS,
                type(leaf).__name__,
                f"{type(leaf).__name__}: {leaf}",
                as_json=as_json,
                command=command,
            )
        if not isinstance(exc, Exception) and leaf is exc:
            raise  # GeneratorExit and the like are not ours to report
        traceback.print_exception(type(exc), exc, exc.__traceback__)
        return _report(
            EXIT_INTERNAL,
            "InternalError",
            f"internal error (a bug in camb-async {__version__}; please report it "
            f"with the traceback above): {type(leaf).__name__}: {leaf}",
            as_json=as_json,
            command=command,
        )


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
            exc.name or "", "'camb-async[cli]'"
        )
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


def _quiet_late_finalizers() -> None:
    """After Ctrl-C the event loop is gone; an async generator it left suspended is finalized
    later by the garbage collector, and trio's finalizer then reports a ``RuntimeError`` (its
    run "has exited") through ``sys.unraisablehook``: a traceback after "interrupted" on an
    exit that is otherwise clean. Drop those; every other report still goes through."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, RuntimeError):
            previous(unraisable)

    sys.unraisablehook = hook


def _interrupted(exc: BaseException) -> bool:
    """Ctrl-C, plain (asyncio) or inside a task group's exception group (trio)."""
    return any(isinstance(leaf, KeyboardInterrupt) for leaf in _leaves(exc))


def _only(exc: BaseException) -> BaseException:
    """The single exception inside exception groups, else ``exc``."""
    leaves = list(_leaves(exc))
    return leaves[0] if len(leaves) == 1 else exc
