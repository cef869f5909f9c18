"""Secret hygiene: the API key never leaves through a repr, an error, a traceback or a log,
is never sent in clear over the network to another machine, and TLS is verified by default.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from camb_async import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AsyncCambClient,
    AuthenticationError,
    CambError,
    ClientClosedError,
    InternalServerError,
    NotFoundError,
    PollPolicy,
    RateLimitError,
    TaskFailedError,
    UnprocessableEntityError,
    WaitTimeoutError,
    gather_results,
    gather_statuses,
)
from camb_async.testing import FakeCambAPI

pytestmark = pytest.mark.anyio

#: Distinctive, so a leak of any large part of it is found too.
SECRET = "sk-live-7Hq2ZpX9mK4vR8wN3bT6yC1dF5gJ0aLe"
FRAGMENTS = [SECRET, SECRET[8:], SECRET[:20], SECRET[-16:]]
FAST = PollPolicy(initial=1.0, factor=1.0, max_interval=1.0, jitter=0.0, max_errors=0)


def assert_no_secret(*texts: object) -> None:
    for text in texts:
        rendered = text if isinstance(text, str) else repr(text)
        for fragment in FRAGMENTS:
            assert fragment not in rendered, f"API key leaked into: {rendered[:300]!r}"


def error_texts(error: BaseException) -> list[str]:
    """Everything a user, a log aggregator or an error tracker would render of an error."""
    texts = [str(error), repr(error), "".join(traceback.format_exception(error))]
    texts += [repr(value) for value in vars(error).values()]
    for arg in error.args:
        texts.append(repr(arg))
    return texts


async def collect_errors(api: FakeCambAPI, client: AsyncCambClient) -> list[BaseException]:
    """One error of every class the client produces from answers and transport failures."""
    errors: list[BaseException] = []

    async def catch(coro: Any) -> None:
        try:
            await coro
        except CambError as exc:
            errors.append(exc)
        else:
            raise AssertionError("expected an error")

    ok = api.add_task("dub", "ok", status="ERROR", message="failed", exception_reason="NONE")
    api.add_task("tts", "slow", after=1e9)
    api.inject(status=401, path="/dub/")
    await catch(client.dub.status(ok))
    api.inject(status=403, path="/dub/")
    await catch(client.dub.status(ok))
    await catch(client.dub.status("missing"))
    api.inject(
        status=422,
        path="/dub/",
        body=b'{"detail":[{"loc":["path","task_id"],"msg":"bad","type":"value_error"}]}',
    )
    await catch(client.dub.status(ok))
    api.inject(status=429, retry_after="1", count=2, path="/dub/")
    await catch(client.dub.status(ok))
    api.inject(status=503, count=2, path="/dub/")
    await catch(client.dub.status(ok))
    api.inject(status=None, body=b"<html>not json</html>", path="/dub/")
    await catch(client.dub.status(ok))
    api.inject(status=418, path="/dub/")
    await catch(client.dub.status(ok))
    failed = await client.dub.status(ok)
    errors.append(TaskFailedError(failed))
    await catch(client.tts.task("slow").wait(timeout=5, policy=FAST))
    api.inject(status=404, path="/dub/")
    out = await gather_statuses(client, [ok], kind="dub", return_exceptions=True)
    assert isinstance(out[0], BaseException)
    errors.append(out[0])
    return errors


async def test_key_absent_from_every_error_repr_and_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, httpx and httpcore included
    api = FakeCambAPI(api_key=SECRET)
    async with AsyncCambClient(
        SECRET,
        base_url="http://localhost",
        max_retries=1,
        rate_limit=5,
        transport=httpx.ASGITransport(app=api),
    ) as client:
        errors = await collect_errors(api, client)
        handle = client.dub.task("ok")
        result = await handle.status()
        fetched: list[object] = []  # result models of every kind, from real answers
        for kind in ("dub", "tts", "translate", "transcribe"):
            done = api.add_task(kind, f"{kind}-done", status="SUCCESS")
            fetched.append(await client.task(kind, done).result())
        objects: list[object] = [
            client,
            client.dub,
            client.tts,
            client.translation,
            client.transcription,
            handle,
            result,
            client.budget,
            FAST,
            *fetched,
        ]
        assert_no_secret(*objects, *(str(o) for o in objects))
    classes = {type(e) for e in errors}
    assert {
        AuthenticationError,
        NotFoundError,
        UnprocessableEntityError,
        RateLimitError,
        InternalServerError,
        APIError,
        TaskFailedError,
        WaitTimeoutError,
    } <= classes
    for error in errors:
        assert_no_secret(*error_texts(error))
    assert "retrying" in caplog.text  # the DEBUG/INFO log did see the retries ...
    assert_no_secret(caplog.text)  # ... and not the key
    for record in caplog.records:
        assert_no_secret(record.getMessage(), repr(record.args))


async def test_key_absent_from_transport_errors_and_closed_client_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)

    def fail(request: httpx.Request) -> httpx.Response:
        assert request.headers["x-api-key"] == SECRET  # it is sent, to the right place only
        if request.url.path.endswith("/timeout"):
            raise httpx.ReadTimeout("read timed out", request=request)
        raise httpx.ConnectError(f"connection refused to {request.url}", request=request)

    errors: list[BaseException] = []
    client = AsyncCambClient(
        SECRET, base_url="http://127.0.0.1:9", max_retries=1, transport=httpx.MockTransport(fail)
    )
    for task_id in ("timeout", "refused"):
        with pytest.raises(APIConnectionError) as info:
            await client.dub.status(task_id)
        errors.append(info.value)
    assert isinstance(errors[0], APITimeoutError)
    await client.aclose()
    with pytest.raises(ClientClosedError) as closed:
        await client.dub.status("x")
    errors.append(closed.value)
    for error in errors:
        assert_no_secret(*error_texts(error))
    assert_no_secret(caplog.text, client)


async def test_key_from_environment_is_not_echoed_in_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CAMB_API_KEY", SECRET)
    monkeypatch.setenv("CAMB_BASE_URL", "http://api.example.com")
    with pytest.raises(ValueError) as info:
        AsyncCambClient()
    assert_no_secret(*error_texts(info.value))


@pytest.mark.parametrize(
    "base_url",
    [
        "http://client.camb.ai/apis",
        "http://example.com",
        "HTTP://EXAMPLE.COM",
        "http://10.0.0.1",
        "http://192.168.1.10:8080",
        "http://127.0.0.1.nip.io",
        "http://localhost.evil.com",
        "http://[::ffff:8.8.8.8]",
        "http://0.0.0.0",
        "http://evil.com#@localhost",
    ],
)
async def test_plain_http_to_a_remote_host_is_refused(base_url: str) -> None:
    with pytest.raises(ValueError, match="plain http") as info:
        AsyncCambClient(SECRET, base_url=base_url)
    assert_no_secret(*error_texts(info.value))
    # An explicit opt-in is honoured (e.g. a TLS-terminating sidecar on a private network).
    client = AsyncCambClient(SECRET, base_url=base_url, allow_insecure=True)
    await client.aclose()


@pytest.mark.parametrize(
    "base_url",
    [
        "http://localhost:8000",
        "http://127.0.0.1",
        "http://127.3.2.1:1",
        "http://[::1]:8080",
        "http://api.localhost",
        "https://example.com",
    ],
)
async def test_loopback_http_and_https_are_allowed(base_url: str) -> None:
    client = AsyncCambClient(SECRET, base_url=base_url)
    await client.aclose()


async def test_in_process_transports_need_no_opt_in_for_a_test_host() -> None:
    # Nothing leaves the process, so httpx's usual "http://testserver" is fine...
    for transport in (
        httpx.MockTransport(lambda r: httpx.Response(200, json={})),
        httpx.ASGITransport(app=FakeCambAPI()),
    ):
        client = AsyncCambClient(SECRET, base_url="http://testserver", transport=transport)
        await client.aclose()
    # ...but a real transport to a remote host still is refused.
    with pytest.raises(ValueError, match="plain http"):
        AsyncCambClient(SECRET, base_url="http://testserver", transport=httpx.AsyncHTTPTransport())


async def test_key_is_not_sent_to_a_redirect_target() -> None:
    seen: list[httpx.URL] = []

    def redirect(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(302, headers={"location": "https://attacker.example/steal"})

    async with AsyncCambClient(
        SECRET, base_url="https://client.camb.ai/apis", transport=httpx.MockTransport(redirect)
    ) as client:
        with pytest.raises(APIError) as info:
            await client.dub.status("t1")
    assert info.value.status_code == 302
    assert [u.host for u in seen] == ["client.camb.ai"]  # never followed
    assert_no_secret(*error_texts(info.value))


# ------------------------------------------------------------------- TLS verification


async def test_default_transport_is_configured_to_verify_certificates() -> None:
    """The constructed transport's TLS context requires a valid, matching certificate."""
    import ssl

    client = AsyncCambClient(SECRET)  # the real API's https URL; no request is made
    try:
        transport: Any = client._open()._transport
        pool = getattr(transport, "_pool", None)  # httpx's own (httpcore) transport
        context = pool._ssl_context if pool is not None else transport.ssl_context  # aiohttp
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode is ssl.CERT_REQUIRED
        assert context.check_hostname
    finally:
        await client.aclose()
    insecure = AsyncCambClient(SECRET, verify=False)
    try:
        transport = insecure._open()._transport
        pool = getattr(transport, "_pool", None)
        context = pool._ssl_context if pool is not None else transport.ssl_context
        assert context.verify_mode is ssl.CERT_NONE  # the opt-out is explicit and honoured
    finally:
        await insecure.aclose()


