"""Hostile or broken server answers (hypothesis): only CambError escapes, nothing hangs.

Whatever the server sends — any status code; bodies that are not JSON, cut short, of the
wrong types, missing fields, with unknown statuses, 10 MB long; Retry-After negative, huge,
fractional or an HTTP date — a call either returns a StatusResult or raises a ``CambError``
subclass, within a bound set by ``timeout``, ``max_retries`` and the Retry-After cap, and an
error message carries at most a short snippet of the body.

In-process (httpx.MockTransport / ASGI apps) on virtual time, so minutes of backoff cost
nothing; the slow-answer and reset cases are also run over real sockets.
"""

from __future__ import annotations

import email.utils
import itertools
import json
import math
import time
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from camb_async import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AsyncCambClient,
    CambError,
    PollPolicy,
    RateLimitError,
    StatusResult,
    TaskStatus,
    gather_results,
    gather_statuses,
)
from camb_async._errors import SNIPPET_LIMIT
from camb_async._request import MAX_RETRY_AFTER, parse_retry_after
from camb_async.testing import FakeCambAPI

from ..conftest import API_KEY

pytestmark = pytest.mark.anyio

TIMEOUT = 10.0
RETRIES = 2
#: The longest a status call may take: every attempt times out, every wait is capped.
CALL_BOUND = (RETRIES + 1) * TIMEOUT + RETRIES * MAX_RETRY_AFTER + 1.0
#: An error message: method, path, status and a snippet; never the whole body.
MESSAGE_BOUND = 4 * SNIPPET_LIMIT + 200
KNOWN = {s.value for s in TaskStatus} - {"UNKNOWN"}
HUGE = b'{"status": "' + b"A" * (10 * 1024 * 1024) + b'"}'  # 10 MB, one valid JSON object
HUGE_TEXT = b"<html>" + b"x" * (10 * 1024 * 1024) + b"</html>"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
status_texts = st.sampled_from([*KNOWN, "UNKNOWN", "QUEUED", "", "success", "PENDING "]) | st.text(
    max_size=30
)
status_objects = st.fixed_dictionaries(
    {},
    optional={
        "status": status_texts | json_values,
        "run_id": st.none() | st.integers() | st.text(max_size=25) | json_values,
        "message": st.none() | st.text(max_size=50) | json_values,
        "exception_reason": st.none() | st.text(max_size=20) | json_values,
        "extra": json_values,
    },
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["object", "json", "truncated", "bytes", "empty", "huge"]))
    if kind == "object":
        return json.dumps(draw(status_objects)).encode()
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "truncated":
        text = json.dumps(draw(status_objects)).encode()
        return text[: draw(st.integers(0, max(0, len(text) - 1)))]
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "empty":
        return b""
    return draw(st.sampled_from([HUGE, HUGE_TEXT]))


def http_date(offset: float) -> str:
    return email.utils.formatdate(time.time() + offset, usegmt=True)


retry_after_values = st.one_of(
    st.none(),
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(0, 5).map(lambda f: f"{f:.3f}"),
    st.sampled_from(["-1", "0", "1e308", "inf", "nan", "-inf", "9" * 400, " 3 ", "1,5", ""]),
    st.floats(-1e6, 1e6).map(http_date),
    st.sampled_from(
        [
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Mon, 99 Foo 2020 99:99:99 GMT",
        ]
    ),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
)
status_codes = st.sampled_from(
    [200, 201, 204, 301, 302, 400, 401, 403, 404, 408, 409, 422, 429, 500, 502, 503, 504]
) | st.integers(100, 599)


@st.composite
def answers(draw: st.DrawFn) -> tuple[int, bytes, dict[str, str]]:
    status = draw(status_codes)
    headers: dict[str, str] = {}
    retry_after = draw(retry_after_values)
    if retry_after is not None:
        headers["retry-after"] = retry_after
    if draw(st.booleans()):
        headers["retry-after-ms"] = draw(st.sampled_from(["-5", "250", "1e12", "x", "nan"]))
    return status, draw(bodies()), headers


