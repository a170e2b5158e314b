"""Hits answered on the WSGI server's request threads (issue 18): never waiting for the event
loop, exactly as fresh as the loop's answers, and safe across a fork.

The adapter answers a fresh memory or disk copy on the request's own thread
(:meth:`Mount.cached`); misses, revalidations and writes go to the per-process loop. The
change feed drops outdated copies on the loop, so what a request thread reads must see each
drop the moment it is made: checked here with a replace while many threads hit the key, in
process and under a real gunicorn.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import io
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from wsgiref.util import FileWrapper

import httpx
import pytest

from servefiles import ServeFilesWSGI, open_store

from .servers import WsgiFrontend
from .tools import fills_ended_on_other_thread, open_descriptors_of
from .wsgi_servers import call_wsgi

TOKEN = "threads-token-0123456789abcdef"
SMALL = b"a" * 10_000  # a memory-tier hit
LARGE = os.urandom(400_000)  # over the memory tier's per-file limit: a disk-tier hit
SETTLE_SECONDS = 0.05


def etag(data: bytes) -> str:
    return f'"{hashlib.sha256(data).hexdigest()}"'


def call(
    app: ServeFilesWSGI, method: str, path: str, file_wrapper: bool = False, **headers: str
) -> tuple[str, dict[str, str], bytes]:
    """One request straight into the WSGI app, as a server's request thread makes it (with
    ``file_wrapper``, the server offers wsgiref's ``wsgi.file_wrapper``)."""
    return call_wsgi(app, method, path, **headers, **({"wsgi.file_wrapper": FileWrapper} if file_wrapper else {}))


async def _put(store_url: str, key: str, data: bytes) -> None:
    async with open_store(store_url) as store:
        await store.put(key, data, "application/octet-stream")


@pytest.fixture
def app(store_url: str, tmp_path: Path) -> Iterator[ServeFilesWSGI]:
    asyncio.run(_put(store_url, "hot.bin", SMALL))
    asyncio.run(_put(store_url, "large.bin", LARGE))
    served = ServeFilesWSGI(None, db=store_url, cache_dir=tmp_path / "cache", cache_min_uses=1,
                            feed_poll_seconds=0.05)  # fmt: skip
    # A file hashed 50 ms after its last change is remembered as verified (2 s by default: see verified.py).
    served.mount.service.disk.verified.settle_seconds = SETTLE_SECONDS
    try:
        yield served
    finally:
        served.close()


def _warm(app: ServeFilesWSGI) -> None:
    """Both files in their tier: the small one in memory, the large one on disk and hashed by this
    process (until then, a request for it goes to the loop, which hashes it on a thread)."""
    deadline = time.monotonic() + 10
    while True:
        assert call(app, "GET", "/media/hot.bin")[2] == SMALL
        assert call(app, "GET", "/media/large.bin")[2] == LARGE
        service = app.mount.service
        entry = service.disk.get("large.bin")
        stamp = None if entry is None else service.disk.in_place(entry)
        if service.memory.peek("hot.bin") is not None and entry is not None and stamp is not None \
                and service.disk.vouched(entry, stamp):  # fmt: skip
            fills_ended_on_other_thread(service.runtime.filler)
            return
        assert time.monotonic() < deadline, "the files did not reach their tiers"
        time.sleep(0.02)


def _stick_the_loop(app: ServeFilesWSGI, seconds: float) -> None:
    """Make the adapter's event loop block for ``seconds``; returns once it is stuck."""
    stuck = threading.Event()

    def block_the_loop() -> None:
        stuck.set()
        time.sleep(seconds)

    app._current().loop.call_soon_threadsafe(block_the_loop)
    assert stuck.wait(5)


@pytest.mark.parametrize("file_wrapper", [True, False], ids=["file_wrapper", "no_file_wrapper"])
def test_memory_and_disk_hits_are_answered_while_the_event_loop_is_busy(
    app: ServeFilesWSGI, file_wrapper: bool
) -> None:
    """A hit needs nothing from the loop: with the loop stuck in a blocking call for a second,
    both tiers still answer at once — a disk hit handed to the server's file wrapper, or read on
    the request thread when there is none, a range too — and each is counted as its tier's hit."""
    _warm(app)
    metrics = app.mount.service.metrics
    memory_hits, disk_hits = metrics.memory_hits.value, metrics.disk_hits.value
    _stick_the_loop(app, 1.0)
    started = time.monotonic()
    assert call(app, "GET", "/media/hot.bin", file_wrapper)[2] == SMALL
    assert call(app, "GET", "/media/large.bin", file_wrapper)[2] == LARGE
    assert call(app, "GET", "/media/large.bin", file_wrapper, HTTP_RANGE="bytes=100-299")[2] == LARGE[100:300]
    assert time.monotonic() - started < 0.5, "a hit waited for the event loop"
    assert (metrics.memory_hits.value, metrics.disk_hits.value) == (memory_hits + 1, disk_hits + 2)


