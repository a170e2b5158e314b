"""What one request may carry, on a real ``servefiles serve``: header field lines, the whole
header block, the number of fields (431) and the request-target (414), under both HTTP
implementations uvicorn may run (h11, and httptools when it is installed), whether the head
arrives in one read or in many.

Requests are written byte for byte on a socket: no client library trims or refuses them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from servefiles.middleware.limits import RequestLimits

from .servers import Frontend, cli

HEALTH = b"/_servefiles/health"
IMPLEMENTATIONS = {"h11": "H11Protocol", "httptools": "HttpToolsProtocol"}


def implementation_env(name: str, tmp_path: Path) -> dict[str, str]:
    """The environment under which uvicorn's automatic choice is ``name``: for h11, a stand-in
    ``httptools`` that fails to import comes first on the path (uvicorn then falls back to h11)."""
    if name == "httptools":
        pytest.importorskip("httptools")
        return {}
    shim = tmp_path / "no-httptools"
    (shim / "httptools").mkdir(parents=True)
    (shim / "httptools" / "__init__.py").write_text("raise ImportError('httptools is hidden for this test')\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")]))}


def chosen_implementation(env: Mapping[str, str]) -> str:
    probe = "from uvicorn.protocols.http.auto import AutoHTTPProtocol as a; print(a.__name__)"
    done = subprocess.run([sys.executable, "-c", probe], env={**os.environ, **env}, capture_output=True, text=True)
    return done.stdout.strip()


@contextlib.contextmanager
def serve(
    impl: str, tmp_path: Path, sqlite_url: str, *args: str, env: Mapping[str, str] | None = None
) -> Iterator[int]:
    environment = {**implementation_env(impl, tmp_path), **(env or {})}
    assert chosen_implementation(environment) == IMPLEMENTATIONS[impl]
    frontend = Frontend("--db", sqlite_url, "--cache-dir", str(tmp_path / "cache"), *args, env=environment).start()
    try:
        yield frontend.port
    finally:
        frontend.stop()
    assert "Traceback" not in frontend.output(), frontend.output()


def exchange(port: int, head: bytes, pieces: int = 1) -> tuple[int, dict[str, str], bytes]:
    """Send a request head (in ``pieces`` writes, 20 ms apart), read the response to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        size = -(-len(head) // pieces)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused mid-head: read the answer
            for start in range(0, len(head), size):
                sock.sendall(head[start : start + size])
                if pieces > 1:
                    time.sleep(0.02)
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                data += chunk
    response_head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = response_head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split(b" ")[1]), headers, body


def request(target: bytes = HEALTH, fields: Sequence[tuple[bytes, bytes]] = (), method: bytes = b"GET") -> bytes:
    """A request head with Host and Connection: close (2 fields, 37 bytes of field lines)."""
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name + b": " + value for name, value in fields]
    return b"\r\n".join([*lines, b"", b""])


# The two fields request() always sends, as field lines with CRLF: what a limit must leave room for.
BASE_FIELDS = 2
BASE_BLOCK = len(b"Host: 127.0.0.1\r\n") + len(b"Connection: close\r\n")


