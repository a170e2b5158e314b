"""The workload users have (issue 15): many files, Zipf popularity, a cache smaller than the data.

One command, one run, one Markdown table. The data is deterministic (seeded): by default
10,000 files, about 1.1 GB -- 75 % "avatars" of 2-40 KiB (PNG), 23 % "photos" of
64-512 KiB and 2 % "large" files of 1-2 MiB (JPEG), sizes uniform within each class. They
are stored three ways: through servefiles in a fresh PostgreSQL database (dropped
afterwards), as the same bytes in a plain ``bytea`` table of that database (the DB-direct
peer), and in a plain directory (nginx static).

Load: wrk (``-t1 -c32``, on core 1) with a Lua script that draws each request's key from a
Zipf distribution over all keys (s = 1.0 and 0.8); popularity rank is a seeded shuffle,
independent of size. Every contender starts fresh (a new process, an empty cache on core
0) and gets two phases back to back: "cold" (the first SECONDS) and "warm" (the next
SECONDS, a different seed of the same distribution). The request sequences are the same
for every contender.

Contenders: DB-direct (``benchmarks/apps.py:bytea_direct``, one asyncpg ``SELECT data``
per request, under uvicorn), ``servefiles serve`` with a small (256 MiB) and a large
(4 GiB) disk cache, nginx static over the directory (the limit), a bare ASGI app serving
every file from a dict under uvicorn (the ceiling for a Python app: no cache, no database, no
HTTP rules; its RSS holds the whole data set), and nginx in front of
``servefiles serve --nginx tree`` with both cache sizes. The cache dirs are on an ext4
loop image with a journal (root only; otherwise a warning and a plain directory).

Per contender and phase: requests/s, MB/s (as wrk read them, headers included), p50/p99, the
ratio to DB-direct and to nginx static (same s, same phase), servefiles' hit ratio (hits / (hits
+ misses); in tree mode 1 - store fetches / requests), the share the memory tier answered
(memory hits / (hits + misses)), store fetches, disk evictions and disk-tier files hashed to
check them (its Prometheus counters, ``--metrics``), server CPU µs per request (utime+stime of
the server process trees: nginx and servefiles in tree mode) and PostgreSQL CPU µs per request
(the backends connected to the run's database), non-2xx responses, peak RSS of the server
process (VmHWM; servefiles alone in tree mode), and the share of the machine's CPU time a
hypervisor stole during the phase (``/proc/stat``: noise to weigh).
After each contender's phases a sample of keys is fetched and compared with the files.
The issue's ratio targets follow the table as PASS/FAIL lines, then one reference line that is
not a target: PostgreSQL's CPU per byte servefiles fetched against DB-direct's per byte served
(a cache that keeps small popular files misses larger ones than the average file, so the request
miss ratio can undercount what its misses ask of the database; benchmarks/RESULTS.md, 2026-12-01
night, for what the line showed).

    scripts/bench workload [OPTIONS]                  # installs what it needs, then runs this
    .venv/bin/python -m benchmarks.workload --files 1000 --seconds 3 --small-cache 32MiB   # smoke run

Exit status 1 when a contender failed, answered a non-2xx or sent wrong bytes; the targets
are reported, not enforced.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from benchmarks.harness import (
    Load,
    Server,
    ensure_tools,
    free_port,
    nginx,
    postgres_cpu_seconds,
    serve,
    uvicorn,
    wrk,
)

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
SEED = 15
CATEGORIES = (  # name, share of the files, smallest, largest, extension
    ("avatars", 0.75, 2 * KIB, 40 * KIB, "png"),
    ("photos", 0.23, 64 * KIB, 512 * KIB, "jpg"),
    ("large", 0.02, 1 * MIB, 2 * MIB, "jpg"),
)
CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg"}
TABLE = "workload_bytea"
PHASES = ("cold", "warm")
PUT_WORKERS = 8
"""Concurrent ``store.put`` calls while loading (the store's pool has 10 connections)."""
COPY_BATCH_BYTES = 64 * MIB
READY_TIMEOUT = 60.0


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# -- data ---------------------------------------------------------------------------------------


@dataclass
class Dataset:
    root: Path
    """Holds ``media/{key}``: nginx static's root."""
    ranked: list[str]
    """Every key, the most popular first."""
    sizes: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.sizes.values())

    def path(self, key: str) -> Path:
        return self.root / "media" / key


def generate(count: int, seed: int) -> tuple[Iterator[tuple[str, bytes]], list[str]]:
    """``count`` files of pseudo-random bytes, the same for the same seed: ``(key, bytes)`` one at a
    time (not all 1.1 GB at once), and every key, the most popular first."""
    counts = [round(count * share) for _, share, *_ in CATEGORIES[:-1]]
    counts.append(count - sum(counts))
    plan = [(f"{name}/{i:05d}.{extension}", smallest, largest)
            for (name, _, smallest, largest, extension), number in zip(CATEGORIES, counts, strict=True)
            for i in range(number)]  # fmt: skip
    ranked = [key for key, _, _ in plan]
    random.Random(seed + 1).shuffle(ranked)  # popularity independent of size

    def files() -> Iterator[tuple[str, bytes]]:
        rng = random.Random(seed)
        for key, smallest, largest in plan:
            yield key, rng.randbytes(rng.randint(smallest, largest))

    return files(), ranked


def make_dataset(count: int, seed: int, root: Path) -> Dataset:
    """``count`` files of pseudo-random bytes under ``root/media``, the same for the same seed."""
    for name, *_ in CATEGORIES:
        (root / "media" / name).mkdir(parents=True, exist_ok=True)
    files, ranked = generate(count, seed)
    sizes: dict[str, int] = {}
    for key, data in files:
        sizes[key] = len(data)
        (root / "media" / key).write_bytes(data)
    return Dataset(root, ranked, sizes)