# ------------------------------------------------------------------- the key echoed back

PARTS = [SECRET, SECRET[:20], SECRET[8:], SECRET[-16:], SECRET[5:21]]


def echoing(request: httpx.Request) -> httpx.Response:
    """An error page of the kind debug endpoints, proxies and WAFs serve: it quotes the
    request's headers (the key among them) in its body, a header and its reason phrase."""
    headers = "\n".join(f"{name}: {value}" for name, value in request.headers.items())
    key = request.headers["x-api-key"]
    task = request.url.path.rsplit("/", 1)[-1]
    status = int(task.split("-")[0])
    extensions = {"reason_phrase": f"Denied {key}".encode()}
    echo = {"x-echo-api-key": key, "retry-after": "0"}
    if status == 422:
        detail = [
            {
                "loc": ["header", "x-api-key", key[:20]],
                "msg": f"bad key {key[8:]}",
                "type": f"value_error.{key[-16:]}",
            },
            {"loc": ["header"], "msg": f"prefix {key[:20]}…", "type": "x"},
        ]
        return httpx.Response(422, json={"detail": detail}, headers=echo, extensions=extensions)
    if status == 200 and task.endswith("failed"):  # a failed task whose message quotes it
        return httpx.Response(
            200,
            json={
                "status": "ERROR",
                "exception_reason": key[5:21],
                "message": f"request was: {headers}",
            },
            headers=echo,
        )
    if status == 200 and task.endswith("model"):  # a wrong type that quotes it
        return httpx.Response(200, json={"output_url": key[:30]}, headers=echo)
    body = f"<html><pre>{headers}</pre><p>partial: {key[:20]}… {key[-16:]}</p></html>"
    return httpx.Response(status, text=body, headers=echo, extensions=extensions)


