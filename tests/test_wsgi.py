"""What is particular to the WSGI adapter: gunicorn's worker models, forking after the
app was used (``--preload``), ``wsgi.file_wrapper``, and the sync Python API.

The HTTP rules themselves are checked on both adapters by ``test_conformance.py`` and
``test_uploads.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar
from wsgiref.util import FileWrapper

import httpx
import pytest

from servefiles import ServeFilesWSGI, open_store
from servefiles.cache.disk import DiskCache, DiskEntry
from servefiles.errors import StoreUnavailable
from servefiles.middleware.wsgi import _OPEN_AT_EXIT, LOOP_CHECK_SECONDS
from servefiles.store.types import FileMeta

from .servers import WsgiFrontend
from .wsgi_servers import call_wsgi, wsgiref_serving

TOKEN = "wsgi-token-0123456789abcdef"
SMALL = os.urandom(10_000)
DISK = os.urandom(700_000)


def etag(data: bytes) -> str:
    return f'"{hashlib.sha256(data).hexdigest()}"'


async def _put_files(store_url: str) -> None:
    async with open_store(store_url) as store:
        await store.put("small.bin", SMALL)
        await store.put("disk.bin", DISK)


async def _check_everything_served(base: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        responses = await asyncio.gather(*(client.get(path) for path in ["/media/small.bin", "/media/disk.bin"] * 20))
        for response in responses:
            assert response.status_code == 200
            assert response.headers["etag"] == etag(response.content)
            assert response.content in (SMALL, DISK)
        part = await client.get("/media/disk.bin", headers={"range": "bytes=100-199"})
        assert (part.status_code, part.content) == (206, DISK[100:200])


@pytest.mark.parametrize(
    "workers",
    [
        ("--workers", "2", "--worker-class", "sync"),
        ("--workers", "2", "--worker-class", "gthread", "--threads", "4"),
        ("--workers", "2", "--worker-class", "gthread", "--threads", "4", "--preload"),
    ],
    ids=["sync", "gthread", "gthread-preload"],
)
async def test_gunicorn_workers_serve_and_take_uploads(
    store_url: str, tmp_path: Path, workers: tuple[str, ...]
) -> None:
    """Each worker has its own loop, pool and index, also when the master used the API before forking."""
    await _put_files(store_url)
    options = {"db": store_url, "cache_dir": str(tmp_path / "cache"), "upload_tokens": [TOKEN]}
    frontend = WsgiFrontend(options, *workers, env={"SERVEFILES_TEST_WSGI_IMPORT_PUT": "imported.txt=from master"})
    frontend.start()
    try:
        await _check_everything_served(frontend.base)
        async with httpx.AsyncClient(base_url=frontend.base, timeout=30) as client:
            assert (await client.get("/media/imported.txt")).content == b"from master"
            new = os.urandom(50_000)
            put = await client.put("/media/small.bin", content=new, headers={"authorization": f"Bearer {TOKEN}"})
            assert put.status_code == 200
            # Two workers: the one that took the PUT serves it at once, the other once the feed tells it.
            deadline = time.monotonic() + 5
            while True:
                served = [(await client.get("/media/small.bin")).content for _ in range(10)]
                if all(body == new for body in served):
                    break
                assert all(body in (SMALL, new) for body in served)
                assert time.monotonic() < deadline, "a worker kept serving the replaced file"
                await asyncio.sleep(0.05)
    finally:
        frontend.stop()
    assert "Traceback" not in frontend.output(), frontend.output()


class RecordingFileWrapper:
    """The server's ``wsgi.file_wrapper`` hook (wsgiref's), recording what it is handed."""

    handed: ClassVar[list[tuple[Any, str]]] = []
    """(file object, the path its descriptor names) per hand-over."""

    def __init__(self, filelike: Any, blksize: int = 8192) -> None:
        self.handed.append((filelike, os.path.realpath(f"/proc/self/fd/{filelike.fileno()}")))
        self._inner = FileWrapper(filelike, blksize)

    def __iter__(self) -> Any:
        return iter(self._inner)

    def close(self) -> None:
        self._inner.close()


def _call(app: ServeFilesWSGI, method: str, path: str, **extra: Any) -> tuple[str, dict[str, str], bytes]:
    """Call the WSGI app as a server would (with the recording file wrapper), and collect the response."""
    return call_wsgi(app, method, path, **{"wsgi.file_wrapper": RecordingFileWrapper, **extra})


def test_a_disk_hit_goes_to_wsgi_file_wrapper_and_its_file_is_closed(store_url: str, tmp_path: Path) -> None:
    asyncio.run(_put_files(store_url))
    app = ServeFilesWSGI(None, db=store_url, cache_dir=tmp_path / "cache", cache_min_uses=1)  # the miss fills
    try:
        RecordingFileWrapper.handed.clear()
        status, _, body = _call(app, "GET", "/media/disk.bin")  # a miss: streamed while the cache fills
        assert (status, body) == ("200 OK", DISK)
        deadline = time.monotonic() + 5
        while app.mount.service.disk.get("disk.bin") is None:
            assert time.monotonic() < deadline, "the fill did not finish"
            time.sleep(0.01)
        status, headers, body = _call(app, "GET", "/media/disk.bin")  # a disk hit
        assert (status, body, headers["etag"]) == ("200 OK", DISK, etag(DISK))
        assert len(RecordingFileWrapper.handed) == 1
        handed, path = RecordingFileWrapper.handed[0]
        assert Path(path).is_relative_to((tmp_path / "cache").resolve()), f"not a cache file: {path}"
        assert Path(path).read_bytes() == DISK
        assert handed.closed, "the server's close() must release the cache file"
        status, _, part = _call(app, "GET", "/media/disk.bin", HTTP_RANGE="bytes=0-9")
        assert (status, part) == ("206 Partial Content", DISK[:10])
        assert len(RecordingFileWrapper.handed) == 1, "a range is not a whole file: no file_wrapper"
        status, _, head = _call(app, "HEAD", "/media/disk.bin")
        assert (status, head) == ("200 OK", b"")
    finally:
        app.close()


def test_the_sync_python_api(store_url: str, tmp_path: Path) -> None:
    app = ServeFilesWSGI(None, db=store_url, cache_dir=tmp_path / "cache")
    try:
        assert _call(app, "GET", "/media/notes/a.txt")[0].startswith("404")
        meta = app.put("notes/a.txt", io.BytesIO(b"hello"), "text/plain")
        assert meta.sha256 == hashlib.sha256(b"hello").hexdigest()
        assert _call(app, "GET", app.url("notes/a.txt"))[2] == b"hello"  # read-your-writes
        assert [m.key for m in app.list("notes/")] == ["notes/a.txt"]
        assert b"".join(app.open("notes/a.txt")) == b"hello"
        assert app.stat("notes/a.txt") == meta
        assert app.delete("notes/a.txt") is True and app.delete("notes/a.txt") is False
        assert _call(app, "GET", "/media/notes/a.txt")[0].startswith("404")
    finally:
        app.close()


def test_requests_outside_the_prefix_reach_the_wrapped_app(store_url: str, tmp_path: Path) -> None:
    def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"app:" + environ["PATH_INFO"].encode()]

    app = ServeFilesWSGI(inner, db=store_url, cache_dir=tmp_path / "cache")
    try:
        assert _call(app, "GET", "/blog/post")[2] == b"app:/blog/post"
        assert _call(app, "GET", "/mediax")[2] == b"app:/mediax"
        assert _call(app, "GET", "/media/missing.bin")[0].startswith("404")
    finally:
        app.close()


@contextlib.contextmanager
def wsgiref_server(store_url: str, cache_dir: Path) -> Iterator[tuple[ServeFilesWSGI, str]]:
    """ServeFilesWSGI under a real wsgiref server on a loopback port: the app and its base URL."""
    app = ServeFilesWSGI(None, db=store_url, cache_dir=cache_dir, upload_tokens=[TOKEN])
    try:
        with wsgiref_serving(app) as base:
            yield app, base
    finally:
        app.close()


def raw_request(base: str, request: bytes) -> bytes:
    """Send bytes as they are (httpx would normalise the header under test), read to EOF."""
    with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=30) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


AUTH = {"authorization": f"Bearer {TOKEN}"}


def test_a_chunked_upload_the_server_cannot_end_is_refused_and_keeps_the_old_file(
    store_url: str, tmp_path: Path
) -> None:
    """wsgiref passes a chunked body on undecoded, with neither Content-Length nor
    ``wsgi.input_terminated``: taking that as an empty upload would replace the file with nothing."""
    asyncio.run(_put_files(store_url))
    with wsgiref_server(store_url, tmp_path / "cache") as (_, base), httpx.Client(base_url=base, timeout=30) as client:

        def chunks() -> Iterator[bytes]:
            yield b"replacement "
            yield b"bytes"

        refused = client.put("/media/small.bin", content=chunks(), headers=AUTH)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"] == "upload_aborted"
        assert "Content-Length" in refused.json()["message"]
        kept = client.get("/media/small.bin")
        assert (kept.status_code, kept.content) == (200, SMALL)
        # With a length, the same server takes the upload.
        taken = client.put("/media/small.bin", content=b"replacement bytes", headers=AUTH)
        assert taken.status_code == 200, taken.text
        assert client.get("/media/small.bin").content == b"replacement bytes"


def test_a_content_length_with_whitespace_is_read_as_its_number(store_url: str, tmp_path: Path) -> None:
    """``Content-Length: 5 `` is valid HTTP (trailing whitespace): five bytes, never an empty file."""
    with wsgiref_server(store_url, tmp_path / "cache") as (_, base):
        head = f"PUT /media/a.txt HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n".encode()
        assert raw_request(base, head + b"Content-Length: 5\r\n\r\nhello").startswith(b"HTTP/1.0 201")
        assert raw_request(base, head + b"Content-Length: 5 \r\n\r\nWORLD").startswith(b"HTTP/1.0 200")
        assert httpx.get(f"{base}/media/a.txt").content == b"WORLD"


def test_an_upload_without_a_type_under_wsgiref_gets_the_type_of_its_key(store_url: str, tmp_path: Path) -> None:
    """wsgiref sets CONTENT_TYPE=text/plain when the client sent none (``curl -T`` sends none)."""
    with wsgiref_server(store_url, tmp_path / "cache") as (_, base):
        head = f"PUT /media/pic.png HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n".encode()
        assert raw_request(base, head + b"Content-Length: 4\r\n\r\n\x89PNG").startswith(b"HTTP/1.0 201")
        assert httpx.get(f"{base}/media/pic.png").headers["content-type"] == "image/png"
        # A bare "text/plain" the client did send looks the same, and is guessed too; with parameters it is kept.
        sent = {**AUTH, "content-type": "text/plain; charset=utf-8"}
        typed = httpx.put(f"{base}/media/notes.md", content=b"# hi", headers=sent)
        assert typed.json()["content_type"] == "text/plain; charset=utf-8"


def test_slow_uploads_never_hold_up_a_cache_fill(store_url: str, tmp_path: Path) -> None:
    """More stalled uploads than the event loop's default executor has threads (min(32, cpus + 4)):
    their ``wsgi.input`` reads have threads of their own, so a miss is still served at once."""
    cold = os.urandom(300_000)

    async def put_cold() -> None:
        async with open_store(store_url) as store:
            await store.put("cold.bin", cold)

    asyncio.run(put_cold())
    stalled = min(32, (os.cpu_count() or 1) + 4) + 2
    with wsgiref_server(store_url, tmp_path / "cache") as (_, base), contextlib.ExitStack() as sockets:
        port = int(base.rsplit(":", 1)[1])
        for n in range(stalled):  # each sends its headers and one byte of ten, then nothing
            sock = sockets.enter_context(socket.create_connection(("127.0.0.1", port)))
            sock.sendall(f"PUT /media/up{n} HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n".encode())
            sock.sendall(b"Content-Length: 10\r\n\r\nx")
        time.sleep(0.5)
        served = httpx.get(f"{base}/media/cold.bin", timeout=5)
        assert (served.status_code, served.content) == (200, cold)
        sockets.close()  # the uploads end (short bodies: 400, nothing stored) before the server stops
        time.sleep(0.5)


def test_urls_in_write_replies_start_with_script_name(store_url: str, tmp_path: Path) -> None:
    """An app mounted at /app serves {SCRIPT_NAME}{prefix}/{key}: Location and the listing say so."""
    app = ServeFilesWSGI(None, db=store_url, cache_dir=tmp_path / "cache", upload_tokens=[TOKEN])
    try:
        mounted = {"SCRIPT_NAME": "/app", "HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}
        body = {"wsgi.input": io.BytesIO(b"hi"), "CONTENT_LENGTH": "2"}
        status, headers, _ = _call(app, "PUT", "/media/a.txt", **mounted, **body)
        assert (status, headers["location"]) == ("201 Created", "/app/media/a.txt")
        _, _, listing = _call(app, "GET", "/media/", **mounted)
        assert [entry["url"] for entry in json.loads(listing)["files"]] == ["/app/media/a.txt"]
    finally:
        app.close()


EXIT_SCRIPT = """
import sys
from pathlib import Path
from servefiles import ServeFilesWSGI
from tests.wsgi_servers import call_wsgi