@pytest.mark.parametrize("file_wrapper", [True, False], ids=["file_wrapper", "no_file_wrapper"])
def test_a_large_cache_file_damaged_in_place_is_never_sent_from_a_request_thread(
    app: ServeFilesWSGI, file_wrapper: bool
) -> None:
    """A disk copy is answered on the request thread only once this process has hashed that very
    file: one damaged in place since (same size, other bytes: a new ctime) goes to the loop, which
    hashes it on a thread, drops it and refetches — never handed to the server's sendfile."""
    _warm(app)
    disk = app.mount.service.disk
    entry = disk.get("large.bin")
    assert entry is not None
    with entry.path.open("r+b") as file:
        file.seek(5000)
        file.write(b"X" * 10)
    for _ in range(3):
        status, _, body = call(app, "GET", "/media/large.bin", file_wrapper)
        assert status.startswith("200") and body == LARGE, "a damaged cache file was served"
    _warm(app)  # refetched, on disk again, hashed: answered on request threads again


def test_a_start_response_that_raises_leaves_no_cache_file_open(app: ServeFilesWSGI) -> None:
    """A server or a middleware may raise from ``start_response``: the disk hit's open cache file is
    closed all the same (as the ASGI adapter closes it when ``send`` raises on the status line)."""
    _warm(app)
    metrics = app.mount.service.metrics
    disk_hits = metrics.disk_hits.value

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> None:
        raise OSError("the client is gone")

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/media/large.bin", "QUERY_STRING": "", "SERVER_NAME": "t",
               "SERVER_PORT": "80", "wsgi.input": io.BytesIO(b""), "wsgi.url_scheme": "http"}  # fmt: skip
    entry = app.mount.service.disk.get("large.bin")
    assert entry is not None and open_descriptors_of(entry.path) == []
    for _ in range(5):
        with pytest.raises(OSError, match="gone"):
            app(dict(environ), start_response)
    assert metrics.disk_hits.value == disk_hits + 5, "each was a disk hit"
    assert open_descriptors_of(entry.path) == [], "the cache file's descriptor was left open"


def test_a_miss_still_goes_to_the_event_loop(app: ServeFilesWSGI) -> None:
    """What no tier holds is the loop's: the same stuck loop holds the request up until it is free."""
    _warm(app)
    _stick_the_loop(app, 0.5)
    started = time.monotonic()
    assert call(app, "GET", "/media/missing.bin")[0] == "404 Not Found"
    assert time.monotonic() - started > 0.3, "a miss was answered without the loop"


@dataclass
class Seen:
    started: float
    ended: float
    etag: str
    body_ok: bool


def _hammer(get: Callable[[], tuple[str, bytes]], stop: threading.Event, seen: list[Seen]) -> None:
    """Request the key again and again until ``stop``, recording when each request began and ended."""
    while not stop.is_set():
        started = time.monotonic()
        tag, body = get()
        seen.append(Seen(started, time.monotonic(), tag, etag(body) == tag))


def _check_no_old_after_new(seen: list[Seen], old: str, new: str) -> None:
    """Every response carries its body's ETag; once a response with the new version has ended, no
    request that began after it gets the old one (every thread sees the change at once)."""
    assert all(s.body_ok for s in seen), "a body did not match its ETag"
    assert {s.etag for s in seen} <= {old, new}
    first_new = min((s.ended for s in seen if s.etag == new), default=None)
    assert first_new is not None, "the new version was never served"
    late_old = [s for s in seen if s.etag == old and s.started > first_new]
    assert not late_old, f"{len(late_old)} requests began after the new version was served and got the old one"


@pytest.mark.parametrize("key, old", [("hot.bin", SMALL), ("large.bin", LARGE)], ids=["memory", "disk"])
def test_a_replace_under_load_is_seen_by_every_request_thread_at_once(
    app: ServeFilesWSGI, store_url: str, key: str, old: bytes
) -> None:
    """Eight threads hit the key while another frontend replaces it (the change reaches this one
    through the feed): from the first response with the new version on, no request gets the old."""
    _warm(app)
    new = os.urandom(len(old))
    stop = threading.Event()
    seen: list[list[Seen]] = [[] for _ in range(8)]

    def get() -> tuple[str, bytes]:
        status, headers, body = call(app, "GET", f"/media/{key}")
        assert status == "200 OK"
        return headers["etag"], body

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        running = [pool.submit(_hammer, get, stop, each) for each in seen]
        try:
            time.sleep(0.3)
            asyncio.run(_put(store_url, key, new))
            deadline = time.monotonic() + 10
            while not any(s.etag == etag(new) for each in seen for s in list(each)):
                assert time.monotonic() < deadline, "the feed never brought the new version"
                time.sleep(0.01)
            time.sleep(0.3)
        finally:
            stop.set()  # the threads end whatever happened
        for done in running:
            done.result()
    _check_no_old_after_new([s for each in seen for s in each], etag(old), etag(new))