def transport_for(
    answer: tuple[int, bytes, dict[str, str]], log: list[float]
) -> httpx.MockTransport:
    status, body, headers = answer

    def handle(request: httpx.Request) -> httpx.Response:
        log.append(anyio.current_time())
        if 100 <= status < 200:  # an interim answer cannot end an exchange; a peer got it wrong
            raise httpx.RemoteProtocolError("unexpected informational answer", request=request)
        return httpx.Response(status, content=body, headers=headers)

    return httpx.MockTransport(handle)


def check_error(error: CambError) -> None:
    assert len(str(error)) <= MESSAGE_BOUND, len(str(error))
    assert len(repr(error)) <= MESSAGE_BOUND + 100
    if isinstance(error, APIError):
        assert len(error.body) <= SNIPPET_LIMIT + 1


def check_result(result: StatusResult, task_id: str) -> None:
    assert isinstance(result, StatusResult)
    assert result.task_id == task_id
    assert isinstance(result.raw_status, str)
    assert (result.status is TaskStatus.UNKNOWN) == (result.raw_status not in KNOWN)
    assert result.run_id is None or isinstance(result.run_id, int)
    assert result.exception_reason is None or isinstance(result.exception_reason, str)


HYPOTHESIS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


@HYPOTHESIS
@given(answer=answers())
async def test_any_answer_gives_a_result_or_a_camb_error_in_bounded_time(
    answer: tuple[int, bytes, dict[str, str]],
) -> None:
    log: list[float] = []
    async with AsyncCambClient(
        API_KEY,
        base_url="http://localhost",
        timeout=TIMEOUT,
        max_retries=RETRIES,
        rate_limit=5,
        transport=transport_for(answer, log),
    ) as client:
        started = anyio.current_time()
        try:
            result = await client.dub.status("task-1")
        except CambError as exc:
            check_error(exc)
        else:
            check_result(result, "task-1")
            assert 200 <= answer[0] < 300
        elapsed = anyio.current_time() - started
    assert elapsed <= CALL_BOUND
    assert 1 <= len(log) <= RETRIES + 1
    gaps = [b - a for a, b in itertools.pairwise(log)]
    assert all(gap <= MAX_RETRY_AFTER + 1.0 for gap in gaps), gaps  # Retry-After is capped


@settings(HYPOTHESIS, max_examples=40)
@given(script=st.lists(answers(), min_size=1, max_size=6))
async def test_bulk_polling_under_hostile_answers_ends_by_its_deadline(
    script: list[tuple[int, bytes, dict[str, str]]],
) -> None:
    """gather_statuses keeps its deadline and reports each task as a result or a CambError."""
    calls = 0

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        status, body, headers = script[calls % len(script)]
        calls += 1
        if 100 <= status < 200:
            raise httpx.ReadError("interim answer", request=request)
        return httpx.Response(status, content=body, headers=headers)

    ids = [f"t{i}" for i in range(3)]
    deadline = 120.0
    async with AsyncCambClient(
        API_KEY,
        base_url="http://localhost",
        timeout=TIMEOUT,
        max_retries=RETRIES,
        rate_limit=None,
        max_concurrency=3,
        transport=httpx.MockTransport(handle),
    ) as client:
        started = anyio.current_time()
        try:
            out = await gather_statuses(
                client,
                ids,
                kind="tts",
                timeout=deadline,
                return_exceptions=True,
                policy=PollPolicy(initial=1, max_interval=8, max_errors=2),
            )
        except CambError as exc:
            # Only an authentication error ends the whole call, or a poll that got no answer
            # while the server answered nothing at all (unreachable; here: interim answers).
            check_error(exc)
            if isinstance(exc, APIConnectionError):
                assert any(100 <= status < 200 for status, _, _ in script)
            else:
                assert isinstance(exc, APIError) and exc.status_code in (401, 403)
        else:
            assert len(out) == len(ids)
            for task_id, item in zip(ids, out, strict=True):
                if isinstance(item, CambError):
                    check_error(item)
                    assert item.task_id == task_id
                else:
                    assert isinstance(item, StatusResult)
                    check_result(item, task_id)
        assert anyio.current_time() - started <= deadline + 1.0


