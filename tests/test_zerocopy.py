"""Disk-tier hits sent with ``sendfile(2)``: ``http.response.zerocopysend`` under a real uvicorn.

``servefiles serve`` wraps its app in :class:`servefiles.middleware.zerocopy.ZeroCopySend`; these
tests run that wrapper and a real uvicorn (httptools) on loopback, in an asyncio and in a
uvloop event loop (uvloop buffers the head until the end of a loop turn, asyncio writes it at
once: both orders must come out right), and read the responses with real HTTP clients.
What the app sends is recorded by a pass-through spy between the wrapper and the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvloop

from servefiles import ServeFiles, open_store, pagecache
from servefiles.http.model import field_lines
from servefiles.middleware import zerocopy
from servefiles.middleware.zerocopy import ZeroCopySend

from .asgi_servers import ASGIApp, Message, Receive, Scope, Send, uvicorn_server
from .servers import cli, running

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def run_in(loop: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(main())


class Spy:
    """Passes everything through; records the type of every message the app sends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.sent: list[str] = []
        self.offered: list[bool] = []
        self.lined: list[bool] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.offered.append(zerocopy.EXTENSION in scope.get("extensions", {}))

            async def recording(message: Message) -> None:
                self.sent.append(message["type"])
                if message["type"] == "http.response.start":
                    self.lined.append(zerocopy.HEAD_LINES in message)
                await send(message)

            zerocopy.passed_on(scope, send, recording)  # every message goes on, zerocopysend too
            await self.app(scope, receive, recording)
            return
        await self.app(scope, receive, send)


@contextlib.asynccontextmanager
async def serving(app: ASGIApp, **config: Any) -> AsyncIterator[str]:
    async with uvicorn_server(ZeroCopySend(app), **config) as base:
        yield base


async def cached_app(sqlite_url: str, cache: Path, files: dict[str, bytes]) -> ServeFiles:
    async with open_store(sqlite_url) as store:
        for key, data in files.items():
            await store.put(key, data)
    return ServeFiles(None, db=sqlite_url, cache_dir=cache)


async def until_on_disk(app: ServeFiles, client: httpx.AsyncClient, key: str) -> Path:
    """GET ``key`` until the disk tier holds it (the first miss writes it through); its cache file."""
    deadline = time.monotonic() + 10
    while (entry := app.service.disk.get(key)) is None:
        assert time.monotonic() < deadline, f"{key} never reached the disk tier"
        (await client.get(f"/media/{key}")).raise_for_status()
        await asyncio.sleep(0.05)
    return entry.path


