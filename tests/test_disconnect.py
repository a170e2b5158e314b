"""A client that reads the start of a large file and hangs up: the server stops reading there.

For real: a raw socket client (a small receive buffer, so the kernel cannot take the file in
its stead) reads about 64 KiB of a 32 MiB file, then closes the socket. Behind uvicorn
(a send after a disconnect returns silently there) and gunicorn, for every body source that
streams: a disk-tier file (whole and ``Range: bytes=1-``), multipart ranges, a cold range
streamed straight from the store, and a cold GET read through its fill. Afterwards
``servefiles_bytes_sent_total`` stays far below the file's size, and for the store stream
the store's chunk reads stop too. A fill may finish on its own (other requests may want it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from servefiles import ServeFiles, Store, open_store
from servefiles.store import CHUNK_SIZE

from .asgi_servers import uvicorn_server
from .instrument import record_chunk_fetches
from .servers import Frontend, running_wsgi
from .tools import fills_ended, open_descriptors_of

SIZE = 32 * 1024 * 1024
READ = 64 * 1024
FAR_BELOW = 12 * 1024 * 1024
"""What may have gone out before the hang-up was seen: the socket buffers on both sides (a few MiB)."""
SETTLE_SECONDS = 1.0


def read_then_hang_up(base: str, path: str, headers: dict[str, str]) -> int:
    """GET ``path`` over a raw socket, read about 64 KiB of the response, close; bytes read."""
    host, _, port = base.removeprefix("http://").partition(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, READ)
    sock.settimeout(30)
    try:
        sock.connect((host, int(port)))
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
        sock.sendall("\r\n".join(lines).encode())
        got = 0
        while got < READ:
            piece = sock.recv(READ)
            assert piece, "the server closed first"
            got += len(piece)
        return got
    finally:
        sock.close()


async def settled(read: Callable[[], float]) -> float:
    """The counter's value once it has stopped moving for SETTLE_SECONDS (bounded: 15 s)."""
    deadline = time.monotonic() + 15
    last = await asyncio.to_thread(read)
    while True:
        await asyncio.sleep(SETTLE_SECONDS)
        now = await asyncio.to_thread(read)
        if now == last:
            return now
        assert time.monotonic() < deadline, f"still sending for nobody: {now} bytes"
        last = now


CASES = {
    # name: (key, request headers, warm the disk tier first)
    "disk": ("warm.bin", {}, True),
    "disk-range": ("warm.bin", {"range": "bytes=1-"}, True),
    "multipart": ("warm.bin", {"range": f"bytes=0-{SIZE // 2 - 1},{SIZE // 2 + 10}-{SIZE - 1}"}, True),
    "fill": ("cold.bin", {}, False),
    "store-range": ("cold.bin", {"range": "bytes=1-"}, False),
}


async def put_file(store: Store) -> None:
    data = os.urandom(SIZE)
    await store.put("warm.bin", data)
    await store.put("cold.bin", data)


@contextlib.asynccontextmanager
async def uvicorn_app(store: Store, cache_dir: Path, disk_bytes: int) -> AsyncIterator[tuple[ServeFiles, str]]:
    app = ServeFiles(None, db=store, cache_dir=cache_dir, metrics=True, disk_bytes=disk_bytes)
    try:
        async with uvicorn_server(app) as base:
            yield app, base
    finally:
        await app.aclose()