@pytest.mark.parametrize("own_client", [True, False], ids=["owned", "callers"])
async def test_a_key_the_server_echoes_is_redacted_from_errors_and_logs(
    caplog: pytest.LogCaptureFixture, own_client: bool
) -> None:
    caplog.set_level(logging.DEBUG)
    transport = httpx.MockTransport(echoing)
    kwargs: dict[str, Any] = (
        {"transport": transport}
        if own_client
        else {"http_client": httpx.AsyncClient(transport=transport)}
    )
    errors: list[BaseException] = []
    async with AsyncCambClient(
        SECRET, base_url="http://localhost", max_retries=1, rate_limit=None, **kwargs
    ) as client:
        for status in (400, 401, 403, 404, 418, 422, 429, 500, 503, 200):
            with pytest.raises(CambError) as info:
                await client.dub.status(f"{status}-x")
            errors.append(info.value)
        with pytest.raises(TaskFailedError) as failed:
            await client.dub.task("200-failed").result()
        errors.append(failed.value)
        with pytest.raises(APIError) as model:
            await client.tts.result(1)  # /tts-result/1 answers the 200 page: not JSON
        errors.append(model.value)
        out = await gather_statuses(client, ["404-a", "422-b"], kind="tts", return_exceptions=True)
        errors += [e for e in out if isinstance(e, BaseException)]
        assert len(errors) >= len(out)
    assert {type(e) for e in errors} >= {
        APIError,
        AuthenticationError,
        NotFoundError,
        UnprocessableEntityError,
        RateLimitError,
        InternalServerError,
        TaskFailedError,
    }
    for error in errors:
        texts = error_texts(error)
        if isinstance(error, UnprocessableEntityError):
            assert error.detail, "the 422's reasons are kept, only the key is redacted"
            texts += [repr(d) for d in error.detail]
        if isinstance(error, TaskFailedError):
            texts += [repr(error.status), str(error.message), str(error.exception_reason)]
        for text in texts:
            for part in PARTS:
                assert part not in text, f"key echo leaked into: {text[:300]!r}"
    assert "[redacted]" in str(errors[0])  # the page is still quoted, minus the key
    assert "Denied" in caplog.text and "retrying" in caplog.text
    for part in PARTS:
        assert part not in caplog.text
    assert_no_secret(caplog.text)


