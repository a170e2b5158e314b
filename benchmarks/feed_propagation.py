"""How fast a change reaches every frontend, and what a cache hit costs the database.

    .venv/bin/python -m benchmarks.feed_propagation [--frontends 2,4] [--rounds 100]

Starts N real frontends (``servefiles serve`` processes, each with its own
cache dir) against one throwaway PostgreSQL database, all on 127.0.0.1, and:

1. puts a new version of a cached file R times; after each put commits, polls
   every frontend until it answers with the new ETag, and records the delay
   (every body is also checked against its ETag: a mix would be a mismatch);
2. sends 10,000 GETs of cached files (memory and disk tier) and counts the
   reads of servefiles' tables the database saw meanwhile (pg_stat_user_tables),
   next to an idle window of the same length (the feeds' periodic checks), and
   the frontends' own counts of store fetches and revalidations.

Prints a Markdown table; exits non-zero on a correctness failure only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from servefiles import open_store
from tests.pg import find_postgres
from tests.servers import Frontend

HITS = 10_000
STATS_FLUSH_SECONDS = 11.0
"""PostgreSQL 15 backends publish their statistics at most once a second while busy, and up
to 10 s (PGSTAT_IDLE_INTERVAL) after they go idle: each reading waits that out."""
PROPAGATION_TARGET_MS = 200.0
GIVE_UP_SECONDS = 10.0


async def poll_until(client: httpx.AsyncClient, tag: str, mismatches: list[str]) -> float:
    """Seconds until ``client``'s frontend answers with ETag ``tag``."""
    started = time.perf_counter()
    while True:
        response = await client.get("/media/bench/hot.txt")
        got = response.headers.get("etag", "")
        if response.status_code == 200 and hashlib.sha256(response.content).hexdigest() != got.strip('"'):
            mismatches.append(got)
        if got == tag:
            return time.perf_counter() - started
        if time.perf_counter() - started > GIVE_UP_SECONDS:
            raise RuntimeError(f"a frontend never served {tag}")


async def propagation(url: str, fleet: list[Frontend], rounds: int, mismatches: list[str]) -> list[float]:
    delays: list[float] = []
    clients = [httpx.AsyncClient(base_url=f.base, timeout=30) for f in fleet]
    try:
        async with open_store(url) as store:
            meta = await store.put("bench/hot.txt", os.urandom(2048))
            await asyncio.gather(*(poll_until(c, f'"{meta.sha256}"', mismatches) for c in clients))
            for _ in range(rounds):
                meta = await store.put("bench/hot.txt", os.urandom(2048))  # returns once committed
                tag = f'"{meta.sha256}"'
                delays += await asyncio.gather(*(poll_until(c, tag, mismatches) for c in clients))
    finally:
        for client in clients:
            await client.aclose()
    return delays


async def table_reads(url: str) -> int:
    """Scans of servefiles' tables so far (every query servefiles makes reads one of them).

    Counted per table rather than as pg_stat_database transactions, which also
    count autovacuum's work on the catalogs of a freshly created database.
    """
    await asyncio.sleep(STATS_FLUSH_SECONDS)
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(
            "SELECT sum(seq_scan + coalesce(idx_scan, 0)) FROM pg_stat_user_tables WHERE relname LIKE 'servefiles%'"
        ))  # fmt: skip
    finally:
        await conn.close()


async def queries_per_hits(url: str, fleet: list[Frontend]) -> tuple[int, int, int, int]:
    """Table reads during HITS hits and during an idle window as long; store fetches and revalidations meanwhile."""
    async with open_store(url) as store:
        await store.put("bench/big.bin", os.urandom(1024 * 1024))
    clients = [httpx.AsyncClient(base_url=f.base, timeout=30) for f in fleet]
    paths = ["/media/bench/hot.txt", "/media/bench/big.bin"]
    try:
        for client in clients:  # warm both tiers everywhere
            for path in paths:
                await client.get(path)
        await asyncio.sleep(0.5)
        fetches_before = sum(f.metric("servefiles_store_fetches_total") for f in fleet)
        stats_before = sum(f.metric("servefiles_revalidations_total") for f in fleet)
        before = await table_reads(url)
        started = time.perf_counter()

        async def hammer(client: httpx.AsyncClient, count: int) -> None:
            for n in range(count):
                response = await client.get(paths[n % 2])
                assert response.status_code == 200

        await asyncio.gather(*(hammer(c, HITS // len(clients)) for c in clients))
        busy_seconds = time.perf_counter() - started
        after = await table_reads(url)
        fetches = int(sum(f.metric("servefiles_store_fetches_total") for f in fleet) - fetches_before)
        revalidations = int(sum(f.metric("servefiles_revalidations_total") for f in fleet) - stats_before)
        idle_before = await table_reads(url)
        await asyncio.sleep(busy_seconds)
        idle_after = await table_reads(url)
    finally:
        for client in clients:
            await client.aclose()
    return after - before, idle_after - idle_before, fetches, revalidations


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frontends", default="2,4", help="comma-separated fleet sizes")
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    server, reason = await asyncio.to_thread(find_postgres)
    if server is None:
        print(f"no PostgreSQL: {reason}", file=sys.stderr)
        return 2
    database = f"servefiles_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server.dsn)
    await admin.execute(f'CREATE DATABASE "{database}"')
    url = urlunsplit(urlsplit(server.dsn)._replace(path=f"/{database}"))
    rows: list[str] = []
    mismatches: list[str] = []
    failed = False
    try:
        for size in (int(n) for n in args.frontends.split(",")):
            with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
                fleet = []
                for n in range(size):
                    frontend = Frontend("--db", url, "--cache-dir", str(Path(tmp, f"c{n}")), "--metrics")
                    stack.callback(frontend.stop)
                    fleet.append(frontend.start())
                try:
                    delays = await propagation(url, fleet, args.rounds, mismatches)
                    busy, idle, fetches, revalidations = await queries_per_hits(url, fleet)
                except RuntimeError as exc:
                    print(f"FAILED with {size} frontends: {exc}", file=sys.stderr)
                    failed = True
                    continue
            ms = [d * 1000 for d in delays]
            p99 = percentile(ms, 99)
            rows.append(
                f"| {size} | {len(ms)} | {statistics.median(ms):.1f} | {percentile(ms, 90):.1f} | {p99:.1f} "
                f"| {max(ms):.1f} | {'PASS' if p99 < PROPAGATION_TARGET_MS else 'FAIL'} "
                f"| {busy} | {idle} | {busy - idle} | {fetches} | {revalidations} |"
            )
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
        server.stop()
    print(f"\nfeed propagation on PostgreSQL, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, all on 127.0.0.1\n")
    print("| frontends | samples | p50 ms | p90 ms | p99 ms | max ms | p99 < 200 ms "
          f"| table reads during {HITS} hits | idle, same time | net | store fetches | revalidations |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))
    print(f"\nbody/ETag mismatches: {len(mismatches)}")
    return 1 if failed or mismatches else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