async def load_servefiles(url: str, data: Dataset) -> None:
    """Every file through servefiles' own ``put``, PUT_WORKERS at a time."""
    from servefiles import open_store

    pending = iter(data.ranked)  # shared: each worker takes the next key (bounded by the key count)
    async with open_store(url) as store:

        async def worker() -> None:
            for key in pending:
                body = await asyncio.to_thread(data.path(key).read_bytes)
                await store.put(key, body, CONTENT_TYPES[key.rpartition(".")[2]])

        await asyncio.gather(*(worker() for _ in range(PUT_WORKERS)))


async def load_bytea(url: str, data: Dataset) -> None:
    """The same bytes in a plain ``(key text primary key, data bytea)`` table, with COPY."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"CREATE TABLE {TABLE} (key text PRIMARY KEY, data bytea NOT NULL)")
        batch: list[tuple[str, bytes]] = []
        for key in data.ranked:
            batch.append((key, await asyncio.to_thread(data.path(key).read_bytes)))
            if sum(len(body) for _, body in batch) >= COPY_BATCH_BYTES:
                await conn.copy_records_to_table(TABLE, records=batch, columns=["key", "data"])
                batch = []
        if batch:
            await conn.copy_records_to_table(TABLE, records=batch, columns=["key", "data"])
    finally:
        await conn.close()


async def admin(url: str, *statements: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def bulk_load(url: str, data: Dataset, timings: list[str]) -> None:
    """Both copies into the database. Commits do not wait for the WAL flush while loading
    (``synchronous_commit = off`` for the run's database; nothing is at stake in a throwaway
    database, and the phases only read); then VACUUM ANALYZE, so statistics and hint bits
    are set now rather than by the first phase's reads."""
    database = urlsplit(url).path.lstrip("/")
    asyncio.run(admin(url, f'ALTER DATABASE "{database}" SET synchronous_commit = off'))
    with timed(f"stored through servefiles ({PUT_WORKERS} concurrent puts)", timings):
        asyncio.run(load_servefiles(url, data))
    with timed("COPY into the bytea table", timings):
        asyncio.run(load_bytea(url, data))
    with timed("VACUUM ANALYZE", timings):
        asyncio.run(admin(url, f'ALTER DATABASE "{database}" RESET synchronous_commit', "VACUUM ANALYZE"))


def zipf_script(directory: Path, ranked: Sequence[str], s: float, seed: int) -> Path:
    """A wrk script drawing each request's key from Zipf(s) over ``ranked`` (rank 1 first):
    P(rank k) ∝ 1/k^s, by binary search of the cumulative distribution; LuaJIT's generator,
    seeded, so every contender gets the same sequence."""
    path = directory / f"zipf-{s:g}-{seed}.lua"
    keys = ",\n".join(f'  "/media/{key}"' for key in ranked)
    path.write_text(f"""-- generated by benchmarks/workload.py: Zipf(s = {s:g}) over {len(ranked)} keys
local paths = {{
{keys}
}}
local n = #paths
local cdf = {{}}
local total = 0
for k = 1, n do
  total = total + 1 / k ^ {s!r}
  cdf[k] = total
end
for k = 1, n do
  cdf[k] = cdf[k] / total
end
cdf[n] = 1
math.randomseed({seed})

request = function()
  local u = math.random()
  local low, high = 1, n
  while low < high do
    local middle = math.floor((low + high) / 2)
    if cdf[middle] < u then low = middle + 1 else high = middle end
  end
  return wrk.format(nil, paths[low])
end
""")
    return path


def best_hit_ratio(data: Dataset, s: float, budget: int) -> float:
    """The share of requests the most popular files that fit in ``budget`` would take
    (filled in rank order, skipping a file that no longer fits)."""
    weights = [math.pow(k, -s) for k in range(1, len(data.ranked) + 1)]
    used, taken = 0, 0.0
    for weight, key in zip(weights, data.ranked, strict=True):
        if used + data.sizes[key] <= budget:
            used += data.sizes[key]
            taken += weight
    return taken / sum(weights)


# -- the cache filesystem -----------------------------------------------------------------------


@contextlib.contextmanager
def journaled_dir(size: int, fallback: Path) -> Iterator[tuple[Path, str]]:
    """A fresh ext4 loop image with a journal, mounted; removed afterwards. Where that is
    impossible (not root, no loop device), ``fallback`` and a warning."""
    image = mount = None
    try:
        if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
            raise OSError("needs root and mkfs.ext4")
        base = "/var/tmp" if os.path.isdir("/var/tmp") else None
        handle, name = tempfile.mkstemp(prefix="servefiles-workload-", suffix=".ext4", dir=base)
        os.close(handle)
        image = Path(name)
        os.truncate(image, size)  # sparse: costs only what the caches write
        mount = Path(tempfile.mkdtemp(prefix="servefiles-workload-mnt-", dir=base))
        # Inode tables and journal zeroed now, not by ext4lazyinit in the background of a phase.
        subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "has_journal", "-E", "lazy_itable_init=0,lazy_journal_init=0",
                        str(image)], check=True, capture_output=True, timeout=300)  # fmt: skip
        subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = exc.stderr.decode(errors="replace").strip() if isinstance(exc, subprocess.CalledProcessError) else ""
        _remove_image(image, mount, mounted=False)
        fallback.mkdir(parents=True, exist_ok=True)
        log(f"WARNING: no journaled ext4 loop image ({exc} {detail}); the caches are in {fallback}")
        yield fallback, f"WARNING: not a journaled loop image ({type(exc).__name__}): a plain directory"
        return
    try:
        features = subprocess.run(["tune2fs", "-l", str(image)], capture_output=True, text=True, timeout=60).stdout
        journal = "has_journal" in features
        if not journal:
            log("WARNING: tune2fs -l shows no has_journal on the cache filesystem")
        state = "has_journal" if journal else "WARNING: no journal"
        yield mount, f"ext4 loop image of {size / GIB:.1f} GiB, {state}"
    finally:
        _remove_image(image, mount, mounted=True)


