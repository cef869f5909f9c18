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
warm (statistics exported from an earlier run on other random durations, imported); an
oracle (1 request, 0 delay). A sweep of fixed intervals and adaptive request costs draws
both trade-off curves, so every seed can be compared with adaptive at equal or better delay.

Run: ``.venv/bin/python benchmarks/bench_polling_efficiency.py`` (writes
``benchmarks/results/polling_efficiency.json`` and prints a Markdown table).
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
from camb_async import AsyncCambClient, PollPolicy, StatusResult, TaskHandle, TaskKind, _polling
from camb_async._adaptive import AdaptivePollPolicy, CompletionStats
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


def workload(seed: int, n: int = N_TASKS) -> list[tuple[float, TaskKind, float]]:
    """(creation time, kind, duration) for every task, creation-ordered."""
    rng = random.Random(seed)
    kinds = [k for k in KINDS for _ in range(n // len(KINDS))]
    rng.shuffle(kinds)
    out = []
    for i, kind in enumerate(kinds):
        median, sigma = KINDS[kind]
        out.append(((i // BATCH) * BATCH_EVERY, kind, rng.lognormvariate(math.log(median),
                                                                          sigma)))
    return out


class Run:
    """One strategy over one workload, on virtual time."""

    def __init__(self, policy: PollPolicy | None, tasks: list[tuple[float, TaskKind, float]],
                 stats: CompletionStats | None = None) -> None:
        self.policy = policy
        self.tasks = tasks
        self.stats = stats
        self.delays: dict[TaskKind, list[float]] = {k: [] for k in KINDS}
        self.requests: dict[TaskKind, int] = {k: 0 for k in KINDS}
        self.client: AsyncCambClient | None = None

    async def main(self) -> None:
        api = FakeCambAPI(api_key=KEY)
        client = self.client = AsyncCambClient(
            api_key=KEY, base_url="http://localhost", rate_limit=None, max_concurrency=64,
            transport=httpx.ASGITransport(app=api), completion_stats=self.stats)
        origin = anyio.current_time()
        batches: dict[float, list[tuple[TaskKind, float]]] = {}
        for created, kind, duration in self.tasks:
            batches.setdefault(created, []).append((kind, duration))
        async with client, anyio.create_task_group() as tg:
            for created, batch in batches.items():
                tg.start_soon(self.batch, api, client, origin + created, batch)
        for entry in api.log:
            kind = TaskKind(entry.path.split("/")[1])
            self.requests[kind] += 1

    async def batch(self, api: FakeCambAPI, client: AsyncCambClient, at: float,
                    batch: list[tuple[TaskKind, float]]) -> None:
        await anyio.sleep_until(at)
        now = anyio.current_time()
        handles, done_at = [], {}
        for kind, duration in batch:
            task_id = api.add_task(kind, after=duration, created_at=now)
            handles.append(TaskHandle(client, kind, task_id, created_at=now))
            done_at[task_id] = now + duration

        def seen(result: StatusResult) -> None:
            if result.is_terminal:
                self.delays[result.kind].append(anyio.current_time() - done_at[result.task_id])

        await client.gather_statuses(handles, policy=self.policy, on_update=seen)

    def go(self, jitter_seed: int = 1234) -> Run:
        _polling._rng.seed(jitter_seed)
        # trio shuffles the order of tasks woken together (to shake out races); seed that
        # too, so the order in which completions reach the estimator is the same every run.
        scheduler_rng = getattr(trio._core._run, "_r", None)
        if isinstance(scheduler_rng, random.Random):
            scheduler_rng.seed(jitter_seed)
        trio.run(self.main, clock=trio.testing.MockClock(autojump_threshold=0))
        return self

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
                } for k in KINDS
            },
        }
        return {k: _round(v) for k, v in out.items()}


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


def keller_ratio(sigma: float) -> float:
    """(integral of sqrt(f*S))^2 / E[T] for a log-normal: the best any schedule that knows
    the distribution can do on requests x mean delay, relative to a fixed interval (which
    keeps requests x mean delay ~ E[T] / 2). Independent of the median."""
    total, step, z = 0.0, 0.01, -10.0
    while z < 10.0:
        phi = math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
        q = 0.5 * math.erfc(z / math.sqrt(2))
        total += math.sqrt(phi * q) * math.exp(sigma * z / 2) * step
        z += step
    return sigma * total * total / math.exp(sigma * sigma / 2)


Job = tuple[str, str, dict[str, Any]]
Tasks = list[tuple[float, TaskKind, float]]


