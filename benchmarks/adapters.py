"""Every adapter near its server's limit (issue 18), in one run: servefiles' WSGI adapter against
whitenoise under gunicorn, nginx's accel mode against its limit, the ASGI adapter against a bare
ASGI app.

Contenders (all real servers on 127.0.0.1, pinned to core 0; wrk ``-t1`` on core 1):

- **WSGI, gunicorn gthread** (1 worker, 8 threads) and **gunicorn sync** (2 workers): servefiles'
  ``ServeFilesWSGI`` (10 KiB: a memory-tier hit; 1 MiB: a disk-tier hit, sent with
  ``wsgi.file_wrapper``), whitenoise over the same files as plain files, and a bare WSGI app
  answering bytes from a dict (the ceiling of a Python WSGI app under that worker);
- **nginx accel mode**: the block ``servefiles nginx-config --mode accel`` prints, in front of
  ``servefiles serve --nginx accel``; and **its limit**: the same block in front of a bare ASGI
  app under the same server (uvicorn) answering every request with the very response head
  servefiles gave for that path (``X-Accel-Redirect`` to the same cache file, the same headers),
  so nginx does the same work and Python nothing but answer (``benchmarks/apps.py:fixed_accel``);
- **ASGI standalone** (10 KiB): ``ServeFiles`` under uvicorn against the bare ASGI dict server.

Each contender gets ``--warmup`` seconds of unrecorded load first. A round then measures every
(contender, size) once, back to back, the order rotated by one each round; the ratios (servefiles
over its reference) are taken within a round and the verdict is on their median over the rounds,
so a slow spell of the VM moves one round, not the result. Each run also records the server's
CPU time per request (its process tree's utime + stime: gunicorn's workers, nginx and the app
behind it). Every contender's body is checked first; a run with a non-2xx response fails.

    .venv/bin/python -m benchmarks.adapters [--seconds 4] [--rounds 5] [--db postgres|sqlite]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from . import harness
from .compare import KEY, SIZES, bench_files
from .harness import (
    LOAD_CORE,
    SERVER_CORE,
    Load,
    Server,
    core_ticks,
    ensure_tools,
    free_port,
    nginx,
    python,
    serve,
    wrk,
)

GTHREAD = ["--workers", "1", "--worker-class", "gthread", "--threads", "8"]
SYNC = ["--workers", "2", "--worker-class", "sync"]
TARGETS: list[tuple[str, str, str, str, float]] = [
    # (what, size, servefiles contender, reference contender, goal)
    ("WSGI gthread 10 KiB >= 1.3x whitenoise", "10 KiB", "servefiles WSGI, gthread", "whitenoise, gthread", 1.3),
    ("WSGI gthread 1 MiB >= 1.0x whitenoise", "1 MiB", "servefiles WSGI, gthread", "whitenoise, gthread", 1.0),
    ("WSGI sync 10 KiB >= 1.3x whitenoise", "10 KiB", "servefiles WSGI, sync", "whitenoise, sync", 1.3),
    ("WSGI sync 1 MiB >= 1.0x whitenoise", "1 MiB", "servefiles WSGI, sync", "whitenoise, sync", 1.0),
    ("accel 10 KiB >= 0.9x the mode's limit", "10 KiB", "nginx + servefiles, accel", "nginx + fixed accel (limit)",
     0.9),
    ("accel 1 MiB >= 0.9x the mode's limit", "1 MiB", "nginx + servefiles, accel", "nginx + fixed accel (limit)",
     0.9),
    ("ASGI 10 KiB >= 0.7x bare ASGI dict", "10 KiB", "servefiles ASGI (uvicorn)", "bare ASGI dict (uvicorn)", 0.7),
]  # fmt: skip
REFERENCES = [
    ("WSGI gthread, servefiles / bare WSGI", "servefiles WSGI, gthread", "bare WSGI, gthread"),
    ("WSGI sync, servefiles / bare WSGI", "servefiles WSGI, sync", "bare WSGI, sync"),
    ("accel defaults (memory hit) / the limit", "nginx + servefiles, accel, defaults (a memory hit)",
     "nginx + fixed accel (limit)"),
    ("whitenoise gthread / bare WSGI", "whitenoise, gthread", "bare WSGI, gthread"),
    ("whitenoise sync / bare WSGI", "whitenoise, sync", "bare WSGI, sync"),
]


def gunicorn(app: str, workers: list[str]) -> list[str]:
    return [python(), "-m", "gunicorn", *workers, "--no-control-socket", "--log-level", "warning",
            "--bind", "127.0.0.1:{port}", app]  # fmt: skip


@dataclass
class Contender:
    name: str
    server: Server
    prefix: str
    sizes: tuple[str, ...] = tuple(SIZES)
    behind: list[Server] = field(default_factory=list)
    """Processes whose CPU time counts with this contender's (the app behind nginx)."""

    def cpu_seconds(self) -> float:
        return self.server.cpu_seconds() + sum(server.cpu_seconds() for server in self.behind)


