"""Run real servefiles processes for tests: the CLI, and ``servefiles serve`` on a free port."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping

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
def serving(*args: str, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """``servefiles serve ARGS`` on a free loopback port; yields its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "servefiles", "serve", "--port", str(port), "--log-level", "warning", *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                output = proc.stdout.read().decode() if proc.stdout else ""
                raise RuntimeError(f"servefiles serve exited with {proc.returncode}: {output}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("servefiles serve did not start listening")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