store_url, cache_dir, marker = sys.argv[1:4]
app = ServeFilesWSGI(None, db=store_url, cache_dir=cache_dir)
assert call_wsgi(app, "GET", "/media/none.bin")[0].startswith("404")  # the process's loop is running now
# The close at exit still needs a thread of the loop's pool: the runtime runs its after-close hooks there.
app.mount.service.runtime.hooks.after_close.append(lambda: Path(marker).write_text("closed"))
"""


def test_an_adapter_left_open_is_closed_at_exit_while_its_threads_still_work(store_url: str, tmp_path: Path) -> None:
    """A process that exits without close() (a gunicorn worker does) closes the service at exit,
    before Python shuts the thread pools down: a close that needs a thread then (the change feed
    catching up, the disk index, the runtime's hooks) used to fail with "cannot schedule new futures
    after shutdown", logged as a traceback, and left its work undone."""
    marker = tmp_path / "closed"
    done = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, store_url, str(tmp_path / "cache"), str(marker)],
                          cwd=Path(__file__).parent.parent, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert marker.read_text() == "closed", "the service was not closed at exit (or its pool was shut already)"


def test_a_closed_adapter_is_not_held_until_exit(store_url: str, tmp_path: Path) -> None:
    """Closing an adapter lets it go: its exit hook no longer holds it (and its process, its
    memory tier) until the interpreter exits, so code that starts and closes adapters many times
    does not grow. An adapter still open is kept for the hook, and closed by it."""
    before = len(_OPEN_AT_EXIT)
    refs = []
    for n in range(3):
        app = ServeFilesWSGI(None, db=store_url, cache_dir=tmp_path / f"cache-{n}")
        assert _call(app, "GET", "/media/none.bin")[0].startswith("404")  # its loop runs: a process to close
        assert len(_OPEN_AT_EXIT) == before + 1
        app.close()
        assert len(_OPEN_AT_EXIT) == before
        refs.append(weakref.ref(app))
        del app
    gc.collect()
    assert [ref() for ref in refs] == [None, None, None], "a closed adapter is still referenced"