def escaped(text: str) -> str:
    """``text`` spelled entirely in JSON ``\\uXXXX`` escapes."""
    return "".join(f"\\u{ord(ch):04x}" for ch in text)


def echoing_in_disguise(request: httpx.Request) -> httpx.Response:
    """2xx answers that echo the key where a bytes check cannot see it: as JSON escapes,
    or in a UTF-16/UTF-32 body (json.loads accepts both)."""
    key = request.headers["x-api-key"]
    path = request.url.path
    if path == "/tts":  # a created task whose id is the key
        text = '{"task_id": "' + escaped(key) + '"}'
    elif path.startswith("/tts-result/"):
        text = '{"output_url": "https://x.example/' + escaped(key) + '"}'
    else:
        kind = path.rsplit("/", 1)[-1]
        key_text = key if kind.startswith("utf") else escaped(key)
        text = (
            '{"status": "ERROR", "message": "invalid x-api-key '
            + key_text
            + '", "exception_reason": "key '
            + key_text
            + '"}'
        )
        if kind.startswith("utf"):
            return httpx.Response(
                200, content=text.encode(kind), headers={"content-type": "application/json"}
            )
    return httpx.Response(200, content=text.encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize("own_client", [True, False], ids=["owned", "callers"])
async def test_a_key_echoed_in_json_escapes_or_utf16_is_redacted(own_client: bool) -> None:
    """Before, the echo check ran on the raw bytes only: the key came back whole in the
    StatusResult, TaskFailedError, TTSResult.output_url and a created handle's repr."""
    transport = httpx.MockTransport(echoing_in_disguise)
    kwargs: dict[str, Any] = (
        {"transport": transport}
        if own_client
        else {"http_client": httpx.AsyncClient(transport=transport)}
    )
    texts: list[str] = []
    async with AsyncCambClient(
        SECRET, base_url="http://localhost", max_retries=0, rate_limit=None, **kwargs
    ) as client:
        for kind in ("escaped", "utf-16", "utf-16-be", "utf-32"):
            status = await client.dub.status(kind)
            texts += [repr(status), str(status.message), str(status.exception_reason)]
            assert "[redacted]" in str(status.message)
            with pytest.raises(TaskFailedError) as failed:
                await client.dub.task(kind).result()
            texts += error_texts(failed.value)
        result = await client.tts.result(1)
        texts.append(repr(result))
        assert result.output_url.startswith("https://x.example/")
        handle = await client.tts.create(text="hi", voice_id=1, language=1)
        texts += [repr(handle), str(handle.task_id)]
    for text in texts:
        for part in PARTS:
            assert part not in text, f"key echo leaked into: {text[:300]!r}"


async def test_a_short_echo_in_a_failed_task_is_redacted_from_the_message() -> None:
    """A failed task quoting 8-14 characters of the key (below the 2xx body check): the
    TaskFailedError message is built with the key, so they are redacted there."""
    part = SECRET[3:14]

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            json={"status": "ERROR", "message": f"bad {part}", "exception_reason": f"key {part}"},
        )

    async with AsyncCambClient(
        SECRET,
        base_url="http://localhost",
        max_retries=0,
        rate_limit=None,
        transport=httpx.MockTransport(answer),
    ) as client:
        with pytest.raises(TaskFailedError) as failed:
            await client.dub.task("t1").result()
        outcome = await gather_results(client, ["t1"], kind="dub", return_exceptions=True)
    assert isinstance(outcome[0], TaskFailedError)
    for error in (failed.value, outcome[0]):
        assert part not in str(error) and "[redacted]" in str(error)


