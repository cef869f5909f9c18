"""Logging: the ``CAMB_LOG`` switch, and a filter that keeps every open client's key out of
the log records of this package and of httpx/httpcore.
"""

from __future__ import annotations

import logging
import os
import sys
import weakref
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from ._client import AsyncCambClient

__all__ = ["KEY_FILTER", "setup_logging"]

T = TypeVar("T")
logger = logging.getLogger("camb_async")


class _KeyFilter(logging.Filter):
    """Redacts the key of every live client from the log records of the loggers that
    could carry a server's echo of it (httpcore logs response headers at DEBUG, httpx the
    reason phrase at INFO). Runs only for records that are emitted: free when logging is off.
    """

    def __init__(self) -> None:
        super().__init__()
        self.clients: weakref.WeakSet[AsyncCambClient] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        clients = list(self.clients)
        if clients:
            try:
                message = clean = record.getMessage()
            except Exception:  # a malformed record: the handler reports it, not us
                return True
            for client in clients:
                clean = client._redact(clean)
            if clean != message:
                record.msg, record.args = clean, None
        return True


KEY_FILTER = _KeyFilter()
for _name in (
    "camb_async",
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
    "aiohttp.client",
):
    logging.getLogger(_name).addFilter(KEY_FILTER)


_LOG_HANDLER: logging.Handler | None = None


def setup_logging(value: str | None = None) -> None:
    """``CAMB_LOG=debug|info``: the library's log lines to stderr, as ``OPENAI_LOG`` does.

    Runs at every client construction (the variable may be set after import) but adds its
    handler once; an unknown value is ignored. The handler carries the key filter, so no log
    line it writes holds a client's key.
    """
    global _LOG_HANDLER
    value = (os.environ.get("CAMB_LOG") if value is None else value) or ""
    level = {"debug": logging.DEBUG, "info": logging.INFO}.get(value.strip().lower())
    if level is None:
        return
    root = logging.getLogger("camb_async")
    if _LOG_HANDLER is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(asctime)s %(levelname)s %(name)s] %(message)s"))
        handler.addFilter(KEY_FILTER)
        _LOG_HANDLER = handler
    if _LOG_HANDLER not in root.handlers:
        root.addHandler(_LOG_HANDLER)
    root.setLevel(level)
