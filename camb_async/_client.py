"""AsyncCambClient: configuration, lifecycle, ``with_options`` views and the resources.

The request path is in ``_request`` (the retry loop) and ``_answers`` (mapping answers to
values and errors); transports in ``_transports``; reading bodies in ``_reading``.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import httpx

from ._budget import DEFAULT_MAX_CONCURRENCY, Budget, RateBudget, concurrency_of, is_budget
from ._config import (
    DEFAULT_BASE_URL,
    check_base_url,
    check_key,
    check_settings,
    echo_pattern,
    echo_text_pattern,
    resolve_proxy,
)
from ._errors import SNIPPET_LIMIT, ClientClosedError, redact, snippet
from ._hooks import RequestHooks
from ._logging import KEY_FILTER, setup_logging
from ._models import TaskKind
from ._reading import DEFAULT_MAX_RESPONSE_BYTES
from ._request import MAX_RETRY_AFTER, request
from ._surface import _ClientSurface
from ._transports import _DirectSender, open_owned
from ._version import __version__
from .polling._stats import CompletionStats
from .resources._base import TaskResource
from .resources._dub import DubResource
from .resources._transcription import TranscriptionResource
from .resources._translation import TranslationResource
from .resources._tts import TTSResource

if TYPE_CHECKING:
    pass

__all__ = ["AsyncCambClient", "DEFAULT_BASE_URL"]

T = TypeVar("T")
logger = logging.getLogger("camb_async")


def _check_collaborators(hooks: object, completion_stats: object) -> None:
    if hooks is not None and not isinstance(hooks, RequestHooks):
        raise TypeError("hooks must be a RequestHooks")
    if completion_stats is not None and not isinstance(completion_stats, CompletionStats):
        raise TypeError("completion_stats must be a CompletionStats")


class AsyncCambClient(_ClientSurface):
    """Client for the CAMB.AI task API, for asyncio and trio.

    One client = one pooled HTTP client + one rate budget shared by every request it makes
    (status checks, handles, bulk polls, results). Use it as ``async with`` or call
    ``aclose()``; the HTTP client is opened lazily on first use inside the event loop.

    Limits every call respects: a JSON answer larger than ``max_response_bytes`` (counted
    after decompression; default 8 MiB) is an ``APIError``, not retried. Each attempt ends
    within ``timeout`` (an upload may run while its bytes flow, each chunk taken within
    ``timeout``; the wait for the answer after it is bounded by ``timeout``). Between
    attempts the client waits a jittered backoff of at most 8 s, or the server's
    Retry-After when it is at most ``max_retry_wait`` (default 60 s); a longer Retry-After
    is not slept on: the error (``RateLimitError`` with ``retry_after`` on a 429) is raised
    at once. So one call, retries included, takes at most
    ``(max_retries + 1) * timeout + max_retries * max(max_retry_wait, 8)`` seconds plus any
    wait for the rate budget (whose 429 pause is capped at its own ``max_pause``).

    Proxies and CA bundles come from the environment as httpx takes them by default
    (``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` with ``NO_PROXY``; ``SSL_CERT_FILE``,
    ``SSL_CERT_DIR``), or ``proxy=``. When a proxy applies, requests go through httpx's own
    transport with that proxy (on asyncio too). ``CAMB_LOG=debug|info`` sends the library's
    log lines to stderr.

    Args:
        api_key: the API key; ``None`` reads ``CAMB_API_KEY``.
        base_url: the API's root; ``None`` reads ``CAMB_BASE_URL``, else CAMB.AI's.
        timeout: seconds each attempt may take at most.
        max_retries: retries of a failed attempt (429, 5xx, connection failures).
        rate_limit: requests per second this client starts at most; ``None``: no limit.
        max_concurrency: requests in flight at most.
        budget: a shared ``Budget`` (e.g. ``RedisRateBudget``), in place of ``rate_limit``
            and ``max_concurrency``. ``async with client`` enters the budget's own
            ``async with`` when it has one and no one has entered it yet.
        http_client: your own ``httpx.AsyncClient`` (left open by ``aclose()``).
        transport: an httpx transport for the client's own ``httpx.AsyncClient``.
        allow_insecure: allow a plain-http ``base_url`` (or proxy) on a remote host, which
            sends the key in clear text.
        verify: verify the server's TLS certificate.
        hooks: request hooks for metrics and tracing.
        completion_stats: task durations learned earlier (``CompletionStats.from_dict``).
        max_response_bytes: largest JSON answer read, after decompression.
        max_retry_wait: longest Retry-After slept on; a longer one raises at once.
        proxy: a proxy URL (or ``httpx.Proxy``) for every request, in place of the
            environment's; not with ``http_client`` or ``transport``.
    """

    dub: DubResource
    tts: TTSResource
    translation: TranslationResource
    transcription: TranscriptionResource
    base_url: str
    timeout: float
    max_retries: int
    max_response_bytes: int
    max_retry_wait: float
    budget: Budget
    completion_stats: CompletionStats

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 3,
        rate_limit: float | None = 20.0,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        budget: Budget | None = None,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        allow_insecure: bool = False,
        verify: bool = True,
        hooks: RequestHooks | None = None,
        completion_stats: CompletionStats | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_retry_wait: float = MAX_RETRY_AFTER,
        proxy: str | httpx.Proxy | None = None,
    ) -> None:
        setup_logging()
        key = check_key(api_key)
        parsed = check_base_url(base_url, transport=transport, allow_insecure=allow_insecure)
        check_settings(timeout=timeout, max_retries=max_retries)
        if http_client is not None and transport is not None:
            raise ValueError("pass http_client or transport, not both")
        check_settings(max_response_bytes=max_response_bytes, max_retry_wait=max_retry_wait)
        proxy = resolve_proxy(
            proxy,
            parsed,
            http_client=http_client,
            transport=transport,
            allow_insecure=allow_insecure,
        )
        if budget is None:
            budget = RateBudget(rate_limit, max_concurrency)
        elif not is_budget(budget):
            raise TypeError("budget must provide acquire(), release() and penalize()")
        _check_collaborators(hooks, completion_stats)
        self._set_key(key)
        KEY_FILTER.clients.add(self)
        self.base_url = str(parsed).rstrip("/")
        self.timeout = float(timeout)
        self.max_retries = max_retries
        #: Largest JSON answer read (bytes, after decompression); a larger one is APIError.
        self.max_response_bytes = max_response_bytes
        #: Longest Retry-After slept on; a longer one raises (RateLimitError on a 429) at once.
        self.max_retry_wait = float(max_retry_wait)
        self.budget: Budget = budget
        self._verify = verify
        self._allow_insecure = allow_insecure
        self._proxy: httpx.Proxy | None = proxy
        #: The client a ``with_options`` view belongs to (``None``: this is no view).
        self._parent: AsyncCambClient | None = None
        self._views: weakref.WeakSet[AsyncCambClient] = weakref.WeakSet()
        #: The budget's own ``async with``, when ``async with client`` entered it.
        self._budget_entered = False
        #: Request hooks for metrics/tracing; ``None`` costs one check per attempt.
        self._hooks = hooks
        #: How long each kind of task took, learned from every completion this client saw;
        #: read by ``PollPolicy.adaptive``. ``to_dict()``/``CompletionStats.from_dict()``
        #: carry it across restarts.
        self.completion_stats = (
            completion_stats if completion_stats is not None else (CompletionStats())
        )
        self._transport = transport
        self._http: httpx.AsyncClient | None = http_client
        self._owns_http = http_client is None
        self._closed = False
        self._scopes: set[anyio.CancelScope] = set()
        self._headers = {
            "x-api-key": key,
            "user-agent": f"camb-async/{__version__}",
            "accept": "application/json",
            # Only encodings _read_capped inflates in bounded steps (httpx would add br/zstd).
            "accept-encoding": "gzip, deflate",
        }
        #: Set by ``_open()`` when this client owns its HTTP client: requests then go straight
        #: to the transport (see ``_DirectSender``).
        self._direct: _DirectSender | None = None
        #: Answers (of any status) the server has sent this client: a poll that failed to
        #: connect while this did not move tells "server unreachable" from "this task's
        #: problem" (the bulk poller and handles then stop instead of re-polling).
        self._answers = 0
        self._attach_resources()

    def _attach_resources(self) -> None:
        """``dub``, ``tts``, ``translation``, ``transcription``: this client's (or view's)."""
        self.dub = DubResource(self, TaskKind.DUB)
        self.tts = TTSResource(self, TaskKind.TTS)
        self.translation = TranslationResource(self, TaskKind.TRANSLATION)
        self.transcription = TranscriptionResource(self, TaskKind.TRANSCRIPTION)
        self._resources: dict[TaskKind, TaskResource[Any]] = {
            TaskKind.DUB: self.dub,
            TaskKind.TTS: self.tts,
            TaskKind.TRANSLATION: self.translation,
            TaskKind.TRANSCRIPTION: self.transcription,
        }

    # ------------------------------------------------------------------ public surface

    def _set_key(self, key: str) -> None:
        """Keep the key, and the patterns that find echoes of it in answers."""
        self.__key = key
        self.__echo = echo_pattern(key)
        # The same pieces as text, checked on decoded strings when the bytes could hide an
        # echo from the check above: JSON escapes (``\u0073k-...``) or a UTF-16/32 body.
        self.__echo_text = echo_text_pattern(key)
        # Which escapes could spell the key: ``\u`` always, any backslash if the key holds a
        # character JSON may escape as ``\/``, ``\\`` or ``\"``.
        self.__escape = b"\\" if any(c in key for c in '/\\"') else b"\\u"

    def _snippet(self, text: bytes | str, limit: int = SNIPPET_LIMIT) -> str:
        """``snippet`` of ``text`` without this client's key."""
        return snippet(text, limit, self.__key)

    def _echoed(self, raw: bytes) -> bool:
        """Whether ``raw`` may hold an echo of this client's key (one regex search)."""
        return self.__echo.search(raw) is not None

    def _echoed_text(self, text: str) -> bool:
        """Whether decoded ``text`` may hold an echo of this client's key."""
        return self.__echo_text.search(text) is not None

    def _escaped(self, raw: bytes) -> bool:
        """Whether ``raw`` holds an escape that could spell the key once JSON-decoded."""
        return self.__escape in raw

    def _redact(self, text: str) -> str:
        """``text`` without this client's key (or any echoed part of it)."""
        return redact(text, self.__key)

    def _redact_name(self, name: str) -> str:
        """A lowercased header ``name`` without the key, whatever the key's case."""
        return redact(redact(name, self.__key), self.__key.lower())

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<AsyncCambClient base_url={self.base_url!r} budget={self.budget!r} {state}>"

    @property
    def closed(self) -> bool:
        """Whether ``aclose()`` ran (for a ``with_options`` view: its own or that of a
        client or view it was made from)."""
        return self._closed

    def with_options(
        self,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        max_retry_wait: float | None = None,
        max_response_bytes: int | None = None,
    ) -> AsyncCambClient:
        """A light view of this client with other per-request settings.

        The view shares this client's connection pool, rate budget, hooks and completion
        statistics; only the settings given here differ. Closing the view ends its own calls
        (and those of views made from it) and leaves this client open; closing this client
        ends the views' calls too.
        ``client.with_options(timeout=5).dub.status(id)`` is the usual shape.

        Args:
            timeout: seconds each attempt may take at most.
            max_retries: retries of a failed attempt.
            max_retry_wait: longest Retry-After slept on.
            max_response_bytes: largest JSON answer read, after decompression.
        """
        if self._closed:
            raise ClientClosedError("this AsyncCambClient is closed; create a new one")
        given = {
            "timeout": timeout,
            "max_retries": max_retries,
            "max_response_bytes": max_response_bytes,
            "max_retry_wait": max_retry_wait,
        }
        check_settings(**{name: value for name, value in given.items() if value is not None})
        root = self._parent or self
        view: AsyncCambClient = object.__new__(AsyncCambClient)
        view.__dict__.update(self.__dict__)
        if timeout is not None:
            view.timeout = float(timeout)
        if max_retries is not None:
            view.max_retries = max_retries
        if max_retry_wait is not None:
            view.max_retry_wait = float(max_retry_wait)
        if max_response_bytes is not None:
            view.max_response_bytes = max_response_bytes
        view._parent = root
        view._views = weakref.WeakSet()
        view._owns_http = False  # the pool is the parent's: a view never closes it
        view._budget_entered = False
        view._scopes = set()
        view._http = None  # opened through the parent (see _open)
        view._direct = None
        view._attach_resources()
        root._views.add(view)  # the root's close reaches it even if ``self`` is gone
        if self is not root:
            self._views.add(view)  # and so does the view it was made from
        return view

    async def __aenter__(self) -> AsyncCambClient:
        """Open the HTTP client and, when the budget has an ``async with`` of its own that no
        one has entered (``RedisRateBudget`` holds its Redis connections open in one), enter
        it for the client's block."""
        if self._closed:
            raise ClientClosedError("this AsyncCambClient is closed; create a new one")
        self._open()
        budget: Any = self.budget
        if (
            self._parent is None
            and callable(getattr(budget, "__aenter__", None))
            and callable(getattr(budget, "__aexit__", None))
            and getattr(budget, "entered", True) is False
        ):
            await budget.__aenter__()
            self._budget_entered = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """``aclose()``, then leave the budget's ``async with`` if ``__aenter__`` entered it."""
        try:
            await self.aclose()
        finally:
            if self._budget_entered:
                self._budget_entered = False
                budget: Any = self.budget
                await budget.__aexit__(*exc_info)

    async def aclose(self) -> None:
        """Close the client. Requests still in flight or waiting for the budget end with
        ``ClientClosedError``.

        Closing twice is fine. A caller's own ``http_client`` is left open.
        """
        if self._closed:
            return
        self._closed = True
        for scope in list(self._scopes):
            scope.cancel()
        for view in list(self._views):  # their calls use this client's pool: they end too
            await view.aclose()
        http, self._http = self._http, None
        if http is not None and self._owns_http:
            with anyio.CancelScope(shield=True):
                await http.aclose()

    async def _sleep(self, seconds: float) -> None:
        """Wait between polls; ``aclose()`` cuts the wait short with ``ClientClosedError``,
        so a caller waiting on a slow task is released at shutdown, not at its next poll."""
        if self._closed:
            raise ClientClosedError("this AsyncCambClient is closed")
        scope = anyio.CancelScope()
        self._scopes.add(scope)
        try:
            with scope:
                await anyio.sleep(seconds)
        finally:
            self._scopes.discard(scope)
        if self._closed:
            raise ClientClosedError("the AsyncCambClient was closed while waiting to poll")

    # ------------------------------------------------------------------ the request path

    def _open(self) -> httpx.AsyncClient:
        if self._closed:
            raise ClientClosedError("this AsyncCambClient is closed; create a new one")
        parent = self._parent
        if parent is not None:  # a view: the parent's pool, this view's settings
            if self._http is None:
                http = parent._open()
                if parent._direct is not None:
                    self._direct = _DirectSender(http, parent._direct._transport, self._headers)
                self._http = http
            return self._http
        if self._http is None:
            self._transport, self._http, self._direct = open_owned(
                transport=self._transport,
                proxy=self._proxy,
                verify=self._verify,
                timeout=self.timeout,
                headers=self._headers,
                keepalive=max(20, concurrency_of(self.budget)),
            )
        return self._http

    _request = request
