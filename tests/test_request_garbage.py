"""A request served leaves no reference cycle behind: its objects are freed when it ends.

Garbage that only the cycle collector can free costs a server twice: the collector runs more
often (every 700 net container allocations by default) and each run traverses what survived
earlier runs. ``ZeroCopySend`` once kept its ``send`` in the request's scope; the send holds
uvicorn's request-response cycle and the cycle holds the scope, so every request under
``servefiles serve`` left a cycle of about ten objects, freed only by the collector: a memory hit
cost 50.5 µs of CPU under uvicorn instead of 43-47, on the benchmark machine, with the collector
untuned (benchmarks/RESULTS.md, 2026-12-01 night). These tests run the app
exactly as ``servefiles serve`` composes it (:func:`servefiles.cli.serve.served_app`) under a real
uvicorn on loopback, with the collector off, and count what ``gc.collect()`` then finds.
The client is a plain socket on a thread, so that it makes no garbage of its own.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import io
import logging
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import uvloop

from servefiles import ServeFiles, ServeFilesWSGI, ZeroCopySend, logs, open_store
from servefiles.cli.serve import served_app
from servefiles.middleware.limits import RequestLimits
from servefiles.middleware.wiring import Mount

from .asgi_servers import http_request, uvicorn_server

REPEATS = 60
"""Requests of each kind in the counted batch: a cycle per request would show as at least this many objects."""


def fetch_all(port: int, requests: Sequence[bytes]) -> list[int]:
    """Send each request on one kept-alive connection and read its whole response; the statuses."""
    statuses = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        reader = conn.makefile("rb")
        for request in requests:
            conn.sendall(request)
            status = int(reader.readline().split()[1])
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                assert name != b"transfer-encoding", "a chunked response: this client reads Content-Length only"
                if name == b"content-length":
                    length = int(value)
            head = request.startswith(b"HEAD ")
            if not head and status != 304:
                assert len(reader.read(length)) == length
            statuses.append(status)
    return statuses


def get(path: str, *headers: str, method: str = "GET") -> bytes:
    """The bytes of an HTTP/1.1 request for ``path`` with these header lines."""
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *headers, "", ""]
    return "\r\n".join(lines).encode()


@dataclass
class Unreachable:
    """What the collector found once turned back on: how many objects, and the commonest types."""

    count: int = 0
    kinds: list[tuple[str, int]] = field(default_factory=list)


@contextmanager
def collector_off() -> Iterator[Unreachable]:
    """The collector off for the block; on exit, the unreachable objects it left (``gc.DEBUG_SAVEALL``
    keeps them in ``gc.garbage`` long enough to name their types)."""
    found = Unreachable()
    gc.collect()
    gc.disable()
    try:
        yield found
    finally:
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            found.count = gc.collect()
            found.kinds = collections.Counter(type(obj).__qualname__ for obj in gc.garbage).most_common(8)
            gc.garbage.clear()
        finally:
            gc.set_debug(0)
            gc.enable()


@pytest.mark.parametrize(
    ("nginx", "access_log"),
    [(None, False), (None, True), ("accel", False), ("tree", False)],
    ids=["plain", "access-log", "accel", "tree"],
)
def test_requests_of_every_kind_leave_no_cycle_for_the_collector(
    sqlite_url: str, tmp_path: Path, nginx: Literal["accel", "tree"] | None, access_log: bool
) -> None:
    leaves_no_cycle(sqlite_url, tmp_path, nginx, access_log)


def test_requests_on_postgresql_leave_no_cycle_for_the_collector(pg_url: str, tmp_path: Path) -> None:
    """The misses' store reads through asyncpg (a miss's query, a fill's write behind it) too."""
    leaves_no_cycle(pg_url, tmp_path, None, False)


def leaves_no_cycle(url: str, tmp_path: Path, nginx: Literal["accel", "tree"] | None, access_log: bool) -> None:
    """Every kind of request :data:`REPEATS` times, then a miss of each of :data:`REPEATS` files,
    through ``servefiles serve``'s app under uvicorn on ``url``'s store: fewer unreachable objects
    than :data:`REPEATS` afterwards."""
    small, photo = os.urandom(2_000), os.urandom(300_000)  # a memory hit; a disk hit sent by sendfile
    fresh = {f"new/{n}.bin": os.urandom(3_000) for n in range(REPEATS)}  # each asked once: a miss

    async def main() -> None:
        async with open_store(url) as store:
            await store.put("small.txt", small)
            await store.put("photo.jpg", photo)
            for key, data in fresh.items():
                await store.put(key, data)
        app = ServeFiles(
            None,
            db=url,
            cache_dir=tmp_path / "cache",
            date_header=True,
            nginx=nginx,
            publish_dir=tmp_path / "published",
        )
        served = served_app(app, RequestLimits(), access_log)
        async with uvicorn_server(served, http="httptools") as base, access_lines(access_log) as logged:
            port = int(base.rsplit(":", 1)[1])
            kinds = [
                get("/media/small.txt"),  # a memory hit
                get("/media/photo.jpg"),  # a disk hit: by sendfile once in the page cache, or an X-Accel-Redirect
                get("/media/photo.jpg", "Range: bytes=10-20000"),  # a range, streamed
                get("/media/photo.jpg", method="HEAD"),
                get("/media/nothing-here.txt"),  # a 404
                get("/media/..%2fetc/passwd"),  # a refused key
            ]
            await asyncio.to_thread(fetch_all, port, kinds)
            await settled(app)  # the photo's fill landed (and, in tree mode, was published)
            warm = await asyncio.to_thread(fetch_all, port, kinds * 2)
            ranged = 200 if nginx == "tree" else 206  # in tree mode nginx answers ranges of a published file
            assert warm[-6:] == [200, 200, ranged, 200, 404, 404]
            etag = (await http_request(base, "HEAD", b"/media/small.txt")).header("etag")
            tagged = get("/media/small.txt", f"If-None-Match: {etag}")
            batch = [*kinds, tagged] * REPEATS + [get(f"/media/{key}") for key in fresh]
            misses = app.service.metrics.value("servefiles_misses_total")
            with collector_off() as found:
                statuses = await asyncio.to_thread(fetch_all, port, batch)
                await settled(app)  # the misses' writes behind their replies
            assert statuses.count(304) == REPEATS
            if nginx != "tree":
                assert statuses.count(206) == REPEATS
            assert statuses[-len(fresh) :] == [200] * len(fresh)
            assert app.service.metrics.value("servefiles_misses_total") - misses >= len(fresh)
            # The wrapper offered zerocopysend all along (else the sendfile path went untested).
            assert isinstance(served, ZeroCopySend) and served._cycle is not None
        if access_log:
            assert len(logged.getvalue().splitlines()) >= len(batch)  # each request's line was written
        # One-off objects may leave a few; a cycle per request would leave thousands here.
        assert found.count < REPEATS, f"{found.count} unreachable objects after {len(batch)} requests: {found.kinds}"

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


