"""RequestHooks: optional callbacks on the request path, for metrics and tracing.

Why callbacks rather than a metrics library: the SDK should not pick Prometheus or
OpenTelemetry for its users, and a disabled feature must cost nothing. The client checks one
attribute per attempt (``hooks is None``); only when hooks are set does it read the clock and
call them. A hook that raises is logged and ignored: a broken metrics exporter must not turn
into failed API calls.

Every callback receives the HTTP ``method`` and the request ``path`` (e.g. ``/dub/abc``);
``RequestHooks.route_of(path)`` gives the low-cardinality route (``/dub/{id}``) for metric labels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs

__all__ = ["RequestHooks"]

logger = logging.getLogger("camb_async")
_OPTIONAL_CALLABLE = attrs.validators.optional(attrs.validators.is_callable())

#: ``on_request_start(method, path)`` — an attempt is about to be sent (budget granted).
StartHook = Callable[[str, str], object]
#: ``on_request_end(method, path, duration, status)`` — seconds on the event loop's clock;
#: ``status`` is the HTTP status, or ``None`` when no answer came (connect/read failure).
EndHook = Callable[[str, str, float, "int | None"], object]
#: ``on_retry(method, path, attempt, delay, error)`` — attempt ``attempt`` (1-based) of the
#: retries will be sent after ``delay`` seconds because of ``error``.
RetryHook = Callable[[str, str, int, float, BaseException], object]
#: ``on_throttle(method, path, retry_after)`` — the server answered 429; the whole budget
#: pauses for ``retry_after`` seconds (``None``: the server gave no Retry-After).
ThrottleHook = Callable[[str, str, "float | None"], object]


@attrs.frozen(kw_only=True, slots=True)
class RequestHooks:
    """Callbacks the client invokes around each HTTP attempt. All optional.

    Pass as ``AsyncCambClient(..., hooks=RequestHooks(on_request_end=...))``. The callbacks
    run on the event loop, inline with the request: keep them quick and non-blocking (update a
    counter, record a span). Their return values are ignored.
    """

    on_request_start: StartHook | None = attrs.field(default=None, validator=_OPTIONAL_CALLABLE)
    on_request_end: EndHook | None = attrs.field(default=None, validator=_OPTIONAL_CALLABLE)
    on_retry: RetryHook | None = attrs.field(default=None, validator=_OPTIONAL_CALLABLE)
    on_throttle: ThrottleHook | None = attrs.field(default=None, validator=_OPTIONAL_CALLABLE)

    @staticmethod
    def route_of(path: str) -> str:
        """The path with its id segment replaced: ``/dub/abc`` -> ``/dub/{id}``.

        Metric labels must have few distinct values; task and run ids would make one series
        each.
        """
        head, sep, _ = path[1:].partition("/")
        return f"/{head}/{{id}}" if sep else path

    # The client calls these; each swallows (and logs) a hook's own exception.

    def _start(self, method: str, path: str) -> None:
        hook = self.on_request_start
        if hook is not None:
            try:
                hook(method, path)
            except Exception:
                logger.exception("camb_async on_request_start hook failed")

    def _end(self, method: str, path: str, duration: float, status: int | None) -> None:
        hook = self.on_request_end
        if hook is not None:
            try:
                hook(method, path, duration, status)
            except Exception:
                logger.exception("camb_async on_request_end hook failed")

    def _retry(
        self, method: str, path: str, attempt: int, delay: float, error: BaseException
    ) -> None:
        hook = self.on_retry
        if hook is not None:
            try:
                hook(method, path, attempt, delay, error)
            except Exception:
                logger.exception("camb_async on_retry hook failed")

    def _throttle(self, method: str, path: str, retry_after: float | None) -> None:
        hook = self.on_throttle
        if hook is not None:
            try:
                hook(method, path, retry_after)
            except Exception:
                logger.exception("camb_async on_throttle hook failed")
