"""Hit throughput of private files (issue 17): a 10 KiB memory-tier hit for a public key, for a
private key with a signed URL and for a private key let through by a trivial ``authorize``
hook, in one run, as ratios to the public hit.

Two servers, both ``ServeFiles`` under uvicorn as ``servefiles serve`` runs it (servefiles
stamps Date, uvicorn's is off), on one SQLite store holding the three files:

- **baseline**: no private folder (today's servefiles): the public key;
- **private**: ``private=["private"]``, a signing key and an async hook that lets through a
  request carrying an ``X-User`` header: the public key (what a private folder costs the
  public ones), ``private/a.bin`` with a signed URL, ``private/b.bin`` with ``X-User``.

Servers on core 0, wrk (-t1) on core 1, 127.0.0.1. Each contender first gets ``--warmup`` seconds
of load that are not recorded (a fresh server's first seconds are slower). A round then measures
every contender once, back to back, starting one contender later than the round before (so no
contender always runs first or right after another); the ratios are taken within each round
(signed / public of that round) and their median over the rounds is the result, so a slow spell
of the VM (hypervisor steal, another process on the core) moves one round, not the verdict. Each
wrk run also records the server's CPU time per request (utime + stime of its process), its share
of core 0 over the run (below ~95 %: something else ran there too) and what core 0 did meanwhile
(busy, idle, steal, from ``/proc/stat``): a round whose server core was shared, idle or stolen
from is visible as such. Every contender's body is checked first, and a run with a non-2xx
response fails.

    .venv/bin/python -m benchmarks.private [--seconds 5] [--connections 32] [--rounds 7] [--warmup 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from servefiles import ServeFiles, Signer, open_store

from .harness import LOAD_CORE, SERVER_CORE, Load, Server, core_ticks, ensure_tools, python, wrk

SIGNING_KEY = "benchmark-signing-key-0123456789-abcdefghijklmnopqrs"
SIZE = 10 * 1024
FILES = {"public/a.bin": os.urandom(SIZE), "private/a.bin": os.urandom(SIZE), "private/b.bin": os.urandom(SIZE)}


async def _authorize(scope: MutableMapping[str, Any], key: str) -> bool:
    """The trivial hook: a request naming a user (what a session cookie check reduces to)."""
    return any(name == b"x-user" for name, _ in scope["headers"])


def make_app() -> ServeFiles:
    """The server under test (``uvicorn --factory``), configured by ``BENCH_DB``, ``BENCH_CACHE``
    and ``BENCH_PRIVATE`` (set: the private folder, the signing key and the hook)."""
    db, cache = os.environ["BENCH_DB"], os.environ["BENCH_CACHE"]
    if os.environ.get("BENCH_PRIVATE"):
        return ServeFiles(None, db, cache_dir=cache, date_header=True, private=["private"],
                          signing_keys=[SIGNING_KEY], authorize=_authorize)  # fmt: skip
    return ServeFiles(None, db, cache_dir=cache, date_header=True)


@dataclass
class Contender:
    name: str
    server: str
    path: str
    headers: dict[str, str]
    data: bytes


def _uvicorn() -> list[str]:
    return [python(), "-m", "uvicorn", "--factory", "benchmarks.private:make_app", "--port", "{port}",
            "--log-level", "warning", "--no-access-log", "--no-date-header"]  # fmt: skip


async def _store(db: str) -> None:
    async with open_store(db) as store:
        for key, data in FILES.items():
            await store.put(key, data, "application/octet-stream")


def _lua(workdir: Path, headers: dict[str, str]) -> Path | None:
    if not headers:
        return None
    script = workdir / f"headers-{len(list(workdir.iterdir()))}.lua"
    script.write_text("".join(f'wrk.headers["{name}"] = "{value}"\n' for name, value in headers.items()))
    return script


@dataclass
class Run:
    """One contender's wrk run in one round."""

    load: Load
    cpu_us: float
    """Server CPU time per request, µs (its process's utime + stime over the run / requests)."""
    server_share: float
    """The server's CPU time over the run's wall time: below ~95 %, something else had core 0 too."""
    busy: float
    idle: float
    steal: float
    """Shares of core 0's ticks over the run (:meth:`CoreTicks.shares`)."""