def _remove_image(image: Path | None, mount: Path | None, mounted: bool) -> None:
    if mount is not None and mounted:
        for attempt in range(5):  # bounded: a straggler may still hold a file for a moment
            done = subprocess.run(["umount", str(mount)], capture_output=True, timeout=60)
            if done.returncode == 0:
                break
            if attempt == 4:
                subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=60)
            time.sleep(1)
    if mount is not None:
        with contextlib.suppress(OSError):
            mount.rmdir()
    if image is not None:
        image.unlink(missing_ok=True)


# -- contenders ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contender:
    name: str
    kind: str
    """``db`` (DB-direct), ``static`` (nginx), ``serve`` (servefiles serve), ``tree`` (nginx + servefiles)."""
    cache: int = 0


def contenders(small: int, large: int) -> list[Contender]:
    return [
        Contender("DB-direct", "db"),
        Contender("nginx static", "static"),
        Contender("bare ASGI dict", "bare"),
        Contender(f"servefiles, {human(small)}", "serve", small),
        Contender(f"servefiles, {human(large)}", "serve", large),
        Contender(f"nginx tree, {human(small)}", "tree", small),
        Contender(f"nginx tree, {human(large)}", "tree", large),
    ]


@dataclass
class Deployment:
    url: str
    """Where wrk sends its requests."""
    servers: list[Server]
    """Every process whose CPU time is the server's."""
    main: Server
    """The process whose peak RSS is reported."""
    metrics: str | None = None


@contextlib.contextmanager
def deploy(contender: Contender, url: str, data: Dataset, workdir: Path) -> Iterator[Deployment]:
    started: list[Server] = []

    def start(server: Server) -> Server:
        started.append(server)  # before start(): a server that never listens is stopped too
        return server.start()

    try:
        if contender.kind == "db":
            app = start(Server(uvicorn("benchmarks.apps:bytea_direct"),
                               {"BENCH_BYTEA_DB": url, "BENCH_BYTEA_TABLE": TABLE}))  # fmt: skip
            yield Deployment(f"http://127.0.0.1:{app.port}", [app], app)
        elif contender.kind == "bare":
            # Every file's bytes in a dict, served under uvicorn with nothing else: the ceiling
            # for any Python ASGI app on this traffic (its RSS holds the whole data set).
            (workdir / "bare").mkdir(parents=True, exist_ok=True)
            (workdir / "bare" / "static").symlink_to(data.root / "media")
            app = start(Server(uvicorn("benchmarks.apps:bare_dict"), {"BENCH_STATIC": str(workdir / "bare")}))
            yield Deployment(f"http://127.0.0.1:{app.port}", [app], app)
        elif contender.kind == "static":
            port = free_port()
            block = (f"server {{ listen 127.0.0.1:{port}; location /media/ {{ root {data.root}; "
                     "types { image/png png; image/jpeg jpg; } } }")  # fmt: skip
            front = start(nginx(block, workdir / "nginx", port))
            yield Deployment(f"http://127.0.0.1:{port}", [front], front)
        else:
            cache, published = workdir / "cache", workdir / "published"
            options = ["--cache-size", str(contender.cache), "--metrics"]
            if TAIL:  # every request a JSON line (its duration, tier and bytes): see tail_report
                options += ["--access-log", "--log-format", "json"]
            if contender.kind == "tree":
                options += ["--nginx", "tree", "--publish-dir", str(published)]
            app = start(Server(serve(url, cache, *options)))
            wait_ready(app.port)
            front = app
            if contender.kind == "tree":
                from tests.nginx_server import server_block

                port = free_port()
                front = start(nginx(server_block("tree", app.port, port, cache, published), workdir / "nginx", port))
            yield Deployment(f"http://127.0.0.1:{front.port}", list(started), app,
                             f"http://127.0.0.1:{app.port}/_servefiles/metrics")  # fmt: skip
    finally:
        for server in reversed(started):
            server.stop()


def wait_ready(port: int) -> None:
    """Until servefiles' readiness probe says the store answers and the change feed is connected."""
    deadline = time.monotonic() + READY_TIMEOUT
    report: object = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            report = httpx.get(f"http://127.0.0.1:{port}/_servefiles/ready", timeout=5).json()
            if isinstance(report, dict) and report.get("reason") == "ready":
                return
        time.sleep(0.1)
    raise TimeoutError(f"servefiles on {port} not ready in {READY_TIMEOUT:g} s: {report}")


def scrape(url: str) -> dict[str, float]:
    """servefiles' counters: ``name`` or ``name/tier`` -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for sample in family.samples:
            if sample.name.endswith("_total"):
                name = sample.name.removeprefix("servefiles_").removesuffix("_total")
                tier = sample.labels.get("tier")
                values[f"{name}/{tier}" if tier else name] = sample.value
    return values


@dataclass
class Snapshot:
    cpu: float
    postgres: float
    counters: dict[str, float] = field(default_factory=dict)
    machine: tuple[int, int] = (0, 0)
    """(steal ticks, all ticks) of the whole machine, from /proc/stat."""
    blocks: tuple[int, int] = (0, 0)
    """(``blks_read``, ``blks_hit``) of the run's database, from ``pg_stat_database``."""


