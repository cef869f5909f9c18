"""Status calls of the four kinds, error mapping, retries and id handling (in-process)."""

from __future__ import annotations

import logging

import anyio
import httpx
import pytest

from camb_async import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AsyncCambClient,
    AuthenticationError,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    TaskKind,
    TaskStatus,
    UnprocessableEntityError,
)
from camb_async.testing import FakeCambAPI, Fault

from ..conftest import API_KEY, ClientFactory

pytestmark = pytest.mark.anyio

KINDS = list(dict.fromkeys(TaskKind))  # the four kinds, aliases collapsed
STATUSES = ["SUCCESS", "PENDING", "TIMEOUT", "ERROR", "PAYMENT_REQUIRED"]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
@pytest.mark.parametrize("status", [*STATUSES, "QUEUED_FOR_GPU"])
async def test_status_of_each_kind(
    api: FakeCambAPI, client: AsyncCambClient, kind: TaskKind, status: str
) -> None:
    task_id = api.add_task(
        kind,
        status=status,
        run_id=77 if status == "SUCCESS" else None,
        message="boom" if status == "ERROR" else None,
        exception_reason="SOURCE_TOO_LONG" if status == "ERROR" else None,
    )
    result = await client.resource(kind).status(task_id)
    assert result.kind is kind
    assert result.task_id == task_id
    assert result.raw_status == status
    if status in STATUSES:
        assert result.status is TaskStatus(status)
    else:
        assert result.status is TaskStatus.UNKNOWN
    assert result.is_terminal == (status in {"SUCCESS", "TIMEOUT", "ERROR", "PAYMENT_REQUIRED"})
    assert result.is_success == (status == "SUCCESS")
    assert result.run_id == (77 if status == "SUCCESS" else None)
    if status == "ERROR":
        assert result.message == "boom"
        assert result.exception_reason == "SOURCE_TOO_LONG"
    assert [(r.method, r.path) for r in api.log] == [("GET", f"/{kind.value}/{task_id}")]


async def test_resource_attributes_and_task_kind_lookup(client: AsyncCambClient) -> None:
    assert client.dub.kind is TaskKind.DUB
    assert client.tts.kind is TaskKind.TTS
    assert client.translation.kind is TaskKind.TRANSLATION
    assert client.transcription.kind is TaskKind.TRANSCRIPTION
    assert client.task("translate", "t1").kind is TaskKind.TRANSLATION
    with pytest.raises(ValueError, match="unknown task kind"):
        client.task("sing", "t1")


async def test_unknown_fields_are_ignored(client: AsyncCambClient) -> None:
    transport = httpx.MockTransport(
        lambda r: httpx.Response(
            200, json={"status": "SUCCESS", "run_id": 5, "new_field": [1, 2], "eta": "soon"}
        )
    )
    async with AsyncCambClient(API_KEY, base_url="http://localhost", transport=transport) as c:
        result = await c.dub.status("x")
    assert result.run_id == 5 and result.is_success


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"status": "SUC',
        b'["SUCCESS"]',
        b'{"run_id": 1}',
        b'{"status": 3}',
        b'{"status": "SUCCESS", "run_id": "abc"}',
        b'{"status": "ERROR", "message": 12}',
        b"",
    ],
)
async def test_malformed_answers_raise_api_error_with_short_snippet(body: bytes) -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(200, content=body))
    async with AsyncCambClient(
        API_KEY, base_url="http://localhost", transport=transport, max_retries=0
    ) as c:
        with pytest.raises(APIError) as info:
            await c.tts.status("x")
    assert info.value.status_code == 200
    assert len(str(info.value)) < 400


