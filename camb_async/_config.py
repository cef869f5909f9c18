"""Configuration of a client: the key, the base URL (and when plain http is refused), the
proxy (given or from the environment), the numeric settings ``AsyncCambClient`` and
``with_options`` share, and a request's ``extra_*`` fields (``with_extras``). Error
messages are part of the contract (tests match them)."""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import math
import os
import re
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from ._errors import MIN_ECHO
from ._validation import is_int, is_number

if TYPE_CHECKING:
    from ._client import AsyncCambClient

__all__ = [
    "DEFAULT_BASE_URL",
    "check_base_url",
    "check_key",
    "check_settings",
    "echo_pattern",
    "echo_text_pattern",
    "resolve_proxy",
    "with_extras",
]

DEFAULT_BASE_URL = "https://client.camb.ai/apis"
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def check_key(api_key: str | None) -> str:
    """``api_key``, or ``CAMB_API_KEY`` from the environment; refused if missing or unsafe."""
    key = api_key if api_key is not None else os.environ.get("CAMB_API_KEY")
    if key is None or not isinstance(key, str) or not key.strip():
        raise ValueError(
            "no API key: pass api_key=... or set the CAMB_API_KEY environment variable"
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise ValueError("the API key contains control characters")
    return key


def check_base_url(
    base_url: str | None, *, transport: httpx.AsyncBaseTransport | None, allow_insecure: bool
) -> httpx.URL:
    """The base URL (argument, ``CAMB_BASE_URL`` or the default), refused over plain http to
    a host that is neither loopback nor in-process unless ``allow_insecure``."""
    base = base_url or os.environ.get("CAMB_BASE_URL") or DEFAULT_BASE_URL
    parsed = httpx.URL(base)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"base_url must be an http(s) URL with a host, got {base!r}")
    # In-process transports (httpx's ASGI app and mock handler) send nothing over a
    # network, so a test's "http://testserver" exposes no key.
    in_process = isinstance(transport, (httpx.ASGITransport, httpx.MockTransport))
    if (
        parsed.scheme == "http"
        and not allow_insecure
        and not in_process
        and not _is_loopback(parsed.host)
    ):
        raise ValueError(
            f"refusing to send the API key over plain http to {parsed.host!r}; "
            "use https, a loopback host, or pass allow_insecure=True"
        )
    return parsed


def check_settings(**settings: Any) -> None:
    """Check the numeric settings passed (``timeout``, ``max_retries``,
    ``max_response_bytes``, ``max_retry_wait``); one left out is not checked."""
    if "timeout" in settings:
        timeout = settings["timeout"]
        if not is_number(timeout) or not 0 < timeout < math.inf:  # NaN fails this too
            raise ValueError(
                f"timeout must be a finite positive number of seconds, got {timeout!r}"
            )
    if "max_retries" in settings:
        max_retries = settings["max_retries"]
        if not is_int(max_retries) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
    if "max_response_bytes" in settings:
        max_response_bytes = settings["max_response_bytes"]
        if not is_int(max_response_bytes) or max_response_bytes < 1:
            raise ValueError(
                f"max_response_bytes must be a positive integer, got {max_response_bytes!r}"
            )
    if "max_retry_wait" in settings:
        max_retry_wait = settings["max_retry_wait"]
        if not is_number(max_retry_wait) or not max_retry_wait >= 0 or math.isinf(max_retry_wait):
            raise ValueError(
                f"max_retry_wait must be a finite number of seconds >= 0, got {max_retry_wait!r}"
            )


def resolve_proxy(
    proxy: str | httpx.Proxy | None,
    parsed: httpx.URL,
    *,
    http_client: httpx.AsyncClient | None,
    transport: httpx.AsyncBaseTransport | None,
    allow_insecure: bool,
) -> httpx.Proxy | None:
    """The proxy of the client's own transport: given, or the environment's for ``parsed``;
    refused when it would carry the key over plain http off this host, and a malformed
    or unusable (SOCKS without socksio) one is a ValueError naming where it came from."""
    setting = "proxy="
    if proxy is not None:
        if http_client is not None or transport is not None:
            raise ValueError(
                "proxy= is for the client's own transport; configure it on "
                "your http_client or transport instead"
            )
        if not isinstance(proxy, httpx.Proxy):
            if not isinstance(proxy, str):
                raise TypeError("proxy must be a URL string or an httpx.Proxy")
            proxy = _make_proxy(proxy, setting)
    if proxy is None and http_client is None and transport is None:
        from_env = _env_proxy(parsed)  # read once, like httpx's own trust_env
        setting = f"the {parsed.scheme.upper()}_PROXY (or ALL_PROXY) environment variable"
        proxy = None if from_env is None else _make_proxy(from_env, setting)
    if (
        proxy is not None
        and proxy.url.scheme in ("socks5", "socks5h")
        and importlib.util.find_spec("socksio") is None
    ):
        raise ValueError(
            f"{setting} names a SOCKS proxy, which needs the socksio package: "
            "pip install httpx[socks]"
        )
    if (
        proxy is not None
        and parsed.scheme == "http"
        and proxy.url.scheme == "http"
        and not allow_insecure
        and not _is_loopback(proxy.url.host)
    ):
        raise ValueError(
            f"refusing to send the API key over plain http to the proxy "
            f"{proxy.url.host!r}; use an https base_url, a loopback proxy, or pass "
            "allow_insecure=True"
        )
    return proxy