async def settled(app: ServeFiles | Mount) -> None:
    """Until no fill or write behind a reply is under way, nor (nginx modes) a publish; AssertionError
    after 10 s. On the mount's own loop: a write behind a reply is one callback there, so between two
    of its turns none is half done."""
    mount = app.mount if isinstance(app, ServeFiles) else app
    deadline = time.monotonic() + 10
    filler = mount.service.runtime.filler
    while filler is not None and filler.in_flight:
        assert time.monotonic() < deadline, f"{filler.in_flight} fills still under way after 10 s"
        await asyncio.sleep(0.01)
    if mount.accel is not None:
        await mount.accel.settle()


@asynccontextmanager
async def access_lines(on: bool) -> AsyncIterator[io.StringIO]:
    """With ``on``, the access log's lines, formatted as ``servefiles serve --log-format json`` writes
    them, into the yielded buffer (the logger at INFO meanwhile), so each request runs the whole path."""
    buffer = io.StringIO()
    if not on:
        yield buffer
        return
    logger = logging.getLogger(logs.ACCESS_LOGGER)
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logs.JsonFormatter())
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield buffer
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_wsgi_requests_of_every_kind_leave_no_cycle_for_the_collector(sqlite_url: str, tmp_path: Path) -> None:
    """The same for the WSGI adapter, called as a WSGI server calls it (on this thread: the
    server's own objects are not counted)."""
    small, photo = os.urandom(2_000), os.urandom(300_000)
    fresh = {f"new/{n}.bin": os.urandom(3_000) for n in range(REPEATS)}

    async def stored() -> None:
        async with open_store(sqlite_url) as store:
            for key, data in {"small.txt": small, "photo.jpg": photo, **fresh}.items():
                await store.put(key, data)

    asyncio.run(stored())
    files = ServeFilesWSGI(None, sqlite_url, "/media", tmp_path / "cache")
    try:
        ranged = {"HTTP_RANGE": "bytes=10-20000"}
        kinds = [("/media/small.txt", {}), ("/media/photo.jpg", {}), ("/media/photo.jpg", ranged),
                 ("/media/nothing-here.txt", {}), ("/media/..%2fetc/passwd", {})]  # fmt: skip
        assert [wsgi_get(files, path, extra)[0] for path, extra in kinds * 3][-5:] == [200, 200, 206, 404, 404]
        etag = {name.lower(): value for name, value in wsgi_get(files, "/media/small.txt", {})[1].items()}["etag"]
        kinds += [("/media/small.txt", {"HTTP_IF_NONE_MATCH": etag}), ("/media/photo.jpg", {"REQUEST_METHOD": "HEAD"})]
        with collector_off() as found:
            statuses = [wsgi_get(files, path, extra)[0] for path, extra in kinds * REPEATS]
            statuses += [wsgi_get(files, f"/media/{key}", {})[0] for key in fresh]
            files._run(settled(files.mount))  # the misses' writes behind their replies, done (on its loop)
        assert statuses.count(304) == REPEATS and statuses.count(206) == REPEATS
        assert statuses[-len(fresh) :] == [200] * len(fresh)  # each a miss: its first request
    finally:
        files.close()
    assert found.count < REPEATS, f"{found.count} unreachable objects after {len(statuses)} requests: {found.kinds}"


def wsgi_get(app: ServeFilesWSGI, path: str, extra: dict[str, str]) -> tuple[int, dict[str, str]]:
    """One request through ``app`` as a WSGI server makes it: the status and the headers; the body is read whole."""
    environ: dict[str, object] = {
        "REQUEST_METHOD": "GET", "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "", "SERVER_NAME": "test",
        "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "test", "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr, "wsgi.url_scheme": "http", "wsgi.version": (1, 0), "wsgi.multithread": True,
        "wsgi.multiprocess": False, "wsgi.run_once": False, **extra,
    }  # fmt: skip
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> None:
        started.append((status, headers))

    body = app(environ, start_response)
    try:
        b"".join(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    status, headers = started[-1]
    return int(status.split()[0]), dict(headers)
