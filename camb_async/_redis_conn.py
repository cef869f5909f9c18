"""The Redis side shared by the fleet budget (and the watch list): which failures are
outages, what an error reply is called, TLS defaults for ``rediss://``, opening a client from a
URL, and the errors raised when Redis cannot be used."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import anyio

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

from ._errors import CambError

try:
    import coredis
    import coredis.exceptions
    import coredis.parser
    import coredis.retry
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("camb_async.redis needs coredis: pip install 'camb-async[redis]'") from exc

__all__ = ["RedisBudgetUnavailableError", "RedisClient", "RedisReplyError", "open_client"]

#: A coredis client: standalone, Cluster, or Sentinel-managed (``Sentinel.primary_for``).
RedisClient: TypeAlias = "coredis.Redis[Any] | coredis.RedisCluster[Any]"

#: What a failed call may raise: coredis' errors (connection, protocol, error replies,
#: Cluster routing), timeouts and socket errors, and anyio's stream errors.
_FAILURES: tuple[type[Exception], ...] = (
    coredis.exceptions.RedisError,
    OSError,  # TimeoutError and ConnectionError included
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)
#: Credentials refused: a misconfiguration, not an outage to wait out.
_CONFIG_ERRORS = (coredis.exceptions.AuthenticationError, coredis.exceptions.AuthorizationError)


class RedisBudgetUnavailableError(CambError):
    """The budget could not use Redis and ``on_redis_error="raise"`` was chosen.

    ``redis_error`` names what went wrong: the error code of Redis's reply (``"OOM"``,
    ``"READONLY"``, ...) or the kind of failure (``"ConnectionError"``, ``"TimeoutError"``).
    """

    def __init__(self, message: str, *, redis_error: str = "") -> None:
        super().__init__(message)
        self.redis_error = redis_error


class RedisReplyError(RedisBudgetUnavailableError):
    """Redis answered with an error (``redis_error`` is its code: OOM, READONLY, WRONGPASS...).

    Raised with ``on_redis_error="raise"``, and whatever the mode when Redis refuses the
    credentials (WRONGPASS, NOAUTH, NOPERM): a misconfiguration, not an outage.
    """


#: Error replies that coredis raises as classes of their own, with the code cut off the message.
_REPLY_CODES: dict[type[BaseException], str] = {
    cls: code
    for code, cls in coredis.parser.Parser.EXCEPTION_CLASSES.items()
    if isinstance(cls, type)
}


def _reply_code(exc: BaseException) -> str | None:
    """The error code of a Redis error reply ("OOM", "READONLY"), None if not a reply."""
    code = _REPLY_CODES.get(type(exc))
    if code is not None:
        return code
    text = str(exc)
    if isinstance(exc, coredis.exceptions.ResponseError):
        word = text.split(" ", 1)[0]
        return word if word.isupper() and word.isalpha() else "ERR"
    if text.startswith("max number of clients reached"):  # coredis: a ConnectionError
        return "ERR"
    return None


def _error_name(exc: BaseException) -> str:
    """What went wrong: the code of Redis's error reply, else the kind of failure."""
    return _reply_code(exc) or type(exc).__name__


def _first_failure(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The failure inside ``group`` if it holds only ordinary errors, else ``group`` itself."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(reversed(exc.exceptions))
        else:
            leaves.append(exc)
    if not all(isinstance(exc, Exception) for exc in leaves):
        return group  # a cancellation among them: it must go on as it is
    return next((exc for exc in leaves if isinstance(exc, _FAILURES)), group)


def _client_is_open(client: RedisClient) -> bool:
    """True if someone holds ``client`` open (its pool runs); then it is used as it is."""
    try:
        client.connection_pool.task_group  # noqa: B018 - raises unless the pool is open
    except RuntimeError:
        return False
    return True


def _tls_defaults(url: str) -> str:
    """``rediss://``: check the server's name against its certificate unless told otherwise.

    coredis builds the TLS context from the URL's ``ssl_*`` parameters (``ssl_ca_certs``,
    ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``, ``ssl_check_hostname``) but does not
    check the host name by default.
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return url
    query = parse_qsl(parts.query, keep_blank_values=True)
    for key, value in query:  # coredis looks it up as is: anything else was a raw KeyError
        if key == "ssl_cert_reqs" and value not in ("none", "optional", "required"):
            raise ValueError(
                f"ssl_cert_reqs must be 'none', 'optional' or 'required', got {value[:40]!r}"
            )
    if any(key == "ssl_check_hostname" for key, _ in query):
        return url
    if any(key == "ssl_cert_reqs" and value.lower() == "none" for key, value in query):
        return url
    query.append(("ssl_check_hostname", "true"))
    return urlunsplit(parts._replace(query=urlencode(query)))


def open_client(url: str, *, cluster: bool, redis_options: Mapping[str, Any] | None) -> RedisClient:
    """A coredis client for ``url`` (see ``RedisRateBudget.from_url`` for the defaults)."""
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"unsupported Redis URL scheme {scheme!r}")
    if cluster and scheme == "unix":
        raise ValueError("a Redis Cluster is reached over TCP (redis:// or rediss://)")
    kwargs: dict[str, Any] = {
        "stream_timeout": 2.0,
        "connect_timeout": 1.0,
        "decode_components": True,  # percent-encoded passwords, as in any URL
    }
    if not cluster:  # the Cluster client's own policy follows MOVED and CLUSTERDOWN
        kwargs["retry_policy"] = coredis.retry.ConstantRetryPolicy(
            (coredis.exceptions.ConnectionError,), retries=1, delay=0
        )
    kwargs.update(redis_options or {})
    client: RedisClient
    if cluster:
        with warnings.catch_warnings():  # coredis 6.9 warns about its own from_url
            warnings.filterwarnings(
                "ignore", "Use coredis.connection.TCPLocation", DeprecationWarning
            )
            client = coredis.RedisCluster.from_url(_tls_defaults(url), **kwargs)
    else:
        client = coredis.Redis.from_url(_tls_defaults(url), **kwargs)
    return client


def url_secrets(url: str) -> tuple[str, ...]:
    """The password of ``url`` as written and decoded: redacted from every message."""
    parts = urlsplit(url)
    return tuple(
        secret for secret in (parts.password, parts.password and unquote(parts.password)) if secret
    )