def _measure(server: Server, url: str, seconds: float, connections: int, script: Path | None) -> Run:
    """One bounded wrk run against ``server``, with its CPU time and core 0's ticks around it."""
    ticks, cpu, started = core_ticks(SERVER_CORE), server.cpu_seconds(), time.monotonic()
    load = wrk(url, seconds, connections, script)
    used, wall = server.cpu_seconds() - cpu, time.monotonic() - started
    return Run(load, used / max(load.requests, 1) * 1e6, used / wall, *core_ticks(SERVER_CORE).shares(ticks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5, help="each wrk run [5]")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7, help="rounds of every contender [7]")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of unrecorded load per contender first [3]")
    args = parser.parse_args()
    ensure_tools()
    with tempfile.TemporaryDirectory(prefix="servefiles-private-bench-") as tmp:
        workdir = Path(tmp)
        db = f"sqlite:///{workdir / 'files.db'}"
        asyncio.run(_store(db))
        signed = Signer([SIGNING_KEY], "/media", 7 * 86400).url("private/a.bin", 86400, time.time())
        contenders = [
            Contender("public key, no private folder configured", "baseline", "/media/public/a.bin", {},
                      FILES["public/a.bin"]),
            Contender("public key, private folder configured", "private", "/media/public/a.bin", {},
                      FILES["public/a.bin"]),
            Contender("private key, signed URL", "private", signed, {}, FILES["private/a.bin"]),
            Contender("private key, trivial hook", "private", "/media/private/b.bin", {"X-User": "bench"},
                      FILES["private/b.bin"]),
        ]  # fmt: skip
        servers = {
            "baseline": Server(_uvicorn(), {"BENCH_DB": db, "BENCH_CACHE": str(workdir / "cache-a")}),
            "private": Server(_uvicorn(), {"BENCH_DB": db, "BENCH_CACHE": str(workdir / "cache-b"),
                                           "BENCH_PRIVATE": "1"}),
        }  # fmt: skip
        scripts = {c.name: _lua(workdir, c.headers) for c in contenders}
        rounds: list[dict[str, Run]] = []
        try:
            for server in servers.values():
                server.start()
            for contender in contenders:
                url = f"http://127.0.0.1:{servers[contender.server].port}{contender.path}"
                for _ in range(3):  # into the memory tier
                    response = httpx.get(url, headers=contender.headers, timeout=10)
                    assert (response.status_code, response.content) == (200, contender.data), contender.name
                refused = httpx.get(url.partition("?")[0], timeout=10)
                assert refused.status_code == (200 if contender.name.startswith("public") else 403), contender.name
            for contender in contenders:  # a fresh server's first seconds are slower: not recorded
                server = servers[contender.server]
                url = f"http://127.0.0.1:{server.port}{contender.path}"
                if args.warmup > 0:
                    wrk(url, args.warmup, args.connections, scripts[contender.name])
            for number in range(args.rounds):
                runs: dict[str, Run] = {}
                for contender in _rotated(contenders, number):
                    server = servers[contender.server]
                    url = f"http://127.0.0.1:{server.port}{contender.path}"
                    run = _measure(server, url, args.seconds, args.connections, scripts[contender.name])
                    assert run.load.errors == 0, f"{contender.name}: {run.load.errors} errors"
                    runs[contender.name] = run
                rounds.append(runs)
                done = (f"{c.name} {runs[c.name].load.requests_per_second:,.0f}" for c in contenders)
                print(f"round {number + 1}/{args.rounds}: " + "; ".join(done), file=sys.stderr, flush=True)
        finally:
            for server in servers.values():
                server.stop()
    _report(contenders, rounds, args)