@given(value=retry_after_values.filter(lambda v: v is not None))
def test_retry_after_parsing_is_capped_and_never_negative(value: str) -> None:
    for headers in (
        {"retry-after": value},
        {"retry-after-ms": value},
        {"retry-after-ms": value, "retry-after": "3"},
    ):
        parsed = parse_retry_after(headers)
        assert parsed is None or 0.0 <= parsed <= MAX_RETRY_AFTER


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("-1", None),
        ("-0.5", None),
        ("1e308", MAX_RETRY_AFTER),
        ("99999999999", MAX_RETRY_AFTER),
        ("1.5", 1.5),
        ("0", 0.0),
        ("nan", None),
        ("inf", MAX_RETRY_AFTER),
        ("soon", None),
    ],
)
def test_retry_after_examples(value: str, expected: float | None) -> None:
    assert parse_retry_after({"retry-after": value}) == expected


@pytest.mark.parametrize(
    ("ms", "expected"),
    [
        ("-1", 3600.0),
        ("nan", 3600.0),
        ("-inf", 3600.0),
        ("soon", 3600.0),
        ("inf", math.inf),
        ("1e400", math.inf),
        ("2500", 2.5),
    ],
)
def test_an_unusable_retry_after_ms_falls_back_to_retry_after(ms: str, expected: float) -> None:
    """Before, a negative or NaN ``retry-after-ms`` masked a valid ``Retry-After`` (the call
    was retried at once), and an infinite one counted as absent."""
    headers = {"retry-after-ms": ms, "retry-after": "3600"}
    assert parse_retry_after(headers, cap=math.inf) == expected


