"""Request hooks, the camb_async logger, and the documented Prometheus-style example."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import httpx
import pytest

from camb_async import (
    APIConnectionError,
    AsyncCambClient,
    RateBudget,
    RequestHooks,
    gather_statuses,
)
from camb_async.testing import FakeCambAPI, Fault

from ..conftest import API_KEY, ClientFactory, load_example

pytestmark = pytest.mark.anyio


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def hooks(self) -> RequestHooks:
        return RequestHooks(
            on_request_start=lambda m, p: self.events.append(("start", m, p)),
            on_request_end=lambda m, p, d, s: self.events.append(("end", m, p, d, s)),
            on_retry=lambda m, p, a, d, e: self.events.append(("retry", p, a, d, type(e).__name__)),
            on_throttle=lambda m, p, r: self.events.append(("throttle", p, r)),
        )

    def of(self, name: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == name]


async def test_start_and_end_report_duration_and_status(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    api.add_task("dub", "d1")
    api.inject(Fault(status=None, delay=2.0))  # a slow but normal answer
    rec = Recorder()
    client = make_client(hooks=rec.hooks())
    result = await client.dub.status("d1")
    assert result.is_success
    assert rec.of("start") == [("start", "GET", "/dub/d1")]
    [(_, method, path, duration, status)] = rec.of("end")
    assert (method, path, status) == ("GET", "/dub/d1", 200)
    assert duration == pytest.approx(2.0, abs=0.05)  # virtual time: exact up to loop overhead


async def test_retry_and_throttle_hooks_see_every_attempt(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    api.add_task("tts", "t1")
    api.inject(Fault(status=503))
    api.inject(Fault(status=429, retry_after="3"))
    rec = Recorder()
    client = make_client(hooks=rec.hooks(), max_retries=3)
    assert (await client.tts.status("t1")).is_success
    assert [e[4] for e in rec.of("end")] == [503, 429, 200]
    assert rec.of("throttle") == [("throttle", "/tts/t1", 3.0)]
    retries = rec.of("retry")
    assert [(r[2], r[4]) for r in retries] == [(1, "InternalServerError"), (2, "RateLimitError")]
    assert retries[1][3] == 3.0  # the Retry-After wait
    # Order: each retry is announced after the attempt that caused it ended.
    kinds = [e[0] for e in rec.events]
    assert kinds == ["start", "end", "retry", "start", "end", "throttle", "retry", "start", "end"]


async def test_transport_failure_ends_with_no_status() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    rec = Recorder()
    async with AsyncCambClient(
        api_key=API_KEY,
        base_url="http://localhost",
        rate_limit=None,
        max_retries=2,
        transport=httpx.MockTransport(refuse),
        hooks=rec.hooks(),
    ) as client:
        with pytest.raises(APIConnectionError):
            await client.dub.status("x")
    assert [e[4] for e in rec.of("end")] == [None, None, None]
    assert [r[2] for r in rec.of("retry")] == [1, 2]


async def test_cancelled_request_still_ends(api: FakeCambAPI, make_client: ClientFactory) -> None:
    """An in-flight gauge built on start/end must return to zero after a cancellation."""
    api.add_task("dub", "slow")
    api.inject(Fault(status=None, delay=30.0))
    rec = Recorder()
    client = make_client(hooks=rec.hooks())
    with anyio.move_on_after(1.0):
        await client.dub.status("slow")
    assert len(rec.of("start")) == len(rec.of("end")) == 1
    assert rec.of("end")[0][4] is None


async def test_a_failing_hook_is_logged_not_raised(
    api: FakeCambAPI, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    api.add_task("dub", "d1")

    def broken(method: str, path: str, duration: float, status: int | None) -> None:
        raise RuntimeError("exporter down")

    client = make_client(hooks=RequestHooks(on_request_end=broken))
    with caplog.at_level(logging.ERROR, logger="camb_async"):
        assert (await client.dub.status("d1")).is_success
    assert any("on_request_end hook failed" in r.getMessage() for r in caplog.records)


async def test_logger_reports_retries_and_429_pauses_never_the_key(
    api: FakeCambAPI, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    api.add_task("translate", "tr1")
    api.inject(Fault(status=500))
    api.inject(Fault(status=429, retry_after="2"))
    client = make_client(budget=RateBudget(10, 4), max_retries=3)
    with caplog.at_level(logging.INFO, logger="camb_async"):
        assert (await client.translation.status("tr1")).is_success
    messages = [r.getMessage() for r in caplog.records if r.name == "camb_async"]
    assert sum("retrying GET /translate/tr1" in m for m in messages) == 2
    [throttle] = [m for m in messages if "budget paused" in m]
    assert "paused for 2.00s" in throttle
    assert "rate now 5.0 requests/s" in throttle  # the budget halved its rate
    assert all(API_KEY not in m for m in messages)


def test_hooks_are_validated() -> None:
    with pytest.raises(TypeError):
        RequestHooks(on_retry=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        AsyncCambClient(api_key=API_KEY, hooks=lambda *a: None)  # type: ignore[arg-type]


def test_route_of_strips_ids() -> None:
    assert RequestHooks.route_of("/dub/abc-123") == "/dub/{id}"
    assert RequestHooks.route_of("/tts-results") == "/tts-results"


async def test_prometheus_example_counts_match_the_server_log(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    example = load_example("prometheus_metrics")
    ids = [api.add_task("dub", after=5.0 + i) for i in range(20)]
    api.inject(Fault(status=503), count=3)
    api.inject(Fault(status=429, retry_after="1"), count=2)
    metrics = example.PrometheusMetrics()
    client = make_client(hooks=metrics.hooks())
    results = await gather_statuses(client, ids, kind="dub")
    assert all(r.is_success for r in results)

    text = metrics.render()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    by_status: dict[int, int] = {}
    for entry in api.log:
        by_status[entry.status] = by_status.get(entry.status, 0) + 1
    assert by_status == {200: by_status[200], 503: 3, 429: 2}
    for status, n in by_status.items():
        assert (
            samples[f'camb_requests_total{{method="GET",route="/dub/{{id}}",status="{status}"}}']
            == n
        )
    assert samples['camb_request_duration_seconds_count{route="/dub/{id}"}'] == len(api.log)
    assert samples['camb_request_duration_seconds_bucket{route="/dub/{id}",le="+Inf"}'] == len(
        api.log
    )
    assert samples['camb_throttles_total{route="/dub/{id}"}'] == 2
    assert samples['camb_retries_total{route="/dub/{id}",reason="InternalServerError"}'] == 3
    assert samples["camb_requests_in_flight"] == 0
    assert not any(task_id in text for task_id in ids)  # no per-task series
