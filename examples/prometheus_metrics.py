"""Prometheus-style metrics for camb-async through ``RequestHooks`` — no extra dependency.

Attach it to a client, then expose ``metrics.render()`` (Prometheus text format) on your
``/metrics`` endpoint::

    metrics = PrometheusMetrics()
    async with AsyncCambClient(hooks=metrics.hooks()) as client:
        await gather_statuses(client, ids, kind="dub")
    print(metrics.render())

Series (labels are low-cardinality: ``route`` is ``/dub/{id}``, never a task id):

- ``camb_requests_total{method,route,status}`` — HTTP attempts; ``status="none"`` when no
  answer arrived (connection failure, timeout, cancellation).
- ``camb_request_duration_seconds{route}`` — histogram of attempt durations.
- ``camb_requests_in_flight`` — gauge.
- ``camb_retries_total{route,reason}`` and ``camb_throttles_total{route}`` (429 answers, each
  pausing the whole rate budget).

With ``prometheus_client`` you would create ``Counter``/``Histogram`` objects instead of the
dicts below and call ``.labels(...).inc()`` / ``.observe()`` from the same four callbacks; an
OpenTelemetry user starts a span in ``on_request_start`` and ends it in ``on_request_end``.

Run it: ``python examples/prometheus_metrics.py`` (serves FakeCambAPI on loopback, no key).
"""

from __future__ import annotations

import collections
import math
import time

import anyio

from camb_async import AsyncCambClient, RequestHooks, gather_statuses

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, math.inf)


class PrometheusMetrics:
    """Counters, a gauge and a histogram kept in plain dicts, updated by request hooks."""

    def __init__(self, buckets: tuple[float, ...] = BUCKETS) -> None:
        self.buckets = buckets
        self.requests: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.retries: collections.Counter[tuple[str, str]] = collections.Counter()
        self.throttles: collections.Counter[str] = collections.Counter()
        self.in_flight = 0
        # route -> (per-bucket counts, sum, count)
        self.durations: dict[str, tuple[list[int], list[float]]] = {}

    def hooks(self) -> RequestHooks:
        return RequestHooks(
            on_request_start=self._start,
            on_request_end=self._end,
            on_retry=self._retry,
            on_throttle=self._throttle,
        )

    # ---- the four callbacks: O(1), no I/O, safe to run on the event loop

    def _start(self, method: str, path: str) -> None:
        self.in_flight += 1

    def _end(self, method: str, path: str, duration: float, status: int | None) -> None:
        self.in_flight -= 1
        route = RequestHooks.route_of(path)
        self.requests[(method, route, "none" if status is None else str(status))] += 1
        counts, total = self.durations.setdefault(route, ([0] * len(self.buckets), [0.0]))
        for i, bound in enumerate(self.buckets):
            if duration <= bound:
                counts[i] += 1
                break
        total[0] += duration

    def _retry(
        self, method: str, path: str, attempt: int, delay: float, error: BaseException
    ) -> None:
        self.retries[(RequestHooks.route_of(path), type(error).__name__)] += 1

    def _throttle(self, method: str, path: str, retry_after: float | None) -> None:
        self.throttles[RequestHooks.route_of(path)] += 1

    # ---- exposition

    def render(self) -> str:
        """The metrics in Prometheus text exposition format (version 0.0.4)."""
        out = ["# TYPE camb_requests_total counter"]
        for (method, route, status), n in sorted(self.requests.items()):
            out.append(
                f'camb_requests_total{{method="{method}",route="{route}",status="{status}"}} {n}'
            )
        out.append("# TYPE camb_requests_in_flight gauge")
        out.append(f"camb_requests_in_flight {self.in_flight}")
        out.append("# TYPE camb_request_duration_seconds histogram")
        for route, (counts, total) in sorted(self.durations.items()):
            cumulative = 0
            for bound, n in zip(self.buckets, counts, strict=True):
                cumulative += n
                le = "+Inf" if math.isinf(bound) else repr(bound)
                out.append(
                    f'camb_request_duration_seconds_bucket{{route="{route}",le="{le}"}} '
                    f"{cumulative}"
                )
            out.append(f'camb_request_duration_seconds_sum{{route="{route}"}} {total[0]:.6f}')
            out.append(f'camb_request_duration_seconds_count{{route="{route}"}} {cumulative}')
        out.append("# TYPE camb_retries_total counter")
        for (route, reason), n in sorted(self.retries.items()):
            out.append(f'camb_retries_total{{route="{route}",reason="{reason}"}} {n}')
        out.append("# TYPE camb_throttles_total counter")
        for route, n in sorted(self.throttles.items()):
            out.append(f'camb_throttles_total{{route="{route}"}} {n}')
        return "\n".join(out) + "\n"


async def _main() -> None:
    from camb_async.testing import FakeCambAPI, serve_in_thread

    api = FakeCambAPI(api_key="demo-key", fault_rate=0.1, clock=time.monotonic)
    ids = [api.add_task("tts", after=0.5 + i / 50) for i in range(50)]
    metrics = PrometheusMetrics()
    with serve_in_thread(api) as url:
        async with AsyncCambClient(
            api_key="demo-key", base_url=url, hooks=metrics.hooks()
        ) as client:
            await gather_statuses(client, ids, kind="tts")
    print(metrics.render(), end="")


if __name__ == "__main__":
    anyio.run(_main)
