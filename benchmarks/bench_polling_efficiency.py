"""Figure (2): polling efficiency — requests per task and detection delay, per strategy.

Method: a discrete-event simulation on virtual time. Each strategy runs the REAL scheduler
(``AsyncCambClient.gather_statuses`` -> the bulk poller -> the client's request path -> httpx)
against ``FakeCambAPI`` in-process (``httpx.ASGITransport``), under trio's
``MockClock(autojump_threshold=0)``: the clock jumps to the next timer whenever the loop is
idle, so hours of polling take seconds, and every figure is deterministic (seeded durations,
seeded jitter). Nothing is mocked inside the client; only time is virtual.

Workload: 1,000 tasks, 250 per kind, log-normal durations (medians: TTS 10 s, translation
20 s, transcription 2 min, dubbing 8 min), created in 20 batches of 50 mixed tasks one
minute apart; each batch is awaited with one ``gather_statuses`` call on the handles
``create()`` returned. Detection delay = the time the client saw the terminal status minus
the time the task completed on the server.

Strategies: the seeds' fixed 5/15/30 s sleeps and the translation page's 1 s doubling to
10 s (all polling once right after creation, as the seeds' loops do); camb-async's
exponential per-kind defaults; ``PollPolicy.adaptive`` cold (learns during the run) and
warm (statistics exported from an earlier run on other random durations, imported). A sweep
of fixed intervals and adaptive request costs draws both trade-off curves.

The oracle (``benchmarks/_oracle.py``; issue 18). For one kind with duration ``T`` (the
true log-normal; survival ``S``, density ``f``) a schedule is a sequence of poll ages
``0 <= t_1 < t_2 < ...`` fixed in advance — a poll teaches only "still pending", so every
strategy, adaptive ones included, is such a sequence. Requests ``N`` = polls up to the first
``t_i >= T`` (``E[N] = sum_i S(t_{i-1})``, ``t_0 = 0``); delay = ``t_N - T``. The oracle is
the schedule with the fewest expected requests subject to

* equal p95 per kind: ``P(delay > D_k) <= 5 %`` for each kind, ``D_k`` = the seed's p95
  delay for that kind (each kind its own constraint);
* equal mean: the pooled mean delay over the four kinds (equally many tasks) <= the seed's
  (one constraint: requests go to the kinds where they buy most delay).

Solved exactly through the Lagrangian ``E[N] + lam * (delay cost)`` by dynamic programming
over the next poll age, ``V(t) = S(t) + min_{t' > t} [lam * cost(t, t') + V(t')]``, on a
uniform grid of ages up to the ``z = 5`` quantile: step ``D_k / m`` (integer ``m >= 8``, so
a gap of exactly ``D_k`` is on the grid; ~27,000 points for dubbing at ``D = 4.75 s``) for the
quantile, ``t_max / 20,000`` for the mean. O(grid) per solve (convex-hull trick for the mean,
sliding-window and suffix minima for the quantile), ``lam`` by bisection, the two bracketing
schedules mixed over tasks to meet the constraint with equality. Restricting polls to the
grid can only cost the oracle, so the figure is an upper bound on the continuous optimum,
within a fraction of a percent of it (the quantile plan of ``AdaptivePollPolicy``, computed
in closed form without a grid, lands within 0.5 % of it). All oracle figures take ~10 s of
CPU. They are printed twice: in expectation (the true distribution), and applied to the very
tasks of the run ("on these tasks": the oracle's schedules evaluated on the same 1,000
durations, at the same delay as the run achieved there), which removes the sample's luck
(~2-5 % in requests for 250 tasks a kind) from the adaptive-vs-oracle ratio.

Adaptive at each seed's delay: quantile mode ``PollPolicy.adaptive(p95_delay=D_k)`` per
kind; mean mode ``adaptive(request_cost=c, max_delay=600, tail=0)`` with ``c`` calibrated on
the warm statistics alone (no peeking at the true distribution) to the seed's mean. The
p95-mode ratio is taken at the same share of each kind's completions later than ``D_k`` as
the run achieved (its sample p95 itself jumps as one of ~12 late tasks a kind moves).
The mean-mode ratio is taken at the run's Rao-Blackwellised mean delay (``rb_delay``: each
task's expected delay given the check that last saw it pending, the one that saw it done and
the true distribution; unbiased, since check times are chosen before the completion they
bracket), with the oracle's schedules on the same tasks measured the same way: the sampled
mean moves by 1-3 % with where ~1,000 completions fell inside their last gaps, which is not
the schedule's doing (the ratio at the sampled mean is printed too). ``acceptance_18``
prints issue 18's lines with PASS/FAIL per seed row: on these tasks and in expectation.

Hint scenario: the same kinds and marginal duration distributions, but each task has an
input size (characters for TTS and translation, media seconds for transcription and dubbing;
``ln size`` normal, spread 1) that explains all of ``ln T`` but a normal residual of spread
0.3. Handles carry ``DurationHint(size, unit)``; the warm statistics come from 400 hinted
tasks of another seed. Its oracle knows each task's conditional distribution (16 equally
likely sizes per kind, one multiplier per kind).

Run: ``.venv/bin/python benchmarks/bench_polling_efficiency.py`` (writes
``benchmarks/results/polling_efficiency.json`` and prints Markdown tables; ~2.5 minutes on
two cores, almost all of it the 31 scheduler runs).
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import httpx
import trio
import trio.testing

import camb_async
from camb_async import (
    AdaptivePollPolicy,
    AsyncCambClient,
    CompletionStats,
    DurationHint,
    PollPolicy,
    StatusResult,
    TaskHandle,
    TaskKind,
)
from camb_async.polling._fit import DurationFit
from camb_async.polling._policy import _rng as _jitter_rng

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _oracle import LogNormal, evaluate, mean_grids, oracle_mean, oracle_quantile

from camb_async.testing import FakeCambAPI

KEY = "bench-key-0123456789"
#: (median seconds, sigma of ln duration) per kind.
KINDS: dict[TaskKind, tuple[float, float]] = {
    TaskKind.TTS: (10.0, 0.6),
    TaskKind.TRANSLATION: (20.0, 0.6),
    TaskKind.TRANSCRIPTION: (120.0, 0.7),
    TaskKind.DUB: (480.0, 0.7),
}
N_TASKS = 1000
BATCH = 50
BATCH_EVERY = 60.0
RESULTS = Path(__file__).resolve().parent / "results" / "polling_efficiency.json"


def fixed(seconds: float) -> PollPolicy:
    return PollPolicy(initial=seconds, factor=1.0, max_interval=seconds, jitter=0.0)


#: Hint scenario: input size per kind (``ln size ~ N(ln median, SIZE_SPREAD**2)``, in the
#: kind's natural unit) and ``ln T = ln median_T + beta * (ln size - ln median_size) + e``,
#: ``e ~ N(0, RESIDUAL**2)``, with ``beta`` such that ``ln T`` keeps its base spread: the
#: durations have the same distribution as in the base workload, only now partly explained.
SIZES: dict[TaskKind, tuple[float, str]] = {
    TaskKind.TTS: (400.0, "chars"),
    TaskKind.TRANSLATION: (2000.0, "chars"),
    TaskKind.TRANSCRIPTION: (300.0, "seconds"),
    TaskKind.DUB: (300.0, "seconds"),
}
SIZE_SPREAD = 1.0
RESIDUAL = 0.3


def hinted_workload(
    seed: int, n: int = N_TASKS
) -> tuple[list[tuple[float, TaskKind, float]], list[DurationHint]]:
    """Like ``workload``, with each task's input size: durations correlate with size."""
    rng = random.Random(seed)
    kinds = [k for k in KINDS for _ in range(n // len(KINDS))]
    rng.shuffle(kinds)
    tasks, hints = [], []
    for i, kind in enumerate(kinds):
        median, sigma = KINDS[kind]
        size_median, unit = SIZES[kind]
        z = rng.gauss(0.0, 1.0)
        beta = math.sqrt(sigma * sigma - RESIDUAL * RESIDUAL) / SIZE_SPREAD
        log_t = math.log(median) + beta * SIZE_SPREAD * z + rng.gauss(0.0, RESIDUAL)
        tasks.append(((i // BATCH) * BATCH_EVERY, kind, math.exp(log_t)))
        hints.append(DurationHint(size_median * math.exp(SIZE_SPREAD * z), unit))
    return tasks, hints


def workload(seed: int, n: int = N_TASKS) -> list[tuple[float, TaskKind, float]]:
    """(creation time, kind, duration) for every task, creation-ordered."""
    rng = random.Random(seed)
    kinds = [k for k in KINDS for _ in range(n // len(KINDS))]
    rng.shuffle(kinds)
    out = []
    for i, kind in enumerate(kinds):
        median, sigma = KINDS[kind]
        out.append(((i // BATCH) * BATCH_EVERY, kind, rng.lognormvariate(math.log(median), sigma)))
    return out


class Run:
    """One strategy over one workload, on virtual time."""

    def __init__(
        self,
        policy: PolicyArg,
        tasks: list[tuple[float, TaskKind, float]],
        stats: CompletionStats | None = None,
        hints: list[DurationHint] | None = None,
    ) -> None:
        self.policy = policy
        self.tasks = tasks
        self.stats = stats
        self.hints = hints
        self.delays: dict[TaskKind, list[float]] = {k: [] for k in KINDS}
        self.requests: dict[TaskKind, int] = {k: 0 for k in KINDS}
        self.client: AsyncCambClient | None = None
        #: task id -> (kind, creation time, completion time), and every status check's time
        self.created: dict[str, tuple[TaskKind, float, float]] = {}
        self.checks: dict[str, list[float]] = {}

    async def main(self) -> None:
        api = FakeCambAPI(api_key=KEY)
        client = self.client = AsyncCambClient(
            api_key=KEY,
            base_url="http://localhost",
            rate_limit=None,
            max_concurrency=64,
            transport=httpx.ASGITransport(app=api),
            completion_stats=self.stats,
        )
        origin = anyio.current_time()
        batches: dict[float, list[tuple[TaskKind, float, DurationHint | None]]] = {}
        for i, (created, kind, duration) in enumerate(self.tasks):
            hint = self.hints[i] if self.hints is not None else None
            batches.setdefault(created, []).append((kind, duration, hint))
        async with client, anyio.create_task_group() as tg:
            for created, batch in batches.items():
                tg.start_soon(self.batch, api, client, origin + created, batch)
        for entry in api.log:
            _, kind_name, task_id = entry.path.split("/")[:3]
            self.requests[TaskKind(kind_name)] += 1
            self.checks.setdefault(task_id, []).append(entry.time)

    async def batch(
        self,
        api: FakeCambAPI,
        client: AsyncCambClient,
        at: float,
        batch: list[tuple[TaskKind, float, DurationHint | None]],
    ) -> None:
        await anyio.sleep_until(at)
        now = anyio.current_time()
        handles, done_at = [], {}
        for kind, duration, hint in batch:
            task_id = api.add_task(kind, after=duration, created_at=now)
            handles.append(TaskHandle(client, kind, task_id, created_at=now, hint=hint))
            done_at[task_id] = now + duration
            self.created[task_id] = (kind, now, now + duration)

        def seen(result: StatusResult) -> None:
            if result.is_terminal:
                self.delays[result.kind].append(anyio.current_time() - done_at[result.task_id])

        await client.gather_statuses(handles, policy=self.policy, on_update=seen)

    def go(self, jitter_seed: int = 1234) -> Run:
        _jitter_rng.seed(jitter_seed)
        # trio shuffles the order of tasks woken together (to shake out races); seed that
        # too, so the order in which completions reach the estimator is the same every run.
        scheduler_rng = getattr(trio._core._run, "_r", None)
        if isinstance(scheduler_rng, random.Random):
            scheduler_rng.seed(jitter_seed)
        trio.run(self.main, clock=trio.testing.MockClock(autojump_threshold=0))
        return self

    def rb_delays(self) -> dict[TaskKind, list[float]]:
        """Per kind, each task's Rao-Blackwellised detection delay: the expected delay given
        the check that saw it pending last and the one that saw it done, under the kind's
        true distribution (``rb_delay``). Its mean is the run's mean delay in expectation
        (the check times are chosen before the completion they bracket), without the noise
        of where in its last gap each sampled completion fell; base workload only."""
        out: dict[TaskKind, list[float]] = {k: [] for k in KINDS}
        dists = {k: LogNormal.of(*KINDS[k]) for k in KINDS}
        for task_id, (kind, created, done) in self.created.items():
            checks = self.checks[task_id]
            i = bisect.bisect_left(checks, done - 1e-9)
            lo = checks[i - 1] - created if i > 0 else 0.0
            out[kind].append(rb_delay(dists[kind], lo, checks[i] - created, done - created))
        return out

    def summary(self) -> dict[str, Any]:
        every = sorted(d for ds in self.delays.values() for d in ds)
        n = len(every)
        assert n == len(self.tasks), (n, len(self.tasks))
        out = {
            "requests_per_task": sum(self.requests.values()) / n,
            "mean_delay_s": sum(every) / n,
            "p50_delay_s": quantile(every, 0.50),
            "p95_delay_s": quantile(every, 0.95),
            "max_delay_s": every[-1],
            "per_kind": {
                k.value: {
                    "requests_per_task": self.requests[k] / len(self.delays[k]),
                    "mean_delay_s": sum(self.delays[k]) / len(self.delays[k]),
                    "p95_delay_s": quantile(sorted(self.delays[k]), 0.95),
                }
                for k in KINDS
            },
        }
        if self.hints is None and self.created:
            rb = self.rb_delays()
            out["rb_mean_delay_s"] = sum(sum(v) for v in rb.values()) / n
        return {k: _round(v) for k, v in out.items()}


def rb_delay(dist: LogNormal, lo: float, hi: float, sampled: float) -> float:
    """``E[hi - T | lo < T <= hi]`` for ``T ~ dist``: the expected detection delay of a task
    last seen pending at age ``lo`` and seen done at age ``hi`` (``sampled``, its actual
    duration, where the interval has no mass to speak of)."""
    mass = dist.cdf(hi) - dist.cdf(lo)
    if mass < 1e-12:
        return hi - sampled
    return hi - (dist.partial_mean(hi) - dist.partial_mean(lo)) / mass


def quantile(sorted_values: list[float], p: float) -> float:
    """Linear-interpolated quantile of already-sorted values."""
    pos = p * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    return value


PolicyArg = PollPolicy | dict[TaskKind, PollPolicy] | None
Job = tuple[str, str, dict[str, Any]]
Tasks = list[tuple[float, TaskKind, float]]


def true_dists() -> list[LogNormal]:
    return [LogNormal.of(*KINDS[k]) for k in KINDS]


def hinted_dists(kind: TaskKind, points: int = 16) -> list[LogNormal]:
    """The durations of ``kind`` given a size hint, at ``points`` equally likely sizes."""
    median, sigma = KINDS[kind]
    explained = math.sqrt(sigma * sigma - RESIDUAL * RESIDUAL)
    from statistics import NormalDist

    zs = [NormalDist().inv_cdf((i + 0.5) / points) for i in range(points)]
    return [LogNormal(math.log(median) + explained * z, RESIDUAL) for z in zs]


def oracle_p95_per_kind(
    p95: dict[str, float], hinted: bool = False, shares: dict[str, float] | None = None
) -> dict[str, Any]:
    """The oracle at these per-kind p95 delays (or, with ``shares``, at "this share of the
    kind's completions seen later than ``p95[kind]``"): expected requests per task, per kind
    and pooled (the kinds are equally many)."""
    from _oracle import oracle_quantile_mixture

    per_kind = {}
    for kind in KINDS:
        d = p95[kind.value]
        share = 0.05 if shares is None else max(shares[kind.value], 1e-4)
        if hinted:
            sol = oracle_quantile_mixture(hinted_dists(kind), d, share)
        else:
            sol = oracle_quantile(LogNormal.of(*KINDS[kind]), d, share)
        per_kind[kind.value] = round(sol.requests, 4)
    return {
        "requests_per_task": round(sum(per_kind.values()) / len(per_kind), 4),
        "per_kind": per_kind,
    }


def oracle_at_mean(mean: float) -> dict[str, Any]:
    """The oracle at this pooled mean delay (one Lagrange multiplier for every kind)."""
    pooled, per_kind = oracle_mean(true_dists(), [1.0] * len(KINDS), mean)
    return {
        "requests_per_task": round(pooled.requests, 4),
        "per_kind_requests": {
            k.value: round(s.requests, 3) for k, s in zip(KINDS, per_kind, strict=True)
        },
    }


def _on_tasks(
    ages: list[float], durations: list[float], d: float = math.inf, rb: LogNormal | None = None
) -> tuple[float, float, float]:
    """A schedule applied to these durations: (requests, mean delay, share later than d).
    With ``rb`` (the true distribution), each task's delay is its ``rb_delay`` in the gap
    its completion fell in, as the scheduler runs measure it."""
    req = delay = late = 0.0
    for t in durations:
        i = bisect.bisect_left(ages, t)
        seen = ages[i] if i < len(ages) else t  # past the grid (S < 3e-7): seen at once
        req += i + 1
        if rb is not None and i < len(ages):
            delay += rb_delay(rb, ages[i - 1] if i > 0 else 0.0, seen, t)
        else:
            delay += seen - t
        late += seen - t > d
    n = len(durations)
    return req / n, delay / n, late / n


def _bracket(at: Callable[[float], tuple[float, float]], target: float) -> float:
    """Requests of the Lagrangian solutions mixed to meet ``target`` exactly: ``at(lam)``
    gives (requests, constraint); the constraint falls as ``lam`` grows."""
    lo_lam, hi_lam = 1e-3, 1e5
    lo, hi = at(lo_lam), at(hi_lam)
    if hi[1] > target:
        return hi[0]
    if lo[1] <= target:
        return lo[0]
    for _ in range(30):
        mid_lam = math.sqrt(lo_lam * hi_lam)
        mid = at(mid_lam)
        if mid[1] > target:
            lo_lam, lo = mid_lam, mid
        else:
            hi_lam, hi = mid_lam, mid
    if lo[1] == hi[1]:
        return hi[0]
    w = (lo[1] - target) / (lo[1] - hi[1])
    return (1 - w) * lo[0] + w * hi[0]


def oracle_on_tasks_mean(tasks: Tasks, target: float, rb: bool = False) -> float:
    """The oracle's schedules (true distributions, one multiplier) applied to these very
    tasks, at this pooled mean delay *on these tasks* (with ``rb``: Rao-Blackwellised
    delays, ``rb_delay``): requests per task."""
    from _oracle import _solve_mean

    grids = mean_grids(true_dists())
    durations = {k: [d for _, kind, d in tasks if kind is k] for k in KINDS}
    n = len(tasks)

    def at(lam: float) -> tuple[float, float]:
        req = delay = 0.0
        for kind, grid in zip(KINDS, grids, strict=True):
            ages = [grid.t[i] for i in _solve_mean(grid, lam)]
            r, m, _ = _on_tasks(
                ages, durations[kind], rb=LogNormal.of(*KINDS[kind]) if rb else None
            )
            req += r * len(durations[kind]) / n
            delay += m * len(durations[kind]) / n
        return req, delay

    return _bracket(at, target)


def oracle_on_tasks_p95(
    tasks: Tasks, p95: dict[str, float], shares: dict[str, float]
) -> dict[str, Any]:
    """Per kind, the oracle's schedule applied to these tasks with the same share of them
    seen later than ``p95[kind]`` as the run: requests per task, per kind and pooled."""
    from _oracle import _Grid, _solve_quantile

    per_kind = {}
    for kind in KINDS:
        durations = [d for _, k, d in tasks if k is kind]
        dist, d = LogNormal.of(*KINDS[kind]), p95[kind.value]
        grid = _Grid(dist, d / 8)

        def at(
            lam: float, grid: _Grid = grid, durations: list[float] = durations, d: float = d
        ) -> tuple[float, float]:
            ages = [grid.t[i] for i in _solve_quantile(grid, lam, 8)]
            r, _, late = _on_tasks(ages, durations, d)
            return r, late

        per_kind[kind.value] = round(_bracket(at, shares[kind.value]), 4)
    return {
        "requests_per_task": round(sum(per_kind.values()) / len(per_kind), 4),
        "per_kind": per_kind,
    }


def run_job(job: Job, data: dict[str, Any]) -> dict[str, Any]:
    """One strategy through the real scheduler, in a worker process: a row of the table.

    ``spec["oracle"]`` ("p95" or "mean"): also the oracle at the delay this run achieved
    (its own per-kind p95, or its pooled mean), for the requests-vs-oracle ratio."""
    name, group, spec = job
    t0 = time.perf_counter()
    hinted = bool(spec.get("hinted"))
    tasks = data["hinted_tasks"] if hinted else data["tasks"]
    hints = data["hints"] if hinted else None
    exported = data["exported_hinted"] if hinted else data["exported"]
    stats = CompletionStats.from_dict(exported) if spec.get("warm") else None
    policy: PolicyArg
    if spec["policy"] == "fixed":
        policy = fixed(spec["seconds"])
    elif spec["policy"] == "defaults":
        policy = None
    elif spec["policy"] == "p95":
        policy = {
            TaskKind(k): PollPolicy.adaptive(p95_delay=d, **spec.get("options", {}))
            for k, d in spec["p95"].items()
        }
    else:
        policy = PollPolicy.adaptive(**spec["options"])
    run = Run(policy, tasks, stats, hints).go()
    row = {"strategy": name, "group": group, "engine": "scheduler", **run.summary()}
    if "seed" in spec:
        row["seed"] = spec["seed"]
    options = spec.get("options", {})
    if "max_delay" in options and spec["policy"] == "adaptive":
        bound = options["max_delay"]  # how often the max_delay bound was overrun (tail)
        late = sum(d > bound for ds in run.delays.values() for d in ds)
        row["share_later_than_max_delay"] = round(late / len(tasks), 4)
    if spec["policy"] == "p95":  # share of each kind's completions seen later than target
        row["late_share"] = {
            k: round(
                sum(x > spec["p95"][k] for x in run.delays[TaskKind(k)])
                / len(run.delays[TaskKind(k)]),
                4,
            )
            for k in spec["p95"]
        }
    if spec.get("oracle") == "p95":
        # At the delay quantile this run achieved: the same share of each kind's
        # completions later than the seed's p95 (not the run's sample p95, which jumps as
        # one more or one fewer of ~12 late tasks per kind lands past the 95th percentile).
        row["oracle_at_own_delay"] = oracle_p95_per_kind(spec["p95"], hinted, row["late_share"])
    elif spec.get("oracle") == "mean":
        # At the run's Rao-Blackwellised mean delay: its expected delay given its own check
        # times (the sampled mean moves by ~1-3 % with where ~1,000 completions fell in
        # their last gaps; that noise is not the schedule's).
        row["oracle_at_own_delay"] = oracle_at_mean(row["rb_mean_delay_s"])
    if "oracle_at_own_delay" in row:
        row["ratio_to_oracle"] = round(
            row["requests_per_task"] / row["oracle_at_own_delay"]["requests_per_task"], 4
        )
    if spec.get("oracle") == "p95" and not hinted:
        row["oracle_on_tasks"] = oracle_on_tasks_p95(tasks, spec["p95"], row["late_share"])
    elif spec.get("oracle") == "mean":
        row["oracle_on_tasks"] = {
            "requests_per_task": round(
                oracle_on_tasks_mean(tasks, row["rb_mean_delay_s"], rb=True), 4
            ),
            "requests_per_task_sampled_delay": round(
                oracle_on_tasks_mean(tasks, row["mean_delay_s"]), 4
            ),
        }
        row["ratio_to_oracle_on_tasks_sampled_delay"] = round(
            row["requests_per_task"] / row["oracle_on_tasks"]["requests_per_task_sampled_delay"], 4
        )
    if "oracle_on_tasks" in row:
        row["ratio_to_oracle_on_tasks"] = round(
            row["requests_per_task"] / row["oracle_on_tasks"]["requests_per_task"], 4
        )
    row["wall_s"] = round(time.perf_counter() - t0, 2)
    return row


def oracle_job(seed: dict[str, Any], hinted: bool, tasks: Tasks) -> dict[str, Any]:
    """The oracle at a seed's delays: per-kind p95 (both scenarios) and pooled mean, in
    expectation and (base scenario) applied to these tasks."""
    p95 = {k: v["p95_delay_s"] for k, v in seed["per_kind"].items()}
    out: dict[str, Any] = {"p95": oracle_p95_per_kind(p95, hinted)}
    if not hinted:
        out["mean"] = oracle_at_mean(seed["mean_delay_s"])
        out["p95_on_tasks"] = oracle_on_tasks_p95(tasks, p95, dict.fromkeys(p95, 0.05))[
            "requests_per_task"
        ]
        out["mean_on_tasks"] = round(oracle_on_tasks_mean(tasks, seed["mean_delay_s"]), 4)
    return out


def expected_mean_delay(
    options: dict[str, Any], fits: dict[TaskKind, DurationFit]
) -> tuple[float, float]:
    """Pooled (requests, mean delay) of the mean-mode schedule, jitter off, *as the fits
    predict* (what a service can compute from its own statistics: no true distribution)."""
    policy = PollPolicy.adaptive(jitter=0.0, **options)
    assert isinstance(policy, AdaptivePollPolicy)
    req = mean = 0.0
    for fit in fits.values():
        dist = LogNormal(fit.mu, fit.sigma)
        ages = ages_of(
            policy.mean_gap(fit, 0.0),
            lambda age, n, fit=fit: policy.mean_gap(fit, age),
            horizon=dist.quantile_z(5.5),
        )
        r, m, _ = evaluate(dist, ages)
        req += r / len(fits)
        mean += m / len(fits)
    return req, mean


def expected_vs_oracle(
    seed: dict[str, Any], cost: float, fits: dict[TaskKind, DurationFit]
) -> dict[str, Any]:
    """Both modes with the warm fits held fixed (no jitter, no learning), evaluated exactly
    against the true distributions, beside the oracle at the delay each achieves: the
    adaptive-vs-oracle ratio without any sample's luck. Quantile mode: per kind, at the
    expected share of completions later than the seed's p95; mean mode: at its pooled mean."""
    req = oracle_req = 0.0
    late: dict[str, float] = {}
    for kind, fit in fits.items():
        d = seed["per_kind"][kind.value]["p95_delay_s"]
        policy = PollPolicy.adaptive(p95_delay=d, jitter=0.0)
        assert isinstance(policy, AdaptivePollPolicy)
        first, cut = policy.plan(fit)
        dist = LogNormal.of(*KINDS[kind])
        ages = ages_of(
            first,
            lambda age, n, d=d, cut=cut: d if age < cut else max(30.0, d),
            horizon=dist.quantile_z(5.5),
        )
        r, _, share = evaluate(dist, ages, d)
        late[kind.value] = round(share, 4)
        req += r
        oracle_req += oracle_quantile(dist, d, max(share, 1e-4)).requests
    mean_req, mean_delay = 0.0, 0.0
    policy = PollPolicy.adaptive(
        max_delay=MEAN_MODE_MAX_DELAY, request_cost=cost, tail=0.0, jitter=0.0
    )
    assert isinstance(policy, AdaptivePollPolicy)
    for kind, fit in fits.items():
        dist = LogNormal.of(*KINDS[kind])
        ages = ages_of(
            policy.mean_gap(fit, 0.0),
            lambda age, n, fit=fit: policy.mean_gap(fit, age),
            horizon=dist.quantile_z(5.5),
        )
        r, m, _ = evaluate(dist, ages)
        mean_req += r / len(fits)
        mean_delay += m / len(fits)
    pooled, _ = oracle_mean(true_dists(), [1.0] * len(KINDS), mean_delay)
    return {
        "p95_mode": {
            "requests": round(req / len(fits), 4),
            "late_share": late,
            "ratio_to_oracle": round(req / oracle_req, 4),
        },
        "mean_mode": {
            "requests": round(mean_req, 4),
            "mean_delay_s": round(mean_delay, 3),
            "ratio_to_oracle": round(mean_req / pooled.requests, 4),
        },
    }


def calibrate_cost(target: float, fits: dict[TaskKind, DurationFit], max_delay: float) -> float:
    """The request_cost whose schedule the fits expect to give pooled mean delay ``target``."""
    lo, hi = 1e-3, 1e3
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        _, mean = expected_mean_delay(
            {"max_delay": max_delay, "request_cost": mid, "tail": 0.0}, fits
        )
        if mean > target:
            hi = mid
        else:
            lo = mid
    return lo


def closed_form(
    name: str, group: str, tasks: Tasks, schedule: Callable[[TaskKind], list[float]]
) -> dict[str, Any]:
    """A strategy whose poll times (ages) do not depend on what it observes, evaluated
    exactly per task: requests = polls up to the first at or after completion."""
    delays: dict[TaskKind, list[float]] = {k: [] for k in KINDS}
    requests: dict[TaskKind, int] = {k: 0 for k in KINDS}
    times = {k: schedule(k) for k in KINDS}
    for _, kind, duration in tasks:
        ages = times[kind]
        i = bisect.bisect_left(ages, duration)
        requests[kind] += i + 1
        delays[kind].append(ages[i] - duration)
    run = Run(None, tasks)
    run.delays, run.requests = delays, requests
    return {"strategy": name, "group": group, "engine": "closed form", **run.summary()}


def ages_of(
    first: float, gap: Callable[[float, int], float], horizon: float = 50_000.0
) -> list[float]:
    """Poll ages: the first at ``first``, then ``gap(age, polls)`` apart, past ``horizon``."""
    ages = [first]
    while ages[-1] < horizon:
        ages.append(ages[-1] + gap(ages[-1], len(ages)))
    return ages


def fixed_ages(seconds: float) -> Callable[[TaskKind], list[float]]:
    return lambda kind: ages_of(0.0, lambda age, n: seconds)


def doubling_ages(kind: TaskKind) -> list[float]:
    return ages_of(0.0, lambda age, n: min(2.0 ** min(n - 1, 10), 10.0))


def adaptive_ages(
    options: dict[str, Any], stats: CompletionStats
) -> Callable[[TaskKind], list[float]]:
    """The adaptive schedule with the warm-start fit held fixed (no learning in the run)."""
    policy = PollPolicy.adaptive(jitter=0.0, **options)
    assert isinstance(policy, AdaptivePollPolicy)

    def ages(kind: TaskKind) -> list[float]:
        fit = stats.fit(kind, 0.0)
        assert fit is not None
        return ages_of(policy.mean_gap(fit, 0.0), lambda age, n: policy.mean_gap(fit, age))

    return ages


SCHEDULER_JOBS: list[Job] = [
    ("camb-async exponential defaults", "camb-async", {"policy": "defaults"}),
    (
        "adaptive(max_delay=30), cold",
        "adaptive",
        {"policy": "adaptive", "options": {"max_delay": 30.0}},
    ),
    (
        "adaptive(max_delay=30), warm",
        "adaptive",
        {"policy": "adaptive", "options": {"max_delay": 30.0}, "warm": True},
    ),
    (
        "adaptive(max_delay=15), warm",
        "adaptive",
        {"policy": "adaptive", "options": {"max_delay": 15.0}, "warm": True},
    ),
    (
        "adaptive(max_delay=10), warm",
        "adaptive",
        {"policy": "adaptive", "options": {"max_delay": 10.0}, "warm": True},
    ),
    (
        "adaptive(max_delay=30, request_cost=0.3), warm",
        "adaptive",
        {"policy": "adaptive", "options": {"max_delay": 30.0, "request_cost": 0.3}, "warm": True},
    ),
    ("fixed 30 s (cross-check of the closed form)", "check", {"policy": "fixed", "seconds": 30.0}),
]
SWEEP_FIXED = (2.0, 3.0, 7.5, 10.0, 20.0, 45.0, 60.0)
SWEEP_ADAPTIVE = (
    (5.0, 0.1),
    (5.0, 0.33),
    (8.0, 0.1),
    (10.0, 0.2),
    (10.0, 0.67),
    (15.0, 1.0),
    (20.0, 0.4),
    (30.0, 0.3),
    (30.0, 0.75),
    (30.0, 2.0),
    (60.0, 1.0),
    (60.0, 4.0),
    (120.0, 8.0),
)


SEEDS: dict[str, Callable[[TaskKind], list[float]]] = {
    "fixed 5 s": fixed_ages(5.0),
    "fixed 15 s": fixed_ages(15.0),
    "fixed 30 s": fixed_ages(30.0),
    "1 s doubling to 10 s": doubling_ages,
}
#: Mean mode at a seed's mean delay: no practical cap, no tail stretch; the request cost is
#: calibrated on the warm statistics alone (see ``calibrate_cost``).
MEAN_MODE_MAX_DELAY = 600.0
#: The hint runs again aiming at 3 % late instead of 5 %: ~12 late tasks per kind in a
#: sample of 250 make the sample p95 a coin flip around the target; with this margin the
#: "p95 no worse than the seed's" comparison holds on the sample, at a few % more requests.
HINT_MARGIN_QUANTILE = 0.97


def main(argv: list[str] | None = None) -> int:
    if os.environ.get("PYTHONHASHSEED") != "0":
        # trio breaks ties between equal deadlines by object id, and ids follow the
        # interpreter's (hash-seeded) allocation pattern: fix the seed so every run of this
        # script prints the same numbers.
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    tasks = workload(seed=2026)
    hinted_tasks, hints = hinted_workload(seed=2026)

    # Warm start: what a service would have exported after an earlier day's work
    # (400 other tasks, other random durations), written to JSON and read back.
    trainer = Run(PollPolicy.adaptive(max_delay=30.0), workload(seed=7, n=400)).go()
    assert trainer.client is not None
    exported = json.loads(json.dumps(trainer.client.completion_stats.to_dict()))
    warm = CompletionStats.from_dict(exported)
    h_tasks, h_hints = hinted_workload(seed=7, n=400)
    h_trainer = Run(PollPolicy.adaptive(max_delay=30.0), h_tasks, hints=h_hints).go()
    assert h_trainer.client is not None
    exported_hinted = json.loads(json.dumps(h_trainer.client.completion_stats.to_dict()))
    data = {
        "tasks": tasks,
        "hinted_tasks": hinted_tasks,
        "hints": hints,
        "exported": exported,
        "exported_hinted": exported_hinted,
    }
    fits = {k: f for k in KINDS if (f := warm.fit(k, 0.0)) is not None}

    seeds = {name: closed_form(name, "seed", tasks, sched) for name, sched in SEEDS.items()}
    hinted_seeds = {
        name: closed_form(name, "seed (hint scenario)", hinted_tasks, sched)
        for name, sched in SEEDS.items()
    }
    targeted: list[Job] = []
    costs = {}
    for name, seed in seeds.items():
        p95 = {k: v["p95_delay_s"] for k, v in seed["per_kind"].items()}
        targeted.append(
            (
                f"adaptive(p95_delay=per-kind p95 of {name}), warm",
                "p95 mode",
                {"policy": "p95", "p95": p95, "warm": True, "oracle": "p95", "seed": name},
            )
        )
        cost = costs[name] = calibrate_cost(seed["mean_delay_s"], fits, MEAN_MODE_MAX_DELAY)
        targeted.append(
            (
                f"adaptive(request_cost={cost:.3g}, max_delay="
                f"{MEAN_MODE_MAX_DELAY:g}, tail=0), warm: mean of {name}",
                "mean mode",
                {
                    "policy": "adaptive",
                    "warm": True,
                    "oracle": "mean",
                    "seed": name,
                    "options": {
                        "max_delay": MEAN_MODE_MAX_DELAY,
                        "request_cost": cost,
                        "tail": 0.0,
                    },
                },
            )
        )
        hp95 = {k: v["p95_delay_s"] for k, v in hinted_seeds[name]["per_kind"].items()}
        targeted.append(
            (
                f"adaptive(p95_delay=per-kind p95 of {name}) + hints, warm",
                "p95 mode + hints",
                {
                    "policy": "p95",
                    "p95": hp95,
                    "warm": True,
                    "hinted": True,
                    "oracle": "p95",
                    "seed": name,
                },
            )
        )
        targeted.append(
            (
                f"adaptive(p95_delay=per-kind p95 of {name}, delay_quantile="
                f"{HINT_MARGIN_QUANTILE}) + hints, warm",
                "p95 mode + hints, margin",
                {
                    "policy": "p95",
                    "p95": hp95,
                    "warm": True,
                    "hinted": True,
                    "oracle": "p95",
                    "seed": name,
                    "options": {"delay_quantile": HINT_MARGIN_QUANTILE},
                },
            )
        )
    jobs = SCHEDULER_JOBS + targeted

    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        oracle_futures = {
            (name, hinted): pool.submit(
                oracle_job, seed_row, hinted, hinted_tasks if hinted else tasks
            )
            for hinted, table in ((False, seeds), (True, hinted_seeds))
            for name, seed_row in table.items()
        }
        futures = [pool.submit(run_job, job, data) for job in jobs]
        rows = list(seeds.values())
        sweep = [
            closed_form(f"fixed {t:g} s", "sweep-fixed", tasks, fixed_ages(t)) for t in SWEEP_FIXED
        ]
        sweep += [
            closed_form(
                f"adaptive(max_delay={d:g}, request_cost={c:g}), warm fit held fixed",
                "sweep-adaptive",
                tasks,
                adaptive_ages({"max_delay": d, "request_cost": c}, warm),
            )
            for d, c in SWEEP_ADAPTIVE
        ]
        for future in futures:
            row = future.result()
            rows.append(row)
            print(
                f"  {row['strategy']}: {row['requests_per_task']:.2f} req/task, mean "
                f"{row['mean_delay_s']:.2f} s, p95 {row['p95_delay_s']:.2f} s "
                f"({row['wall_s']} s)",
                file=sys.stderr,
            )
        oracles = {key: f.result() for key, f in oracle_futures.items()}
    rows += list(hinted_seeds.values())
    check = next(r for r in rows if r["group"] == "check")
    seed30 = seeds["fixed 30 s"]
    warm_fits = {
        k.value: {"median_s": round(f.median, 2), "sigma": round(f.sigma, 3)}
        for k, f in fits.items()
    }

    comparison = []
    for name, seed in seeds.items():
        by_group = {r["group"]: r for r in rows if r.get("seed") == name}
        p95_row, mean_row = by_group["p95 mode"], by_group["mean mode"]
        hint_row, hseed = by_group["p95 mode + hints"], hinted_seeds[name]
        margin_row = by_group["p95 mode + hints, margin"]
        o, ho = oracles[(name, False)], oracles[(name, True)]
        comparison.append(
            {
                "seed": name,
                "seed_requests": seed["requests_per_task"],
                "seed_mean_delay_s": seed["mean_delay_s"],
                "seed_p95_per_kind": {k: v["p95_delay_s"] for k, v in seed["per_kind"].items()},
                "oracle_p95": o["p95"],
                "oracle_mean": o["mean"],
                "oracle_p95_on_tasks": o["p95_on_tasks"],
                "oracle_mean_on_tasks": o["mean_on_tasks"],
                "oracle_p95_vs_seed": round(
                    o["p95"]["requests_per_task"] / seed["requests_per_task"], 3
                ),
                "oracle_mean_vs_seed": round(
                    o["mean"]["requests_per_task"] / seed["requests_per_task"], 3
                ),
                "p95_mode": _digest(p95_row, seed),
                "mean_mode": {**_digest(mean_row, seed), "request_cost": costs[name]},
                "expected": expected_vs_oracle(seed, costs[name], fits),
                "hinted": {
                    "seed_requests": hseed["requests_per_task"],
                    "seed_p95_per_kind": {
                        k: v["p95_delay_s"] for k, v in hseed["per_kind"].items()
                    },
                    "oracle_p95": ho["p95"],
                    "oracle_p95_vs_seed": round(
                        ho["p95"]["requests_per_task"] / hseed["requests_per_task"], 3
                    ),
                    "adaptive": _digest(hint_row, hseed),
                    "adaptive_vs_seed": round(
                        hint_row["requests_per_task"] / hseed["requests_per_task"], 3
                    ),
                    "margin": _digest(margin_row, hseed),
                    "margin_vs_seed": round(
                        margin_row["requests_per_task"] / hseed["requests_per_task"], 3
                    ),
                },
            }
        )

    result = {
        "figure": "polling efficiency (issue 5, figure 2; issues 9 and 18 acceptance)",
        "method": (
            "discrete-event simulation on virtual time: the real camb-async scheduler "
            "and request path (engine 'scheduler') against FakeCambAPI in-process "
            "(httpx.ASGITransport) under trio MockClock(autojump_threshold=0); "
            "deterministic, seeded. Strategies whose poll times cannot depend on what "
            "they observe (fixed sleeps, doubling, the adaptive sweep with its fit held "
            "fixed) are evaluated exactly per task (engine 'closed form'); fixed 30 s "
            "is run both ways as a cross-check. The oracle is exact dynamic programming "
            "over poll times for the true distributions (benchmarks/_oracle.py)"
        ),
        "workload": {
            "tasks": N_TASKS,
            "batch": BATCH,
            "batch_every_s": BATCH_EVERY,
            "durations": {k.value: {"median_s": m, "sigma": s} for k, (m, s) in KINDS.items()},
            "seed": 2026,
            "warm_start": "stats exported after 400 tasks of seed 7",
            "warm_start_fit": warm_fits,
            "hint_scenario": {
                "sizes": {k.value: {"median": m, "unit": u} for k, (m, u) in SIZES.items()},
                "size_spread": SIZE_SPREAD,
                "residual_spread": RESIDUAL,
            },
        },
        "rows": rows,
        "sweep": sweep,
        "comparison": comparison,
        "cross_check_fixed_30s": {
            "closed_form": [seed30["requests_per_task"], seed30["mean_delay_s"]],
            "scheduler": [check["requests_per_task"], check["mean_delay_s"]],
        },
        "acceptance": {**acceptance(rows + sweep), **acceptance_18(comparison)},
        "versions": {
            "python": platform.python_version(),
            "camb_async": camb_async.__version__,
            "httpx": httpx.__version__,
            "trio": trio.__version__,
        },
        "wall_s": 0.0,
    }
    result["wall_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return 0


def _digest(row: dict[str, Any], seed: dict[str, Any]) -> dict[str, Any]:
    """A targeted adaptive run against its seed: requests, delays, oracle ratio."""
    own = {k: v["p95_delay_s"] for k, v in row["per_kind"].items()}
    seed_p95 = {k: v["p95_delay_s"] for k, v in seed["per_kind"].items()}
    return {
        "strategy": row["strategy"],
        "requests": row["requests_per_task"],
        "mean_delay_s": row["mean_delay_s"],
        "p95_per_kind": own,
        "late_share": row.get("late_share"),
        "p95_no_worse_per_kind": {k: own[k] <= seed_p95[k] for k in own},
        "mean_no_worse": row["mean_delay_s"] <= seed["mean_delay_s"],
        "oracle_at_own_delay": row["oracle_at_own_delay"]["requests_per_task"],
        "ratio_to_oracle": row["ratio_to_oracle"],
        "ratio_to_oracle_on_tasks": row.get("ratio_to_oracle_on_tasks"),
        "rb_mean_delay_s": row.get("rb_mean_delay_s"),
        "ratio_to_oracle_on_tasks_sampled_delay": row.get("ratio_to_oracle_on_tasks_sampled_delay"),
    }


def acceptance_18(comparison: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 18's polling lines, one verdict per seed row and line: adaptive <= 1.05x the
    oracle at equal p95 per kind and at equal mean (on these tasks at the run's own delay,
    and in expectation with the warm fit held; PASS needs both), and with hints (residual
    0.3) <= 0.5x the seed's requests with every kind's p95 no worse than the seed's (the
    5 % or the 3 % late target; a scheduler run, so on these tasks only)."""
    lines: list[dict[str, Any]] = []
    for c in comparison:
        p, m, h = c["p95_mode"], c["mean_mode"], c["hinted"]
        for metric, row, expected in (
            ("equal p95 per kind", p, c["expected"]["p95_mode"]["ratio_to_oracle"]),
            ("equal mean", m, c["expected"]["mean_mode"]["ratio_to_oracle"]),
        ):
            on = row["ratio_to_oracle_on_tasks"]
            lines.append(
                {
                    "seed": c["seed"],
                    "line": f"adaptive <= 1.05x oracle at {metric}",
                    "oracle_on_tasks": round(row["requests"] / on, 3),
                    "adaptive": row["requests"],
                    "ratio_on_tasks": on,
                    "ratio_in_expectation": expected,
                    "limit": 1.05,
                    "pass": on <= 1.05 and expected <= 1.05,
                }
            )
        best = min(
            (
                (h[r], d)
                for r, d in (("adaptive_vs_seed", "adaptive"), ("margin_vs_seed", "margin"))
                if all(h[d]["p95_no_worse_per_kind"].values())
            ),
            default=None,
        )
        lines.append(
            {
                "seed": c["seed"],
                "line": "hints (residual 0.3) <= 0.5x seed requests at equal p95",
                "seed_requests": h["seed_requests"],
                "adaptive_5pct": h["adaptive"]["requests"],
                "adaptive_5pct_vs_seed": h["adaptive_vs_seed"],
                "adaptive_5pct_p95_no_worse": all(h["adaptive"]["p95_no_worse_per_kind"].values()),
                "adaptive_3pct": h["margin"]["requests"],
                "adaptive_3pct_vs_seed": h["margin_vs_seed"],
                "adaptive_3pct_p95_no_worse": all(h["margin"]["p95_no_worse_per_kind"].values()),
                "ratio_on_tasks": None if best is None else best[0],
                "ratio_in_expectation": None,
                "limit": 0.5,
                "pass": best is not None and best[0] <= 0.5,
            }
        )
    return {"issue_18": lines, "issue_18_pass": all(line["pass"] for line in lines)}


def acceptance(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 9's criteria, measured: who is beaten on what, and by how much."""
    seeds = [r for r in rows if r["group"] == "seed"]
    adaptive = [r for r in rows if "adaptive" in r["group"]]
    per_policy: dict[str, Any] = {}
    for r in adaptive:
        if r["group"] != "adaptive":
            continue
        beats = {
            s["strategy"]: {
                "requests_ratio": round(r["requests_per_task"] / s["requests_per_task"], 3),
                "fewer_requests": r["requests_per_task"] < s["requests_per_task"],
                "lower_mean_delay": r["mean_delay_s"] < s["mean_delay_s"],
                "p95_no_worse": r["p95_delay_s"] <= s["p95_delay_s"],
            }
            for s in seeds
        }
        per_policy[r["strategy"]] = {
            "beats_every_seed_on_requests_and_mean_delay": all(
                b["fewer_requests"] and b["lower_mean_delay"] for b in beats.values()
            ),
            "seeds_beaten_on_requests_and_mean_delay": [
                n for n, b in beats.items() if b["fewer_requests"] and b["lower_mean_delay"]
            ],
            "seeds_beaten_on_all_three": [
                n
                for n, b in beats.items()
                if b["fewer_requests"] and b["lower_mean_delay"] and b["p95_no_worse"]
            ],
        }
    warm = [r for r in adaptive if "warm" in r["strategy"]]  # scheduler runs and sweep
    matched: dict[str, Any] = {}
    for s in seeds:
        entry = {}
        for metric in ("mean_delay_s", "p95_delay_s"):
            ok = [p for p in warm if p[metric] <= s[metric]]
            if ok:
                best = min(ok, key=lambda p: p["requests_per_task"])
                entry[metric] = {
                    "adaptive": best["strategy"],
                    "adaptive_requests": best["requests_per_task"],
                    "adaptive_delay": best[metric],
                    "ratio": round(best["requests_per_task"] / s["requests_per_task"], 3),
                }
        matched[s["strategy"]] = entry
    return {"per_policy": per_policy, "fewest_adaptive_requests_at_equal_or_better_delay": matched}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "### Polling efficiency: 1,000 tasks, log-normal durations per kind",
        "",
        f"Method: {result['method']}.",
        "",
        "| strategy | requests / task | mean delay (s) | p50 delay (s) | p95 delay (s) | engine |",
        "|---|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {r['strategy']} | {r['requests_per_task']:.2f} | {r['mean_delay_s']:.2f} | "
        f"{r['p50_delay_s']:.2f} | {r['p95_delay_s']:.2f} | {r['engine']} |"
        for r in result["rows"]
    ]
    lines += [
        "",
        "Per kind (requests / task, mean delay s):",
        "",
        "| strategy | " + " | ".join(k.value for k in KINDS) + " |",
        "|---|" + "---:|" * len(KINDS),
    ]
    for r in result["rows"]:
        if "per_kind" in r:
            cells = [
                f"{r['per_kind'][k.value]['requests_per_task']:.1f} / "
                f"{r['per_kind'][k.value]['mean_delay_s']:.1f}"
                for k in KINDS
            ]
            lines.append(f"| {r['strategy']} | " + " | ".join(cells) + " |")
    late = [
        f"{r['strategy']}: {100 * r['share_later_than_max_delay']:.1f} %"
        for r in result["rows"]
        if "share_later_than_max_delay" in r
    ]
    lines += [
        "",
        "Completions seen later than max_delay (tail=0.01 lets a gap stretch where "
        "completion is unlikely): " + "; ".join(late) + ".",
    ]
    lines += [
        "",
        "Trade-off curves (closed form, same tasks):",
        "",
        "| policy | requests / task | mean delay (s) | p95 delay (s) |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {p['strategy']} | {p['requests_per_task']:.2f} | {p['mean_delay_s']:.2f} | "
        f"{p['p95_delay_s']:.2f} |"
        for p in result["sweep"]
    ]
    acc = result["acceptance"]
    lines += [
        "",
        "Adaptive (warm) vs each seed at equal or better delay: fewest requests among "
        "the adaptive settings measured.",
        "",
        "| seed | matched on | adaptive setting | requests vs seed |",
        "|---|---|---|---:|",
    ]
    for seed, entry in acc["fewest_adaptive_requests_at_equal_or_better_delay"].items():
        if not entry:
            lines.append(f"| {seed} | - | none measured at this delay | - |")
        for metric, m in entry.items():
            lines.append(
                f"| {seed} | {metric.replace('_delay_s', '')} delay | {m['adaptive']} | "
                f"{m['ratio']:.2f}x |"
            )
    lines += [
        "",
        "| adaptive setting | beats on requests and mean delay | beats on requests, mean and p95 |",
        "|---|---|---|",
    ]
    for name, entry in acc["per_policy"].items():
        two = ", ".join(entry["seeds_beaten_on_requests_and_mean_delay"]) or "-"
        three = ", ".join(entry["seeds_beaten_on_all_three"]) or "-"
        lines.append(f"| {name} | {two} | {three} |")
    lines += [
        "",
        "#### Against the exact oracle, at each seed's delay",
        "",
        "Oracle: the fewest expected requests any poll schedule can spend when the true "
        "duration distribution is known (dynamic programming over poll times, "
        "`benchmarks/_oracle.py`), at the seed's p95 delay per kind or at its pooled "
        "mean delay. Adaptive runs: the real scheduler, warm statistics; p95 mode is "
        "`PollPolicy.adaptive(p95_delay=<seed's p95 for the kind>)` per kind, mean mode "
        "`adaptive(request_cost=c)` with `c` calibrated on the warm statistics alone to "
        "the seed's mean. \"x oracle\" divides a run's requests by the oracle's at the "
        "delay that run actually achieved (its own per-kind p95, its own mean).",
        "",
        "| seed | seed req/task | oracle @ p95 per kind: expected (on these tasks) "
        "| p95 mode req/task | x oracle, same tasks and delay | x expected oracle "
        "@ seed's p95 | x oracle in expectation, warm fit held | share later than "
        "seed's p95 per kind | p95 per kind (seed -> p95 mode) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for c in result["comparison"]:
        p = c["p95_mode"]
        p95s = ", ".join(
            f"{k} {c['seed_p95_per_kind'][k]:.2f}->{v:.2f}" for k, v in p["p95_per_kind"].items()
        )
        late = ", ".join(f"{k} {100 * v:.1f} %" for k, v in p["late_share"].items())
        lines.append(
            f"| {c['seed']} | {c['seed_requests']:.2f} | "
            f"{c['oracle_p95']['requests_per_task']:.2f} "
            f"({c['oracle_p95_on_tasks']:.2f}; {c['oracle_p95_vs_seed']:.2f}x seed) | "
            f"{p['requests']:.2f} | **{p['ratio_to_oracle_on_tasks']:.3f}** | "
            f"{p['requests'] / c['oracle_p95']['requests_per_task']:.3f} | "
            f"{c['expected']['p95_mode']['ratio_to_oracle']:.3f} | {late} | {p95s} |"
        )
    lines += [
        "",
        "| seed | seed req/task | oracle @ seed's mean: expected (on these tasks) "
        "| mean mode req/task | x oracle, same tasks and delay | x expected oracle @ "
        "seed's mean | x oracle in expectation, warm fit held | request_cost "
        "(calibrated) | mean delay (seed -> mean mode; Rao-Blackwellised) | x oracle "
        "on these tasks at the sampled mean |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for c in result["comparison"]:
        m = c["mean_mode"]
        lines.append(
            f"| {c['seed']} | {c['seed_requests']:.2f} | "
            f"{c['oracle_mean']['requests_per_task']:.2f} "
            f"({c['oracle_mean_on_tasks']:.2f}; {c['oracle_mean_vs_seed']:.2f}x seed) | "
            f"{m['requests']:.2f} | **{m['ratio_to_oracle_on_tasks']:.3f}** | "
            f"{m['requests'] / c['oracle_mean']['requests_per_task']:.3f} | "
            f"{c['expected']['mean_mode']['ratio_to_oracle']:.3f} | "
            f"{m['request_cost']:.3g} | {c['seed_mean_delay_s']:.2f}->{m['mean_delay_s']:.2f}; "
            f"{m['rb_mean_delay_s']:.2f} | {m['ratio_to_oracle_on_tasks_sampled_delay']:.3f} |"
        )
    hs = result["workload"]["hint_scenario"]
    lines += [
        "",
        f"#### Duration hints: durations correlate with input size (residual spread "
        f"{hs['residual_spread']})",
        "",
        "Same kinds and the same marginal duration distributions; each task's size "
        "(characters for TTS and translation, media seconds for transcription and "
        "dubbing) explains all but a log-normal residual of spread "
        f"{hs['residual_spread']}. Handles carry `DurationHint(size, unit)`; the warm "
        "statistics (400 hinted tasks of another seed) hold the learned duration-vs-size "
        "relation. Oracle with hints: each task's conditional distribution known "
        'exactly, one Lagrange multiplier per kind (expected values). "x oracle": '
        "at the share of each kind's completions the run saw later than the seed's p95.",
        "",
        "| seed | seed req/task | oracle with hints @ p95 per kind | adaptive + hints "
        "| req/task | vs seed | x oracle | share later than seed's p95 | p95 per kind "
        "(seed -> adaptive) |",
        "|---|---:|---:|---|---:|---:|---:|---|---|",
    ]
    for c in result["comparison"]:
        h = c["hinted"]
        for label, a, vs in (
            ("p95 mode", h["adaptive"], h["adaptive_vs_seed"]),
            (f"p95 mode, delay_quantile={HINT_MARGIN_QUANTILE}", h["margin"], h["margin_vs_seed"]),
        ):
            p95s = ", ".join(
                f"{k} {h['seed_p95_per_kind'][k]:.2f}->{v:.2f}"
                for k, v in a["p95_per_kind"].items()
            )
            late = ", ".join(f"{k} {100 * v:.1f} %" for k, v in a["late_share"].items())
            lines.append(
                f"| {c['seed']} | {h['seed_requests']:.2f} | "
                f"{h['oracle_p95']['requests_per_task']:.2f} "
                f"({h['oracle_p95_vs_seed']:.2f}x) | {label} | "
                f"{a['requests']:.2f} | **{vs:.3f}x** | {a['ratio_to_oracle']:.3f} | {late} "
                f"| {p95s} |"
            )
    lines += [
        "",
        "#### Issue 18 acceptance (polling)",
        "",
        "On these tasks: the real scheduler's requests over the oracle's schedules applied "
        "to the same 1,000 tasks at the delay the run achieved (p95: the run's share of each "
        "kind's completions later than the seed's p95; mean: Rao-Blackwellised mean delay, "
        "both sides). In expectation: the warm fit held fixed, no jitter, both evaluated "
        "exactly against the true distributions. PASS needs both. Hints: requests over the "
        "seed's with every kind's p95 no worse (5 % or 3 % late target), on these tasks.",
        "",
        "| seed | line | oracle req/task (on tasks) | adaptive req/task | ratio on tasks "
        "| ratio in expectation | limit | verdict |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for a in result["acceptance"]["issue_18"]:
        verdict = "PASS" if a["pass"] else "FAIL"
        if "seed_requests" in a:
            ok5 = "" if a["adaptive_5pct_p95_no_worse"] else ", p95 worse"
            ok3 = "" if a["adaptive_3pct_p95_no_worse"] else ", p95 worse"
            lines.append(
                f"| {a['seed']} | {a['line']} | seed {a['seed_requests']:.2f} | "
                f"5 %: {a['adaptive_5pct']:.2f} ({a['adaptive_5pct_vs_seed']:.3f}x{ok5}); "
                f"3 %: {a['adaptive_3pct']:.2f} ({a['adaptive_3pct_vs_seed']:.3f}x{ok3}) | "
                + ("-" if a["ratio_on_tasks"] is None else f"{a['ratio_on_tasks']:.3f}")
                + f" | - | {a['limit']} | **{verdict}** |"
            )
        else:
            lines.append(
                f"| {a['seed']} | {a['line']} | {a['oracle_on_tasks']:.2f} | "
                f"{a['adaptive']:.2f} | {a['ratio_on_tasks']:.3f} | "
                f"{a['ratio_in_expectation']:.3f} | {a['limit']} | **{verdict}** |"
            )
    lines += [
        "",
        "Issue 18 polling acceptance: "
        + ("PASS" if result["acceptance"]["issue_18_pass"] else "FAIL")
        + ".",
    ]
    lines += [
        "",
        f"Wall time {result['wall_s']} s for hours of virtual time (python "
        f"{result['versions']['python']}, camb-async {result['versions']['camb_async']}).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
