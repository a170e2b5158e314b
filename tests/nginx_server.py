"""A real nginx on a loopback port, configured with what ``servefiles nginx-config`` prints.

Debian's nginx-light; ``scripts/install-nginx`` installs it when it is missing (the
fixtures call it). With CI=true a missing nginx fails the run instead of skipping.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .installs import install_once
from .servers import cli, free_port

START_TIMEOUT = 15.0


def _found() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def nginx_binary() -> str:
    """The nginx executable, installed by the project's script when missing."""
    install_once("install-nginx", lambda: _found() is not None, timeout=600)
    found = _found()
    if found is None:
        message = "nginx is not installed and scripts/install-nginx could not install it"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def nginx_conf(workdir: Path, server_block: str) -> str:
    """A whole nginx.conf around a server block, with every path inside ``workdir``."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # pytest's tmp dirs are private to their owner
    temp = {name: workdir / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(exist_ok=True)
    return f"""{user}daemon off;
worker_processes 1;
pid {workdir / "nginx.pid"};
error_log {workdir / "error.log"} warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
{server_block}
}}
"""


class Nginx:
    """nginx in the foreground with a config of its own; ``stop()`` sends SIGQUIT."""

    def __init__(self, workdir: Path, server_block: str) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(nginx_conf(workdir, server_block))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, port: int) -> Nginx:
        binary = nginx_binary()
        check = subprocess.run([binary, "-t", "-p", str(self.workdir), "-c", str(self.conf)], capture_output=True)
        assert check.returncode == 0, check.stderr.decode(errors="replace")
        self.proc = subprocess.Popen([binary, "-p", str(self.workdir), "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.proc.poll() is None, f"nginx exited: {self.errors()}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return self
            assert time.monotonic() < deadline, "nginx did not start listening"
            time.sleep(0.05)

    def errors(self) -> str:
        log = self.workdir / "error.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(3)  # SIGQUIT: graceful
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def server_block(mode: str, upstream_port: int, listen_port: int, cache_dir: Path, publish_dir: Path,
                 extra: tuple[str, ...] = ()) -> str:  # fmt: skip
    """What ``servefiles nginx-config`` prints for these settings (the command itself runs)."""
    done = cli("nginx-config", "--mode", mode, "--upstream", f"127.0.0.1:{upstream_port}",
               "--listen", f"127.0.0.1:{listen_port}", "--cache-dir", str(cache_dir),
               "--publish-dir", str(publish_dir), *extra)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout.decode()


@contextlib.contextmanager
def running_nginx(workdir: Path, block: str, port: int) -> Iterator[Nginx]:
    nginx = Nginx(workdir, block).start(port)
    try:
        yield nginx
    finally:
        nginx.stop()


__all__ = ["Nginx", "free_port", "nginx_binary", "running_nginx", "server_block"]