@contextlib.contextmanager
def counting_sendfile(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Every byte count ``os.sendfile`` returned, as the wrapper called it (the call itself is real)."""
    counts: list[int] = []
    real = os.sendfile

    def spying(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        done = real(out_fd, in_fd, offset, count)
        counts.append(done)
        return done

    monkeypatch.setattr(zerocopy.os, "sendfile", spying)
    yield counts


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_disk_hit_in_the_page_cache_is_sent_by_sendfile_on_a_kept_alive_connection(
    loop: str, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {"photo.jpg": os.urandom(300_000), "video.mp4": os.urandom(3_000_000)}  # one message / over 1 MiB

    async def main() -> None:
        app = await cached_app(sqlite_url, tmp_path / "cache", files)
        spy = Spy(app)
        with counting_sendfile(monkeypatch) as counts:
            async with serving(spy) as base, httpx.AsyncClient(base_url=base) as client:
                for key in files:
                    await until_on_disk(app, client, key)
                spy.sent.clear()
                for _ in range(3):  # one connection, kept alive: each response ends where it should
                    for key, data in files.items():
                        response = await client.get(f"/media/{key}")
                        assert response.status_code == 200
                        assert response.content == data
                        assert response.headers["content-length"] == str(len(data))
                head = await client.head("/media/photo.jpg")
                assert head.status_code == 200 and head.content == b""
                assert head.headers["content-length"] == "300000"
        assert spy.offered and all(spy.offered)
        assert spy.sent[:12] == ["http.response.start", zerocopy.EXTENSION] * 6
        assert spy.sent[12:] == ["http.response.start", "http.response.body"]  # the HEAD: no file to send
        assert sum(counts) > 0  # what a full socket left over was copied; the bytes above are whole either way

    run_in(loop, main)


def test_a_cache_file_out_of_the_page_cache_is_read_not_sent_by_sendfile(sqlite_url: str, tmp_path: Path) -> None:
    """sendfile would read it on the event loop and stall every other request on the disk."""
    data = os.urandom(500_000)

    async def main() -> None:
        app = await cached_app(sqlite_url, tmp_path / "cache", {"cold.bin": data})
        spy = Spy(app)
        async with serving(spy) as base, httpx.AsyncClient(base_url=base) as client:
            path = await until_on_disk(app, client, "cold.bin")
            await asyncio.sleep(2.1)  # past the settle time on any file system: the next read marks it checked
            (await client.get("/media/cold.bin")).raise_for_status()
            hashed = app.service.metrics.value("servefiles_cache_files_hashed_total")
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)  # dirty pages cannot be dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                assert pagecache.cached(fd, 0, len(data)) is False, f"{path}'s pages stayed cached (a tmpfs?)"
            finally:
                os.close(fd)
            spy.sent.clear()
            response = await client.get("/media/cold.bin")
            assert response.content == data
            assert app.service.metrics.value("servefiles_cache_files_hashed_total") == hashed  # not read to check
        assert zerocopy.EXTENSION not in spy.sent
        assert spy.sent == ["http.response.start", "http.response.body"]

    run_in("uvloop", main)


@pytest.mark.parametrize("holds", [False, True], ids=["", "held"])
@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_what_a_full_socket_leaves_of_a_file_goes_through_the_transport(
    loop: str, holds: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that does not read yet: sendfile stops when the socket is full, the rest is
    written as body bytes (uvicorn's flow control waits), and every byte arrives in order."""
    data = os.urandom(24 * 1024 * 1024)  # more than both ends' socket buffers hold
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    app = FileApp(path, holds=holds)

    async def main() -> None:
        with counting_sendfile(monkeypatch) as counts:
            async with serving(app) as base:
                host, port = base.removeprefix("http://").split(":")
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(b"GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.5)  # the server fills the socket meanwhile
                received = await asyncio.wait_for(reader.read(), 30)
                writer.close()
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert body == data
        assert 0 < sum(counts) < len(data), counts  # some by sendfile, the rest copied

    run_in(loop, main)


async def lifespan(receive: Receive, send: Send) -> None:
    """The lifespan protocol of an app with nothing to start or stop."""
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


class FileApp:
    """A bare ASGI app that answers every GET or HEAD with ``path`` by zerocopysend, claiming
    ``length`` bytes (the file's size unless given); ``holds``: the head held for the file
    (:func:`zerocopy.hold_head`: written into a corked socket)."""

    def __init__(self, path: Path, length: int | None = None, holds: bool = False) -> None:
        self.path = path
        self.length = path.stat().st_size if length is None else length
        self.holds = holds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        assert zerocopy.EXTENSION in scope["extensions"]
        if self.holds:
            zerocopy.hold_head(scope)
        headers = [(b"content-length", str(self.length).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        with open(self.path, "rb") as file:  # noqa: ASYNC230 - a local file, opened at once
            await send({"type": zerocopy.EXTENSION, "file": file, "offset": 0, "count": self.length})


@pytest.mark.parametrize("holds", [False, True], ids=["", "held"])
@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_file_shorter_than_its_content_length_ends_the_connection_early(
    loop: str, holds: bool, tmp_path: Path
) -> None:
    """The file was cut after the app looked at it: the client gets what there was and a closed
    connection, never a hang or bytes that are not the file's."""
    data = os.urandom(200_000)
    path = tmp_path / "cut.bin"
    path.write_bytes(data)

    async def main() -> None:
        async with serving(FileApp(path, length=len(data) + 1000, holds=holds)) as base:
            host, port = base.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /cut.bin HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive asked for
            await writer.drain()
            received = await asyncio.wait_for(reader.read(), 10)  # EOF: the server closed
            writer.close()
        _, _, body = received.partition(b"\r\n\r\n")
        assert body == data

    run_in(loop, main)


@pytest.mark.parametrize("holds", [False, True], ids=["", "held"])
def test_a_head_answered_with_zerocopysend_has_no_body(tmp_path: Path, holds: bool) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(100_000))

    async def main() -> None:
        async with serving(FileApp(path, holds=holds)) as base, httpx.AsyncClient(base_url=base) as client:
            for _ in range(2):  # the connection stays usable: the response ended where it should
                head = await client.head("/f.bin")
                assert head.status_code == 200 and head.content == b""
                assert head.headers["content-length"] == "100000"
            assert (await client.get("/f.bin")).content == path.read_bytes()

    run_in("uvloop", main)


def test_h11_is_not_offered_zerocopysend(sqlite_url: str, tmp_path: Path) -> None:
    """The wrapper knows only uvicorn's httptools cycle; under h11 the app reads the file itself."""
    data = os.urandom(300_000)

    async def main() -> None:
        app = await cached_app(sqlite_url, tmp_path / "cache", {"a.bin": data})
        spy = Spy(app)
        async with serving(spy, http="h11") as base, httpx.AsyncClient(base_url=base) as client:
            await until_on_disk(app, client, "a.bin")
            assert (await client.get("/media/a.bin")).content == data
        assert spy.offered and not any(spy.offered)
        assert zerocopy.EXTENSION not in spy.sent

    run_in("uvloop", main)


@pytest.mark.parametrize("holds", [False, True], ids=["", "held"])
def test_the_client_leaving_mid_file_stops_the_send_and_the_server_goes_on(tmp_path: Path, holds: bool) -> None:
    data = os.urandom(24 * 1024 * 1024)
    path = tmp_path / "big.bin"
    path.write_bytes(data)

    async def main() -> None:
        async with serving(FileApp(path, holds=holds)) as base, httpx.AsyncClient(base_url=base) as client:
            host, port = base.removeprefix("http://").split(":")
            sock = socket.create_connection((host, int(port)))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            await asyncio.sleep(0.2)
            sock.recv(1000)
            sock.close()  # a reset, with most of the file unsent
            await asyncio.sleep(0.5)
            assert (await client.get("/big.bin")).content == data  # the server still answers

    run_in("uvloop", main)


async def raw_get(base: str, target: str, keep_alive: bool = False) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    connection = b"" if keep_alive else b"Connection: close\r\n"
    writer.write(b"GET " + target.encode() + b" HTTP/1.1\r\nHost: x\r\n" + connection + b"\r\n")
    await writer.drain()
    received = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return received


class RaisingApp:
    """Starts a response, then fails before (``raises``) or without (returning) any body; ``holds``:
    having asked for the head to wait for the body (:func:`zerocopy.hold_head`)."""

    def __init__(self, raises: bool, holds: bool = False) -> None:
        self.raises = raises
        self.holds = holds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if self.holds:
            zerocopy.hold_head(scope)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
        if self.raises:
            raise RuntimeError("the body could not be read")


@pytest.mark.parametrize("holds", [False, True], ids=["", "held"])
@pytest.mark.parametrize("raises", [True, False], ids=["raises", "returns"])
@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_response_the_app_ends_without_a_body_is_cut_as_without_the_wrapper(
    loop: str, raises: bool, holds: bool
) -> None:
    """The status line the app sent, then a closed connection (the body cut short), never a 500;
    a head held for a body that never came is written all the same."""

    async def main() -> None:
        async with serving(RaisingApp(raises, holds)) as base:
            received = await raw_get(base, "/x", keep_alive=True)
        assert received.startswith(b"HTTP/1.1 200 "), received
        assert received.endswith(b"\r\n\r\n")  # the head, then the end of the connection

    run_in(loop, main)


@pytest.mark.parametrize("holds", [False, True], ids=["", "held"])
@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_pipelined_requests_get_their_files_whole_and_in_order(loop: str, holds: bool, tmp_path: Path) -> None:
    """Three GETs in one write on one connection: uvicorn starts each after the last response
    ended, and each file's bytes, written straight to the socket, stay between their own heads."""
    files = [tmp_path / f"{n}.bin" for n in range(3)]
    for n, path in enumerate(files):
        path.write_bytes(os.urandom(150_000 + 50_000 * n))

    class ByPath(FileApp):
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                self.path = tmp_path / scope["path"].lstrip("/")
                self.length = self.path.stat().st_size
            await super().__call__(scope, receive, send)

    async def main() -> None:
        async with serving(ByPath(files[0], holds=holds)) as base:
            host, port = base.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"".join(b"GET /%d.bin HTTP/1.1\r\nHost: x\r\n\r\n" % n for n in range(3)))
            await writer.drain()
            for path in files:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                assert head.startswith(b"HTTP/1.1 200 ")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                assert await asyncio.wait_for(reader.readexactly(length), 10) == path.read_bytes()
            writer.close()

    run_in(loop, main)


def pattern(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


class HoldingApp:
    """Answers a GET or HEAD of ``/N`` with N bytes (HEAD: none), its head held for the body
    (:func:`zerocopy.hold_head`); ``/304`` with a 304. ``lingers``: seconds the app goes on after
    its response (clean-up, a background task)."""

    def __init__(self, lingers: float = 0) -> None:
        self.lingers = lingers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        name = scope["path"].lstrip("/")
        status, size = (304, 0) if name == "304" else (200, int(name))
        body = pattern(size)
        zerocopy.hold_head(scope)
        headers = [(b"etag", b'"x"')] if status == 304 else [(b"content-length", str(size).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
        await asyncio.sleep(self.lingers)


@pytest.mark.parametrize("lingers", [0, 0.2], ids=["returns", "lingers"])
@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_held_heads_go_out_whole_and_in_order(loop: str, lingers: float) -> None:
    """GETs, a HEAD, a 304 and an empty 200, pipelined on one connection: each response whole, in
    the order asked, also when the app goes on after each response (uvicorn starts the next
    pipelined request once a response is complete: a HEAD's head, for which uvicorn writes no body,
    is not held, or the next response would overtake it)."""
    asked = [("GET", "3000"), ("HEAD", "5000"), ("GET", "304"), ("GET", "0"), ("GET", "200000"), ("GET", "10")]

    async def main() -> None:
        async with serving(HoldingApp(lingers)) as base:
            host, port = base.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"".join(f"{method} /{name} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for method, name in asked))
            await writer.drain()
            for method, name in asked:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                assert head.startswith(b"HTTP/1.1 304 " if name == "304" else b"HTTP/1.1 200 "), (method, name, head)
                if method == "GET" and name != "304":
                    size = int(name)
                    assert f"content-length: {size}\r\n".encode() in head.lower()
                    body = await asyncio.wait_for(reader.readexactly(size), 10)
                    assert body == pattern(size)
            writer.write(b"GET /7 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")  # still in step
            rest = await asyncio.wait_for(reader.read(), 10)
            writer.close()
        assert rest.startswith(b"HTTP/1.1 200 ") and rest.endswith(b"\r\n\r\n" + pattern(7))

    run_in(loop, main)


@pytest.mark.parametrize("encoding", ["gzip", "identity"])
def test_a_middleware_that_may_not_pass_zerocopysend_on_gets_bytes(
    sqlite_url: str, tmp_path: Path, encoding: str
) -> None:
    """Starlette's gzip middleware between the wrapper and ServeFiles wraps send and knows nothing
    of zerocopysend: ServeFiles must not hand it a file (dropped, the client got a 500 or a short
    body), but read it, as without the wrapper."""
    from starlette.middleware.gzip import GZipMiddleware

    data = os.urandom(100_000)

    async def main() -> None:
        app = await cached_app(sqlite_url, tmp_path / "cache", {"doc.bin": data})
        spy = Spy(app)
        async with serving(GZipMiddleware(spy, minimum_size=10)) as base, httpx.AsyncClient(base_url=base) as client:
            await until_on_disk(app, client, "doc.bin")
            spy.sent.clear()
            for _ in range(2):
                response = await client.get("/media/doc.bin", headers={"accept-encoding": encoding})
                assert response.status_code == 200 and response.content == data
        assert spy.offered and all(spy.offered)  # offered in the scope, but not through this send
        assert zerocopy.EXTENSION not in spy.sent, spy.sent

    run_in("uvloop", main)


def loop_writes(pid: int) -> int:
    """The write system calls (write, writev, sendfile) the main thread of process ``pid``, its event
    loop's, has made so far: ``syscw`` of its /proc io file."""
    text = Path(f"/proc/{pid}/task/{pid}/io").read_text()
    found = re.search(r"^syscw: (\d+)$", text, re.MULTILINE)
    assert found, text
    return int(found.group(1))


def test_servefiles_serve_writes_a_cached_files_head_and_body_in_one_system_call(
    sqlite_url: str, tmp_path: Path
) -> None:
    """uvicorn writes a head at ``http.response.start`` and a body at ``http.response.body``: two
    writes, two TCP segments, two wake-ups of the client. ``servefiles serve`` holds the head of a
    cached file's GET for its body (one ``writev``); a HEAD and a 304, which have no body, cost one
    write each as before. Counted on the real server's loop thread, over one kept-alive connection."""
    data = os.urandom(10_000)
    source = tmp_path / "a.png"
    source.write_bytes(data)
    assert cli("put", "--db", sqlite_url, str(source), "a.png").returncode == 0
    requests = 20
    cache = str(tmp_path / "cache")
    with running("--db", sqlite_url, "--cache-dir", cache) as frontend, httpx.Client(base_url=frontend.base) as client:
        assert frontend.proc is not None
        pid = frontend.proc.pid
        etag = ""
        for _ in range(3):  # a miss, then memory hits
            response = client.get("/media/a.png")
            assert response.status_code == 200 and response.content == data
            etag = response.headers["etag"]
        writes = {}
        for name, method, headers in [
            ("GET", "GET", {}),
            ("HEAD", "HEAD", {}),
            ("304", "GET", {"if-none-match": etag}),
        ]:
            before = loop_writes(pid)
            for _ in range(requests):
                response = client.request(method, "/media/a.png", headers=headers)
                assert response.status_code == (304 if name == "304" else 200)
                assert response.content == (data if name == "GET" else b"")
            writes[name] = loop_writes(pid) - before
    assert writes == {"GET": requests, "HEAD": requests, "304": requests}


def segments_in(sock: socket.socket) -> tuple[int, int]:
    """(TCP segments ``sock`` has received, its receive MSS): ``tcpi_segs_in`` and ``tcpi_rcv_mss``
    of Linux's ``struct tcp_info`` (offsets 140 and 20, an append-only kernel ABI)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return struct.unpack_from("I", info, 140)[0], struct.unpack_from("I", info, 20)[0]


def test_servefiles_serve_sends_a_heads_in_the_tcp_segment_of_its_bodys_first_bytes(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Counted by the client's kernel: a 10 KB memory hit arrives in one segment (head and body
    written together), and a 400 KB disk hit sent by sendfile in as few segments as its head and
    bytes fill (the head written into a corked socket), not one more for a head alone."""
    files = {"a.png": os.urandom(10_000), "b.jpg": os.urandom(400_000)}
    for key, data in files.items():
        (tmp_path / key).write_bytes(data)
        assert cli("put", "--db", sqlite_url, str(tmp_path / key), key).returncode == 0
    with running("--db", sqlite_url, "--cache-dir", str(tmp_path / "cache")) as frontend:
        sock = socket.create_connection(("127.0.0.1", frontend.port))
        try:
            counts: dict[str, list[int]] = {key: [] for key in files}
            heads: dict[str, int] = {}
            mss = 0
            for round_ in range(8):  # the first two: a miss and the copy's first read, not counted
                for key, data in files.items():
                    before, _ = segments_in(sock)
                    sock.sendall(f"GET /media/{key} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                    received = b""
                    while b"\r\n\r\n" not in received:
                        received += sock.recv(1 << 20)
                    head, _, body = received.partition(b"\r\n\r\n")
                    while len(body) < len(data):
                        body += sock.recv(1 << 20)
                    assert head.startswith(b"HTTP/1.1 200 ") and body == data
                    time.sleep(0.05)  # every segment of the response is in
                    after, mss = segments_in(sock)
                    heads[key] = len(head) + 4
                    if round_ >= 2:
                        counts[key].append(after - before)
        finally:
            sock.close()
    assert min(counts["a.png"]) == 1, counts
    fewest = -(-(heads["b.jpg"] + len(files["b.jpg"])) // mss)  # what the head and the bytes fill
    assert fewest <= min(counts["b.jpg"]) < 1 + -(-len(files["b.jpg"]) // mss), (counts, mss)


# -- heads written from field lines rendered once (zerocopy.HEAD_LINES) ---------------------------

LINED_HEADERS = [(b"Content-Type", b"text/plain"), (b"ETag", b'"v1"'), (b"x-tabbed", b"a\tb"), (b"X-Empty", b"")]
"""Mixed-case names (uvicorn lower-cases them), a tab inside a value, an empty value."""


class LinesApp:
    """Answers ``/200`` (a 5-byte body), ``/304`` and ``/204`` with :data:`LINED_HEADERS`; with the
    query ``lines``, the start message also carries them as field lines (:data:`zerocopy.HEAD_LINES`).
    With ``refused`` its headers hold a value uvicorn refuses while its lines are valid: which of
    the two wrote the head shows then (uvicorn's path fails the response with a 500)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        status = int(scope["path"].lstrip("/"))
        headers = list(LINED_HEADERS)
        if status == 200:
            headers.append((b"Content-Length", b"5"))
        lines = field_lines(headers)
        assert lines is not None
        query = scope["query_string"].decode().split("&")
        if "refused" in query:
            headers.append((b"x-refused", b"new\nline"))
        message: Message = {"type": "http.response.start", "status": status, "headers": headers}
        if "lines" in query:
            message[zerocopy.HEAD_LINES] = (lines, 5 if status == 200 else None)
        await send(message)
        await send({"type": "http.response.body", "body": b"hello" if status == 200 else b""})


async def exchange(base: str, requests: list[bytes]) -> list[tuple[bytes, bytes]]:
    """Each request on one connection in turn: (its response's head, its body), read by the
    head's Content-Length; the last request should close the connection (its body: to the end)."""
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    answers = []
    try:
        for number, request in enumerate(requests, 1):
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            if number == len(requests):
                body = await asyncio.wait_for(reader.read(), 10)
            else:
                length = re.search(rb"\r\ncontent-length: (\d+)\r\n", head)
                head_only = request.startswith(b"HEAD ") or not length
                body = b"" if head_only else await reader.readexactly(int(length.group(1)))  # type: ignore[union-attr]
            answers.append((head, body))
    finally:
        writer.close()
    return answers


def request_of(method: str, target: str, headers: dict[str, str]) -> bytes:
    fields = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"{method} {target} HTTP/1.1\r\nHost: x\r\n{fields}\r\n".encode()


def undated(head: bytes) -> bytes:
    return re.sub(rb"\r\ndate: [^\r]*", b"", head)


@pytest.mark.parametrize("date_header", [False, True], ids=["", "uvicorn-dates"])
@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_head_written_from_field_lines_is_the_one_uvicorn_writes_from_the_headers(
    loop: str, date_header: bool
) -> None:
    """GET and HEAD of a 200, a 304 and a 204, each asked with and without field lines on one
    kept-alive connection: the same head byte for byte (uvicorn's default headers, its date too
    when it adds one, then the app's, lower-cased), the same body, and the connection goes on."""
    asked = [("GET", "200"), ("HEAD", "200"), ("GET", "304"), ("GET", "204")]

    async def main() -> None:
        requests = [f"{method} /{status}{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                    for method, status in asked for query in ("", "?lines")]  # fmt: skip
        async with serving(LinesApp(), date_header=date_header, access_log=False) as base:
            answers = await exchange(base, [*requests, b"GET /200 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"])
        for (method, status), plain, lined in zip(asked, answers[0::2], answers[1::2], strict=False):
            assert plain[0].startswith(f"HTTP/1.1 {status} ".encode()), plain
            assert undated(lined[0]) == undated(plain[0]) and lined[1] == plain[1], (method, status, plain, lined)
            assert (b"\r\ndate: " in lined[0]) is date_header
            assert b'\r\nserver: uvicorn\r\ncontent-type: text/plain\r\netag: "v1"\r\nx-tabbed: a\tb\r\n' in lined[0]
            assert lined[1] == (b"hello" if (method, status) == ("GET", "200") else b"")

    run_in(loop, main)


@pytest.mark.parametrize(
    ("request_line", "extra", "lined"),
    [
        ("GET /200?lines&refused HTTP/1.1", "", True),
        ("GET /304?lines&refused HTTP/1.1", "", True),
        ("GET /200?lines&refused HTTP/1.1", "Connection: close\r\n", False),  # uvicorn adds connection: close
        ("GET /200?lines&refused HTTP/1.0", "", False),  # not kept alive
        ("GET /200?refused HTTP/1.1", "", False),
    ],
    ids=["200", "304", "connection-close", "http-1.0", "no-lines"],
)
def test_field_lines_are_written_only_where_uvicorn_would_write_nothing_else(
    request_line: str, extra: str, lined: bool
) -> None:
    """Where the head is written from the lines, the headers (here: refused by uvicorn) are not
    looked at; where uvicorn's head would differ (a connection to close) or no lines came, uvicorn
    writes it from the headers, and refuses the bad one as it always does (it cuts the connection:
    the response had started)."""

    async def main() -> None:
        async with serving(LinesApp(), access_log=False) as base:
            host, port = base.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(f"{request_line}\r\nHost: x\r\n{extra}\r\n".encode())
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            except asyncio.IncompleteReadError as exc:
                head = exc.partial
            writer.close()
        if lined:
            assert head.startswith((b"HTTP/1.1 200 ", b"HTTP/1.1 304 ")) and b"x-refused" not in head, head
        else:
            assert head == b"", head

    run_in("uvloop", main)


def test_an_access_log_line_is_written_by_uvicorn_as_before(caplog: pytest.LogCaptureFixture) -> None:
    """uvicorn's own access log (``servefiles serve`` turns it off; an app's uvicorn may not): the
    head is then uvicorn's to write, and the line is logged."""

    async def main() -> None:
        async with serving(LinesApp(), access_log=True, log_level="info", log_config=None) as base:
            host, port = base.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /200?lines&refused HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await asyncio.wait_for(reader.read(), 10) == b""  # uvicorn refused the header
            writer.close()

    with caplog.at_level("INFO", logger="uvicorn.access"):
        run_in("uvloop", main)
    assert any("/200?lines&refused" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("byte", [*range(0x20), 0x7F])
def test_field_lines_refuse_a_control_character_in_a_value_or_a_name(byte: int) -> None:
    """RFC 9110 §5.5: no control character but HTAB in a field value; §5.1: a name is a token.
    A header that would split or corrupt the head is never rendered (the server refuses it)."""
    char = bytes([byte])
    assert (field_lines([(b"x", b"a" + char + b"b")]) is None) is (byte != 0x09)
    assert field_lines([(b"x" + char, b"v")]) is None
    assert field_lines([(b"x-1", b"v"), (b"a b", b"v")]) is None
    assert field_lines([(b"", b"v")]) is None


def test_field_lines_are_what_uvicorn_would_write() -> None:
    from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE

    headers = [(b"Content-Type", b"image/png"), (b"x-custom", b"\x80\xff latin-1"), (b"a!#$%&'*+-.^_`|~9", b"")]
    expected = b"".join(name.lower() + b": " + value + b"\r\n" for name, value in headers)
    assert field_lines(headers) == expected
    assert not any(HEADER_RE.search(name) or HEADER_VALUE_RE.search(value) for name, value in headers)


def test_servefiles_heads_from_field_lines_are_the_heads_uvicorn_writes(sqlite_url: str, tmp_path: Path) -> None:
    """:class:`ServeFiles` under the wrapper and under uvicorn alone, one store: the same heads
    (but the date) for a miss, a memory hit, a HEAD, a 304 and a range, and the wrapper's were
    written from field lines for a file's 200 and 304 as prepared (not for the 206, whose headers
    are the range's)."""
    data = os.urandom(3000)
    asked: list[tuple[str, dict[str, str]]] = [("GET", {}), ("GET", {}), ("HEAD", {}), ("GET", {"range": "bytes=0-9"})]

    async def main() -> None:
        wrapped, plain = (await cached_app(sqlite_url, tmp_path / "c1", {"a.png": data}),
                          ServeFiles(None, db=sqlite_url, cache_dir=tmp_path / "c2"))  # fmt: skip
        spy = Spy(wrapped)
        heads: list[list[bytes]] = []
        async with serving(spy, access_log=False) as lined, uvicorn_server(plain, access_log=False) as unlined:
            for base in (lined, unlined):
                async with httpx.AsyncClient(base_url=base) as client:
                    etag = (await client.get("/media/a.png")).headers["etag"]
                requests = [*asked, ("GET", {"if-none-match": etag})]
                raw = [request_of(method, "/media/a.png", headers) for method, headers in requests]
                closing = request_of("GET", "/media/a.png", {"connection": "close"})
                answers = await exchange(base, [*raw, closing])
                heads.append([undated(head) for head, _ in answers])
                assert [body for _, body in answers] == [data, data, b"", data[:10], b"", data]
        assert heads[0] == heads[1]
        assert [head[:12] for head in heads[0]] == [b"HTTP/1.1 200", b"HTTP/1.1 200", b"HTTP/1.1 200", b"HTTP/1.1 206",
                                                   b"HTTP/1.1 304", b"HTTP/1.1 200"]  # fmt: skip
        # The first GET (through httpx) and the six above; the closing one is uvicorn's (connection: close),
        # but it came with lines all the same.
        assert spy.lined == [True, True, True, True, False, True, True], spy.lined

    run_in("uvloop", main)
