"""Figure 4: budget fidelity, measured at the server over loopback.

    .venv/bin/python benchmarks/bench_budget.py

FakeCambAPI runs on uvicorn in its own process and logs every request's arrival on the
system-wide monotonic clock. A workload of TTS tasks finishing at uniformly random times is
polled with ``gather_statuses``; demand (every unfinished task wants a poll at least every
5 s, the TTS policy's cap) exceeds the budget for most of the run, so the budget, not the
schedule, decides the pace. Reported from the server's log:

* peak requests in any 1-second window (sliding, over arrival times) vs the budget;
* utilisation while work remains: requests / budget over the whole-second windows in which
  the unfinished tasks alone (``unfinished >= rate * 5 s``) demand at least the budget;
* overall utilisation: requests / (budget x time from first request to the last task seen
  terminal), which includes the tail where too few tasks remain to fill the budget.

Beside it, the official SDK driven as its users do (``asyncio.Semaphore(16)`` + a fixed
``asyncio.sleep(5)`` loop per task, the seeds' pattern): it has no rate budget, so its peak
is whatever the loop produces. Writes ``benchmarks/results/budget.json``; prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _servers import FakeServer  # noqa: E402

from camb_async.testing import peak_per_window  # noqa: E402

RESULTS = HERE / "results"
KEY = "bench-key"


def workload(n: int, seed: int, lo: float, hi: float) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{"kind": "tts", "task_id": f"tts-{i}", "after": rng.uniform(lo, hi)} for i in range(n)]


async def run_camb(url: str, ids: list[str], rate: float) -> dict[str, float]:
    from camb_async import AsyncCambClient, gather_statuses

    done_at: dict[str, float] = {}

    def seen(result: Any) -> None:
        if result.is_terminal:
            done_at.setdefault(result.task_id, time.monotonic())

    async with AsyncCambClient(KEY, base_url=url, rate_limit=rate) as client:
        out = await gather_statuses(client, ids, kind="tts", on_update=seen)
    assert all(r.is_success for r in out)
    return done_at


async def run_official(url: str, ids: list[str], rate: float) -> dict[str, float]:
    """The seeds' loop, with the official SDK: a semaphore, a fixed sleep; no budget."""
    from camb import AsyncCambAI

    client = AsyncCambAI(api_key=KEY, base_url=url)
    sem = asyncio.Semaphore(16)
    done_at: dict[str, float] = {}

    async def follow(task_id: str) -> None:
        while True:
            async with sem:
                r = await client.text_to_speech.get_tts_result(task_id)
            if r.status != "PENDING":
                done_at[task_id] = time.monotonic()
                return
            await asyncio.sleep(5)

    await asyncio.gather(*(follow(i) for i in ids))
    return done_at


RUNNERS = {"camb-async": run_camb, "official SDK (semaphore 16 + sleep 5 s)": run_official}


def measure(label: str, tasks: list[dict[str, Any]], rate: float) -> dict[str, Any]:
    ids = [t["task_id"] for t in tasks]
    server = FakeServer(tasks, api_key=KEY)
    with server as url:
        done_at = asyncio.run(RUNNERS[label](url, ids, rate))
        log = server.log()
    times = sorted(t for t, _, _, _ in log)
    t0, t_end = times[0], max(done_at.values())
    finish = sorted(done_at.values())
    # Whole-second windows from the first request; "saturated" = the unfinished tasks alone
    # want at least `rate` polls per second (each wants one at least every 5 s).
    windows = []
    k = 0
    while t0 + k + 1 <= t_end:
        lo, hi = t0 + k, t0 + k + 1
        unfinished = len(ids) - sum(1 for f in finish if f <= lo)
        windows.append(
            {
                "start_s": k,
                "requests": sum(1 for t in times if lo <= t < hi),
                "unfinished": unfinished,
            }
        )
        k += 1
    saturated = [w for w in windows if w["unfinished"] >= rate * 5]
    in_run = [t for t in times if t <= t_end]
    return {
        "client": label,
        "budget_per_s": rate,
        "tasks": len(ids),
        "requests": len(log),
        "requests_per_task": round(len(log) / len(ids), 2),
        "peak_per_1s_window": peak_per_window(times),
        "peak_vs_budget": round(peak_per_window(times) / rate, 3),
        "utilisation_while_saturated": round(
            sum(w["requests"] for w in saturated) / (rate * len(saturated)), 3
        )
        if saturated
        else None,
        "saturated_seconds": len(saturated),
        "utilisation_overall": round(len(in_run) / (rate * (t_end - t0)), 3),
        "run_s": round(t_end - t0, 2),
        "answers_429": sum(1 for _, s, _, _ in log if s == 429),
        "windows": windows,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| client | budget req/s | tasks | peak in any 1 s | peak / budget "
        "| utilisation while work exceeds budget | overall utilisation | run s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        sat = r["utilisation_while_saturated"]
        sat_text = "-" if sat is None else f"{sat:.2f} over {r['saturated_seconds']} s"
        lines.append(
            f"| {r['client']} | {r['budget_per_s']:g} | {r['tasks']} | "
            f"{r['peak_per_1s_window']} | {r['peak_vs_budget']:.2f} | "
            f"{sat_text} | "
            f"{r['utilisation_overall']:.2f} | {r['run_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args()
    scenarios = [
        ("camb-async", 20.0, workload(200, args.seed, 1.0, 12.0)),
        ("camb-async", 50.0, workload(500, args.seed, 1.0, 12.0)),
        ("official SDK (semaphore 16 + sleep 5 s)", 20.0, workload(200, args.seed, 1.0, 12.0)),
    ]
    rows = []
    for label, rate, tasks in scenarios:
        row = measure(label, tasks, rate)
        rows.append(row)
        print({k: v for k, v in row.items() if k != "windows"}, file=sys.stderr, flush=True)
    result = {
        "figure": "budget fidelity at the server (FakeCambAPI on uvicorn, loopback)",
        "command": "python benchmarks/bench_budget.py " + " ".join(sys.argv[1:]),
        "rows": rows,
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "budget.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