def test_a_closed_adapter_closes_its_loop(store_url: str, tmp_path: Path) -> None:
    """Closing an adapter closes its process's event loop once the loop's thread has ended: left to
    the collector it would be an unclosed loop (a ResourceWarning). Work a request thread still hands
    that loop afterwards is refused with StoreUnavailable (a 503), never a wait."""
    app = ServeFilesWSGI(None, db=store_url, cache_dir=tmp_path / "cache")
    assert _call(app, "GET", "/media/none.bin")[0].startswith("404")  # its loop runs
    process = app._process
    assert process is not None
    app.close()
    assert not process.thread.is_alive()
    assert process.loop.is_closed()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        app._run(asyncio.sleep(0), process)  # what a request thread that took the process before the close does
    assert time.monotonic() - started < LOOP_CHECK_SECONDS  # at once: a stopped loop was waited for that long
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        del process, app
        gc.collect()
    assert not [w for w in caught if "event loop" in str(w.message)], [str(w.message) for w in caught]


def test_a_request_thread_still_running_after_the_loop_stopped_at_exit_gets_a_503(
    store_url: str, tmp_path: Path
) -> None:
    """At exit the adapter stops its loop before Python joins the server's request threads; one of
    them still waiting for the loop then (a miss, a write, a probe) must get a 503 at once, not wait
    for ever and hold the exit up. Interpreter exit with a request in flight cannot be staged in a
    test process, so the loop is stopped as the exit hook stops it (its private handle: the one fake)."""
    app = ServeFilesWSGI(None, db=store_url, cache_dir=tmp_path / "cache")
    assert _call(app, "GET", "/media/none.bin")[0].startswith("404")  # the process's loop runs
    process = app._process
    assert process is not None
    process.loop.call_soon_threadsafe(process.loop.stop)
    process.thread.join(timeout=10)
    try:
        started = time.monotonic()
        status, headers, _ = _call(app, "GET", "/media/not-cached.bin")  # a miss: the loop's work
        assert status.startswith("503"), status
        assert "retry-after" in headers
        assert time.monotonic() - started < 10
        assert _call(app, "GET", "/_servefiles/health")[0].startswith("503")
    finally:
        # What the exit hook would have closed, closed here on this thread (the loop no longer runs):
        # left pending, the service's tasks are destroyed with the adapter once nothing holds it.
        try:
            process.loop.run_until_complete(process.mount.service.close())
        finally:
            try:
                app.close()
            finally:
                process.loop.close()