async def test_huge_error_body_is_cut_to_a_snippet() -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(404, content=b"x" * 5_000_000))
    async with AsyncCambClient(API_KEY, base_url="http://localhost", transport=transport) as c:
        with pytest.raises(NotFoundError) as info:
            await c.tts.status("x")
    assert len(str(info.value)) < 400 and len(info.value.body) <= 201


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, AuthenticationError),
        (403, AuthenticationError),
        (404, NotFoundError),
        (422, UnprocessableEntityError),
        (429, RateLimitError),
        (500, InternalServerError),
        (503, InternalServerError),
        (418, APIError),
    ],
)
async def test_error_classes_from_real_responses(
    api: FakeCambAPI, make_client: ClientFactory, status: int, error: type[APIError]
) -> None:
    body = (
        b'{"detail": [{"loc": ["path", "task_id"], "msg": "bad id", "type": "value_error"}]}'
        if status == 422
        else None
    )
    api.inject(Fault(status=status, body=body), count=10)
    task_id = api.add_task("dub")
    client = make_client(max_retries=2)
    with pytest.raises(error) as info:
        await client.dub.status(task_id)
    assert type(info.value) is error
    assert info.value.status_code == status
    retried = status in (429, 500, 503)
    assert len(api.log) == (3 if retried else 1)
    if status == 422:
        assert isinstance(info.value, UnprocessableEntityError)
        detail = info.value.detail[0]
        assert (detail.loc, detail.msg, detail.type) == (
            ["path", "task_id"],
            "bad id",
            "value_error",
        )