def machine_ticks() -> tuple[int, int]:
    """(steal, total) clock ticks of all CPUs since boot (``/proc/stat``; zeros where there is
    none): the time a hypervisor gave other guests is a phase's noise, reported beside it."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    steal = fields[7] if len(fields) > 7 else 0
    return steal, sum(fields[:8])


def snapshot(deployment: Deployment, url: str, start: bool) -> Snapshot:
    """CPU times and counters; the scrape and the block counts stay outside the CPU window (before
    it at the start of a phase, after it at the end). The block counts' own connection is closed
    before the CPU is read; its backend may outlive the close by a moment (negligible)."""
    counters = scrape(deployment.metrics) if deployment.metrics and start else {}
    blocks = asyncio.run(database_blocks(url)) if start else (0, 0)
    taken = Snapshot(sum(server.cpu_seconds() for server in deployment.servers),
                     postgres_cpu_seconds(urlsplit(url).path.lstrip("/")), machine=machine_ticks())  # fmt: skip
    if not start:
        counters = scrape(deployment.metrics) if deployment.metrics else {}
        blocks = asyncio.run(database_blocks(url))
    taken.counters = counters
    taken.blocks = blocks
    return taken


async def database_blocks(url: str) -> tuple[int, int]:
    """(``blks_read``, ``blks_hit``) of ``url``'s database: 8 KiB blocks its backends found outside
    PostgreSQL's shared buffers (read from the kernel's page cache or the disk: each costs the backend
    a ``pread`` and a buffer to evict) and inside them. A backend reports its counts when a
    transaction ends, at most once a second while busy (PostgreSQL 15: ``PGSTAT_MIN_INTERVAL``),
    so a 20 s phase's counts can be short by up to a second's worth."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow("SELECT blks_read, blks_hit FROM pg_stat_database WHERE datname = current_database()")
    finally:
        await conn.close()
    return (int(row["blks_read"]), int(row["blks_hit"])) if row is not None else (0, 0)


def verify(deployment: Deployment, data: Dataset) -> str:
    """Fetch a sample of keys (the head, the middle, the tail, the largest) and compare: "" when all are right."""
    ranked = data.ranked
    middle = len(ranked) // 2
    largest = max(ranked, key=lambda key: data.sizes[key])
    sample = dict.fromkeys([*ranked[:5], *ranked[middle : middle + 3], *ranked[-3:], largest])
    with httpx.Client(timeout=60) as client:
        for key in sample:
            response = client.get(f"{deployment.url}/media/{key}")
            if response.status_code != 200 or response.content != data.path(key).read_bytes():
                return f"WRONG: {key} answered {response.status_code} with {len(response.content)} bytes"
    return ""


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Row:
    s: float
    contender: str
    kind: str
    phase: str
    load: Load
    server_us: float
    postgres_us: float
    peak_rss_mib: float
    hit_ratio: float | None = None
    memory_share: float | None = None
    """Of the requests about a file, the share the memory tier answered (serve mode)."""
    store_fetches: int | None = None
    fetched_bytes: int | None = None
    """Content bytes read from the store (``servefiles_store_fetch_bytes_total``)."""
    evictions: int | None = None
    hashed: int | None = None
    """Disk-tier files hashed to check them (``servefiles_cache_files_hashed_total``)."""
    steal: float | None = None
    """The share of the machine's CPU time the hypervisor took during the phase (steal)."""
    blocks_read: int = 0
    blocks_hit: int = 0
    """PostgreSQL's ``blks_read`` and ``blks_hit`` in the run's database during the phase (:func:`database_blocks`)."""
    note: str = ""
    tail: str = ""
    """``--tail``: what the slowest 1 % of the requests servefiles answered were (:func:`tail_report`)."""


def measure(contender: Contender, s: float, phase: str, deployment: Deployment, script: Path, url: str,
            seconds: float, connections: int) -> Row:  # fmt: skip
    log_start = deployment.main.log.stat().st_size if TAIL else 0
    before = snapshot(deployment, url, start=True)
    spy = _profiler(deployment, contender, s, phase, seconds)
    load = wrk(deployment.url + "/", seconds, connections, script)
    after = snapshot(deployment, url, start=False)
    if spy is not None:
        spy.wait(timeout=60)
    requests = max(load.requests, 1)
    ticks = after.machine[1] - before.machine[1]
    steal = (after.machine[0] - before.machine[0]) / ticks if ticks > 0 else None
    row = Row(s, contender.name, contender.kind, phase, load, (after.cpu - before.cpu) / requests * 1e6,
              (after.postgres - before.postgres) / requests * 1e6, deployment.main.peak_rss_mib(),
              steal=steal, blocks_read=after.blocks[0] - before.blocks[0],
              blocks_hit=after.blocks[1] - before.blocks[1])  # fmt: skip
    if deployment.metrics:

        def delta(name: str) -> float:
            return after.counters.get(name, 0.0) - before.counters.get(name, 0.0)

        row.store_fetches = round(delta("store_fetches"))
        row.fetched_bytes = round(delta("store_fetch_bytes"))
        if contender.kind == "tree":
            # nginx answers published files itself, and servefiles counts a tree-mode miss
            # (filled, then redirected to the tree) as a fetch, not as a miss.
            row.hit_ratio = max(0.0, 1 - row.store_fetches / requests)
        else:
            hits, misses = delta("hits/memory") + delta("hits/disk"), delta("misses")
            row.hit_ratio = hits / (hits + misses) if hits + misses else None
            row.memory_share = delta("hits/memory") / (hits + misses) if hits + misses else None
        row.evictions = round(delta("evictions/disk"))
        row.hashed = round(delta("cache_files_hashed"))
    socket_errors = load.errors - load.non_2xx
    if socket_errors:
        row.note = f"{socket_errors} socket errors"
    if TAIL and contender.kind in ("serve", "tree"):  # the access log shows at any --log-level
        row.tail = tail_report(access_lines(deployment.main.log, log_start))
    return row


