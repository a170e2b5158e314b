"""servefiles against serving straight from the database, its peers and the limit, in one run.

One command, one machine, one run: every contender is a real server on a loopback port
pinned to core 0, wrk runs on core 1, each measurement is a bounded wrk run after the
contender answered a check request with exactly the right bytes (best of two runs: on a
shared machine others can only slow a run down). For a 10 KiB and a 1 MiB
file (image/png), hot, and cold where that differs:

- **DB-direct**: servefiles' own store, a stat and a read on every request (the "serve it
  straight from the database" strategy), under uvicorn;
- **servefiles**: memory-tier hits, disk-tier hits (memory tier off), cold misses (a fresh
  cache; every request a key never fetched before), under uvicorn; under granian (which
  offers pathsend); the WSGI adapter under gunicorn;
- **peers**: a bare ASGI app returning bytes from a dict, Starlette StaticFiles, whitenoise
  under gunicorn, nginx serving the file statically (the limit), and nginx in front of
  servefiles in both modes.

It prints a Markdown table with ratios to DB-direct and to nginx, the peak RSS of each
server, hit throughput with 1, 10^4 and 10^6 keys in the database, the disk tier's
start-up time with 10^5 entries, and the targets; it writes a PNG chart.

    scripts/bench                      # installs what it needs, then runs this
    .venv/bin/python -m benchmarks.compare [--seconds 5] [--connections 32] [--db postgres|sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.harness import ROOT, Load, Server, ensure_tools, free_port, nginx, python, serve, uvicorn, wrk
from servefiles import open_store

SIZES = {"10 KiB": 10 * 1024, "1 MiB": 1024 * 1024}
KEY = {"10 KiB": "bench/small.png", "1 MiB": "bench/large.png"}
COLD_KEYS = {"10 KiB": 60_000, "1 MiB": 12_000}
"""Distinct never-fetched keys for the cold runs: more than a run can request."""
REPEATS = 2
GUNICORN = ["--workers", "1", "--worker-class", "gthread", "--threads", "8", "--no-control-socket",
            "--log-level", "warning", "--bind", "127.0.0.1:{port}"]  # fmt: skip


def granian(app: str) -> list[str]:
    return [python(), "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", "{port}",
            "--workers", "1", "--log-level", "warning", app]  # fmt: skip


def gunicorn(app: str) -> list[str]:
    return [python(), "-m", "gunicorn", *GUNICORN, app]


@dataclass
class Row:
    size: str
    contender: str
    temperature: str
    load: Load
    peak_rss_mib: float
    note: str = ""


@dataclass
class Run:
    rows: list[Row] = field(default_factory=list)
    keys: list[tuple[int, Load]] = field(default_factory=list)
    startup: str = ""
    store: str = ""


# -- data -----------------------------------------------------------------------------------


async def _fill_store(url: str, files: dict[str, bytes]) -> None:
    async with open_store(url) as store:
        for label, data in files.items():
            await store.put(KEY[label], data, "image/png")


def bench_files(url: str, work: Path) -> tuple[dict[str, bytes], Path]:
    """A random file of each size, stored at its key in the store at ``url`` and written under
    ``work/static/static/`` as plain files (for the static-file peers); (files by size, the root)."""
    files = {label: os.urandom(size) for label, size in SIZES.items()}
    asyncio.run(_fill_store(url, files))
    static = work / "static"
    for label, data in files.items():
        (static / "static" / "bench").mkdir(parents=True, exist_ok=True)
        (static / "static" / KEY[label]).write_bytes(data)
    return files, static


def clone_rows(url: str, template: str, pattern: str, count: int) -> None:
    """Benchmark-only data: ``count`` more keys (``pattern % i``) sharing ``template``'s content,
    inserted with SQL in one statement (a million puts would measure the puts)."""
    if url.startswith("sqlite:"):
        import sqlite3

        from servefiles.store import sqlite_path

        with sqlite3.connect(sqlite_path(url)) as conn:
            base = conn.execute("SELECT value FROM servefiles_meta WHERE name = 'last_version'").fetchone()[0]
            conn.execute(
                """WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
                INSERT INTO servefiles_files (key, version, deleted, blob_id, chunk_size, size, sha256,
                    content_type, created_at, updated_at, last_modified)
                SELECT printf(?, i), ? + i, 0, f.blob_id, f.chunk_size, f.size, f.sha256, f.content_type,
                    f.created_at, f.updated_at, f.last_modified FROM n, servefiles_files f WHERE f.key = ?""",
                (count, pattern, base, template),
            )
            conn.execute("UPDATE servefiles_meta SET value = ? WHERE name = 'last_version'", (base + count,))
        return

    async def insert() -> None:
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                """INSERT INTO servefiles_files (key, version, deleted, blob_id, chunk_size, size, sha256,
                    content_type, created_at, updated_at, last_modified)
                SELECT replace($2, '%d', i::text), nextval('servefiles_version_seq'), false, f.blob_id,
                    f.chunk_size, f.size, f.sha256, f.content_type, f.created_at, f.updated_at, f.last_modified
                FROM generate_series(1, $3) i, servefiles_files f WHERE f.key = $1""",
                template, pattern, count,
            )  # fmt: skip
        finally:
            await conn.close()

    asyncio.run(insert())


def cold_script(directory: Path, pattern: str) -> Path:
    """A wrk script asking for a key never asked before on every request."""
    path = directory / f"cold-{abs(hash(pattern))}.lua"
    prefix, _, suffix = pattern.partition("%d")
    path.write_text(
        "local n = 0\n"
        "request = function()\n"
        "  n = n + 1\n"
        f'  return wrk.format(nil, "/media/{prefix}" .. n .. "{suffix}")\n'
        "end\n"
    )
    return path


# -- one measurement ------------------------------------------------------------------------


def check(url: str, data: bytes) -> None:
    response = httpx.get(url, timeout=60)
    if response.status_code != 200 or response.content != data:
        raise RuntimeError(f"{url} answered {response.status_code} with {len(response.content)} bytes, not the file")


def measure(server: Server, url_path: str, data: bytes, seconds: float, connections: int,
            script: Path | None = None, warm: bool = True) -> tuple[Load, float]:  # fmt: skip
    url = f"http://127.0.0.1:{server.port}{url_path}"
    if warm:
        check(url, data)
        check(url, data)
    if script is not None:
        return wrk(url, seconds, connections, script), server.peak_rss_mib()
    # Best of REPEATS: on a shared machine a run can only be slowed down by others, never sped up.
    load = max((wrk(url, seconds, connections) for _ in range(REPEATS)), key=lambda run: run.requests_per_second)
    return load, server.peak_rss_mib()


# -- the run ----------------------------------------------------------------------------------


def run(seconds: float, connections: int, store_kind: str, work: Path, log: Callable[[str], None],
        only: str = "") -> Run:  # fmt: skip
    """Everything, or with ``only`` just the parts whose name contains it (for profiling one path)."""
    result = Run()

    def wanted(name: str) -> bool:
        return any(part.strip().lower() in name.lower() for part in only.split(","))

    url, cleanup = _store(store_kind, work)
    result.store = "PostgreSQL" if url.startswith("postgres") else "SQLite"
    try:
        files, static = bench_files(url, work)
        base_env = {"BENCH_DB": url, "BENCH_STATIC": str(static)}

        def env(cache: str, memory: int | None = None) -> dict[str, str]:
            memory_env = {"BENCH_MEMORY": str(memory)} if memory is not None else {}
            return {**base_env, "BENCH_CACHE": str(work / cache), **memory_env}

        contenders: list[tuple[str, list[str], dict[str, str], str]] = [
            ("DB-direct (uvicorn)", uvicorn("benchmarks.apps:db_direct"), base_env, "/media/"),
            ("bare ASGI dict (uvicorn)", uvicorn("benchmarks.apps:bare_dict"), base_env, "/media/"),
            ("servefiles (uvicorn)", uvicorn("benchmarks.apps:servefiles_asgi"), env("c-uvicorn"), "/media/"),
            ("servefiles disk tier (uvicorn)", uvicorn("benchmarks.apps:servefiles_asgi"), env("c-disk", 0), "/media/"),
            ("servefiles (granian, pathsend)", granian("benchmarks.apps:servefiles_asgi"), env("c-granian"), "/media/"),
            ("servefiles WSGI (gunicorn)", gunicorn("benchmarks.apps:servefiles_wsgi"), env("c-gunicorn"), "/media/"),
            ("Starlette StaticFiles (uvicorn)", uvicorn("benchmarks.apps:starlette_static"), base_env, "/static/"),
            ("whitenoise (gunicorn)", gunicorn("benchmarks.apps:whitenoise_app"), base_env, "/static/"),
        ]
        for name, command, environment, prefix in contenders:
            if not wanted(name):
                continue
            with Server(command, environment) as server:
                for label, data in files.items():
                    load, rss = measure(server, prefix + KEY[label], data, seconds, connections)
                    tier = ""
                    if name == "servefiles (uvicorn)":
                        tier = "memory tier" if label == "10 KiB" else "disk tier (over the 256 KiB memory-tier limit)"
                    result.rows.append(Row(label, name, "hot", load, rss, tier))
                    log(f"{label:>6} {name:<34} {load.requests_per_second:>10,.0f} req/s  p99 {load.p99_ms:.2f} ms")
        # Cold: a fresh cache, a new key on every request (rows sharing the file's content).
        for label, data in files.items() if wanted("servefiles cold misses") else ():
            pattern = f"cold{label.replace(' ', '')}/%d.png"
            clone_rows(url, KEY[label], pattern, COLD_KEYS[label])
            with Server(uvicorn("benchmarks.apps:servefiles_asgi"), env(f"c-cold-{label[:2]}")) as server:
                load, rss = measure(server, "/", data, seconds, connections, cold_script(work, pattern), warm=False)
                check(f"http://127.0.0.1:{server.port}/media/{pattern.replace('%d', '1')}", data)
                note = "" if load.requests < COLD_KEYS[label] else "ran out of cold keys: some were hits"
                result.rows.append(Row(label, "servefiles cold misses (uvicorn)", "cold", load, rss, note))
                log(f"{label:>6} cold misses {load.requests_per_second:>10,.0f} req/s ({load.requests} requests)")
        if wanted("nginx"):
            _nginx_rows(result, url, files, work, seconds, connections, log)
        if wanted("keys"):
            _key_count_rows(result, store_kind, files, work, seconds, connections, log)
        if wanted("startup"):
            result.startup = _disk_startup()
            log(result.startup)
    finally:
        cleanup()
    return result


def _nginx_rows(result: Run, url: str, files: dict[str, bytes], work: Path, seconds: float, connections: int,
                log: Callable[[str], None]) -> None:  # fmt: skip
    from tests.nginx_server import server_block

    plain = free_port()
    plain_block = f"server {{ listen 127.0.0.1:{plain}; location /static/ {{ root {work / 'static'}; }} }}"
    blocks: list[tuple[str, str, int, list[str] | None]] = [("nginx static (the limit)", plain_block, plain, None)]
    for mode in ("accel", "tree"):
        port = free_port()
        cache, published = work / f"c-nginx-{mode}", work / f"p-nginx-{mode}"
        blocks.append((f"nginx + servefiles, {mode}", mode, port,
                       serve(url, cache, "--nginx", mode, "--publish-dir", str(published))))  # fmt: skip
    for name, block, port, command in blocks:
        upstream = Server(command) if command is not None else None
        if upstream is not None:
            upstream.start()
            block = server_block(block, upstream.port, port, work / f"c-nginx-{block}", work / f"p-nginx-{block}")
        server = nginx(block, work / f"nginx-{port}", port)
        try:
            server.start()
            for label, data in files.items():
                prefix = "/static/" if upstream is None else "/media/"
                load, rss = measure(server, prefix + KEY[label], data, seconds, connections)
                rss += upstream.peak_rss_mib() if upstream is not None else 0
                result.rows.append(Row(label, name, "hot", load, rss))
                log(f"{label:>6} {name:<34} {load.requests_per_second:>10,.0f} req/s  p99 {load.p99_ms:.2f} ms")
        finally:
            server.stop()
            if upstream is not None:
                upstream.stop()


def _key_count_rows(result: Run, kind: str, files: dict[str, bytes], work: Path, seconds: float,
                    connections: int, log: Callable[[str], None]) -> None:  # fmt: skip
    """Hit throughput of one hot 10 KiB key with 1, 10^4 and 10^6 keys in a database of its own."""
    url, cleanup = _store(kind, work / "keys")
    try:
        asyncio.run(_fill_store(url, {"10 KiB": files["10 KiB"]}))
        total = 1
        for target in (1, 10_000, 1_000_000):
            if target > total:
                clone_rows(url, KEY["10 KiB"], f"many{total}/%d.png", target - total)
                total = target
            env = {"BENCH_DB": url, "BENCH_CACHE": str(work / f"c-keys-{target}")}
            with Server(uvicorn("benchmarks.apps:servefiles_asgi"), env) as server:
                load, _ = measure(server, "/media/" + KEY["10 KiB"], files["10 KiB"], seconds, connections)
            result.keys.append((total, load))
            log(f"{total:>9} keys: {load.requests_per_second:,.0f} req/s")
    finally:
        cleanup()


def _disk_startup() -> str:
    done = subprocess.run([python(), "-m", "benchmarks.disk_startup", "--entries", "100000"], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    if done.returncode != 0:  # a failure shows in the report, never as an empty section
        return f"FAILED: {(done.stderr.strip().splitlines() or ['no output'])[-1]}"
    return done.stdout.strip()


def _store(kind: str, work: Path) -> tuple[str, Callable[[], object]]:
    if kind == "sqlite":
        work.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{work / 'files.db'}", lambda: None
    from benchmarks.store_memory import postgres_store

    context = postgres_store()
    url = context.__enter__()
    return url, lambda: context.__exit__(None, None, None)


# -- the report -------------------------------------------------------------------------------


def table(result: Run) -> str:
    by = {(r.size, r.contender): r.load.requests_per_second for r in result.rows}
    lines = ["| file | contender | temp | requests/s | p50 ms | p99 ms | x DB-direct | x nginx | peak RSS MiB | note |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in result.rows:
        db = by[(r.size, "DB-direct (uvicorn)")]
        nginx = by.get((r.size, "nginx static (the limit)"), float("nan"))
        errors = f"; {r.load.errors} errors" if r.load.errors else ""
        lines.append(f"| {r.size} | {r.contender} | {r.temperature} | {r.load.requests_per_second:,.0f} "
                     f"| {r.load.p50_ms:.2f} | {r.load.p99_ms:.2f} | {r.load.requests_per_second / db:.2f} "
                     f"| {r.load.requests_per_second / nginx:.2f} | {r.peak_rss_mib:.0f} "
                     f"| {r.note}{errors} |")  # fmt: skip
    return "\n".join(lines)


def targets(result: Run) -> list[tuple[str, float, float, bool]]:
    by = {r.contender: r.load.requests_per_second for r in result.rows if r.size == "10 KiB"}
    hits = by["servefiles (uvicorn)"]
    nginx = by["nginx static (the limit)"]
    checks = [
        ("servefiles hits ≥ 4x DB-direct", hits / by["DB-direct (uvicorn)"], 4.0),
        ("servefiles hits ≥ 5x Starlette StaticFiles", hits / by["Starlette StaticFiles (uvicorn)"], 5.0),
        ("servefiles hits ≥ 0.6x bare ASGI dict", hits / by["bare ASGI dict (uvicorn)"], 0.6),
        ("nginx accel mode ≥ 0.9x plain nginx", by["nginx + servefiles, accel"] / nginx, 0.9),
        ("nginx tree mode ≥ 0.9x plain nginx", by["nginx + servefiles, tree"] / nginx, 0.9),
    ]
    return [(name, ratio, goal, ratio >= goal) for name, ratio, goal in checks]


def chart(result: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SIZES), figsize=(14, 7))
    for axis, size in zip(axes, SIZES, strict=True):
        rows = [r for r in result.rows if r.size == size]
        names = [f"{r.contender} ({r.temperature})" for r in rows]
        colors = ["#c44" if "DB-direct" in n else "#48c" if "servefiles" in n else "#999" for n in names]
        axis.barh(names, [r.load.requests_per_second for r in rows], color=colors)
        axis.set_title(f"{size} file: requests/s (one core)")
        axis.invert_yaxis()
        axis.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    return f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--chart", type=Path, default=ROOT / "benchmarks" / "results.png")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument(
        "--only", default="", help="run only the parts whose name contains one of these comma-separated fragments"
    )
    args = parser.parse_args(argv)
    ensure_tools()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="servefiles-compare-") as tmp:
        result = run(args.seconds, args.connections, args.db, Path(tmp), lambda line: print(line, file=sys.stderr),
                     args.only)  # fmt: skip
    if args.only:
        return 0  # a partial run: the lines above are its figures
    chart(result, args.chart)
    print(f"## servefiles benchmark, {datetime.date.today().isoformat()}\n")
    print(f"Machine: {machine()}. Store: {result.store}. Load: wrk -t1 -c{args.connections} -d{args.seconds:g}s "
          f"on core 1; each server on core 0. Load average at the end: {os.getloadavg()[0]:.2f}. "
          f"Run took {time.monotonic() - started:.0f} s.\n")  # fmt: skip
    print(table(result))
    print("\n### Targets (10 KiB, measured in this run)\n")
    print("| target | measured | goal | |\n|---|---:|---:|---|")
    for name, ratio, goal, ok in targets(result):
        print(f"| {name} | {ratio:.2f}x | {goal:g}x | {'PASS' if ok else 'MISSED'} |")
    print("\n### A hit's cost against the number of keys in the database (10 KiB memory-tier hit, uvicorn)\n")
    print("| keys in the database | requests/s | p99 ms |\n|---:|---:|---:|")
    for count, load in result.keys:
        print(f"| {count:,} | {load.requests_per_second:,.0f} | {load.p99_ms:.2f} |")
    print(f"\n### Disk tier start-up with 10^5 entries\n\n```\n{result.startup}\n```")
    print(f"\nChart: {args.chart}")
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ | {"load": r.load.__dict__} for r in result.rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