def _rotated(contenders: list[Contender], number: int) -> list[Contender]:
    """Round ``number``'s order: every contender once, the first one ``number`` places on."""
    shift = number % len(contenders)
    return contenders[shift:] + contenders[:shift]


def _report(contenders: list[Contender], rounds: list[dict[str, Run]], args: argparse.Namespace) -> None:
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    print(f"benchmarks.private, {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}: {model}, {os.cpu_count()} cores, "
          f"Linux {platform.release()}, Python {platform.python_version()}; wrk -t1 -c{args.connections}, "
          f"{args.seconds:g} s per run after {args.warmup:g} s of warm-up each, {len(rounds)} interleaved rounds "
          f"(order rotated each round); 10 KiB "
          f"memory-tier hits, uvicorn, servers on core {SERVER_CORE}, wrk on core {LOAD_CORE}")  # fmt: skip
    baseline, public, signed, hooked = (c.name for c in contenders)

    def ratios(name: str, against: str) -> list[float]:
        return [r[name].load.requests_per_second / r[against].load.requests_per_second for r in rounds]

    def cpu_ratios(name: str, against: str) -> list[float]:
        return [r[against].cpu_us / r[name].cpu_us for r in rounds]

    med = statistics.median
    print()
    print("| contender | req/s (median) | each round | server µs/req (median) | p50 ms | p99 ms "
          "| x public, same server (median of rounds) | x no private folder (median of rounds) |")  # fmt: skip
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for contender in contenders:
        runs = [r[contender.name] for r in rounds]
        each = " / ".join(f"{run.load.requests_per_second:,.0f}" for run in runs)
        print(f"| {contender.name} | {med(run.load.requests_per_second for run in runs):,.0f} | {each} "
              f"| {med(run.cpu_us for run in runs):.1f} | {med(run.load.p50_ms for run in runs):.2f} "
              f"| {med(run.load.p99_ms for run in runs):.2f} | {med(ratios(contender.name, public)):.3f} "
              f"| {med(ratios(contender.name, baseline)):.3f} |")  # fmt: skip
    print()
    print("| round | order | public, no folder | public | signed | hooked | signed / public | hooked / public "
          "| core 0 busy / idle / steal | server's share of core 0 |")  # fmt: skip
    print("|---:|---|---:|---:|---:|---:|---:|---:|---|---|")
    short = {baseline: "B", public: "P", signed: "S", hooked: "H"}
    for number, measured in enumerate(rounds):
        order = "".join(short[c.name] for c in _rotated(contenders, number))
        shares = [(run.busy, run.idle, run.steal) for run in measured.values()]
        busy, idle, steal = (sum(share[i] for share in shares) / len(shares) for i in range(3))
        rps = [measured[name].load.requests_per_second for name in (baseline, public, signed, hooked)]
        served = " / ".join(f"{measured[name].server_share:.0%}" for name in (baseline, public, signed, hooked))
        core = f"{busy:.0%} / {idle:.0%} / {steal:.1%}"
        print(f"| {number + 1} | {order} | " + " | ".join(f"{value:,.0f}" for value in rps)
              + f" | {rps[2] / rps[1]:.3f} | {rps[3] / rps[1]:.3f} | {core} | {served} |")
    signed_x, hooked_x = med(ratios(signed, public)), med(ratios(hooked, public))
    print()
    print(f"Server CPU per request, public over private (median of rounds; steal does not count in it): "
          f"signed {med(cpu_ratios(signed, public)):.3f}x, hooked {med(cpu_ratios(hooked, public)):.3f}x")
    verdict = "met" if min(signed_x, hooked_x) >= 0.85 else "NOT met"
    print(f"Target (signed and hooked >= 0.85x the public hit, median of the rounds' ratios): "
          f"signed {signed_x:.3f}x, hooked {hooked_x:.3f}x: {verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