class BreaksQuotingTheKey(httpx.AsyncByteStream):
    """An audio body whose framing breaks on a line quoting the key (as h11/aiohttp word it)."""

    async def __aiter__(self) -> Any:
        yield b"fLaC"
        raise httpx.RemoteProtocolError(f"malformed chunk size: b'zz {SECRET}'")


@pytest.mark.parametrize("own_client", [True, False], ids=["owned", "callers"])
async def test_a_transport_error_quoting_the_key_is_not_chained(own_client: bool) -> None:
    """Mid-body (BodyStream) and from the transport itself: the CambError is raised ``from
    None``, so the raw error quoting the key is in no formatted traceback (before, audio
    errors were raised ``from`` it)."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/tts-result"):
            return httpx.Response(200, stream=BreaksQuotingTheKey())
        raise RuntimeError(f"transport broke on {SECRET}")

    transport = httpx.MockTransport(answer)
    kwargs: dict[str, Any] = (
        {"transport": transport}
        if own_client
        else {"http_client": httpx.AsyncClient(transport=transport)}
    )
    errors: list[BaseException] = []
    async with AsyncCambClient(
        SECRET, base_url="http://localhost", max_retries=0, rate_limit=None, **kwargs
    ) as client:
        with pytest.raises(APIConnectionError) as audio:
            async for _ in client.tts.audio(5):
                pass
        errors.append(audio.value)
        with pytest.raises(APIConnectionError) as status:
            await client.dub.status("t1")
        errors.append(status.value)
    for error in errors:
        for text in error_texts(error):
            assert_no_secret(text)


@given(
    key=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=8, max_size=64),
    text=st.lists(
        st.text(max_size=30) | st.tuples(st.integers(0, 63), st.integers(8, 64)), max_size=8
    ),
)
def test_redact_leaves_no_run_of_eight_key_characters(key: str, text: list[Any]) -> None:
    """Any text, with any parts (8+ characters) of the key spliced in anywhere."""
    from camb_async._errors import redact

    parts = [p if isinstance(p, str) else key[p[0] : p[0] + p[1]] for p in text]
    out = redact("".join(parts), key)
    for i in range(len(key) - 7):
        assert key[i : i + 8] not in out
