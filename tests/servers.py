"""Run real servefiles processes for tests: the CLI, ``servefiles serve`` and gunicorn on a free port."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

SERVER_START_TIMEOUT = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cli(
    *args: str, env: Mapping[str, str] | None = None, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``servefiles ARGS`` as a real process (a fresh interpreter, like a user's shell)."""
    return subprocess.run(
        [sys.executable, "-m", "servefiles", *args],
        env={**os.environ, **(env or {})},
        input=input,
        capture_output=True,
        timeout=120,
    )


@contextlib.contextmanager
def listening(
    command: list[str], port: int, log: Path, *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
    ready_path: str | None = None, what: str = "the server", start_timeout: float = SERVER_START_TIMEOUT,
) -> Iterator[subprocess.Popen[bytes]]:  # fmt: skip
    """Run ``command`` until it listens on ``port`` (and, with ``ready_path``, answers it with 200)
    within ``start_timeout`` seconds, output to ``log``; stop it with SIGTERM (SIGKILL after 10 s)
    on the way out."""
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=cwd, env={**os.environ, **(env or {})}, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            assert proc.poll() is None, f"{what} exited with {proc.returncode}:\n{log.read_text(errors='replace')}"
            with contextlib.suppress(OSError, httpx.TransportError), socket.create_connection(
                ("127.0.0.1", port), timeout=0.5
            ):
                if ready_path is None:
                    break
                if httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"{what} did not listen in time:\n{log.read_text(errors='replace')}"
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Frontend:
    """A real ``servefiles serve`` process on a free loopback port, which a test may stop, kill and restart."""

    def __init__(self, *args: str, env: Mapping[str, str] | None = None) -> None:
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as this object: it may restart
        # Closed with this object (left to the collector, an open file is a ResourceWarning in the test run).
        weakref.finalize(self, self._log.close)

    def command(self) -> list[str]:
        serve = [sys.executable, "-m", "servefiles", "serve", "--port", str(self.port), "--log-level", "warning"]
        return [*serve, *self.args]

    def start(self) -> Frontend:
        self.proc = subprocess.Popen(self.command(), env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"servefiles serve exited with {self.proc.returncode}: {self.output()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return self
            if time.monotonic() > deadline:
                raise TimeoutError(f"servefiles serve did not start listening: {self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def metric(self, name: str) -> float:
        """A sample from /_servefiles/metrics (start it with --metrics)."""
        text = httpx.get(f"{self.base}/_servefiles/metrics").text
        match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
        assert match, f"{name} not in metrics"
        return float(match.group(1))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class WsgiFrontend(Frontend):
    """``ServeFilesWSGI(None, **options)`` under a real gunicorn (``tests/wsgi_app.py``).

    ``args`` are extra gunicorn arguments; the default is one gthread worker with 4
    threads, so per-process metrics add up the way a single ``servefiles serve`` does.
    """

    def __init__(self, options: Mapping[str, object], *args: str, env: Mapping[str, str] | None = None) -> None:
        super().__init__(*(args or ("--workers", "1", "--worker-class", "gthread", "--threads", "4")),
                         env={**(env or {}), "SERVEFILES_TEST_WSGI": json.dumps(options)})  # fmt: skip

    def command(self) -> list[str]:
        gunicorn = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}", "--no-control-socket"]
        # gunicorn refuses header fields over 8 KiB itself (431); allow uvicorn's 16 KiB, so that
        # a Range header of thousands of ranges reaches servefiles on both servers.
        settings = ["--log-level", "warning", "--graceful-timeout", "5", "--limit-request-field_size", "16384"]
        return [*gunicorn, *settings, *self.args, "tests.wsgi_app:application"]


@contextlib.contextmanager
def running_wsgi(options: Mapping[str, object], *args: str) -> Iterator[Frontend]:
    frontend = WsgiFrontend(options, *args).start()
    try:
        yield frontend
    finally:
        frontend.stop()


@contextlib.contextmanager
def running(*args: str, env: Mapping[str, str] | None = None) -> Iterator[Frontend]:
    frontend = Frontend(*args, env=env).start()
    try:
        yield frontend
    finally:
        frontend.stop()


@contextlib.contextmanager
def serving(*args: str, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """``servefiles serve ARGS`` on a free loopback port; yields its base URL."""
    with running(*args, env=env) as frontend:
        yield frontend.base