def test_retry_after_http_dates() -> None:
    now = time.time()
    assert parse_retry_after({"retry-after": http_date(30)}, now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after({"retry-after": http_date(-300)}, now=now) == 0.0
    assert parse_retry_after({"retry-after": http_date(10**7)}, now=now) == MAX_RETRY_AFTER


@pytest.mark.parametrize("retry_after", ["999999", "1e9", "Fri, 31 Dec 9999 23:59:59 GMT"])
async def test_a_huge_retry_after_is_not_slept_on(retry_after: str) -> None:
    log: list[float] = []
    answer = (429, b'{"detail":"slow down"}', {"retry-after": retry_after})
    async with AsyncCambClient(
        API_KEY, base_url="http://localhost", max_retries=3, transport=transport_for(answer, log)
    ) as client:
        with pytest.raises(RateLimitError) as info:
            await client.dub.status("x")
    check_error(info.value)
    assert len(log) == 1  # past max_retry_wait: raised at once, the caller decides
    assert info.value.retry_after is not None and info.value.retry_after > MAX_RETRY_AFTER


@pytest.mark.parametrize("status", [200, 404, 422, 500, 503])
@pytest.mark.parametrize("body", [HUGE, HUGE_TEXT], ids=["json-10MB", "text-10MB"])
async def test_ten_megabyte_answers_give_short_messages(status: int, body: bytes) -> None:
    log: list[float] = []
    async with AsyncCambClient(
        API_KEY,
        base_url="http://localhost",
        max_retries=1,
        transport=transport_for((status, body, {}), log),
    ) as client:
        try:
            result = await client.dub.status("x")
        except CambError as exc:
            check_error(exc)
        else:  # a 10 MB status text is odd but well-formed: kept, and UNKNOWN
            assert status == 200 and body is HUGE
            assert result.status is TaskStatus.UNKNOWN and len(result.raw_status) == 10 * 2**20


# ----------------------------------------------------------------- answers that never end


async def never_answers(scope: Any, receive: Any, send: Any) -> None:
    await anyio.sleep_forever()


async def trickles(scope: Any, receive: Any, send: Any) -> None:
    """Headers at once, then one byte of body every second, forever: no read ever times out."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    while True:
        await send({"type": "http.response.body", "body": b" ", "more_body": True})
        await anyio.sleep(TIMEOUT / 10)


@pytest.mark.parametrize("app", [never_answers, trickles])
async def test_no_call_outlives_its_timeout_in_process(app: Any) -> None:
    async with AsyncCambClient(
        API_KEY,
        base_url="http://localhost",
        timeout=TIMEOUT,
        max_retries=RETRIES,
        transport=httpx.ASGITransport(app=app),
    ) as client:
        started = anyio.current_time()
        with anyio.fail_after(10 * CALL_BOUND), pytest.raises(APITimeoutError):
            await client.dub.status("x")
        elapsed = anyio.current_time() - started
    backoff_bound = 0.25 * (1 + 2)  # the jittered waits between the attempts, at most
    assert (RETRIES + 1) * TIMEOUT <= elapsed <= (RETRIES + 1) * TIMEOUT + backoff_bound + 0.1


# ----------------------------------------------------------------- numbers out of range


@pytest.mark.parametrize(
    "run_id",
    [-1, 0, 2**63, 2**64, "-1", "0", "18446744073709551616", "\u00b2", "\u0661\u0662", 1.5],
)
async def test_a_run_id_out_of_range_is_an_api_error_at_parse_time(run_id: Any) -> None:
    api = FakeCambAPI(api_key=API_KEY)
    task = api.add_task("dub", "t1", status="SUCCESS", run_id=run_id)
    async with AsyncCambClient(
        API_KEY, base_url="http://localhost", max_retries=0, transport=httpx.ASGITransport(app=api)
    ) as client:
        with pytest.raises(APIError) as info:
            await client.dub.status(task)
        assert info.value.status_code == 200 and "run_id" in str(info.value)
        with pytest.raises(APIError):
            await client.dub.task(task).result()


@pytest.mark.parametrize("run_id", [1, 2**63 - 1, "42"])
async def test_run_ids_in_range_are_accepted(run_id: Any) -> None:
    api = FakeCambAPI(api_key=API_KEY)
    task = api.add_task("dub", "t1", status="SUCCESS", run_id=run_id)
    async with AsyncCambClient(
        API_KEY, base_url="http://localhost", transport=httpx.ASGITransport(app=api)
    ) as client:
        assert (await client.dub.status(task)).run_id == int(run_id)


async def test_bulk_results_with_a_bad_run_id_fill_one_slot_not_an_exception_group() -> None:
    api = FakeCambAPI(api_key=API_KEY)
    ids = [
        api.add_task("dub", "ok-1"),
        api.add_task("dub", "bad", run_id=2**64),
        api.add_task("dub", "ok-2"),
        api.add_task("dub", "neg", run_id=-1),
    ]
    async with AsyncCambClient(
        API_KEY, base_url="http://localhost", max_retries=0, transport=httpx.ASGITransport(app=api)
    ) as client:
        out = await gather_results(
            client, ids, kind="dub", return_exceptions=True, policy=PollPolicy(max_errors=0)
        )
        assert [type(x).__name__ for x in out] == [
            "DubbingResult",
            "APIError",
            "DubbingResult",
            "APIError",
        ]
        with pytest.raises(APIError):  # one error, not a group
            await gather_results(client, ids, kind="dub", policy=PollPolicy(max_errors=0))


@pytest.mark.parametrize("return_exceptions", [True, False])
async def test_bulk_results_never_raise_an_exception_group(
    monkeypatch: pytest.MonkeyPatch, return_exceptions: bool
) -> None:
    """Whatever goes wrong inside the result fetchers (here a bug: a raw ValueError), the
    caller gets that one exception, never the task group's ExceptionGroup."""
    api = FakeCambAPI(api_key=API_KEY)
    ids = [api.add_task("dub", f"t{i}") for i in range(3)]
    api.inject(status=None, body=b"{}", path="/dubbing-results")  # forces single fetches

    async def broken(self: Any, run_id: int) -> Any:
        raise ValueError(f"broken fetch of {run_id}")

    monkeypatch.setattr("camb_async.resources._base.TaskResource._result", broken)
    async with AsyncCambClient(
        API_KEY, base_url="http://localhost", transport=httpx.ASGITransport(app=api)
    ) as client:
        with pytest.raises(ValueError, match="broken fetch"):
            await gather_results(client, ids, kind="dub", return_exceptions=return_exceptions)