@pytest.mark.parametrize("case", list(CASES))
async def test_uvicorn_stops_when_the_client_hangs_up(case: str, store_url: str, tmp_path: Path) -> None:
    key, headers, warm = CASES[case]
    async with open_store(store_url) as store:
        await put_file(store)
        # A cold range is streamed from the store, with a fill behind it when the file fits
        # the disk tier: make it not fit, so every chunk read is this response's.
        disk_bytes = SIZE // 2 if case == "store-range" else 4 * SIZE
        async with uvicorn_app(store, tmp_path / "cache", disk_bytes) as (app, base):
            metrics = app.service.metrics
            if warm:
                async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                    assert len((await client.get(f"/media/{key}")).content) == SIZE
            before = metrics.value("servefiles_bytes_sent_total")
            fetches = record_chunk_fetches(store)
            assert await asyncio.to_thread(read_then_hang_up, base, f"/media/{key}", headers) >= READ
            sent = await settled(lambda: metrics.value("servefiles_bytes_sent_total")) - before
            assert READ <= sent < FAR_BELOW, f"{sent} bytes of {SIZE} sent after the client left"
            if case == "store-range":
                read_chunks = sum(last - first + 1 for first, last in fetches)
                assert read_chunks * CHUNK_SIZE < FAR_BELOW, f"{read_chunks} chunks read for nobody"
                count = len(fetches)
                await asyncio.sleep(SETTLE_SECONDS)
                assert len(fetches) == count, "the store is still being read"
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:  # and it serves on
                again = await client.get(f"/media/{key}", headers={"range": "bytes=0-9"})
                assert again.status_code == 206 and len(again.content) == 10


@pytest.mark.parametrize("case", [name for name in CASES if name != "disk"])
async def test_gunicorn_stops_when_the_client_hangs_up(case: str, sqlite_url: str, tmp_path: Path) -> None:
    """A whole disk-tier file goes out by sendfile under gunicorn (wsgi.file_wrapper): gunicorn
    sends it itself and stops itself; it is counted at hand-over, so that case is not here."""
    key, headers, warm = CASES[case]
    async with open_store(sqlite_url) as store:
        await put_file(store)
    disk_bytes = SIZE // 2 if case == "store-range" else 4 * SIZE
    options = {"db": sqlite_url, "cache_dir": str(tmp_path / "cache"), "metrics": True, "disk_bytes": disk_bytes}
    with running_wsgi(options) as frontend:
        if warm:
            async with httpx.AsyncClient(base_url=frontend.base, timeout=60) as client:
                assert len((await client.get(f"/media/{key}")).content) == SIZE
        before = frontend.metric("servefiles_bytes_sent_total")
        assert await asyncio.to_thread(read_then_hang_up, frontend.base, f"/media/{key}", headers) >= READ
        sent = await settled(lambda: _metric(frontend)) - before
        assert READ <= sent < FAR_BELOW, f"{sent} bytes of {SIZE} sent after the client left"
        async with httpx.AsyncClient(base_url=frontend.base, timeout=60) as client:
            again = await client.get(f"/media/{key}", headers={"range": "bytes=0-9"})
            assert again.status_code == 206 and len(again.content) == 10


def _metric(frontend: Frontend) -> float:
    return frontend.metric("servefiles_bytes_sent_total")


async def test_a_send_that_raises_on_the_status_line_leaves_no_cache_file_open(sqlite_url: str, tmp_path: Path) -> None:
    """A server may raise from ``send`` once its client is gone (ASGI 2.4's OSError), already on
    ``http.response.start``: the disk hit's open cache file is closed all the same."""
    data = os.urandom(600_000)  # over the memory tier's per-file limit: a disk hit holds its file open
    async with open_store(sqlite_url) as store:
        await store.put("large.bin", data)
    app = ServeFiles(None, db=sqlite_url, cache_dir=tmp_path / "cache", cache_min_uses=1)
    scope = {"type": "http", "method": "GET", "path": "/media/large.bin", "raw_path": b"/media/large.bin",
             "query_string": b"", "headers": [(b"host", b"t")]}  # fmt: skip

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send_gone(message: dict[str, object]) -> None:
        raise OSError("the client is gone")

    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
            for _ in range(3):  # the miss, then hits from the disk tier
                assert (await client.get("/media/large.bin")).content == data
        await fills_ended(app.service.runtime.filler)
        hits = app.service.metrics.disk_hits.value
        entry = app.service.disk.get("large.bin")
        assert entry is not None and open_descriptors_of(entry.path) == []
        for _ in range(5):
            with pytest.raises(OSError, match="gone"):
                await app(scope, receive, send_gone)
        assert app.service.metrics.disk_hits.value == hits + 5, "each was a disk hit"
        assert open_descriptors_of(entry.path) == [], "the cache file's descriptor was left open"
    finally:
        await app.aclose()