@dataclass
class Run:
    load: Load
    cpu_us: float
    """The contender's CPU time per request, µs (utime + stime of its processes over the run)."""
    steal: float


def _check(url: str, data: bytes) -> httpx.Response:
    response = httpx.get(url, timeout=60)
    if response.status_code != 200 or response.content != data:
        raise RuntimeError(f"{url} answered {response.status_code} with {len(response.content)} bytes, not the file")
    return response


@contextlib.contextmanager
def _store(kind: str, work: Path) -> Iterator[str]:
    """A store URL: a SQLite file in ``work``, or a throwaway PostgreSQL database (dropped after)."""
    if kind == "sqlite":
        yield f"sqlite:///{work / 'files.db'}"
        return
    from .store_memory import postgres_store

    with postgres_store() as url:
        yield url


def _accel_heads(frontend: Server, files: dict[str, bytes]) -> dict[str, list[list[str]]]:
    """servefiles' own response head (to nginx) for each file, as the limit app replays it."""
    heads = {}
    for label in files:
        path = "/media/" + KEY[label]
        httpx.get(f"http://127.0.0.1:{frontend.port}{path}", timeout=60)  # a miss: the fill
        for _ in range(50):
            response = httpx.get(f"http://127.0.0.1:{frontend.port}{path}", timeout=60)
            if "x-accel-redirect" in response.headers:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"servefiles --nginx accel never redirected {path}")
        heads[path] = [[name, value] for name, value in response.headers.multi_items()]
    return heads


def _measure(contender: Contender, url: str, seconds: float, connections: int) -> Run:
    ticks, cpu = core_ticks(SERVER_CORE), contender.cpu_seconds()
    load = wrk(url, seconds, connections)
    used = contender.cpu_seconds() - cpu
    return Run(load, used / max(load.requests, 1) * 1e6, core_ticks(SERVER_CORE).shares(ticks)[2])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4, help="each wrk run [4]")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds [5]")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of unrecorded load per contender first [2]")
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--only", default="", help="comma-separated words: contenders whose name holds one")
    args = parser.parse_args(argv)
    ensure_tools()
    with tempfile.TemporaryDirectory(prefix="servefiles-adapters-bench-") as tmp:
        work = Path(tmp)
        with _store(args.db, work) as url:
            rounds, contenders = _run(url, work, args, lambda line: print(line, file=sys.stderr, flush=True))
            _report(contenders, rounds, args)
    return 0


def _run(url: str, work: Path, args: argparse.Namespace,
         log: Callable[[str], None]) -> tuple[list[dict[tuple[str, str], Run]], list[Contender]]:  # fmt: skip
    from tests.nginx_server import server_block

    files, static = bench_files(url, work)
    base = {"BENCH_DB": url, "BENCH_STATIC": str(static)}

    def cached(name: str) -> dict[str, str]:
        return {**base, "BENCH_CACHE": str(work / f"cache-{name}")}

    contenders: list[Contender] = []
    for workers, short in ((GTHREAD, "gthread"), (SYNC, "sync")):
        contenders += [
            Contender(f"servefiles WSGI, {short}", Server(gunicorn("benchmarks.apps:servefiles_wsgi", workers),
                                                          cached(f"wsgi-{short}")), "/media/"),
            Contender(f"whitenoise, {short}", Server(gunicorn("benchmarks.apps:whitenoise_app", workers), base),
                      "/static/"),
            Contender(f"bare WSGI, {short}", Server(gunicorn("benchmarks.apps:bare_wsgi", workers), base), "/media/"),
        ]  # fmt: skip
    contenders += [
        Contender("servefiles ASGI (uvicorn)", Server(harness.uvicorn("benchmarks.apps:servefiles_asgi"),
                                                      cached("asgi")), "/media/", ("10 KiB",)),
        Contender("bare ASGI dict (uvicorn)", Server(harness.uvicorn("benchmarks.apps:bare_dict"), base), "/media/",
                  ("10 KiB",)),
    ]  # fmt: skip
    wanted = [word.strip().lower() for word in args.only.split(",") if word.strip()]
    if wanted:
        contenders = [c for c in contenders if any(word in c.name.lower() for word in wanted)]
    accel = not wanted or any(word in "nginx + servefiles, accel nginx + fixed accel (limit)" for word in wanted)
    started: list[Server] = []
    try:
        for contender in contenders:
            started.append(contender.server.start())
        if accel:
            # --cache-min-uses 1: the first miss writes the 10 KiB file to the disk tier too, so both
            # sizes are redirects to a content file, as the limit's are. With the defaults a small
            # file is fetched whole into the memory tier and stays a memory hit sent through nginx
            # (the last contender, for comparison).
            cache = work / "cache-accel"
            frontend = Server(serve(url, cache, "--nginx", "accel", "--cache-min-uses", "1"))
            started.append(frontend.start())
            heads = _accel_heads(frontend, files)
            limit_app = Server([*harness.uvicorn("benchmarks.apps:fixed_accel"), "--no-date-header", "--lifespan",
                                "off"], {"BENCH_ACCEL_HEADERS": json.dumps(heads)})  # fmt: skip
            started.append(limit_app.start())
            defaults = Server(serve(url, work / "cache-accel-defaults", "--nginx", "accel"))
            started.append(defaults.start())
            for name, upstream, sizes in (
                ("nginx + servefiles, accel", frontend, tuple(SIZES)),
                ("nginx + fixed accel (limit)", limit_app, tuple(SIZES)),
                ("nginx + servefiles, accel, defaults (a memory hit)", defaults, ("10 KiB",)),
            ):
                port = free_port()
                block = server_block("accel", upstream.port, port, cache, work / "unpublished")
                proxy = nginx(block, work / f"nginx-{port}", port)
                started.append(proxy.start())
                contenders.append(Contender(name, proxy, "/media/", sizes, behind=[upstream]))
        for contender in contenders:
            for label in contender.sizes:
                url_of = f"http://127.0.0.1:{contender.server.port}{contender.prefix}{KEY[label]}"
                _check(url_of, files[label])
                _check(url_of, files[label])
                if args.warmup > 0:
                    wrk(url_of, args.warmup, args.connections)
        cells = [(c, label) for c in contenders for label in c.sizes]
        rounds: list[dict[tuple[str, str], Run]] = []
        for number in range(args.rounds):
            shift = number % len(cells)
            runs: dict[tuple[str, str], Run] = {}
            for contender, label in cells[shift:] + cells[:shift]:
                url_of = f"http://127.0.0.1:{contender.server.port}{contender.prefix}{KEY[label]}"
                run = _measure(contender, url_of, args.seconds, args.connections)
                if run.load.errors:
                    raise RuntimeError(f"{contender.name} {label}: {run.load.errors} errors")
                runs[(contender.name, label)] = run
            rounds.append(runs)
            log(
                f"round {number + 1}/{args.rounds}: "
                + "; ".join(
                    f"{name} {label} {run.load.requests_per_second:,.0f}" for (name, label), run in runs.items()
                )
            )
        for contender, label in cells:  # still exactly the file after the load
            _check(f"http://127.0.0.1:{contender.server.port}{contender.prefix}{KEY[label]}", files[label])
    finally:
        for server in reversed(started):
            server.stop()
    return rounds, contenders