async def test_wrong_key_is_authentication_error(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    task_id = api.add_task("dub")
    client = make_client(api_key="wrong")
    with pytest.raises(AuthenticationError):
        await client.dub.status(task_id)
    assert len(api.log) == 1  # never retried


async def test_retry_after_is_honoured_on_virtual_time(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    task_id = api.add_task("tts")
    api.inject(status=503, retry_after="7")
    api.inject(status=429, retry_after="3")
    client = make_client()
    start = anyio.current_time()
    result = await client.tts.status(task_id)
    assert result.is_success
    arrivals = [r.time - start for r in api.log]
    assert [r.status for r in api.log] == [503, 429, 200]
    assert arrivals[1] - arrivals[0] == pytest.approx(7, abs=0.01)
    assert arrivals[2] - arrivals[1] == pytest.approx(3, abs=0.01)


async def test_retry_after_http_date_and_ms(api: FakeCambAPI, make_client: ClientFactory) -> None:
    task_id = api.add_task("tts")
    api.inject(status=503, headers=(("retry-after-ms", "2500"),))
    api.inject(status=503, retry_after="Wed, 21 Oct 2015 07:28:00 GMT")  # in the past: retry now
    client = make_client()
    await client.tts.status(task_id)
    times = [r.time for r in api.log]
    assert times[1] - times[0] == pytest.approx(2.5, abs=0.01)
    assert times[2] - times[1] == pytest.approx(0.0, abs=0.01)


async def test_backoff_without_retry_after_grows_and_is_bounded(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    task_id = api.add_task("tts")
    api.inject(status=502, count=3)
    client = make_client(max_retries=3)
    await client.tts.status(task_id)
    gaps = [b.time - a.time for a, b in zip(api.log, api.log[1:], strict=False)]
    # full jitter over 0.25 * 2**n: each wait is within [0, 0.25 * 2**n]
    assert all(0 <= g <= 0.25 * 2**n + 1e-6 for n, g in enumerate(gaps))


async def test_retries_exhausted_raises_last_error(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    api.inject(status=500, count=10)
    client = make_client(max_retries=1)
    with pytest.raises(InternalServerError):
        await client.dub.status(api.add_task("dub"))
    assert len(api.log) == 2


async def test_transport_errors_are_mapped_and_retried() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=request)
        if len(calls) == 2:
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(200, json={"status": "PENDING"})

    async with AsyncCambClient(
        API_KEY, base_url="http://localhost", transport=httpx.MockTransport(handler)
    ) as c:
        assert (await c.dub.status("a")).status is TaskStatus.PENDING
    assert len(calls) == 3

    def always(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    async with AsyncCambClient(
        API_KEY, base_url="http://localhost", max_retries=1, transport=httpx.MockTransport(always)
    ) as c:
        with pytest.raises(APITimeoutError):
            await c.dub.status("a")

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with AsyncCambClient(
        API_KEY, base_url="http://localhost", max_retries=0, transport=httpx.MockTransport(refused)
    ) as c:
        with pytest.raises(APIConnectionError) as info:
            await c.dub.status("a")
        assert not isinstance(info.value, APITimeoutError)


HOSTILE_REJECTED = [
    "../x",
    "a/b",
    "",
    "   ",
    "a\r\nX-Injected: 1",
    "a\nb",
    "a\x00b",
    "..",
    ".",
    "x" * 513,
    "a\\b",
    "\t",
]


@pytest.mark.parametrize("task_id", HOSTILE_REJECTED)
async def test_hostile_ids_rejected_before_any_request(
    api: FakeCambAPI, client: AsyncCambClient, task_id: str
) -> None:
    with pytest.raises(ValueError):
        await client.dub.status(task_id)
    with pytest.raises(ValueError):
        client.tts.task(task_id)
    assert api.log == []


@pytest.mark.parametrize("bad", [None, 12, b"abc", ["a"]])
async def test_non_string_ids_are_type_errors(client: AsyncCambClient, bad: object) -> None:
    with pytest.raises(TypeError):
        await client.dub.status(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "task_id", ["?x", "#x", "%2F", "%2e%2e", "a?b=c#d", "a;b", "ünï", "a b", "%", "x" * 512, "..."]
)
async def test_odd_but_valid_ids_reach_exactly_their_own_task(
    api: FakeCambAPI, client: AsyncCambClient, task_id: str
) -> None:
    api.add_task("dub", task_id, status="ERROR")
    api.add_task("dub", "victim", status="SUCCESS")
    result = await client.dub.status(task_id)
    assert result.task_id == task_id and result.status is TaskStatus.ERROR
    assert len(api.log) == 1
    # One path segment under /dub/: the server decoded exactly this id.
    path = api.log[0].path
    assert path.startswith("/dub/") and path.count("/") == 2


async def test_key_never_in_repr_errors_or_debug_logs(
    api: FakeCambAPI, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client(max_retries=1)
    task_id = api.add_task("dub", status="ERROR", message="failed")
    api.inject(status=503, retry_after="1")
    handle = client.dub.task(task_id)
    result = await handle.wait()
    api.inject(status=500, count=2)
    with pytest.raises(InternalServerError) as info:
        await client.dub.status(task_id)
    for text in [
        repr(client),
        str(client),
        repr(client.dub),
        repr(handle),
        repr(result),
        str(info.value),
        repr(info.value),
        repr(client.budget),
        caplog.text,
    ]:
        assert API_KEY not in text
    assert "retrying" in caplog.text  # the log did record the retries


async def test_missing_api_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAMB_API_KEY", raising=False)
    with pytest.raises(ValueError, match="CAMB_API_KEY"):
        AsyncCambClient()
    monkeypatch.setenv("CAMB_API_KEY", "from-env")
    monkeypatch.setenv("CAMB_BASE_URL", "https://example.test/apis/")
    client = AsyncCambClient()
    assert client.base_url == "https://example.test/apis"
    monkeypatch.delenv("CAMB_BASE_URL")
    assert AsyncCambClient().base_url == "https://client.camb.ai/apis"


async def test_headers_sent(client: AsyncCambClient) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "PENDING"})

    async with AsyncCambClient(
        API_KEY, base_url="https://example.test/apis", transport=httpx.MockTransport(handler)
    ) as c:
        await c.translation.status("t-1")
    request = seen[0]
    assert request.headers["x-api-key"] == API_KEY
    assert request.headers["user-agent"].startswith("camb-async/")
    assert str(request.url) == "https://example.test/apis/translate/t-1"


async def test_callers_http_client_is_used_and_not_closed(api: FakeCambAPI) -> None:
    task_id = api.add_task("tts")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api)) as http:
        async with AsyncCambClient(API_KEY, base_url="http://localhost", http_client=http) as c:
            assert (await c.tts.status(task_id)).is_success
        assert not http.is_closed
        assert c.closed


async def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="plain http"):
        AsyncCambClient(API_KEY, base_url="http://api.example.com")
    assert AsyncCambClient(API_KEY, base_url="http://api.example.com", allow_insecure=True)
    assert AsyncCambClient(API_KEY, base_url="http://127.0.0.1:8000")
    with pytest.raises(ValueError):
        AsyncCambClient(API_KEY, base_url="ftp://x")
    with pytest.raises(ValueError):
        AsyncCambClient(API_KEY, rate_limit=0)
    with pytest.raises(ValueError):
        AsyncCambClient(API_KEY, rate_limit=-5)
    with pytest.raises(ValueError):
        AsyncCambClient(API_KEY, max_concurrency=0)
    with pytest.raises(ValueError):
        AsyncCambClient(API_KEY, timeout=0)
    with pytest.raises(ValueError):
        AsyncCambClient(API_KEY, max_retries=-1)
    with pytest.raises(TypeError):
        AsyncCambClient(API_KEY, budget=object())  # type: ignore[arg-type]


