"""What the throughput benchmarks share: pinning to cores, wrk, server processes, peak RSS, CPU time.

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
    """Socket errors (connect, read, write, timeout) plus non-2xx/3xx responses."""
    non_2xx: int = 0
    """Responses whose status was not 2xx or 3xx (also counted in ``errors``)."""
    bytes_read: float = 0.0
    """Everything wrk read, headers included."""
    duration_s: float = 0.0
    """How long the run really took, as wrk reports it."""


_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def wrk(url: str, seconds: float, connections: int, script: Path | None = None) -> Load:
    """A bounded wrk run on the load core: requests/s, latency percentiles, bytes read."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    if script is not None:
        command += ["-s", str(script)]
    out = subprocess.run(pinned(LOAD_CORE, [*command, url]), capture_output=True, text=True,
                         timeout=seconds + 60, check=True).stdout  # fmt: skip
    rps = float(_find(r"Requests/sec:\s+([0-9.]+)", out))
    requests = int(_find(r"([0-9]+) requests in", out))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) ([0-9]+)", out))
    found = re.search(r"Non-2xx or 3xx responses: ([0-9]+)", out)
    non_2xx = int(found.group(1)) if found else 0
    summary = re.search(r"[0-9]+ requests in ([0-9.]+)(us|ms|s|m|h), ([0-9.]+)(B|KB|MB|GB|TB) read", out)
    assert summary, f"no summary line in wrk output:\n{out}"
    duration = float(summary.group(1)) * _TIME_UNITS[summary.group(2)]
    read = float(summary.group(3)) * _UNITS[summary.group(4)]
    return Load(rps, _latency(out, "50%"), _latency(out, "99%"), requests, errors + non_2xx, non_2xx, read, duration)


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

    def cpu_seconds(self) -> float:
        """User plus system CPU time its process tree has used so far (``/proc``)."""
        assert self.proc is not None
        return sum(_cpu_seconds(pid) for pid in [self.proc.pid, *_children(self.proc.pid)])

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


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads; 0 when it is gone."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": fields[0] is the state
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    return 0.0


@dataclass(frozen=True)
class CoreTicks:
    """One core's clock ticks since boot, from its ``cpuN`` line of ``/proc/stat`` (zeros where
    there is none): :meth:`shares` tells what a measurement's core did meanwhile."""

    busy: int = 0
    """user + nice + system + irq + softirq."""
    idle: int = 0
    """idle + iowait."""
    steal: int = 0
    """Time the hypervisor ran another guest while this one wanted the core."""

    def shares(self, before: CoreTicks) -> tuple[float, float, float]:
        """(busy, idle, steal) as shares of the ticks since ``before``; zeros when none passed."""
        busy, idle, steal = self.busy - before.busy, self.idle - before.idle, self.steal - before.steal
        total = busy + idle + steal
        return (busy / total, idle / total, steal / total) if total > 0 else (0.0, 0.0, 0.0)


def core_ticks(core: int) -> CoreTicks:
    """:class:`CoreTicks` of ``core`` now."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith(f"cpu{core} "):
                f = [int(value) for value in line.split()[1:]] + [0] * 8
                return CoreTicks(busy=f[0] + f[1] + f[2] + f[5] + f[6], idle=f[3] + f[4], steal=f[7])
    return CoreTicks()


def postgres_cpu_seconds(database: str) -> float:
    """CPU time used so far by the PostgreSQL backends connected to ``database`` (those whose
    process title names it), so another client of the same server is not counted."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "comm").read_text().strip() != "postgres":
                continue
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").split()
            if database in title:
                total += _cpu_seconds(int(entry.name))
    return total


def python() -> str:
    return sys.executable


def uvicorn(app: str) -> list[str]:
    """An ASGI app under uvicorn on ``{port}``, quiet."""
    return [python(), "-m", "uvicorn", app, "--port", "{port}", "--log-level", "warning", "--no-access-log"]


def serve(db: str, cache_dir: Path, *options: str) -> list[str]:
    """``servefiles serve`` on ``{port}`` with these options, quiet."""
    return [python(), "-m", "servefiles", "serve", "--db", db, "--cache-dir", str(cache_dir), *options,
            "--port", "{port}", "--log-level", "warning"]  # fmt: skip


def nginx(block: str, workdir: Path, port: int) -> Server:
    """nginx (one worker, in the foreground) with this server block, as a :class:`Server` on ``port``."""
    from tests.nginx_server import Nginx, nginx_binary

    conf = Nginx(workdir, block)
    return Server([nginx_binary(), "-p", str(conf.workdir), "-c", str(conf.conf)], port=port)


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    server.start()
    try:
        yield server
    finally:
        server.stop()