def _make_proxy(url: str, setting: str) -> httpx.Proxy:
    """``httpx.Proxy(url)``, with a malformed URL a ValueError naming ``setting``."""
    try:
        return httpx.Proxy(url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"{setting} is not a valid proxy URL ({exc})") from None


def echo_pattern(key: str) -> re.Pattern[bytes]:
    """Aligned pieces of the key: any echo of 2 * MIN_ECHO - 1 or more of its characters
    contains one, so one regex search (~0.3 us) checks a 2xx body (see ``_answers.decode``)."""
    raw = key.encode()
    pieces = {raw[i : i + MIN_ECHO] for i in range(0, len(raw) - MIN_ECHO + 1, MIN_ECHO)}
    pieces.add(raw[-MIN_ECHO:])
    return re.compile(b"|".join(re.escape(p) for p in sorted(pieces)))


def echo_text_pattern(key: str) -> re.Pattern[str]:
    """``echo_pattern`` as text, for decoded strings (JSON escapes, UTF-16/32 bodies)."""
    texts = {key[i : i + MIN_ECHO] for i in range(0, len(key) - MIN_ECHO + 1, MIN_ECHO)}
    texts.add(key[-MIN_ECHO:])
    return re.compile("|".join(re.escape(p) for p in sorted(texts)))


def _env_proxy(url: httpx.URL) -> str | None:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY``/``HTTP_PROXY``/
    ``ALL_PROXY``, honouring ``NO_PROXY``), as httpx would pick it; ``None`` for none.

    Loopback hosts never go through an environment proxy: the proxy's loopback is not ours.
    """
    if _is_loopback(url.host):
        return None
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if not proxy:
        return None
    host = url.host if url.port is None else f"{url.host}:{url.port}"
    if urllib.request.proxy_bypass_environment(host, proxies):  # type: ignore[attr-defined]
        return None
    return proxy


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Headers that say where the body ends: never a caller's to set.
_FRAMING = frozenset({"content-length", "transfer-encoding"})


def _check_header(name: str, value: str) -> None:
    """Refuse a header httpx could not send (or would send as two): the name must be an
    RFC 7230 token, the value ASCII text without CR, LF or NUL (httpx encodes ``str``
    header values as ASCII, so even latin-1 text fails in the transport)."""
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"extra_headers name {name!r} is not a valid HTTP header name")
    if name.lower() in _FRAMING:
        raise ValueError(
            f"extra_headers cannot set {name!r}: the body's framing is the transport's "
            "(a wrong one sends a cut or garbled request)"
        )
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"extra_headers value for {name!r} contains CR, LF or NUL")
    if not value.isascii():
        raise ValueError(
            f"extra_headers value for {name!r} must be ASCII (percent-encode other text)"
        )


def _check_body(extra_body: Mapping[str, Any]) -> None:
    """Refuse extra body fields that cannot be sent as JSON (sets, bytes, NaN, lone
    surrogates): a caller's mistake, not a transport error to retry."""
    for name, value in extra_body.items():
        _check_field(name, value)


def _check_field(name: str, value: Any) -> None:
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except TypeError as exc:
        raise TypeError(f"extra_body field {name!r} cannot be sent as JSON: {exc}") from None
    except ValueError as exc:  # NaN/inf, or a lone surrogate (UnicodeEncodeError)
        raise ValueError(f"extra_body field {name!r} cannot be sent as JSON: {exc}") from None


def with_extras(
    client: AsyncCambClient,
    extra_headers: Mapping[str, str] | None,
    extra_query: Mapping[str, str | int] | None,
    extra_body: Mapping[str, Any] | None,
    params: Mapping[str, str | int] | None,
    json_body: Any,
    files: Any,
    reopen_body: Callable[[], Awaitable[Any]] | None,
) -> tuple[
    Mapping[str, str], Mapping[str, str | int] | None, Any, Any, Callable[[], Awaitable[Any]] | None
]:
    """The request's headers, query, body and multipart parts with a caller's extra
    fields added (``extra_*`` on the public calls). The key header is never theirs."""
    headers: Mapping[str, str] = client._headers
    if extra_headers:
        if not isinstance(extra_headers, Mapping):
            raise TypeError("extra_headers must be a mapping of header names to values")
        merged = dict(client._headers)
        for name, value in extra_headers.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise TypeError("extra_headers names and values must be strings")
            if name.strip().lower() == "x-api-key":
                raise ValueError("extra_headers cannot set x-api-key; pass api_key= to the client")
            _check_header(name, value)
            merged = {k: v for k, v in merged.items() if k.lower() != name.lower()}
            merged[name] = value
        headers = merged
    if extra_query:
        if not isinstance(extra_query, Mapping):
            raise TypeError("extra_query must be a mapping")
        params = {**(params or {}), **extra_query}
    if extra_body:
        if not isinstance(extra_body, Mapping):
            raise TypeError("extra_body must be a mapping")
        _check_body(extra_body)
        if files is not None:
            form = [
                (str(name), (None, value if isinstance(value, str) else json.dumps(value)))
                for name, value in extra_body.items()
            ]
            files = [*files, *form]
            if reopen_body is not None:
                reopen = reopen_body

                async def reopen_with_extras() -> Any:
                    return [*(await reopen()), *form]

                reopen_body = reopen_with_extras
        elif json_body is None:
            json_body = dict(extra_body)
        elif isinstance(json_body, Mapping):
            json_body = {**json_body, **extra_body}
        else:
            raise TypeError("extra_body needs a JSON object body")
    return headers, params, json_body, files, reopen_body