def test_a_small_miss_answers_the_request_thread_before_its_write_behind(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small file fetched whole with its metadata is written to the disk tier behind the reply,
    on the loop thread: the request's own thread has its response before that write runs. The
    write here waits (up to 5 s) for the response to reach the request thread; written first, it
    would hold the reply back and time out."""
    data = os.urandom(20_000)

    async def put() -> None:
        async with open_store(store_url) as store:
            await store.put("a.png", data)

    asyncio.run(put())
    answered = threading.Event()
    waited: list[bool] = []
    store = DiskCache.store

    def store_after_the_reply(disk: DiskCache, meta: FileMeta, body: bytes) -> DiskEntry:
        waited.append(answered.wait(5))
        return store(disk, meta, body)

    monkeypatch.setattr(DiskCache, "store", store_after_the_reply)
    app = ServeFilesWSGI(None, db=store_url, cache_dir=tmp_path / "cache")
    try:
        status, _, body = call_wsgi(app, "GET", "/media/a.png")
        answered.set()
        assert status.startswith("200") and body == data
        service = app.mount.service
        deadline = time.monotonic() + 10
        while service.disk.get("a.png") is None:
            assert time.monotonic() < deadline, "the write behind the reply was not made"
            time.sleep(0.02)
        assert waited == [True], "the reply reached the request thread before the write ran"
    finally:
        app.close()