def refused(status: int, headers: dict[str, str], expected: int) -> None:
    assert status == expected
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store"
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["date"].endswith(" GMT")  # uvicorn's own Date is off under servefiles serve: ours is there


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_the_default_limits_hold_under_both_http_implementations(impl: str, tmp_path: Path, sqlite_url: str) -> None:
    with serve(impl, tmp_path, sqlite_url) as port:
        assert exchange(port, request())[0] == 200
        # One 64 KiB field in one write (which h11 parses whatever its size), and a 20 KiB one in
        # many (more than h11's own 16 KiB default for an incomplete head, less than the limits').
        refused(*exchange(port, request(fields=[(b"X-Big", b"a" * 65536)]))[:2], 431)
        refused(*exchange(port, request(fields=[(b"X-Big", b"a" * 20480)]), 8)[:2], 431)
        # Past what the limits allow in all, h11 stops buffering an incomplete head (its own 400).
        slow = exchange(port, request(fields=[(b"X-Big", b"a" * 65536)]), 8)
        assert slow[0] == (400 if impl == "h11" else 431)
        # A field line of exactly 8 KiB passes; one byte more does not.
        at_limit = b"x" * (8192 - len(b"X-Line: "))
        assert exchange(port, request(fields=[(b"X-Line", at_limit)]))[0] == 200
        refused(*exchange(port, request(fields=[(b"X-Line", at_limit + b"x")]))[:2], 431)
        # Field lines under 8 KiB each, 32 KiB in all: one byte more is too much.
        value = b"v" * (8192 - len(b"X-0: "))
        block = [(b"X-%d" % i, value) for i in range(3)]
        rest = 32 * 1024 - BASE_BLOCK - 3 * (8192 + 2) - len(b"X-9: \r\n")
        assert exchange(port, request(fields=[*block, (b"X-9", b"r" * rest)]), 4)[0] == 200
        refused(*exchange(port, request(fields=[*block, (b"X-9", b"r" * (rest + 1))]), 4)[:2], 431)
        # 100 fields pass, 101 do not, however small.
        small = [(b"X-F%d" % i, b"1") for i in range(100 - BASE_FIELDS)]
        assert exchange(port, request(fields=small))[0] == 200
        refused(*exchange(port, request(fields=[*small, (b"X-One-More", b"1")]))[:2], 431)
        # A request-target of 8 KiB passes (a 404: no such file), one byte more is 414, query included.
        path = b"/media/" + b"p" * (8192 - len(b"/media/"))
        assert exchange(port, request(path))[0] == 404
        refused(*exchange(port, request(path + b"p"))[:2], 414)
        refused(*exchange(port, request(b"/media/a.png?" + b"q" * 8192))[:2], 414)
        # HEAD: the same refusal, no body.
        status, headers, body = exchange(port, request(fields=[(b"X-Big", b"a" * 65536)], method=b"HEAD"))
        assert (status, body, headers["x-content-type-options"]) == (431, b"", "nosniff")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_the_limits_can_be_raised_by_option_and_environment(impl: str, tmp_path: Path, sqlite_url: str) -> None:
    env = {"SERVEFILES_MAX_HEADER_LINE": "80KiB", "SERVEFILES_MAX_HEADER_COUNT": "300"}
    with serve(impl, tmp_path, sqlite_url, "--max-header-size", "96KiB", "--max-url-size", "16KiB", env=env) as port:
        for pieces in (1, 8):
            assert exchange(port, request(fields=[(b"X-Big", b"a" * 65536)]), pieces)[0] == 200
        assert exchange(port, request(fields=[(b"X-F%d" % i, b"1") for i in range(250)]))[0] == 200
        assert exchange(port, request(b"/media/" + b"p" * 12000))[0] == 404
        refused(*exchange(port, request(fields=[(b"X-Big", b"a" * 90000)]))[:2], 431)


def test_a_limit_of_nothing_is_refused_in_one_line() -> None:
    for option, value in (("--max-header-line", "0"), ("--max-url-size", "0"), ("--max-header-count", "0"),
                          ("--max-header-size", "lots")):  # fmt: skip
        done = cli("serve", option, value)
        assert done.returncode != 0
        assert b"Traceback" not in done.stderr and option.encode() in done.stderr


@pytest.mark.parametrize(
    ("target", "fields", "status"),
    [
        (b"/" * 8192, [], None),
        (b"/" * 8193, [], 414),
        (b"/", [(b"n", b"v" * (8192 - 3))], None),
        (b"/", [(b"n", b"v" * (8192 - 2))], 431),
        (b"/", [(b"n", b"")] * 100, None),
        (b"/", [(b"n", b"")] * 101, 431),
        (b"/", [(b"n", b"v" * 8000)] * 4, None),
        (b"/", [(b"n", b"v" * 8000)] * 4 + [(b"n", b"v" * 1000)], 431),
    ],
)
def test_request_limits_refuse_exactly_past_each_bound(
    target: bytes, fields: list[tuple[bytes, bytes]], status: int | None
) -> None:
    refusal = RequestLimits().refusal(target, fields)
    assert (refusal.status if refusal else None) == status
    if refusal is not None:
        assert (b"x-content-type-options", b"nosniff") in refusal.headers


@pytest.mark.parametrize("name", ["max_field_line", "max_header_block", "max_fields", "max_target"])
@pytest.mark.parametrize("value", [0, -1, True, 1.5])
def test_request_limits_must_be_positive_integers(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=name):
        RequestLimits(**{name: value})  # type: ignore[arg-type]
