"""Injected bad answers: ``Fault`` and the reliability suites' mix, ``TRANSIENT_FAULTS``."""

from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class Fault:
    """One injected bad answer.

    ``status``: the HTTP status to answer with (``None`` answers normally after ``delay``).
    ``retry_after``: a Retry-After header value, sent verbatim. ``delay``: seconds to wait
    before answering. ``reset``: start the answer, then drop the connection mid-body
    (meaningful over real sockets; in-process it surfaces as an app error). ``body``: raw bytes
    to send instead of the usual JSON.
    """

    status: int | None = 503
    retry_after: str | None = None
    delay: float = 0.0
    reset: bool = False
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()


#: The fault mix of the reliability suites: 5xx, 429 with Retry-After, resets, slow answers.
TRANSIENT_FAULTS: tuple[Fault, ...] = (
    Fault(status=500),
    Fault(status=502),
    Fault(status=503),
    Fault(status=504),
    Fault(status=429, retry_after="1"),
)
