"""What the throughput benchmarks share: pinning to cores, wrk, server processes, peak RSS.

Servers run on core 0 and wrk on core 1 (``taskset``), everything on 127.0.0.1, so two
contenders are compared on the same footing within one run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER_CORE, LOAD_CORE = 0, 1
START_TIMEOUT = 30.0


def pinned(core: int, command: Sequence[str]) -> list[str]:
    """``command`` bound to one core, when the machine has more than one."""
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(core), *command]
    return list(command)


def ensure_tools() -> None:
    """nginx and wrk from Debian, through the project's script, when missing."""
    if shutil.which("wrk") is None or (shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx")):
        subprocess.run([str(ROOT / "scripts" / "install-nginx")], check=True)


@dataclass
class Load:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


def wrk(url: str, seconds: float, connections: int, script: Path | None = None) -> Load:
    """A bounded wrk run on the load core: requests/s and latency percentiles."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    if script is not None:
        command += ["-s", str(script)]
    out = subprocess.run(pinned(LOAD_CORE, [*command, url]), capture_output=True, text=True,
                         timeout=seconds + 60, check=True).stdout  # fmt: skip
    rps = float(_find(r"Requests/sec:\s+([0-9.]+)", out))
    requests = int(_find(r"([0-9]+) requests in", out))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) ([0-9]+)", out))
    non_2xx = re.search(r"Non-2xx or 3xx responses: ([0-9]+)", out)
    errors += int(non_2xx.group(1)) if non_2xx else 0
    return Load(rps, _latency(out, "50%"), _latency(out, "99%"), requests, errors)


def _find(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in wrk output:\n{text}"
    return match.group(1)


def _latency(out: str, percentile: str) -> float:
    match = re.search(rf"^\s+{re.escape(percentile)}\s+([0-9.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    assert match, f"no {percentile} latency in wrk output:\n{out}"
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc is not None and proc.poll() is not None:
            output = log.read_text(errors="replace") if log else ""
            raise RuntimeError(f"server exited with {proc.returncode}: {output[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {port}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """A server process pinned to the server core; ``peak_rss_mib()`` sums its process tree's VmHWM."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.command = [part.replace("{port}", str(self.port)) for part in command]
        self.env = {**os.environ, **(env or {})}
        self.log = Path(tempfile.mkstemp(prefix="servefiles-bench-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(pinned(SERVER_CORE, self.command), env=self.env, cwd=ROOT, stdout=out,
                                         stderr=subprocess.STDOUT)  # fmt: skip
        wait_port(self.port, self.proc, self.log)
        return self

    def peak_rss_mib(self) -> float:
        """The peak resident set of the server: its own, plus its children's (gunicorn workers)."""
        assert self.proc is not None
        pids = [self.proc.pid, *_children(self.proc.pid)]
        return sum(_vm_hwm_kib(pid) for pid in pids) / 1024

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.unlink(missing_ok=True)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    found += [int(child), *_children(int(child))]
    return found


def _vm_hwm_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        match = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
        if match:
            return int(match.group(1))
    return 0


def python() -> str:
    return sys.executable


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    server.start()
    try:
        yield server
    finally:
        server.stop()