TAIL = False
"""``--tail``: servefiles writes its access log (JSON), and each phase reports its slowest 1 %."""
SIZE_CLASSES = ((64 * KIB, "< 64 KiB"), (256 * KIB, "64-256 KiB"), (MIB, "256 KiB-1 MiB"), (None, "≥ 1 MiB"))
"""256 KiB is the memory tier's largest file by default: a disk hit up to it is read whole (and hashed
on the loop the first time), a larger one is sent from its file (and hashed on a thread the first time)."""


@dataclass(frozen=True)
class Served:
    """One access-log line: how long servefiles took (seconds, request to the response's end as the
    server took it), which tier answered (memory, disk, miss) and the body's bytes."""

    duration: float
    tier: str
    size: int


def access_lines(log: Path, offset: int) -> list[Served]:
    """The access-log lines a server wrote to ``log`` from byte ``offset`` on (other lines skipped)."""
    served: list[Served] = []
    with log.open("rb") as lines:
        lines.seek(offset)
        for line in lines:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                # A file's request carries its key; the phase's own metrics scrapes do not.
                if isinstance(entry, dict) and entry.get("logger") == "servefiles.access" and entry.get("key"):
                    served.append(Served(float(entry["duration"]), str(entry.get("tier") or "-"), int(entry["bytes"])))
    return served


