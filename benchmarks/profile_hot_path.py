"""Profile camb-async's status check with pyinstrument (loopback nginx, asyncio or trio).

    .venv/bin/python benchmarks/profile_hot_path.py [--concurrency 50] [--requests 3000]
        [--backend asyncio|trio] [--bulk] [--html out.html]

Warms up, then profiles ``--requests`` concurrent ``client.dub.status`` calls (with
``--bulk``: one ``gather_statuses(..., wait=False)`` over as many ids) and prints the
call tree (library frames included, frames under 1 % hidden). benchmarks/README.md records
what it showed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _servers import Nginx


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--bulk", action="store_true")
    parser.add_argument("--html")
    args = parser.parse_args()

    import anyio
    from pyinstrument import Profiler

    from camb_async import AsyncCambClient, gather_statuses

    with Nginx() as url:

        async def run() -> Profiler:
            async with AsyncCambClient(
                "bench-key", base_url=url, rate_limit=None, max_concurrency=args.concurrency
            ) as client:

                async def batch(ids: list[str]) -> None:
                    if args.bulk:
                        await gather_statuses(client, ids, kind="dub", wait=False)
                        return
                    async with anyio.create_task_group() as tg:
                        for task_id in ids:
                            tg.start_soon(client.dub.status, task_id)

                await batch([f"w{i}" for i in range(300)])
                profiler = Profiler(interval=0.001, async_mode="disabled")
                profiler.start()
                await batch([f"t{i}" for i in range(args.requests)])
                profiler.stop()
                return profiler

        profiler = anyio.run(run, backend=args.backend)
    print(
        profiler.output_text(
            unicode=False, color=False, show_all=True, processor_options={"filter_threshold": 0.01}
        )
    )
    if args.html:
        Path(args.html).write_text(profiler.output_html())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