async def test_undecodable_body_is_a_camb_error_and_retried() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            return httpx.Response(
                200, content=b"not gzip at all", headers={"content-encoding": "gzip"}
            )
        return httpx.Response(200, json={"status": "SUCCESS", "run_id": 3})

    async with AsyncCambClient(
        API_KEY, base_url="http://localhost", transport=httpx.MockTransport(handler)
    ) as c:
        assert (await c.dub.status("a")).run_id == 3
    assert len(calls) == 2

    def always(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"\x00garbage", headers={"content-encoding": "gzip"})

    async with AsyncCambClient(
        API_KEY, base_url="http://localhost", max_retries=0, transport=httpx.MockTransport(always)
    ) as c:
        with pytest.raises(APIConnectionError):
            await c.dub.status("a")


async def test_callers_closed_http_client_is_a_camb_error(api: FakeCambAPI) -> None:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=api))
    await http.aclose()
    async with AsyncCambClient(API_KEY, base_url="http://localhost", http_client=http) as c:
        with pytest.raises(APIConnectionError, match="closed"):
            await c.dub.status("x")


async def test_callers_http_client_never_follows_a_redirect_with_the_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(302, headers={"location": "https://elsewhere.example/steal"})

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler), follow_redirects=True)
    async with (
        http,
        AsyncCambClient(API_KEY, base_url="https://api.example/apis", http_client=http) as c,
    ):
        with pytest.raises(APIError) as info:
            await c.dub.status("x")
    assert info.value.status_code == 302
    assert [r.url.host for r in seen] == ["api.example"]


async def test_aclose_cuts_a_retry_backoff_short(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    from camb_async import ClientClosedError

    client = make_client()
    task_id = api.add_task("tts")
    api.inject(status=503, retry_after="50")
    start = anyio.current_time()
    errors: list[BaseException] = []

    async def call() -> None:
        try:
            await client.tts.status(task_id)
        except ClientClosedError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await anyio.sleep(1)
        await client.aclose()
    assert len(errors) == 1
    assert anyio.current_time() - start < 2


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            b'{"detail": [{"loc": ["body", 0], "msg": "bad", "type": "x"}, {"oops": 1}]}',
            [(["body", 0], "bad", "x")],
        ),
        (b'{"detail": "texts must not be empty"}', [([], "texts must not be empty", "")]),
        (b"not json", []),
    ],
)
async def test_422_details_survive_partial_garbage(
    body: bytes, expected: list[tuple[object, ...]]
) -> None:
    transport = httpx.MockTransport(lambda r: httpx.Response(422, content=body))
    async with AsyncCambClient(API_KEY, base_url="http://localhost", transport=transport) as c:
        with pytest.raises(UnprocessableEntityError) as info:
            await c.tts.status("x")
    assert [(d.loc, d.msg, d.type) for d in info.value.detail] == expected