def run_job(job: Job, tasks: Tasks, exported: dict[str, Any]) -> dict[str, Any]:
    """One strategy through the real scheduler, in a worker process: a row of the table."""
    name, group, spec = job
    t0 = time.perf_counter()
    stats = CompletionStats.from_dict(exported) if spec.get("warm") else None
    if spec["policy"] == "fixed":
        policy: PollPolicy | None = fixed(spec["seconds"])
    elif spec["policy"] == "defaults":
        policy = None
    else:
        policy = PollPolicy.adaptive(**spec["options"])
    run = Run(policy, tasks, stats).go()
    row = {"strategy": name, "group": group, "engine": "scheduler", **run.summary()}
    if "options" in spec:  # how often the max_delay bound was overrun (tail, default 1 %)
        bound = spec["options"]["max_delay"]
        late = sum(d > bound for ds in run.delays.values() for d in ds)
        row["share_later_than_max_delay"] = round(late / len(tasks), 4)
    row["wall_s"] = round(time.perf_counter() - t0, 2)
    return row


def closed_form(name: str, group: str, tasks: Tasks,
                schedule: Callable[[TaskKind], list[float]]) -> dict[str, Any]:
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


def ages_of(first: float, gap: Callable[[float, int], float], horizon: float = 50_000.0
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


def adaptive_ages(options: dict[str, Any], stats: CompletionStats
                  ) -> Callable[[TaskKind], list[float]]:
    """The adaptive schedule with the warm-start fit held fixed (no learning in the run)."""
    policy = PollPolicy.adaptive(jitter=0.0, **options)
    assert isinstance(policy, AdaptivePollPolicy)

    def ages(kind: TaskKind) -> list[float]:
        fit = stats.fit(kind, 0.0)
        assert fit is not None
        return ages_of(policy.gap_at(fit, 0.0), lambda age, n: min(max(
            policy.gap_at(fit, age), policy.min_interval), policy.max_delay))

    return ages


SCHEDULER_JOBS: list[Job] = [
    ("camb-async exponential defaults", "camb-async", {"policy": "defaults"}),
    ("adaptive(max_delay=30), cold", "adaptive",
     {"policy": "adaptive", "options": {"max_delay": 30.0}}),
    ("adaptive(max_delay=30), warm", "adaptive",
     {"policy": "adaptive", "options": {"max_delay": 30.0}, "warm": True}),
    ("adaptive(max_delay=15), warm", "adaptive",
     {"policy": "adaptive", "options": {"max_delay": 15.0}, "warm": True}),
    ("adaptive(max_delay=10), warm", "adaptive",
     {"policy": "adaptive", "options": {"max_delay": 10.0}, "warm": True}),
    ("adaptive(max_delay=30, request_cost=0.3), warm", "adaptive",
     {"policy": "adaptive", "options": {"max_delay": 30.0, "request_cost": 0.3},
      "warm": True}),
    ("fixed 30 s (cross-check of the closed form)", "check",
     {"policy": "fixed", "seconds": 30.0}),
]
SWEEP_FIXED = (2.0, 3.0, 7.5, 10.0, 20.0, 45.0, 60.0)
SWEEP_ADAPTIVE = ((5.0, 0.1), (5.0, 0.33), (8.0, 0.1), (10.0, 0.2), (10.0, 0.67), (15.0, 1.0),
                  (20.0, 0.4), (30.0, 0.3), (30.0, 0.75), (30.0, 2.0), (60.0, 1.0), (60.0, 4.0),
                  (120.0, 8.0))


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

    # Warm start: what a service would have exported after an earlier day's work
    # (400 other tasks, other random durations), written to JSON and read back.
    trainer = Run(PollPolicy.adaptive(max_delay=30.0), workload(seed=7, n=400)).go()
    assert trainer.client is not None
    exported = json.loads(json.dumps(trainer.client.completion_stats.to_dict()))
    warm = CompletionStats.from_dict(exported)

    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        futures = [pool.submit(run_job, job, tasks, exported) for job in SCHEDULER_JOBS]
        rows = [
            closed_form("fixed 5 s", "seed", tasks, fixed_ages(5.0)),
            closed_form("fixed 15 s", "seed", tasks, fixed_ages(15.0)),
            closed_form("fixed 30 s", "seed", tasks, fixed_ages(30.0)),
            closed_form("1 s doubling to 10 s", "seed", tasks, doubling_ages),
        ]
        sweep = [closed_form(f"fixed {t:g} s", "sweep-fixed", tasks, fixed_ages(t))
                 for t in SWEEP_FIXED]
        sweep += [closed_form(f"adaptive(max_delay={d:g}, request_cost={c:g}), warm fit "
                              "held fixed", "sweep-adaptive", tasks,
                              adaptive_ages({"max_delay": d, "request_cost": c}, warm))
                  for d, c in SWEEP_ADAPTIVE]
        for future in futures:
            row = future.result()
            rows.append(row)
            print(f"  {row['strategy']}: {row['requests_per_task']:.2f} req/task, mean "
                  f"{row['mean_delay_s']:.2f} s, p95 {row['p95_delay_s']:.2f} s "
                  f"({row['wall_s']} s)", file=sys.stderr)
    rows.append({"strategy": "oracle (knows the completion time)", "group": "bound",
                 "engine": "definition", "requests_per_task": 1.0, "mean_delay_s": 0.0,
                 "p50_delay_s": 0.0, "p95_delay_s": 0.0, "max_delay_s": 0.0})
    check = next(r for r in rows if r["group"] == "check")
    seed30 = next(r for r in rows if r["strategy"] == "fixed 30 s")
    fits = {k.value: {"median_s": round(f.median, 2), "sigma": round(f.sigma, 3)}
            for k in KINDS if (f := warm.fit(k, 0.0)) is not None}

    result = {
        "figure": "polling efficiency (issue 5, figure 2; issue 9 acceptance)",
        "method": ("discrete-event simulation on virtual time: the real camb-async scheduler "
                   "and request path (engine 'scheduler') against FakeCambAPI in-process "
                   "(httpx.ASGITransport) under trio MockClock(autojump_threshold=0); "
                   "deterministic, seeded. Strategies whose poll times cannot depend on what "
                   "they observe (fixed sleeps, doubling, the adaptive sweep with its fit held "
                   "fixed) are evaluated exactly per task (engine 'closed form'); fixed 30 s "
                   "is run both ways as a cross-check"),
        "workload": {
            "tasks": N_TASKS, "batch": BATCH, "batch_every_s": BATCH_EVERY,
            "durations": {k.value: {"median_s": m, "sigma": s} for k, (m, s) in KINDS.items()},
            "seed": 2026, "warm_start": "stats exported after 400 tasks of seed 7",
            "warm_start_fit": fits,
        },
        "rows": rows,
        "sweep": sweep,
        "cross_check_fixed_30s": {
            "closed_form": [seed30["requests_per_task"], seed30["mean_delay_s"]],
            "scheduler": [check["requests_per_task"], check["mean_delay_s"]]},
        "keller_ratio": {k.value: round(keller_ratio(s), 3) for k, (_, s) in KINDS.items()},
        "acceptance": acceptance(rows + sweep),
        "versions": {"python": platform.python_version(), "camb_async": camb_async.__version__,
                     "httpx": httpx.__version__, "trio": trio.__version__},
        "wall_s": 0.0,
    }
    result["wall_s"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return 0


def acceptance(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 9's criteria, measured: who is beaten on what, and by how much."""
    seeds = [r for r in rows if r["group"] == "seed"]
    adaptive = [r for r in rows if "adaptive" in r["group"]]
    per_policy: dict[str, Any] = {}
    for r in adaptive:
        if r["group"] != "adaptive":
            continue
        beats = {s["strategy"]: {
            "requests_ratio": round(r["requests_per_task"] / s["requests_per_task"], 3),
            "fewer_requests": r["requests_per_task"] < s["requests_per_task"],
            "lower_mean_delay": r["mean_delay_s"] < s["mean_delay_s"],
            "p95_no_worse": r["p95_delay_s"] <= s["p95_delay_s"],
        } for s in seeds}
        per_policy[r["strategy"]] = {
            "beats_every_seed_on_requests_and_mean_delay": all(
                b["fewer_requests"] and b["lower_mean_delay"] for b in beats.values()),
            "seeds_beaten_on_requests_and_mean_delay": [
                n for n, b in beats.items() if b["fewer_requests"] and b["lower_mean_delay"]],
            "seeds_beaten_on_all_three": [
                n for n, b in beats.items()
                if b["fewer_requests"] and b["lower_mean_delay"] and b["p95_no_worse"]],
        }
    warm = [r for r in adaptive if "warm" in r["strategy"]]  # scheduler runs and sweep
    matched: dict[str, Any] = {}
    for s in seeds:
        entry = {}
        for metric in ("mean_delay_s", "p95_delay_s"):
            ok = [p for p in warm if p[metric] <= s[metric]]
            if ok:
                best = min(ok, key=lambda p: p["requests_per_task"])
                entry[metric] = {"adaptive": best["strategy"],
                                 "adaptive_requests": best["requests_per_task"],
                                 "adaptive_delay": best[metric],
                                 "ratio": round(best["requests_per_task"]
                                                / s["requests_per_task"], 3)}
        matched[s["strategy"]] = entry
    return {"per_policy": per_policy,
            "fewest_adaptive_requests_at_equal_or_better_delay": matched}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "### Polling efficiency: 1,000 tasks, log-normal durations per kind",
        "",
        f"Method: {result['method']}.",
        "",
        "| strategy | requests / task | mean delay (s) | p50 delay (s) | p95 delay (s) "
        "| engine |",
        "|---|---:|---:|---:|---:|---|",
    ]
    lines += [f"| {r['strategy']} | {r['requests_per_task']:.2f} | {r['mean_delay_s']:.2f} | "
              f"{r['p50_delay_s']:.2f} | {r['p95_delay_s']:.2f} | {r['engine']} |"
              for r in result["rows"]]
    lines += ["", "Per kind (requests / task, mean delay s):", "",
              "| strategy | " + " | ".join(k.value for k in KINDS) + " |",
              "|---|" + "---:|" * len(KINDS)]
    for r in result["rows"]:
        if "per_kind" in r:
            cells = [f"{r['per_kind'][k.value]['requests_per_task']:.1f} / "
                     f"{r['per_kind'][k.value]['mean_delay_s']:.1f}" for k in KINDS]
            lines.append(f"| {r['strategy']} | " + " | ".join(cells) + " |")
    late = [f"{r['strategy']}: {100 * r['share_later_than_max_delay']:.1f} %"
            for r in result["rows"] if "share_later_than_max_delay" in r]
    lines += ["", "Completions seen later than max_delay (tail=0.01 lets a gap stretch where "
              "completion is unlikely): " + "; ".join(late) + "."]
    lines += ["", "Trade-off curves (closed form, same tasks):", "",
              "| policy | requests / task | mean delay (s) | p95 delay (s) |",
              "|---|---:|---:|---:|"]
    lines += [f"| {p['strategy']} | {p['requests_per_task']:.2f} | {p['mean_delay_s']:.2f} | "
              f"{p['p95_delay_s']:.2f} |" for p in result["sweep"]]
    acc = result["acceptance"]
    lines += ["", "Adaptive (warm) vs each seed at equal or better delay: fewest requests among "
              "the adaptive settings measured.", "",
              "| seed | matched on | adaptive setting | requests vs seed |", "|---|---|---|---:|"]
    for seed, entry in acc["fewest_adaptive_requests_at_equal_or_better_delay"].items():
        if not entry:
            lines.append(f"| {seed} | - | none measured at this delay | - |")
        for metric, m in entry.items():
            lines.append(f"| {seed} | {metric.replace('_delay_s', '')} delay | {m['adaptive']} | "
                         f"{m['ratio']:.2f}x |")
    lines += ["", "| adaptive setting | beats on requests and mean delay | "
              "beats on requests, mean and p95 |", "|---|---|---|"]
    for name, entry in acc["per_policy"].items():
        two = ", ".join(entry["seeds_beaten_on_requests_and_mean_delay"]) or "-"
        three = ", ".join(entry["seeds_beaten_on_all_three"]) or "-"
        lines.append(f"| {name} | {two} | {three} |")
    k = result["keller_ratio"]
    lines += ["", "Why not more: with the duration distribution known exactly, the best "
              "possible schedule (Keller's optimal checking density: gaps proportional to "
              "1/sqrt(hazard)) keeps requests x mean delay at "
              + ", ".join(f"{v} ({n})" for n, v in k.items())
              + " of a fixed interval's for these log-normals (sigma 0.6-0.7). Fixed 5 s "
              "(2.5 s mean delay) and fixed 30 s (8 requests/task) sit on one curve "
              "requests x delay ~ E[T]/2; beating both at once would need a factor ~5 below "
              "it, and no schedule gets more than ~20 % within one kind. The gains measured "
              "come from skipping the creation-time poll, from long gaps before a kind's "
              "durations begin, and from spending requests on short kinds (where a request "
              "buys most delay) rather than on dubbing.",
              "", f"Wall time {result['wall_s']} s for hours of virtual time (python "
              f"{result['versions']['python']}, camb-async {result['versions']['camb_async']})."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
