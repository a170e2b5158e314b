"""How fast a change reaches every frontend, and what a cache hit costs the database.

    .venv/bin/python -m benchmarks.feed_propagation [--frontends 2,4] [--rounds 200] [--backend postgres|sqlite]

Everything runs on 127.0.0.1, in one run:

1. **Propagation.** N real frontends (``python -m servefiles serve``, each with a
   cache dir of its own, started with ``--metrics``) follow one throwaway
   database. A 2 KiB file is put from this process and fetched once on every
   frontend (memory tier). Then, R times: a new version (fresh random bytes) is
   put, and from the moment ``put`` returns (the commit) every frontend is
   polled concurrently (httpx, HTTP/1.1 keep-alive, 1 ms between requests)
   until it answers with the new ETag (``"<sha256>"``). The delay from commit
   to the first response carrying it is one sample; every response's body is
   hashed and compared with its ETag. Run for each fleet size in turn (the
   fleet grows: 2, then 2 more).
   A response carrying neither the new ETag nor the one before it (a version
   that went back) is a failure too.
2. **Database work per 10,000 hits.** With the last fleet warm and its feeds
   healthy, 10,000 GETs, three of the small file (memory tier) for one of a
   1 MiB file (disk tier), spread evenly over the frontends on two keep-alive
   connections each (a minimal HTTP/1.1 client: httpx would cost the client
   more CPU than the servers spend, on 2 cores). The database's own
   counters (``pg_stat_database``: xact_commit, tup_returned, tup_fetched of
   the benchmark database, read over a fresh connection to *another* database
   so that reading costs the measured one nothing) are compared with an idle
   window as long; a positive control (uncached GETs, each of which must query)
   shows the method sees queries at all. The frontends' own counters of store
   fetches, misses and revalidations must not move during the hits.

Statistics timing: a PostgreSQL 15 backend publishes its counters at most once
a second; what it did in the last second before going idle is published only
10 s later (PGSTAT_IDLE_INTERVAL), and transactions that touch no table at all
(the feeds' ``SELECT 1`` checks) are not published until that backend touches
a table or exits. So every reading waits ``--stats-wait`` (11 s) after the
activity it must include, rather than the 1.5 s that would suffice for a busy
backend.

Prints Markdown tables. Exit status: 0 when every check held; 1 on a correctness
failure (a body that does not match its ETag, a stale or failed response, a
frontend that did not see a version within 10 s, a frontend that died); 2 when
the benchmark could not run (no PostgreSQL, a frontend that would not start).
The latency and query targets are reported as PASS/FAIL, not enforced.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from servefiles import open_store
from servefiles.store import Store
from tests import servers
from tests.pg import PgServer, find_postgres

KIB = 1024
MIB = 1024 * KIB
PREFIX = "/media"
SMALL_KEY = "bench/feed/small.bin"
BIG_KEY = "bench/feed/big.bin"
SMALL_BYTES = 2 * KIB
BIG_BYTES = MIB
ABSENT_KEY = "bench/feed/absent-{}.bin"
HEALTH_PATH = "/_servefiles/health"
HEALTH_TOKEN = "feed-bench-token-0123456789abcdef"
"""An upload token: its holder gets the detailed health report (the feed's state)."""
METRICS_PATH = "/_servefiles/metrics"

DEFAULT_FRONTENDS = "2,4"
DEFAULT_ROUNDS = 200
DEFAULT_HITS = 10_000
PROPAGATION_TARGET_MS = 200.0
GIVE_UP_SECONDS = 10.0
"""A frontend that has not served a new version this long after its commit is a correctness failure."""
POLL_SECONDS = 0.001
START_TIMEOUT_SECONDS = 30.0
FEED_CHECK_SECONDS = 5.0
"""servefiles' default ``feed_check_seconds``: how often an idle feed checks its connection and catches up."""
SQLITE_FEED_POLL_SECONDS = 0.2
"""servefiles' default ``feed_poll_seconds``: a SQLite feed asks for changes this often."""
SETTLE_LIMIT_SECONDS = 60.0
STATS_WAIT_SECONDS = 11.0
"""PGSTAT_IDLE_INTERVAL (10 s) plus a margin: see the module docstring."""
CONTROL_REQUESTS = 100
HIT_WORKERS_PER_FRONTEND = 2
BIG_EVERY = 4
"""One hit in four is of the 1 MiB file (disk tier), three of the 2 KiB one (memory tier)."""
COUNTERS = (
    "servefiles_store_fetches_total",
    "servefiles_misses_total",
    "servefiles_revalidations_total",
    'servefiles_hits_total{tier="memory"}',
    'servefiles_hits_total{tier="disk"}',
)
DB_COLUMNS = ("xact_commit", "tup_returned", "tup_fetched")
DB_STATS = f"SELECT {', '.join(DB_COLUMNS)} FROM pg_stat_database WHERE datname = $1"
METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$", re.MULTILINE)


class SetupError(Exception):
    """The benchmark could not run (as opposed to servefiles misbehaving)."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- correctness checks ---------------------------------------------------------------------------


@dataclass
class Checks:
    """Every response's verdict: body against ETag, status, staleness."""

    responses: int = 0
    mismatches: int = 0
    failures: int = 0
    problems: list[str] = field(default_factory=list)

    def note(self, problem: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(problem)

    def check(self, response: httpx.Response, expected_etag: str | None = None) -> str | None:
        """The response's ETag if it is a 200 whose body hashes to it (and is the expected one), else None."""
        etag: str | None = response.headers.get("etag")
        return self.verdict(str(response.request.url), response.status_code, etag, response.content, expected_etag)

    def verdict(self, where: str, status: int, etag: str | None, body: bytes, expected_etag: str | None) -> str | None:
        self.responses += 1
        if status != 200 or etag is None:
            self.failures += 1
            self.note(f"{where}: status {status}, etag {etag!r}")
            return None
        digest = f'"{hashlib.sha256(body).hexdigest()}"'
        if digest != etag:
            self.mismatches += 1
            self.note(f"{where}: body hashes to {digest}, ETag says {etag}")
            return None
        if expected_etag is not None and etag != expected_etag:
            self.failures += 1
            self.note(f"{where}: stale ETag {etag}, current is {expected_etag}")
            return None
        return etag

    @property
    def ok(self) -> bool:
        return self.mismatches == 0 and self.failures == 0


# -- frontends ------------------------------------------------------------------------------------


class Frontend(servers.Frontend):
    """``tests.servers.Frontend`` with a cache dir of its own, the metrics endpoint, and an
    HTTP/1.1 keep-alive client for the measurements."""

    def __init__(self, index: int, url: str, workdir: Path) -> None:
        self.index = index
        self.cache_dir = workdir / f"frontend-{index}"
        self.cache_dir.mkdir(parents=True)
        # Defaults only: no SERVEFILES_* setting of the caller's shell (prefetch, freshness...) leaks in.
        super().__init__("--db", url, "--cache-dir", str(self.cache_dir), "--metrics", "--upload-token", HEALTH_TOKEN)
        self.env = {name: value for name, value in os.environ.items() if not name.startswith("SERVEFILES_")}
        self.client = httpx.AsyncClient(base_url=self.base, timeout=GIVE_UP_SECONDS + 5)

    def start(self) -> Frontend:
        try:
            super().start()
        except (RuntimeError, TimeoutError) as exc:
            raise SetupError(f"frontend {self.index}: {exc}") from exc
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self) -> str:
        """The last lines of its log, for an error message."""
        return " | ".join(self.output().strip().splitlines()[-5:])

    async def health(self) -> dict[str, Any]:
        """/_servefiles/health (costs the database one query: never call it inside a measured window)."""
        response = await self.client.get(HEALTH_PATH, headers={"authorization": f"Bearer {HEALTH_TOKEN}"})
        response.raise_for_status()
        report: dict[str, Any] = response.json()
        return report

    async def wait_ready(self) -> None:
        """Until its change feed is healthy (``start()`` has already waited for it to listen)."""
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if not self.alive():
                code = self.proc.returncode if self.proc else None
                raise SetupError(f"frontend {self.index} exited with {code}: {self.tail()}")
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if (await self.health()).get("feed", {}).get("healthy"):
                    return
            if time.monotonic() > deadline:
                raise SetupError(f"frontend {self.index} did not become healthy: {self.tail()}")
            await asyncio.sleep(0.05)

    async def counters(self) -> dict[str, float]:
        """The Prometheus samples of :data:`COUNTERS` (no database work)."""
        response = await self.client.get(METRICS_PATH)
        response.raise_for_status()
        samples = {name: float(value) for name, value in METRIC_LINE.findall(response.text)}
        return {name: samples.get(name, 0.0) for name in COUNTERS}


async def fleet_counters(fleet: Sequence[Frontend]) -> dict[str, float]:
    totals = dict.fromkeys(COUNTERS, 0.0)
    for counters in await asyncio.gather(*(frontend.counters() for frontend in fleet)):
        for name, value in counters.items():
            totals[name] += value
    return totals


# -- part 1: propagation --------------------------------------------------------------------------


@dataclass
class Sample:
    total: float
    """Commit → the first response carrying the new ETag has been received."""
    until_request: float
    """Commit → that request was sent (the old copy was gone by then): feed wake-up, catch-up, discard, poll gap."""
    request: float
    """That request's round trip: revalidation, fetch, disk write-through (fsync), response."""


@dataclass
class Propagation:
    frontends: int
    rounds: int = 0
    samples: list[Sample] = field(default_factory=list)
    hit_round_trips: list[float] = field(default_factory=list)
    put_seconds: list[float] = field(default_factory=list)
    timeouts: int = 0
    mismatches: int = 0
    seconds: float = 0.0


async def first_new_etag(frontend: Frontend, tag: str, previous: str, committed: float, checks: Checks,
                         result: Propagation) -> Sample | None:  # fmt: skip
    """Poll ``frontend`` until it serves ETag ``tag``; None if it has not after GIVE_UP_SECONDS.

    Until then it may serve ``previous`` (the version before): any other version is a failure.
    """
    while True:
        sent = time.perf_counter()
        response = await frontend.client.get(f"{PREFIX}/{SMALL_KEY}")
        received = time.perf_counter()
        etag = checks.check(response)
        if etag == tag:
            return Sample(received - committed, sent - committed, received - sent)
        if etag is not None and etag != previous:
            checks.failures += 1
            checks.note(f"frontend {frontend.index} served {etag} while waiting for {tag} (previous {previous})")
        result.hit_round_trips.append(received - sent)
        if received - committed > GIVE_UP_SECONDS:
            checks.note(f"frontend {frontend.index} never served {tag} within {GIVE_UP_SECONDS:g} s")
            return None
        await asyncio.sleep(POLL_SECONDS)


async def propagation(store: Store, fleet: Sequence[Frontend], rounds: int, checks: Checks, jitter: float,
                      current: str) -> Propagation:  # fmt: skip
    """``rounds`` new versions; before each put a random pause of up to ``jitter`` seconds, so that the
    puts do not fall into step with a polling feed (SQLite) and always wait nearly a whole period.
    ``current`` is the ETag every frontend serves before the first put."""
    result = Propagation(len(fleet))
    mismatches_before = checks.mismatches
    started = time.perf_counter()
    for _ in range(rounds):
        if jitter:
            await asyncio.sleep(random.uniform(0, jitter))
        data = os.urandom(SMALL_BYTES)
        began = time.perf_counter()
        meta = await store.put(SMALL_KEY, data)
        committed = time.perf_counter()  # put returns once the transaction (and its NOTIFY) committed
        result.put_seconds.append(committed - began)
        tag = f'"{meta.sha256}"'
        if tag == current:  # 2 KiB of urandom twice in a row: never, but then a round proves nothing
            continue
        samples = await asyncio.gather(*(first_new_etag(f, tag, current, committed, checks, result) for f in fleet))
        current = tag
        result.rounds += 1
        result.samples += [sample for sample in samples if sample is not None]
        result.timeouts += sum(sample is None for sample in samples)
        if result.timeouts:
            break  # a frontend is stuck: further rounds would only wait 10 s each
    result.seconds = time.perf_counter() - started
    result.mismatches = checks.mismatches - mismatches_before
    return result


# -- part 2: database work per hits ---------------------------------------------------------------


@dataclass
class DatabaseSide:
    """Reads ``pg_stat_database`` for the benchmark database over a fresh connection to another database."""

    admin_dsn: str
    database: str

    async def reading(self) -> tuple[int, ...]:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            row = await conn.fetchrow(DB_STATS, self.database)
        finally:
            await conn.close()
        if row is None:
            raise SetupError(f"no pg_stat_database row for {self.database}")
        return tuple(int(row[column]) for column in DB_COLUMNS)


def minus(after: Sequence[int], before: Sequence[int]) -> tuple[int, ...]:
    return tuple(a - b for a, b in zip(after, before, strict=True))


async def settle(db: DatabaseSide, frontends: int, minimum: float) -> tuple[float, tuple[int, ...]]:
    """Wait ``minimum`` seconds, then until one feed check period adds no more than the feeds' steady
    background (2 transactions per frontend, no tuple); (seconds waited, the last reading).

    After a burst of work the frontends' counters keep trickling in for a while (in this benchmark
    ~20 s past the first 11 s, 0-tuple transactions published at the feeds' next checks): a window
    opened before that would count them.
    """
    started = time.perf_counter()
    await asyncio.sleep(minimum)
    previous = await db.reading()
    while time.perf_counter() - started < SETTLE_LIMIT_SECONDS:
        await asyncio.sleep(FEED_CHECK_SECONDS)
        current = await db.reading()
        xacts, returned, fetched = minus(current, previous)
        previous = current
        if xacts <= 2 * frontends and returned == 0 and fetched == 0:
            break
    return time.perf_counter() - started, previous


@dataclass
class Cost:
    frontends: int
    hits: int = 0
    hit_seconds: float = 0.0
    disk_hits_planned: int = 0
    counters: dict[str, float] = field(default_factory=dict)
    """Fleet-wide counter increments during the hits."""
    loaded: tuple[int, ...] | None = None
    idle: tuple[int, ...] | None = None
    control: tuple[int, ...] | None = None
    control_requests: int = 0
    window_seconds: float = 0.0
    settle_seconds: float = 0.0
    feeds_healthy_after: bool = False

    @property
    def net(self) -> tuple[int, ...] | None:
        return None if self.loaded is None or self.idle is None else minus(self.loaded, self.idle)


class HitConnection:
    """A minimal HTTP/1.1 keep-alive client for the hits: httpx costs the client ~5x more CPU per
    small response, and on 2 cores the load generator would then mostly measure itself."""

    def __init__(self, frontend: Frontend) -> None:
        self.frontend = frontend
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, str | None, bytes]:
        """(status, ETag, body) of ``GET path``; the response must carry a Content-Length."""
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.frontend.port)
        self._writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.frontend.port}\r\n\r\n".encode())
        head = (await self._reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await self._reader.readexactly(int(headers["content-length"]))
        return status, headers.get("etag"), body

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()


def hit_plan(fleet_size: int, total: int) -> list[tuple[int, list[str]]]:
    """(frontend index, paths) per connection: ``total`` GETs spread evenly over the fleet, on
    HIT_WORKERS_PER_FRONTEND connections each; on every connection each BIG_EVERY-th GET is of the big
    file (disk tier), the others of the small one (memory tier)."""
    small, big = f"{PREFIX}/{SMALL_KEY}", f"{PREFIX}/{BIG_KEY}"
    workers = fleet_size * HIT_WORKERS_PER_FRONTEND
    plan: list[tuple[int, list[str]]] = []
    for worker in range(workers):
        count = len(range(worker, total, workers))
        plan.append((worker % fleet_size, [big if n % BIG_EVERY == BIG_EVERY - 1 else small for n in range(count)]))
    return plan


async def send_hits(fleet: Sequence[Frontend], plan: list[tuple[int, list[str]]], expected: dict[str, str],
                    checks: Checks) -> None:  # fmt: skip
    async def worker(frontend: Frontend, paths: list[str]) -> None:
        connection = HitConnection(frontend)
        try:
            for path in paths:
                status, etag, body = await connection.get(path)
                checks.verdict(f"{frontend.base}{path}", status, etag, body, expected[path])
        finally:
            await connection.close()

    await asyncio.gather(*(worker(fleet[index], paths) for index, paths in plan))


async def database_cost(fleet: Sequence[Frontend], db: DatabaseSide | None, hits: int, stats_wait: float,
                        expected: dict[str, str], checks: Checks) -> Cost:  # fmt: skip
    cost = Cost(len(fleet), hits)
    healths = await asyncio.gather(*(frontend.health() for frontend in fleet))
    if not all(report.get("feed", {}).get("healthy") for report in healths):
        raise SetupError(f"a feed is not healthy before the hits: {healths}")
    if db is not None:
        log(f"  waiting for the database's counters to settle (at least {stats_wait:g} s)…")
        cost.settle_seconds, before = await settle(db, len(fleet), stats_wait)
    window_started = time.perf_counter()

    log(f"  {hits} hits…")
    plan = hit_plan(len(fleet), hits)
    cost.disk_hits_planned = sum(paths.count(f"{PREFIX}/{BIG_KEY}") for _, paths in plan)
    counters_before = await fleet_counters(fleet)
    started = time.perf_counter()
    await send_hits(fleet, plan, expected, checks)
    cost.hit_seconds = time.perf_counter() - started
    counters_after = await fleet_counters(fleet)
    cost.counters = {name: counters_after[name] - counters_before[name] for name in COUNTERS}

    if db is not None:
        # Both windows last a whole number of feed check periods, so each holds as many checks.
        cost.window_seconds = math.ceil((cost.hit_seconds + stats_wait) / FEED_CHECK_SECONDS) * FEED_CHECK_SECONDS
        idle_started = window_started + cost.window_seconds
        await asyncio.sleep(idle_started - time.perf_counter())
        loaded = await db.reading()
        log(f"  idle window of {cost.window_seconds:.0f} s…")
        await asyncio.sleep(idle_started + cost.window_seconds - time.perf_counter())
        idle = await db.reading()
        cost.loaded, cost.idle = minus(loaded, before), minus(idle, loaded)

        # Positive control: uncached keys, each of which must ask the database.
        cost.control_requests = CONTROL_REQUESTS
        log(f"  control: {CONTROL_REQUESTS} uncached GETs…")
        for n in range(CONTROL_REQUESTS):
            response = await fleet[n % len(fleet)].client.get(f"{PREFIX}/{ABSENT_KEY.format(n)}")
            if response.status_code != 404:
                checks.failures += 1
                checks.note(f"absent key {n}: status {response.status_code}")
        await asyncio.sleep(stats_wait)
        cost.control = minus(await db.reading(), idle)

    healths = await asyncio.gather(*(frontend.health() for frontend in fleet))
    cost.feeds_healthy_after = all(report.get("feed", {}).get("healthy") for report in healths)
    return cost


# -- the run --------------------------------------------------------------------------------------


@dataclass
class Run:
    backend: str
    propagations: list[Propagation] = field(default_factory=list)
    cost: Cost | None = None
    checks: Checks = field(default_factory=Checks)
    setup_error: str | None = None
    dead_frontends: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stats_wait: float = STATS_WAIT_SECONDS
    load: list[float] = field(default_factory=list)
    """The 1-minute load average at the start and at the end: other work on the machine skews timings."""

    @property
    def correct(self) -> bool:
        return (
            self.checks.ok
            and not self.dead_frontends
            and all(p.timeouts == 0 for p in self.propagations)
            and (self.cost is None or self.cost.feeds_healthy_after)
        )


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


async def admin_execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def grow(fleet: list[Frontend], size: int, url: str, workdir: Path, expected: dict[str, str],
               checks: Checks) -> None:  # fmt: skip
    """Start frontends until there are ``size``, each healthy and with both files cached."""
    new = [Frontend(len(fleet) + n, url, workdir) for n in range(size - len(fleet))]
    fleet += new  # registered before starting: the cleanup stops whatever did start
    for frontend in new:
        frontend.start()
    await asyncio.gather(*(frontend.wait_ready() for frontend in new))
    for frontend in new:
        for path, tag in expected.items():
            # The first GET fills (memory + disk for the small file, disk for the big one); the second is a hit.
            for _ in range(2):
                checks.check(await frontend.client.get(path), tag)


async def bench(args: argparse.Namespace, sizes: list[int], run: Run) -> None:
    async with contextlib.AsyncExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="servefiles-feedbench-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        db: DatabaseSide | None = None
        if args.backend == "postgres":
            server, reason = await asyncio.to_thread(find_postgres)
            if server is None:
                raise SetupError(f"PostgreSQL unavailable: {reason}")
            stack.callback(PgServer.stop, server)
            database = f"servefiles_bench_{uuid.uuid4().hex[:12]}"
            await admin_execute(server.dsn, f'CREATE DATABASE "{database}"')
            stack.push_async_callback(admin_execute, server.dsn, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            url = with_database(server.dsn, database)
            db = DatabaseSide(server.dsn, database)
        else:
            url = f"sqlite:///{workdir / 'files.db'}"

        fleet: list[Frontend] = []

        def stop_fleet() -> None:
            for frontend in fleet:
                if frontend.proc is not None and frontend.proc.poll() is not None and frontend.proc.returncode:
                    run.dead_frontends.append(f"frontend {frontend.index} exited {frontend.proc.returncode}")
                frontend.stop()

        async def close_clients() -> None:
            for frontend in fleet:
                await frontend.client.aclose()

        store = await stack.enter_async_context(open_store(url))
        expected = {
            f"{PREFIX}/{SMALL_KEY}": f'"{(await store.put(SMALL_KEY, os.urandom(SMALL_BYTES))).sha256}"',
            f"{PREFIX}/{BIG_KEY}": f'"{(await store.put(BIG_KEY, os.urandom(BIG_BYTES))).sha256}"',
        }
        stack.push_async_callback(close_clients)  # after the processes are gone
        stack.callback(stop_fleet)  # first of all

        for size in sizes:
            while len(fleet) > size:
                gone = fleet.pop()
                gone.stop()
                await gone.client.aclose()
            log(f"{size} frontends: starting…")
            await grow(fleet, size, url, workdir, expected, run.checks)
            log(f"{size} frontends: {args.rounds} rounds…")
            jitter = SQLITE_FEED_POLL_SECONDS if args.backend == "sqlite" else 0.0
            small = f"{PREFIX}/{SMALL_KEY}"
            result = await propagation(store, fleet, args.rounds, run.checks, jitter, expected[small])
            run.propagations.append(result)
            meta = await store.stat(SMALL_KEY)  # what the next round and the hits must see
            assert meta is not None
            expected[small] = f'"{meta.sha256}"'
            if result.timeouts:
                log(f"{size} frontends: a frontend never served a new version")
        dead = [f"frontend {f.index}: {f.tail()}" for f in fleet if not f.alive()]
        if dead:
            run.dead_frontends += dead
            return
        log(f"database work per hits, {len(fleet)} frontends:")
        run.cost = await database_cost(fleet, db, args.hits, args.stats_wait, expected, run.checks)


# -- report ---------------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def spread(values: Sequence[float]) -> str:
    if not values:
        return "—"
    return f"p50 {ms(percentile(values, 50))} / p99 {ms(percentile(values, 99))} / max {ms(max(values))} ms"


def propagation_table(run: Run) -> list[str]:
    lines = [
        f"| frontends | rounds | samples | p50 ms | p90 ms | p99 ms | max ms | p99 < {PROPAGATION_TARGET_MS:g} ms "
        "| not seen in 10 s | body/ETag mismatches |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for result in run.propagations:
        totals = [sample.total for sample in result.samples]
        if totals:
            p99 = percentile(totals, 99)
            cells = [ms(percentile(totals, 50)), ms(percentile(totals, 90)), ms(p99), ms(max(totals))]
            verdict = "PASS" if p99 * 1000 < PROPAGATION_TARGET_MS and not result.timeouts else "FAIL"
        else:
            cells, verdict = ["—"] * 4, "FAIL (no samples)"
        lines.append(
            f"| {result.frontends} | {result.rounds} | {len(totals)} | {' | '.join(cells)} | {verdict} "
            f"| {result.timeouts} | {result.mismatches} |"
        )
    return lines


def triple(values: Sequence[int] | None) -> str:
    return "n/a" if values is None else " / ".join(str(v) for v in values)


def cost_table(run: Run) -> list[str]:
    cost = run.cost
    if cost is None:
        return []
    hits = cost.hits
    per = (lambda n: n * 10_000 / hits) if hits else (lambda n: float("nan"))
    net = cost.net
    lines = [
        f"| {cost.hits} hits on {cost.frontends} frontends ({cost.hit_seconds:.1f} s) | value | target | result |",
        "| --- | ---: | ---: | --- |",
    ]
    if net is not None:
        xacts = per(net[0])
        control_seen = cost.control is not None and cost.control[0] >= cost.control_requests
        lines += [
            f"| database transactions per 10,000 hits (net of idle) | {xacts:g} | 0 "
            f"| {'PASS' if xacts <= 0 else 'FAIL'} |",
            f"| net xact_commit / tup_returned / tup_fetched | {triple(net)} | 0 / 0 / 0 | |",
            f"| during the hits (window {cost.window_seconds:.0f} s) | {triple(cost.loaded)} | | |",
            f"| idle baseline (window {cost.window_seconds:.0f} s) | {triple(cost.idle)} | | |",
            f"| control: {cost.control_requests} uncached GETs | {triple(cost.control)} "
            f"| ≥ {cost.control_requests} xacts | {'seen' if control_seen else 'NOT SEEN'} |",
        ]
    else:
        lines.append("| database transactions per 10,000 hits | n/a (SQLite: no server statistics) | 0 | |")
    fetches = cost.counters.get("servefiles_store_fetches_total", 0.0)
    misses = cost.counters.get("servefiles_misses_total", 0.0)
    lines += [
        f"| servefiles_store_fetches_total Δ | {fetches:g} | 0 | {'PASS' if fetches == 0 else 'FAIL'} |",
        f"| servefiles_misses_total Δ | {misses:g} | 0 | {'PASS' if misses == 0 else 'FAIL'} |",
        f"| servefiles_revalidations_total Δ | {cost.counters.get('servefiles_revalidations_total', 0.0):g} | 0 | |",
        f"| hits Δ memory / disk | {cost.counters.get(COUNTERS[3], 0.0):g} / {cost.counters.get(COUNTERS[4], 0.0):g} "
        f"| {hits - cost.disk_hits_planned} / {cost.disk_hits_planned} | |",
        f"| feeds healthy afterwards | {'yes' if cost.feeds_healthy_after else 'NO'} | yes | |",
    ]
    return lines


def notes(run: Run) -> list[str]:
    out = []
    for result in run.propagations:
        if not result.samples:
            continue
        out.append(
            f"{result.frontends} frontends: commit → the request that got the new version was sent (feed wake-up, "
            f"catch-up query, discard, poll gap): {spread([s.until_request for s in result.samples])}; that "
            f"request's round trip (revalidate, fetch, write-through with fsync): "
            f"{spread([s.request for s in result.samples])}; a polled hit's round trip: "
            f"{spread(result.hit_round_trips)}; put: {spread(result.put_seconds)}; {result.seconds:.1f} s in all"
        )
    out.append(
        f"{run.checks.responses} responses checked (body sha256 = ETag, status 200, current version where known): "
        f"{run.checks.mismatches} mismatches, {run.checks.failures} other failures"
    )
    out += [f"PROBLEM: {problem}" for problem in run.checks.problems]
    out += [f"FRONTEND DIED: {dead}" for dead in run.dead_frontends]
    cost = run.cost
    if cost is not None and cost.idle is not None:
        checks_expected = 2 * cost.frontends * cost.window_seconds / FEED_CHECK_SECONDS
        out.append(
            f"idle baseline: every {FEED_CHECK_SECONDS:g} s without a notification each feed runs `SELECT 1` on its "
            "listening connection (it touches no table, so PostgreSQL never publishes it) and then its catch-up "
            "`changes` query, which finds nothing (0 tuples), plus asyncpg's reset statement when that pooled "
            f"connection is released: about 2 x {cost.frontends} x {cost.window_seconds:.0f} / "
            f"{FEED_CHECK_SECONDS:g} = {checks_expected:.0f} transactions per window"
        )
        out.append(
            "pg_stat_database is read over a fresh connection to the server's admin database (the readings cost "
            f"the measured one nothing), {run.stats_wait:g} s after the activity a reading must include; the "
            f"windows opened once the counters had settled ({cost.settle_seconds:.0f} s after the warm-up); the "
            "control window (a stat query per GET, plus the pool's reset) includes the same background"
        )
    if run.setup_error:
        out.append(f"ERROR: {run.setup_error}")
    load = " → ".join(f"{value:.1f}" for value in run.load)
    out.append(f"total {run.seconds:.0f} s, {os.cpu_count()} cores (load average {load}), "
               f"Python {sys.version.split()[0]}")  # fmt: skip
    return out


def report(run: Run) -> str:
    lines = [
        f"### feed propagation ({run.backend}, all on 127.0.0.1, {time.strftime('%Y-%m-%d')})",
        "",
        *propagation_table(run),
    ]
    if run.cost is not None:
        lines += ["", *cost_table(run)]
    lines += ["", *(f"- {note}" for note in notes(run))]
    return "\n".join(lines)


def parse_sizes(text: str) -> list[int]:
    sizes = [int(part) for part in text.split(",") if part.strip()]
    if not sizes or any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError("want a comma-separated list of positive numbers, e.g. 2,4")
    return sizes


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.feed_propagation",
        description="Change propagation delay across frontends, and database work per 10,000 cache hits.",
    )
    parser.add_argument("--frontends", type=parse_sizes, default=parse_sizes(DEFAULT_FRONTENDS),
                        help=f"fleet sizes, in order (default {DEFAULT_FRONTENDS})")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="new versions per fleet size")
    parser.add_argument("--backend", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--hits", type=int, default=DEFAULT_HITS, help="GETs of cached files in part 2")
    parser.add_argument("--stats-wait", type=float, default=STATS_WAIT_SECONDS,
                        help="seconds to wait before each pg_stat_database reading")  # fmt: skip
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.hits < 0:
        parser.error("--rounds must be at least 1 and --hits at least 0")
    return args


async def amain(args: argparse.Namespace) -> Run:
    run = Run(args.backend, stats_wait=args.stats_wait)
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)  # clean up on SIGTERM as on Ctrl-C
    started = time.perf_counter()
    run.load.append(os.getloadavg()[0])
    try:
        await bench(args, args.frontends, run)
    except SetupError as exc:
        run.setup_error = str(exc)
    except (OSError, asyncpg.PostgresError, httpx.HTTPError, asyncio.IncompleteReadError) as exc:
        run.setup_error = f"{type(exc).__name__}: {exc}"
        run.checks.failures += 1  # a frontend that stops answering mid-run is a failure, not a set-up problem
    except asyncio.CancelledError:  # SIGTERM (Ctrl-C also ends up here, then asyncio.run raises KeyboardInterrupt)
        run.setup_error = "interrupted"
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    run.seconds = time.perf_counter() - started
    run.load.append(os.getloadavg()[0])
    return run


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run = asyncio.run(amain(args))
    print(report(run))
    if not run.correct:
        return 1
    return 2 if run.setup_error else 0


if __name__ == "__main__":
    sys.exit(main())