def tail_report(served: Sequence[Served]) -> str:
    """The server-side p50/p99 and what the slowest 1 % were, by tier and size class, beside each
    class's share of all requests: e.g. "disk ≥ 1 MiB 61 % of the slowest (2 % of all)". The time is
    servefiles' own (until the server took the last byte), not the client's: a body the server took
    whole may still be on its way (wrk's p99 includes that)."""
    if not served:
        return "no access-log lines"
    ordered = sorted(served, key=lambda one: one.duration)
    slowest = ordered[len(ordered) - math.ceil(len(ordered) / 100) :]

    def kind(one: Served) -> str:
        size = next(name for limit, name in SIZE_CLASSES if limit is None or one.size < limit)
        return f"{one.tier} {size}"

    everyone = collections.Counter(kind(one) for one in served)
    tail = collections.Counter(kind(one) for one in slowest)
    shares = ", ".join(f"{name} {count / len(slowest):.0%} ({everyone[name] / len(served):.1%} of all)"
                       for name, count in tail.most_common(4))  # fmt: skip
    p50, p99 = ordered[len(ordered) // 2].duration, ordered[math.ceil(len(ordered) * 0.99) - 1].duration  # nearest rank
    return (f"{len(served):,} requests, server-side p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms; "
            f"slowest 1 %: {shares}")  # fmt: skip


PROFILE_DIR: Path | None = None
"""``--profile``: where py-spy's samples of each servefiles phase go (None: no profiling)."""


def _profiler(deployment: Deployment, contender: Contender, s: float, phase: str,
              seconds: float) -> subprocess.Popen[bytes] | None:  # fmt: skip
    """py-spy sampling the servefiles process for the phase (``--profile``): it costs the server
    some CPU, so figures of a profiled run are for finding where time goes, not for the table."""
    if PROFILE_DIR is None or contender.kind not in ("serve", "tree", "bare"):
        return None
    spy = Path(sys.executable).with_name("py-spy")
    name = f"{contender.name.replace(', ', '-').replace(' ', '')}-s{s:g}-{phase}"
    output = PROFILE_DIR / f"{name}.txt"
    if deployment.main.proc is None:  # not running: nothing to sample
        return None
    pid = str(deployment.main.proc.pid)
    command = [str(spy), "record", "--pid", pid, "--duration", str(max(1, int(seconds) - 1)), "--format", "raw",
               "--rate", "250", "--gil", "--output", str(output), "--nonblocking"]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@dataclass
class Run:
    rows: list[Row] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def chosen(only: str, small: int, large: int) -> list[Contender]:
    """The contenders ``--only`` names (all for ""); SystemExit, in one line, for a word that names
    none ("DB-direct, nginx static" is one word: a comma followed by a space belongs to a name,
    as in "servefiles, 256 MiB")."""
    words = [word.strip().lower() for word in re.split(r",(?! )", only) if word.strip()]
    wanted = [c for c in contenders(small, large) if not words or any(word in c.name.lower() for word in words)]
    unmatched = [word for word in words if not any(word in c.name.lower() for c in wanted)]
    if unmatched:
        raise SystemExit(f"--only: no contender's name contains {', '.join(map(repr, unmatched))}")
    return wanted


def run(args: argparse.Namespace, url: str, data: Dataset, work: Path, cache_root: Path) -> Run:
    result = Run()
    wanted = chosen(args.only, args.small_cache, args.large_cache)
    for s in args.s:
        scripts = {phase: zipf_script(work, data.ranked, s, args.seed * 100 + i) for i, phase in enumerate(PHASES)}
        for contender in wanted:
            workdir = cache_root / f"{contender.kind}-{contender.cache}-{s:g}"
            log(f"s={_s(s)} {contender.name}: starting")
            try:
                with deploy(contender, url, data, workdir) as deployment:
                    for phase in PHASES:
                        row = measure(contender, s, phase, deployment, scripts[phase], url, args.seconds,
                                      args.connections)  # fmt: skip
                        result.rows.append(row)
                        log(f"s={_s(s)} {contender.name} {phase}: {row.load.requests_per_second:,.0f} req/s, "
                            f"p99 {row.load.p99_ms:.1f} ms, hit ratio {_pct(row.hit_ratio)}, "
                            f"server {row.server_us:.0f} µs/req, PG {row.postgres_us:.0f} µs/req, "
                            f"files hashed {'—' if row.hashed is None else f'{row.hashed:,}'}, "
                            f"non-2xx {row.load.non_2xx}, steal {_pct(row.steal)}")  # fmt: skip
                        if row.load.non_2xx:
                            result.failures.append(f"s={_s(s)} {contender.name} {phase}: {row.load.non_2xx} non-2xx")
                    wrong = verify(deployment, data)
                    if wrong:
                        result.rows[-1].note = "; ".join(filter(None, [result.rows[-1].note, wrong]))
                        result.failures.append(f"s={_s(s)} {contender.name}: {wrong}")
            except Exception as exc:  # one contender failing must not lose the others' figures
                log(f"s={_s(s)} {contender.name}: FAILED: {type(exc).__name__}: {exc}")
                result.failures.append(f"s={_s(s)} {contender.name}: {type(exc).__name__}: {str(exc)[:300]}")
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
    return result


# -- the report ---------------------------------------------------------------------------------


def human(size: int) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size >= scale and size % (scale // 16) == 0:
            return f"{size / scale:g} {unit}"
    return f"{size} B"


def _s(s: float) -> str:
    """A Zipf exponent as the issue writes it: 1.0, 0.8."""
    return f"{s:.1f}" if round(s, 1) == s else f"{s:g}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"


def _ratio(value: float, reference: Row | None) -> str:
    if reference is None or not reference.load.requests_per_second:
        return "—"
    return f"{value / reference.load.requests_per_second:.2f}"


def _reference(rows: Sequence[Row], kind: str, s: float, phase: str) -> Row | None:
    return next((r for r in rows if r.kind == kind and r.s == s and r.phase == phase), None)


def table(rows: Sequence[Row]) -> str:
    lines = ["| s | contender | phase | req/s | MB/s | p50 ms | p99 ms | x DB-direct | x nginx | hit ratio "
             "| memory hits | store fetches | evictions | files hashed | server µs/req | PG µs/req | non-2xx "
             "| peak RSS MiB | steal | note |",
             "|---|---|---|" + "---:|" * 16 + "---|"]  # fmt: skip
    for r in rows:
        rps = r.load.requests_per_second
        mb_s = r.load.bytes_read / r.load.duration_s / 1e6 if r.load.duration_s else 0.0
        lines.append(
            f"| {_s(r.s)} | {r.contender} | {r.phase} | {rps:,.0f} | {mb_s:,.1f} | {r.load.p50_ms:.1f} "
            f"| {r.load.p99_ms:.1f} | {_ratio(rps, _reference(rows, 'db', r.s, r.phase))} "
            f"| {_ratio(rps, _reference(rows, 'static', r.s, r.phase))} | {_pct(r.hit_ratio)} | {_pct(r.memory_share)} "
            f"| {'—' if r.store_fetches is None else f'{r.store_fetches:,}'} "
            f"| {'—' if r.evictions is None else f'{r.evictions:,}'} "
            f"| {'—' if r.hashed is None else f'{r.hashed:,}'} | {r.server_us:,.0f} | {r.postgres_us:,.0f} "
            f"| {r.load.non_2xx} | {r.peak_rss_mib:.0f} | {_pct(r.steal)} | {r.note} |"
        )  # fmt: skip
    return "\n".join(lines)


RSS_GOAL_MIB = 100
"""Issue 15: servefiles' peak RSS on this workload, at its default memory tier."""


def targets(rows: Sequence[Row], small: int, large: int) -> list[str]:
    """The issue's ratio targets, one PASS/FAIL line each (those whose rows were measured)."""
    lines: list[str] = []

    def find(kind: str, cache: int, s: float, phase: str) -> Row | None:
        name = ("servefiles" if kind == "serve" else "nginx tree") + f", {human(cache)}"
        return next((r for r in rows if r.contender == name and r.s == s and r.phase == phase), None)

    def check(row: Row | None, against: str, goal: float) -> None:
        if row is None:
            return
        reference = _reference(rows, against, row.s, row.phase)
        if reference is None:
            return
        ratio = row.load.requests_per_second / reference.load.requests_per_second
        peer = "DB-direct" if against == "db" else "nginx static"
        lines.append(f"- {'PASS' if ratio >= goal else 'FAIL'}: s={_s(row.s)} {row.contender}, {row.phase}: "
                     f"{ratio:.2f}x {peer} (goal ≥ {goal:g}x)")  # fmt: skip

    for phase in PHASES:
        check(find("serve", small, 1.0, phase), "db", 1.5)
    for phase in PHASES:
        check(find("serve", small, 0.8, phase), "db", 1.0)
    check(find("serve", large, 1.0, "cold"), "db", 1.5)
    check(find("serve", large, 1.0, "warm"), "db", 3.0)
    check(find("serve", large, 1.0, "warm"), "static", 0.5)
    for phase in PHASES:
        check(find("tree", small, 1.0, phase), "db", 2.0)
    check(find("tree", large, 1.0, "warm"), "static", 0.8)
    # Every servefiles phase: p99 and PostgreSQL CPU against DB-direct's (same s, same phase).
    p99: list[tuple[float, Row]] = []
    postgres: list[tuple[float, Row]] = []
    for row in rows:
        db = _reference(rows, "db", row.s, row.phase)
        if row.kind not in ("serve", "tree") or db is None:
            continue
        p99.append((row.load.p99_ms / db.load.p99_ms if db.load.p99_ms else float("inf"), row))
        if row.hit_ratio is not None:
            budget = 1.2 * (1 - row.hit_ratio) * db.postgres_us
            postgres.append((row.postgres_us / budget if budget else float("inf") if row.postgres_us else 0.0, row))
    for what, found in (("p99 / DB-direct's p99", p99),
                        ("PostgreSQL CPU per request / (1.2 x miss ratio x DB-direct's)", postgres)):  # fmt: skip
        if found:
            worst, row = max(found, key=lambda pair: pair[0])
            over = sum(1 for ratio, _ in found if ratio > 1)
            lines.append(f"- {'PASS' if over == 0 else 'FAIL'}: {what} ≤ 1 in every servefiles phase: "
                         f"{over} of {len(found)} over; worst {worst:.2f} (s={_s(row.s)} {row.contender}, "
                         f"{row.phase})")  # fmt: skip
    served = [row for row in rows if row.kind in ("serve", "tree")]
    if served:
        largest = max(served, key=lambda row: row.peak_rss_mib)
        lines.append(f"- {'PASS' if largest.peak_rss_mib <= RSS_GOAL_MIB else 'FAIL'}: peak RSS ≤ {RSS_GOAL_MIB} MiB "
                     f"in every servefiles phase: largest {largest.peak_rss_mib:.0f} MiB (s={_s(largest.s)} "
                     f"{largest.contender}, {largest.phase})")  # fmt: skip
    lines.extend(_per_byte(rows))
    return lines


PER_BYTE_MIN_SHARE = 0.01
"""The reference line leaves out phases whose store fetches were under this share of the bytes served."""


def _per_byte(rows: Sequence[Row]) -> list[str]:
    """A reference line, not one of issue 15's targets: PostgreSQL's CPU per byte servefiles read from
    it against DB-direct's per byte served (same s, same phase). The request miss ratio undercounts
    what misses cost the database where the tiers keep the small popular files and miss larger
    ones; per byte, that effect is gone and what is left is the cost of each byte fetched."""
    ratios: list[tuple[float, Row, float]] = []
    for row in rows:
        db = _reference(rows, "db", row.s, row.phase)
        if (row.kind not in ("serve", "tree") or db is None or not row.fetched_bytes or not db.load.bytes_read
                or not db.postgres_us):  # no backend found (a remote PostgreSQL): nothing to compare
            continue
        mine = row.postgres_us * row.load.requests / row.fetched_bytes
        theirs = db.postgres_us * db.load.requests / db.load.bytes_read
        byte_share = row.fetched_bytes / row.load.bytes_read if row.load.bytes_read else 0.0
        ratios.append((mine / theirs, row, byte_share))
    # A phase that fetched almost nothing measures the feed's idle checks, not its fetches.
    ratios = [found for found in ratios if found[2] >= PER_BYTE_MIN_SHARE]
    if not ratios:
        return []
    ratios.sort(key=lambda found: found[0])
    worst, row, byte_share = ratios[-1]
    store_share = (row.store_fetches or 0) / max(row.load.requests, 1)
    return [f"- reference (not a target): PostgreSQL CPU per byte fetched / DB-direct's per byte wrk read, in "
            f"the {len(ratios)} servefiles phases that fetched at least {PER_BYTE_MIN_SHARE:.0%} of the bytes they "
            f"served: {sum(1 for ratio, *_ in ratios if ratio > 1)} over 1; median "
            f"{statistics.median(ratio for ratio, *_ in ratios):.2f}, best {ratios[0][0]:.2f}, worst {worst:.2f} "
            f"(s={_s(row.s)} {row.contender}, {row.phase}: bytes fetched {byte_share:.1%} of bytes served, store "
            f"fetches {store_share:.1%} of requests)", *_blocks_line(rows, [row for _, row, _ in ratios])]  # fmt: skip


def _blocks_line(rows: Sequence[Row], fetching: Sequence[Row]) -> list[str]:
    """Where PostgreSQL found the blocks: read from outside its shared buffers (``blks_read``) per MB
    fetched by servefiles' phases, against DB-direct's per MB served (same s, same phase), and each
    side's shared-buffer hit ratio (medians). A cache in front sends the database its long tail,
    which its shared buffers are less likely to hold than DB-direct's Zipf head."""
    mine, theirs, mine_hit, theirs_hit = [], [], [], []
    for row in fetching:
        db = _reference(rows, "db", row.s, row.phase)
        if db is None or not row.fetched_bytes or not db.load.bytes_read or not (db.blocks_read + db.blocks_hit):
            continue
        mine.append(row.blocks_read / (row.fetched_bytes / 1e6))
        theirs.append(db.blocks_read / (db.load.bytes_read / 1e6))
        mine_hit.append(row.blocks_hit / max(row.blocks_read + row.blocks_hit, 1))
        theirs_hit.append(db.blocks_hit / (db.blocks_read + db.blocks_hit))
    if not mine:
        return []
    return [f"- reference: PostgreSQL blocks read from outside its shared buffers per MB, medians over the same "
            f"{len(mine)} phases: servefiles {statistics.median(mine):,.1f} per MB fetched (shared-buffer hit ratio "
            f"{statistics.median(mine_hit):.1%}), DB-direct {statistics.median(theirs):,.1f} per MB served "
            f"({statistics.median(theirs_hit):.1%})"]  # fmt: skip


def describe(data: Dataset) -> str:
    counts = {name: sum(1 for key in data.sizes if key.startswith(name + "/")) for name, *_ in CATEGORIES}
    classes = ", ".join(f"{counts[name]:,} {name} {human(low)}-{human(high)}" for name, _, low, high, _ in CATEGORIES)
    return f"{len(data.sizes):,} files, {data.total / 1e9:.2f} GB ({classes})"


@contextlib.contextmanager
def timed(what: str, timings: list[str]) -> Iterator[None]:
    begun = time.monotonic()
    log(f"{what}…")
    yield
    timings.append(f"{what} in {time.monotonic() - begun:.1f} s")
    log(timings[-1])


def main(argv: Sequence[str] | None = None) -> int:
    from servefiles.cli.options import parse_size

    def size(value: str) -> int:
        return parse_size(None, None, value)

    def s_values(value: str) -> list[float]:
        return [float(part) for part in value.split(",") if part.strip()]

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000, help="number of files (default 10,000: about 1.1 GB)")
    parser.add_argument("--seconds", type=float, default=20, help="length of each phase, cold and warm (default 20)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--s", type=s_values, default=[1.0, 0.8], help="Zipf exponents, comma-separated (1.0,0.8)")
    parser.add_argument("--only", default="", help="only the contenders whose name contains one of these "
                        "comma-separated words (e.g. 'DB-direct,nginx static,servefiles, 256')")  # fmt: skip
    parser.add_argument("--small-cache", type=size, default=256 * MIB, help="the small disk cache (256MiB)")
    parser.add_argument("--large-cache", type=size, default=4 * GIB, help="the large disk cache (4GiB)")
    parser.add_argument("--seed", type=int, default=SEED, help="of the data, the ranks and the request sequences")
    parser.add_argument("--json", type=Path, help="also write the raw rows here")
    parser.add_argument("--profile", type=Path,
                        help="write py-spy samples (raw, --gil) of each servefiles phase here")  # fmt: skip
    parser.add_argument("--tail", action="store_true",
                        help="servefiles logs each request; each phase tells what its slowest 1 %% were")  # fmt: skip
    args = parser.parse_args(argv)
    if args.tail:
        global TAIL
        TAIL = True
    if args.profile is not None:
        global PROFILE_DIR
        args.profile.mkdir(parents=True, exist_ok=True)
        PROFILE_DIR = args.profile
    if args.files < 1 or args.seconds <= 0 or not args.s:
        parser.error("--files and --seconds must be positive, --s must name an exponent")
    chosen(args.only, args.small_cache, args.large_cache)  # a bad --only before a minute of set-up
    # A TERM or an interrupt unwinds: servers stopped, the image unmounted, the database dropped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ensure_tools()
    started = time.monotonic()
    from benchmarks.compare import machine
    from benchmarks.store_memory import postgres_store

    base = "/var/tmp" if os.path.isdir("/var/tmp") else None  # not /tmp: it may be tmpfs, and this is 1 GB
    with tempfile.TemporaryDirectory(prefix="servefiles-workload-", dir=base) as tmp, postgres_store() as url:
        work = Path(tmp)
        timings: list[str] = []
        with timed("generated", timings):
            data = make_dataset(args.files, args.seed, work / "static")
        bulk_load(url, data, timings)
        image_size = max(args.large_cache, 2 * data.total) + GIB  # sparse
        with journaled_dir(image_size, work / "caches") as (cache_root, filesystem):
            result = run(args, url, data, work, cache_root)
    print(f"## Workload benchmark (issue 15), {datetime.date.today().isoformat()}\n")
    print(f"Machine: {machine()}. Load average at the end: {os.getloadavg()[0]:.2f}. "
          f"Run took {time.monotonic() - started:.0f} s.\n")  # fmt: skip
    print(f"Data: {describe(data)}, seed {args.seed}; {'; '.join(timings)}. PostgreSQL: a fresh database, dropped "
          f"afterwards.\n")  # fmt: skip
    print(f"Load: wrk -t1 -c{args.connections} on core 1 with a Zipf Lua script (rank independent of size), "
          f"{args.seconds:g} s cold (a fresh server, an empty cache) then {args.seconds:g} s warm; each server on "
          f"core 0. Cache dirs: {filesystem}. servefiles: `serve --metrics --cache-size N`, memory tier at its "
          f"default.\n")  # fmt: skip
    caches = (args.small_cache, args.large_cache)
    best = "; ".join(f"s={_s(s)}: " + ", ".join(f"{human(c)} {_pct(best_hit_ratio(data, s, c))}" for c in caches)
                     for s in args.s)  # fmt: skip
    print(f"Rank-order ideal hit ratio (the share of requests the most popular files that fit the disk cache "
          f"would take): {best}.\n")  # fmt: skip
    print(table(result.rows))
    print("\n### Targets (ratios within this run)\n")
    print("\n".join(targets(result.rows, args.small_cache, args.large_cache)) or "(none measured)")
    tails = [row for row in result.rows if row.tail]
    if tails:
        print("\n### The slowest 1 % of servefiles' requests (--tail)\n")
        print("\n".join(f"- s={_s(row.s)} {row.contender}, {row.phase}: {row.tail}" for row in tails))
    if result.failures:
        print("\n### Failures\n")
        print("\n".join(f"- {failure}" for failure in result.failures))
    if args.json:
        args.json.write_text(json.dumps([asdict(row) for row in result.rows], indent=1))
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
