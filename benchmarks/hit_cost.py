"""What one memory hit costs in-process: a loop of ASGI calls against ``ServeFiles``, no server.

The whole of a hit's CPU in Python (routing, key gate, memory tier, HTTP decision, metrics,
the two ``send`` messages), without a socket or an HTTP parser: the figure a change to the hit
path moves. A GET of a 1 KiB file held in the memory tier of a SQLite-backed service, the
change feed healthy; ``--repeat`` runs of ``--calls`` requests each, the best run reported
(the least disturbed by the rest of the machine), in µs per request.

    .venv/bin/python -m benchmarks.hit_cost [--calls 20000] [--repeat 7] [--no-metrics]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from servefiles import ServeFiles

Message = MutableMapping[str, Any]


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Message) -> None:
    pass


async def measure(calls: int, repeat: int, metrics: bool) -> list[float]:
    """µs per memory hit, one figure per run."""
    with tempfile.TemporaryDirectory() as tmp:
        app = ServeFiles(None, db=f"sqlite:///{tmp}/files.db", cache_dir=Path(tmp) / "cache", metrics=metrics)
        try:
            await app.service.start()
            await app.put("bench/a.txt", b"x" * 1024)
            scope: dict[str, Any] = {
                "type": "http", "method": "GET", "path": "/media/bench/a.txt", "raw_path": b"/media/bench/a.txt",
                "query_string": b"", "headers": [(b"host", b"bench"), (b"accept", b"*/*")],
            }  # fmt: skip
            for _ in range(3):
                await app(scope, _receive, _send)
            assert app.service.metrics.value("servefiles_hits_total", tier="memory") >= 1, "not a memory hit"
            runs = []
            for _ in range(repeat):
                started = time.perf_counter()
                for _ in range(calls):
                    await app(scope, _receive, _send)
                runs.append((time.perf_counter() - started) / calls * 1e6)
            return runs
        finally:
            await app.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-metrics", dest="metrics", action="store_false")
    args = parser.parse_args()
    runs = asyncio.run(measure(args.calls, args.repeat, args.metrics))
    print(f"memory hit, in-process ASGI: best {min(runs):.2f} µs, median {sorted(runs)[len(runs) // 2]:.2f} µs "
          f"per request ({args.repeat} runs of {args.calls})")  # fmt: skip


if __name__ == "__main__":
    main()
