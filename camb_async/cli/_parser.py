"""The command line: argparse with one-line errors, value types, one sub-parser per command."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any, NoReturn

from .._version import __version__
from ._common import EXIT_CODES, KINDS, UsageError

# ----------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse, but a syntax error is a ``UsageError`` (one line, or JSON with ``--json``)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, prog=self.prog)


def _number(
    convert: Callable[[str], float],
    what: str,
    *,
    low: float = 0.0,
    high: float | None = None,
    exclusive: bool = False,
) -> Callable[[str], Any]:
    """An argparse ``type=``: a finite number in ``[low, high]`` (``(low, high]``)."""

    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if (
            not math.isfinite(value)
            or value < low
            or (exclusive and value == low)
            or (high is not None and value > high)
        ):
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


def _parents() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser, argparse.ArgumentParser]:
    """The option groups the commands share: logging, the client, the event loop."""
    common = _Parser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log retries, 429 pauses and budget changes to stderr",
    )

    client = _Parser(add_help=False)
    client.add_argument(
        "--api-key",
        default=None,
        help="API key (default: $CAMB_API_KEY; the environment is safer: "
        "command lines are visible to other users)",
    )
    client.add_argument(
        "--base-url", default=None, help="API base URL (default: $CAMB_BASE_URL or the CAMB.AI API)"
    )
    client.add_argument(
        "--rate-limit",
        type=_RATE_OR_ZERO,
        default=20.0,
        help="requests per second for this process (0 = unlimited; default 20)",
    )
    client.add_argument(
        "--max-concurrency",
        type=_POSITIVE_COUNT,
        default=16,
        help="requests in flight (default 16)",
    )
    client.add_argument(
        "--allow-insecure",
        action="store_true",
        help="allow a plain-http --base-url on a non-loopback host (the key "
        "then crosses the network unencrypted)",
    )
    client.add_argument("--json", action="store_true", help="machine-readable output")

    backend = _Parser(add_help=False)
    backend.add_argument(
        "--backend",
        choices=["asyncio", "trio"],
        default="asyncio",
        help="event loop to run on (trio needs the trio package)",
    )
    return common, client, backend


def _parser() -> argparse.ArgumentParser:
    common, client, backend = _parents()
    parser = _Parser(
        prog="camb-async",
        description="Check and watch CAMB.AI tasks; run a no-network demo or a fake API.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"camb-async {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _status_command(sub, [common, client, backend])
    _watch_command(sub, [common, client, backend])
    _worker_command(sub, [common, client, backend])
    _demo_command(sub, [common, backend])
    _fake_server_command(sub, [common])
    return parser


def _status_command(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "status",
        parents=parents,
        help="check tasks once",
        description="One status check per task; a table, or --json.",
    )
    p.add_argument("kind", nargs="?", metavar="KIND", help=" | ".join(KINDS))
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument(
        "--from-file",
        metavar="PATH",
        help="task ids, one per line: 'ID' or 'KIND ID' ('-' = stdin)",
    )


def _watch_command(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "watch",
        parents=parents,
        help="poll tasks until they end",
        description="Poll until every task has ended, with live progress on a "
        "terminal and plain lines otherwise.",
    )
    p.add_argument("kind", nargs="?", metavar="KIND", help=" | ".join(KINDS))
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument(
        "--from-file",
        metavar="PATH",
        help="task ids, one per line: 'ID' or 'KIND ID' ('-' = stdin)",
    )
    p.add_argument(
        "--timeout",
        type=_SECONDS,
        default=None,
        help="give up after this many seconds (exit 4 if tasks are unfinished)",
    )
    p.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    _fleet_options(p, required=False)


def _worker_command(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "worker",
        parents=parents,
        help="poll a Redis watch list (one worker of a fleet)",
        description="Claim due tasks of a Redis watch list, poll them under a "
        "fleet rate budget (--rate-limit is the whole fleet's rate, "
        "shared through the same Redis) and write their completion "
        "events; runs until interrupted.",
    )
    _fleet_options(p, required=True)
    p.add_argument(
        "--budget-name",
        default=None,
        help="the fleet rate budget's name (default: --name); one per API key",
    )
    p.add_argument(
        "--lease-ttl",
        type=_POSITIVE_SECONDS,
        default=30.0,
        help="seconds a claimed task stays this worker's (default 30)",
    )
    p.add_argument(
        "--until-empty", action="store_true", help="exit once the watch list tracks no task"
    )


def _demo_command(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        parents=parents,
        help="poll ~500 fake tasks (no key, no network)",
        description="Serve FakeCambAPI on loopback and poll scripted tasks of "
        "all four kinds through the real client.",
    )
    p.add_argument(
        "--tasks", type=_POSITIVE_COUNT, default=500, help="number of tasks (default 500)"
    )
    p.add_argument(
        "--duration",
        type=_POSITIVE_SECONDS,
        default=20.0,
        help="target wall time in seconds; real durations are scaled to fit",
    )
    p.add_argument(
        "--rate-limit",
        type=_RATE,
        default=100.0,
        help="the rate budget, requests/s (the fake server enforces it too)",
    )
    p.add_argument("--max-concurrency", type=_POSITIVE_COUNT, default=16)
    p.add_argument(
        "--margin",
        type=_SECONDS,
        default=0.25,
        help="budget window margin, so that client-to-server delay jitter cannot "
        "push the server's count over the budget (default 0.25 = 250 ms)",
    )
    p.add_argument(
        "--fault-rate",
        type=_SHARE,
        default=0.01,
        help="share of requests answered with a transient fault (default 0.01)",
    )
    p.add_argument("--error-rate", type=_SHARE, default=0.02, help="tasks ending ERROR")
    p.add_argument("--timeout-rate", type=_SHARE, default=0.01, help="tasks ending TIMEOUT")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--json", action="store_true", help="print only the summary, as JSON")
    p.add_argument("--plain", action="store_true", help="plain lines even on a terminal")


def _fake_server_command(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "fake-server",
        parents=parents,
        help="serve FakeCambAPI for local development",
        description="Serve FakeCambAPI with scripted tasks. Point clients at it "
        "with CAMB_BASE_URL=http://HOST:PORT.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_PORT, default=8000, help="0 = any free port (default 8000)")
    p.add_argument(
        "--api-key",
        default=None,
        help="the key the fake accepts (default: $CAMB_API_KEY or 'fake-key')",
    )
    p.add_argument(
        "--fault-rate",
        type=_SHARE,
        default=0.0,
        help="share of requests answered 5xx/429 (default 0)",
    )
    p.add_argument(
        "--rate-limit",
        type=_RATE,
        default=None,
        help="answer 429 above this many requests/s (default: no limit)",
    )
    p.add_argument("--tasks", type=_COUNT, default=0, help="scripted tasks to create")
    p.add_argument(
        "--kinds", default=None, help=f"comma-separated kinds (default: {','.join(KINDS)})"
    )
    p.add_argument("--min-duration", type=_SECONDS, default=0.0)
    p.add_argument(
        "--max-duration",
        type=_SECONDS,
        default=30.0,
        help="each task ends after a uniform random time up to this (seconds)",
    )
    p.add_argument(
        "--error-rate", type=_SHARE, default=0.0, help="share of tasks ending ERROR or TIMEOUT"
    )
    p.add_argument(
        "--ids-file", default=None, help="write the 'KIND ID' lines here instead of stdout"
    )
    p.add_argument("--seed", type=int, default=0)


def _fleet_options(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument(
        "--redis",
        metavar="URL",
        required=required,
        default=None,
        help="Redis URL of the fleet's watch list (rediss:// for TLS)",
    )
    p.add_argument(
        "--name",
        default=None,
        required=required,
        help="the watch list's name (the web tier and every worker use the same)",
    )
