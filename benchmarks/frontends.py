"""The capacity model of docs/scaling.md, checked: predicted and measured database queries for a
fleet of frontends on one PostgreSQL database.

    .venv/bin/python -m benchmarks.frontends [--frontends 3] [--seconds 20] [--rate 300] [--writes 2]

One run, everything on 127.0.0.1:

1. A throwaway database (``CREATE DATABASE servefiles_frontends_<random>``, dropped afterwards) on
   the server ``tests/pg.py`` finds, filled through the store API with ``--files`` small files
   (2-16 KiB) and ``--large`` large ones (1-2 MiB), seed ``--seed``.
2. ``--frontends`` real ``servefiles serve`` processes (own cache dirs, default settings,
   ``--metrics``, an upload token) follow it.
3. For ``--seconds``: GETs at ``--rate`` per second in all, keys drawn from a Zipf law (s =
   ``--zipf``, rank independent of size), spread round-robin over the frontends as a load
   balancer would; and ``--writes`` PUTs per second (new content for a small key drawn from the
   same law) through the frontends in turn. Every response's body is checked against its ETag.
4. The frontends are stopped (their backends exit, so PostgreSQL publishes every counter at
   once), and ``pg_stat_database.xact_commit`` of the database is read over a connection to
   another database. Every statement servefiles sends outside a transaction block is one
   transaction, so xact_commit is its queries, transaction blocks counting once each.

The prediction is made from the request stream alone, before looking at any counter, with the
model of docs/scaling.md: per frontend, a small file misses on its first request and on the first
after each change of it; one too large for the memory tier on its first two (the first is not
admitted to the disk tier) and on the first after each change. A miss costs one query for a file
that fits the head a miss asks for with the metadata, one plus one per 1 MiB for a larger one;
a PUT three transactions (upload row, chunks, publish); each change one feed query on every
frontend; each frontend's start-up and shutdown a fixed few (counted by starting and stopping
the fleet once with no load). The frontends' own miss counters are printed
beside the predicted misses, so a gap can be told apart: the cache model or the cost per miss.

Prints Markdown. Exit status 0 when every response was right, 1 otherwise, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import hashlib
import itertools
import math
import platform
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

from servefiles import open_store
from servefiles.defaults import MEMORY_FILE_BYTES
from servefiles.service import head_bytes
from servefiles.store.base import CHUNK_SIZE, READ_BATCH_CHUNKS
from tests.pg import PgServer, find_postgres
from tests.servers import Frontend

TOKEN = "bench-upload-token-0123456789abcdef"
PUT_TRANSACTIONS = 3
"""BEGIN_UPLOAD, one staged batch (a small file's one chunk), the publish (lock, upsert, NOTIFY)."""


@dataclass
class Event:
    frontend: int
    key: str
    write: bool


@dataclass
class Prediction:
    misses: list[int]
    miss_queries: int
    write_queries: int
    feed_queries: int

    @property
    def queries(self) -> int:
        return self.miss_queries + self.write_queries + self.feed_queries


HEAD: int = head_bytes("GET", {}) or 0
"""What a plain GET's miss asks for with the metadata (servefiles.service.head_bytes): a file up to
this size costs one query."""


def miss_queries(size: int) -> int:
    """Queries one miss of a ``size``-byte file costs: the metadata with its content when it fits the
    head, else the metadata alone and then the chunks, a batch (READ_BATCH_CHUNKS) per query."""
    if size <= HEAD:
        return 1
    return 1 + math.ceil(size / (READ_BATCH_CHUNKS * CHUNK_SIZE))


def predict(events: Sequence[Event], sizes: dict[str, int], frontends: int) -> Prediction:
    """The model of docs/scaling.md, applied to a request stream (see the module)."""
    requests: list[dict[str, int]] = [{} for _ in range(frontends)]  # requests since the last change
    misses = [0] * frontends
    miss_cost = writes = 0
    for event in events:
        if event.write:
            writes += 1
            for seen in requests:  # the writer's copy too (read-your-writes): each refetches once
                seen.pop(event.key, None)
            continue
        seen = requests[event.frontend]
        count = seen.get(event.key, 0)
        size = sizes[event.key]
        # A file the memory tier does not take is written to disk on its second request (--cache-min-uses 2).
        needed = 2 if size > MEMORY_FILE_BYTES and count == 0 else 1
        if count < needed:
            misses[event.frontend] += 1
            miss_cost += miss_queries(size)
        seen[event.key] = count + 1
    return Prediction(misses, miss_cost, writes * PUT_TRANSACTIONS, writes * frontends)


def zipf_keys(keys: Sequence[str], s: float, count: int, rng: random.Random) -> list[str]:
    """``count`` keys drawn from a Zipf law of exponent ``s`` over ``keys`` in rank order."""
    weights = list(itertools.accumulate(1 / (rank**s) for rank in range(1, len(keys) + 1)))
    return [keys[bisect.bisect(weights, rng.random() * weights[-1])] for _ in range(count)]


async def commits(admin_dsn: str, database: str) -> int:
    conn = await asyncpg.connect(admin_dsn)
    try:
        return int(await conn.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = $1", database))
    finally:
        await conn.close()


async def settled_commits(admin_dsn: str, database: str) -> int:
    """xact_commit once no backend of the database is left (each publishes its counters as it exits)."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        deadline = time.monotonic() + 30
        while await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", database):
            assert time.monotonic() < deadline, "backends of the benchmark database did not exit"
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        return int(await conn.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = $1", database))
    finally:
        await conn.close()


@dataclass
class Fleet:
    dsn: str
    root: Path
    count: int
    servers: list[Frontend] = field(default_factory=list)

    @contextlib.contextmanager
    def running(self, tag: str) -> Iterator[list[Frontend]]:
        self.servers = [Frontend("--db", self.dsn, "--cache-dir", str(self.root / f"{tag}{n}"), "--metrics",
                                 "--upload-token", TOKEN) for n in range(self.count)]  # fmt: skip
        try:
            for server in self.servers:
                server.start()
            for server in self.servers:  # started means caught up: the first request does not wait
                deadline = time.monotonic() + 20
                while httpx.get(f"{server.base}/_servefiles/ready").json()["reason"] != "ready":  # feed connected
                    assert time.monotonic() < deadline, server.output()
                    time.sleep(0.05)
            yield self.servers
        finally:
            for server in self.servers:
                server.stop()


WORKERS = 16
"""Requests in flight at most (a load balancer's connections to the fleet, in all)."""


async def drive(
    servers: Sequence[Frontend], reads: Sequence[str], writes: Sequence[str], seconds: float, data: dict[str, bytes]
) -> tuple[list[Event], int]:
    """Send ``reads`` evenly over ``seconds`` and ``writes`` likewise, round-robin over ``servers``
    (each request is issued at its time, or as soon as one of :data:`WORKERS` is free); the events
    in the order they were issued, and how many responses were wrong."""
    jobs = [(seconds * i / len(reads), key, False) for i, key in enumerate(reads)]
    jobs += [(seconds * (i + 0.5) / max(1, len(writes)), key, True) for i, key in enumerate(writes)]
    jobs.sort()
    events: list[Event] = []
    wrong = 0
    rng = random.Random(7)
    turn = itertools.count()
    pending = iter(jobs)
    start = time.monotonic()

    async def one(client: httpx.AsyncClient, at: float, key: str, write: bool) -> bool:
        await asyncio.sleep(max(0.0, start + at - time.monotonic()))
        frontend = next(turn) % len(servers)
        events.append(Event(frontend, key, write))
        url = f"{servers[frontend].base}/media/{key}"
        if write:
            body = rng.randbytes(len(data[key]))
            response = await client.put(url, content=body, headers={"authorization": f"Bearer {TOKEN}"})
            return response.status_code in (200, 201)
        response = await client.get(url)
        return response.status_code == 200 and hashlib.sha256(response.content).hexdigest() == response.headers[
            "etag"
        ].strip('"')

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal wrong
        for at, key, write in pending:
            try:
                right = await one(client, at, key, write)
            except httpx.HTTPError:
                right = False
            wrong += not right

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=WORKERS)) as client:
        await asyncio.gather(*(worker(client) for _ in range(WORKERS)))
    return events, wrong


def metric(server: Frontend, name: str) -> float:
    return server.metric(name)


async def main_async(args: argparse.Namespace, pg: PgServer) -> int:
    database = f"servefiles_frontends_{uuid.uuid4().hex[:8]}"
    admin_dsn = pg.dsn
    conn = await asyncpg.connect(admin_dsn)
    await conn.execute(f'CREATE DATABASE "{database}"')
    await conn.close()
    dsn = pg.dsn.rsplit("/", 1)[0] + f"/{database}"
    try:
        rng = random.Random(args.seed)
        keys = [f"small/{n}.bin" for n in range(args.files)] + [f"large/{n}.bin" for n in range(args.large)]
        rng.shuffle(keys)  # rank independent of size
        data = {key: rng.randbytes(rng.randint(2048, 16384) if key.startswith("small") else
                                   rng.randint(1 << 20, 2 << 20)) for key in keys}  # fmt: skip
        async with open_store(dsn) as store:
            for key in keys:
                await store.put(key, data[key])
        sizes = {key: len(body) for key, body in data.items()}
        reads = zipf_keys(keys, args.zipf, int(args.rate * args.seconds), rng)
        small = [key for key in keys if key.startswith("small")]
        writes = zipf_keys(small, args.zipf, int(args.writes * args.seconds), rng)

        with tempfile.TemporaryDirectory(prefix="servefiles-frontends-") as tmp:
            fleet = Fleet(dsn, Path(tmp), args.frontends)
            before_idle = await commits(admin_dsn, database)
            with fleet.running("idle"):
                pass
            per_lifecycle = (await settled_commits(admin_dsn, database) - before_idle) / args.frontends

            before = await commits(admin_dsn, database)
            with fleet.running("load") as servers:
                started = time.monotonic()
                events, wrong = await drive(servers, reads, writes, args.seconds, data)
                took = time.monotonic() - started
                measured_misses = [int(metric(s, "servefiles_misses_total")) for s in servers]
                hits = sum(int(metric(s, 'servefiles_hits_total{tier="memory"}')
                               + metric(s, 'servefiles_hits_total{tier="disk"}')) for s in servers)  # fmt: skip
            measured = await settled_commits(admin_dsn, database) - before

        prediction = predict(events, sizes, args.frontends)
        lifecycle = round(per_lifecycle * args.frontends)
        predicted = prediction.queries + lifecycle
        requests = len(reads)
        print(f"## `benchmarks.frontends`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
        where = pg.dsn.split("@")[-1].rsplit("/", 1)[0]
        machine = platform.processor() or platform.machine()
        print(f"Machine: {machine}, Linux {platform.release()}, Python {platform.python_version()}. "
              f"PostgreSQL at {where}.\n")  # fmt: skip
        print(f"{args.frontends} frontends; {args.files} small files (2-16 KiB) + {args.large} large (1-2 MiB), "
              f"Zipf s={args.zipf}; {requests} GETs and {len(writes)} PUTs in {took:.1f} s "
              f"({requests / took:.0f} GET/s, {len(writes) / took:.1f} PUT/s); wrong: {wrong}.\n")  # fmt: skip
        print("| | predicted | measured |")
        print("|---|---:|---:|")
        print(f"| misses per frontend | {', '.join(map(str, prediction.misses))} | "
              f"{', '.join(map(str, measured_misses))} |")  # fmt: skip
        print(f"| hit ratio | {1 - sum(prediction.misses) / requests:.1%} | {hits / requests:.1%} |")
        print(f"| queries for misses | {prediction.miss_queries} | |")
        print(f"| transactions for PUTs | {prediction.write_queries} | |")
        print(f"| feed queries (one per change per frontend) | {prediction.feed_queries} | |")
        print(f"| start-up and shutdown (measured idle, {per_lifecycle:.1f} per frontend) | {lifecycle} | |")
        print(f"| **database transactions** | **{predicted}** | **{measured}** |")
        print(f"| per second | {predicted / took:.1f} | {measured / took:.1f} |")
        print(f"\nmeasured / predicted: {measured / predicted:.2f}")
        return 0 if wrong == 0 else 1
    finally:
        conn = await asyncpg.connect(admin_dsn)
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frontends", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=300.0, help="GETs per second, all frontends together")
    parser.add_argument("--writes", type=float, default=2.0, help="PUTs per second, all frontends together")
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--large", type=int, default=20)
    parser.add_argument("--zipf", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args(argv)
    pg, reason = find_postgres()
    if pg is None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(main_async(args, pg))
    finally:
        pg.stop()


if __name__ == "__main__":
    sys.exit(main())