def test_a_local_write_is_served_by_every_request_thread_once_it_returns(app: ServeFilesWSGI) -> None:
    """Read-your-writes across threads: a put through this process's API drops the old copy
    before it returns, so every request that begins afterwards, on any thread, gets the new one."""
    _warm(app)
    stop = threading.Event()
    seen: list[list[Seen]] = [[] for _ in range(8)]

    def get() -> tuple[str, bytes]:
        _, headers, body = call(app, "GET", "/media/hot.bin")
        return headers["etag"], body

    new = b"b" * len(SMALL)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        running = [pool.submit(_hammer, get, stop, each) for each in seen]
        try:
            time.sleep(0.3)
            app.put("hot.bin", new)
            returned = time.monotonic()
            time.sleep(0.3)
        finally:
            stop.set()
        for done in running:
            done.result()
    every = [s for each in seen for s in each]
    assert all(s.body_ok for s in every)
    late_old = [s for s in every if s.etag == etag(SMALL) and s.started > returned]
    assert not late_old, f"{len(late_old)} requests began after the put returned and got the old version"
    assert any(s.etag == etag(new) for s in every)


def test_a_forked_child_serves_from_its_own_loop(app: ServeFilesWSGI) -> None:
    """The parent has served (its loop thread runs); a forked child forgets that loop at the fork
    and starts its own on its first request, hits and misses alike; the parent goes on serving."""
    _warm(app)
    parent_loop = app._current().loop
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report in one byte, never return into pytest
        code = b"?"
        try:
            if app._process is not None:
                code = b"P"  # still holds the parent's state
            else:
                hit = call(app, "GET", "/media/hot.bin")[2] == SMALL
                miss = call(app, "GET", "/media/absent.bin")[0] == "404 Not Found"
                own = app._current().loop is not parent_loop and app._current().thread.is_alive()
                code = b"1" if hit and miss and own else b"0"
            app.close()
        finally:
            os.write(write, code)
            os._exit(0)
    os.close(write)
    try:
        answer = os.read(read, 1)
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert answer == b"1", {b"P": "the child kept the parent's loop", b"0": "the child could not serve"}.get(answer)
    assert call(app, "GET", "/media/hot.bin")[2] == SMALL
    assert app._current().loop is parent_loop


async def test_a_replace_under_load_under_gunicorn(store_url: str, tmp_path: Path) -> None:
    """The same under a real gunicorn (one gthread worker, 8 threads): 16 clients hit a memory-tier
    key while another frontend replaces it; from the first new response on, nobody gets the old."""
    old, new = os.urandom(20_000), os.urandom(20_000)
    await _put(store_url, "hot.bin", old)
    options = {"db": store_url, "cache_dir": str(tmp_path / "cache"), "feed_poll_seconds": 0.05}
    frontend = WsgiFrontend(options, "--workers", "1", "--worker-class", "gthread", "--threads", "8")
    frontend.start()
    try:
        seen: list[Seen] = []
        stop = asyncio.Event()
        async with httpx.AsyncClient(base_url=frontend.base, timeout=30) as client:
            for _ in range(3):
                assert (await client.get("/media/hot.bin")).content == old

            async def hammer() -> None:
                while not stop.is_set():
                    started = time.monotonic()
                    response = await client.get("/media/hot.bin")
                    assert response.status_code == 200
                    tag = response.headers["etag"]
                    seen.append(Seen(started, time.monotonic(), tag, etag(response.content) == tag))

            clients = [asyncio.create_task(hammer()) for _ in range(16)]
            try:
                await asyncio.sleep(0.5)
                await _put(store_url, "hot.bin", new)
                deadline = time.monotonic() + 10
                while not any(s.etag == etag(new) for s in seen):
                    assert time.monotonic() < deadline, "the feed never brought the new version"
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.5)
            finally:
                stop.set()
                await asyncio.gather(*clients)
        _check_no_old_after_new(seen, etag(old), etag(new))
    finally:
        frontend.stop()