def _machine() -> str:
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    return f"{model}, {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}"


def _report(contenders: list[Contender], rounds: list[dict[tuple[str, str], Run]], args: argparse.Namespace) -> None:
    med = statistics.median
    print(
        f"benchmarks.adapters, {time.strftime('%Y-%m-%d %H:%M %Z')}: {_machine()}; {args.db}; wrk -t1 "
        f"-c{args.connections}, {args.seconds:g} s per run after {args.warmup:g} s of warm-up each, {len(rounds)} "
        f"interleaved rounds (order rotated each round); servers on core {SERVER_CORE}, wrk on core {LOAD_CORE}"
    )
    print()
    print("| file | contender | req/s (median) | each round | server µs/req (median) | p50 ms | p99 ms |")
    print("|---|---|---:|---|---:|---:|---:|")
    for contender in contenders:
        for label in contender.sizes:
            runs = [r[(contender.name, label)] for r in rounds]
            each = " / ".join(f"{run.load.requests_per_second:,.0f}" for run in runs)
            print(f"| {label} | {contender.name} | {med(run.load.requests_per_second for run in runs):,.0f} | {each} "
                  f"| {med(run.cpu_us for run in runs):.1f} | {med(run.load.p50_ms for run in runs):.2f} "
                  f"| {med(run.load.p99_ms for run in runs):.2f} |")  # fmt: skip
    steal = max(run.steal for r in rounds for run in r.values())
    print(f"\nmost hypervisor steal on core {SERVER_CORE} in any run: {steal:.1%}")

    def ratios(label: str, name: str, against: str) -> list[float] | None:
        if (name, label) not in rounds[0] or (against, label) not in rounds[0]:
            return None
        return [r[(name, label)].load.requests_per_second / max(r[(against, label)].load.requests_per_second, 1e-9)
                for r in rounds]  # fmt: skip

    print()
    print("| target | goal | measured (median of rounds' ratios) | each round | CPU µs/req ratio | verdict |")
    print("|---|---:|---:|---|---:|---|")
    for what, label, name, against, goal in TARGETS:
        found = ratios(label, name, against)
        if found is None:
            continue
        cpu = med(r[(against, label)].cpu_us / r[(name, label)].cpu_us for r in rounds)
        verdict = "met" if med(found) >= goal else "NOT met"
        print(f"| {what} | {goal:.2f}x | {med(found):.3f}x | {' / '.join(f'{x:.2f}' for x in found)} "
              f"| {cpu:.3f}x | {verdict} |")  # fmt: skip
    for label in SIZES:
        for what, name, against in REFERENCES:
            found = ratios(label, name, against)
            if found is not None:
                print(
                    f"| {what}, {label} (reference) | | {med(found):.3f}x | "
                    f"{' / '.join(f'{x:.2f}' for x in found)} | | |"
                )


if __name__ == "__main__":
    sys.exit(main())
