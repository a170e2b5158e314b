"""Hit throughput through nginx in both modes, as a ratio to nginx serving the same file
as a plain static file, measured in one run.

For each file size (10 KiB and 1 MiB, image/png so the tree may publish it) it starts:

- **plain**: nginx with ``location /static/ { root DIR; }`` over a copy of the file;
- **accel**: nginx with the ``servefiles nginx-config --mode accel`` block in front of
  ``servefiles serve --nginx accel`` (every hit passes through Python, which answers
  with X-Accel-Redirect; nginx sends the bytes);
- **tree**: nginx with the ``--mode tree`` block in front of ``servefiles serve --nginx
  tree`` (hits are ``try_files`` of the published tree: Python never sees them).

nginx (one worker) and servefiles are pinned to core 0, wrk to core 1 (``taskset``), all
on 127.0.0.1; each measurement is a bounded wrk run after a warm-up request. It checks
every contender's response body against the file first. nginx and wrk come from Debian
(``scripts/install-nginx`` installs them when missing).

    .venv/bin/python -m benchmarks.nginx_modes [--seconds 5] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from servefiles import open_store
from tests.nginx_server import Nginx, nginx_binary, server_block
from tests.servers import Frontend, free_port

SIZES = {"10 KiB": 10 * 1024, "1 MiB": 1024 * 1024}
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    size: str
    contender: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float


def pinned(core: int, command: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *command] if shutil.which("taskset") and os.cpu_count() != 1 else command


def wrk(url: str, seconds: int, connections: int) -> tuple[float, float, float]:
    """Requests/s, p50 and p99 latency (ms) of a bounded wrk run."""
    command = pinned(1, ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url])
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    return rps, _latency(out, "50%"), _latency(out, "99%")


def _latency(out: str, percentile: str) -> float:
    match = re.search(rf"^\s+{re.escape(percentile)}\s+([0-9.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    assert match, f"no {percentile} latency in wrk output:\n{out}"
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


@contextlib.contextmanager
def nginx_with(block: str, workdir: Path, port: int) -> Iterator[Nginx]:
    nginx = Nginx(workdir, block)
    binary = nginx_binary()
    nginx.proc = subprocess.Popen(pinned(0, [binary, "-p", str(workdir), "-c", str(nginx.conf)]),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    _wait_port(port)
    try:
        yield nginx
    finally:
        nginx.stop()


def _wait_port(port: int) -> None:
    import socket
    import time

    deadline = time.monotonic() + 15
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {port}")
        time.sleep(0.05)


class PinnedFrontend(Frontend):
    def command(self) -> list[str]:
        return pinned(0, super().command())


def check(url: str, data: bytes) -> None:
    response = httpx.get(url, timeout=30)
    if response.status_code != 200 or response.content != data:
        raise RuntimeError(f"{url} answered {response.status_code} with {len(response.content)} bytes")


def measure(seconds: int, connections: int) -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="servefiles-nginx-bench-") as tmp:
        work = Path(tmp)
        db = f"sqlite:///{work / 'files.db'}"
        files = {label: os.urandom(size) for label, size in SIZES.items()}

        async def upload() -> None:
            async with open_store(db) as store:
                for label, data in files.items():
                    await store.put(f"bench/{label.replace(' ', '')}.png", data, "image/png")

        asyncio.run(upload())
        static = work / "static" / "static" / "bench"
        static.mkdir(parents=True)
        for label, data in files.items():
            (static / f"{label.replace(' ', '')}.png").write_bytes(data)

        plain_port = free_port()
        plain_block = f"server {{ listen 127.0.0.1:{plain_port}; location /static/ {{ root {work / 'static'}; }} }}"
        contenders: dict[str, tuple[str, int, Frontend | None]] = {
            "nginx static (the limit)": (plain_block, plain_port, None)
        }
        for mode in ("accel", "tree"):
            cache, published = work / f"cache-{mode}", work / f"published-{mode}"
            frontend = PinnedFrontend("--db", db, "--cache-dir", str(cache), "--nginx", mode, "--publish-dir",
                                      str(published), "--log-level", "warning")  # fmt: skip
            frontend.start()
            port = free_port()
            contenders[f"nginx + servefiles, {mode}"] = (server_block(mode, frontend.port, port, cache, published),
                                                        port, frontend)  # fmt: skip
        try:
            for name, (block, port, behind) in contenders.items():
                with nginx_with(block, work / f"nginx-{port}", port):
                    for label, data in files.items():
                        path = "/static" if behind is None else "/media"
                        url = f"http://127.0.0.1:{port}{path}/bench/{label.replace(' ', '')}.png"
                        check(url, data)  # also the miss that fills (and publishes) it
                        check(url, data)
                        rps, p50, p99 = wrk(url, seconds, connections)
                        results.append(Result(label, name, rps, p50, p99))
        finally:
            for _, _, running in contenders.values():
                if running is not None:
                    running.stop()
    return results


def table(results: Sequence[Result]) -> str:
    limit = {r.size: r.requests_per_second for r in results if r.contender.startswith("nginx static")}
    lines = ["| file | contender | requests/s | p50 ms | p99 ms | ratio to nginx static |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        lines.append(f"| {r.size} | {r.contender} | {r.requests_per_second:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
                     f"| {r.requests_per_second / limit[r.size]:.2f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        subprocess.run([str(ROOT / "scripts" / "install-nginx")], check=True)
    print(table(measure(args.seconds, args.connections)))
    print(f"\nload average: {os.getloadavg()[0]:.2f}; cores: {os.cpu_count()}; wrk -t1 -c{args.connections} "
          f"-d{args.seconds}s; nginx and servefiles on core 0, wrk on core 1")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
