"""Hit throughput of private files (issue 17): a 10 KiB memory-tier hit for a public key, for a
private key with a signed URL and for a private key let through by a trivial ``authorize``
hook, in one run, as ratios to the public hit.

Two servers, both ``ServeFiles`` under uvicorn as ``servefiles serve`` runs it (servefiles
stamps Date, uvicorn's is off), on one SQLite store holding the three files:

- **baseline**: no private folder (today's servefiles): the public key;
- **private**: ``private=["private"]``, a signing key and an async hook that lets through a
  request carrying an ``X-User`` header: the public key (what a private folder costs the
  public ones), ``private/a.bin`` with a signed URL, ``private/b.bin`` with ``X-User``.

Servers on core 0, wrk (-t1) on core 1, 127.0.0.1; contenders are measured in turn, ``--rounds``
times each, and the mean of the rounds is reported. Every contender's body is checked first, and
a run with a non-2xx response fails.

    .venv/bin/python -m benchmarks.private [--seconds 10] [--connections 32] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx

from servefiles import ServeFiles, Signer, open_store

from .harness import Load, Server, ensure_tools, python, wrk

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
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
        loads: dict[str, list[Load]] = {c.name: [] for c in contenders}
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
            for _ in range(args.rounds):
                for contender in contenders:
                    url = f"http://127.0.0.1:{servers[contender.server].port}{contender.path}"
                    load = wrk(url, args.seconds, args.connections, _lua(workdir, contender.headers))
                    assert load.errors == 0, f"{contender.name}: {load.errors} errors"
                    loads[contender.name].append(load)
        finally:
            for server in servers.values():
                server.stop()
    _report(contenders, loads, args)


def _report(contenders: list[Contender], loads: dict[str, list[Load]], args: argparse.Namespace) -> None:
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    print(f"benchmarks.private, {date.today()}: {model}, {os.cpu_count()} cores, Linux {platform.release()}, "
          f"Python {platform.python_version()}; wrk -t1 -c{args.connections}, {args.seconds:g} s x {args.rounds} "
          f"rounds; 10 KiB memory-tier hits, uvicorn, servers on core 0, wrk on core 1")  # fmt: skip
    mean = {name: statistics.mean(load.requests_per_second for load in runs) for name, runs in loads.items()}
    public = mean[contenders[1].name]
    baseline = mean[contenders[0].name]
    print()
    print("| contender | req/s (mean) | rounds | p50 ms | p99 ms | x public, same server | x no private folder |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for contender in contenders:
        runs = loads[contender.name]
        rounds = " / ".join(f"{load.requests_per_second:,.0f}" for load in runs)
        p50 = statistics.mean(load.p50_ms for load in runs)
        p99 = statistics.mean(load.p99_ms for load in runs)
        print(f"| {contender.name} | {mean[contender.name]:,.0f} | {rounds} | {p50:.2f} | {p99:.2f} | "
              f"{mean[contender.name] / public:.2f} | {mean[contender.name] / baseline:.2f} |")  # fmt: skip
    signed, hooked = mean[contenders[2].name] / public, mean[contenders[3].name] / public
    verdict = "met" if min(signed, hooked) >= 0.85 else "NOT met"
    print(f"\nTarget (signed and hooked >= 0.85x the public hit): signed {signed:.2f}x, hooked {hooked:.2f}x: "
          f"{verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
