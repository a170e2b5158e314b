"""The serving core's cache behaviour: single-flight, write-through, restarts, faults.

In-process through httpx's ASGI transport, and across real ``servefiles serve``
processes that share one cache dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from servefiles import ServeFiles, open_store

from .instrument import record_chunk_fetches
from .servers import running

TEMP_PREFIX = ".tmp-"  # the disk tier's temp-file prefix (servefiles.cache.layout.TEMP_PREFIX)


async def put(store_url: str, key: str, data: bytes) -> None:
    async with open_store(store_url) as store:
        await store.put(key, data)


@contextlib.asynccontextmanager
async def client_for(app: ServeFiles) -> AsyncIterator[httpx.AsyncClient]:
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:
            yield client
    finally:
        await app.aclose()


def counter(app: ServeFiles, name: str, **labels: str) -> float:
    return app.service.metrics.value(name, **labels)


async def wait_for_disk_entry(app: ServeFiles, key: str) -> None:
    """Until the background fill of ``key`` has installed its disk entry (at most 10 s)."""
    for _ in range(200):
        if app.service.disk.get(key) is not None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{key} never reached the disk tier")


def temp_files(cache_dir: Path) -> list[Path]:
    return [p for p in cache_dir.rglob(f"{TEMP_PREFIX}*") if p.is_file()]


@pytest.mark.parametrize("size", [10_000, 3_000_000], ids=["small", "large"])
async def test_100_concurrent_cold_requests_cause_one_store_fetch(store_url: str, tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    await put(store_url, "hot.bin", data)
    app = ServeFiles(None, db=store_url, cache_dir=tmp_path / "cache")
    async with client_for(app) as client:
        responses = await asyncio.gather(*(client.get("/media/hot.bin") for _ in range(100)))
        assert {r.status_code for r in responses} == {200}
        assert all(r.content == data for r in responses)
        assert counter(app, "servefiles_store_fetches_total") == 1
        again = await client.get("/media/hot.bin")
        assert again.content == data
        assert counter(app, "servefiles_store_fetches_total") == 1


async def test_the_disk_cache_survives_a_restart(store_url: str, tmp_path: Path) -> None:
    data = os.urandom(2_000_000)
    await put(store_url, "keep.bin", data)
    first = ServeFiles(None, db=store_url, cache_dir=tmp_path / "cache", cache_min_uses=1)  # fill on the first miss
    async with client_for(first) as client:
        assert (await client.get("/media/keep.bin")).content == data
    second = ServeFiles(None, db=store_url, cache_dir=tmp_path / "cache")
    async with client_for(second) as client:
        assert (await client.get("/media/keep.bin")).content == data
        assert counter(second, "servefiles_hits_total", tier="disk") == 1
        assert counter(second, "servefiles_store_fetches_total") == 0


async def test_a_cold_range_reads_only_that_range_from_the_store(store_url: str, tmp_path: Path) -> None:
    data = os.urandom(5_000_000)
    await put(store_url, "video.mp4", data)
    async with open_store(store_url) as store:
        seen = record_chunk_fetches(store)
        app = ServeFiles(None, db=store, cache_dir=tmp_path / "cache", disk_bytes=1)  # too small to fill
        async with client_for(app) as client:
            response = await client.get("/media/video.mp4", headers={"Range": "bytes=4000000-4000099"})
        assert response.status_code == 206
        assert response.content == data[4_000_000:4_000_100]
        chunk = 256 * 1024
        assert seen == [(4_000_000 // chunk, 4_000_099 // chunk)]


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real, tiny filesystem (a 1 MiB tmpfs) for the cache dir: writes hit ENOSPC. Needs root, as on CI."""
    cache_dir = tmp_path / "tiny"
    cache_dir.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(cache_dir)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield cache_dir
    finally:
        subprocess.run(["umount", "-l", str(cache_dir)], check=False)


@pytest.mark.parametrize("size", [3_000_000, 1_040_000], ids=["streamed", "whole-in-hand"])
async def test_a_failed_cache_write_never_fails_the_request(store_url: str, full_disk: Path, size: int) -> None:
    """Streamed into the tier by a fill, or (at most ``HEAD_BYTES``: fetched whole with the
    metadata) written behind the reply from the bytes in hand: the disk refuses either, the
    request is answered whole all the same and the failure is counted."""
    data = os.urandom(size)
    await put(store_url, "too-big.bin", data)
    app = ServeFiles(None, db=store_url, cache_dir=full_disk, disk_bytes=100 * 1024 * 1024, cache_min_uses=1)
    async with client_for(app) as client:
        first = await client.get("/media/too-big.bin")
        second = await client.get("/media/too-big.bin", headers={"Range": "bytes=1000000-"})
        assert first.status_code == 200 and first.content == data
        assert second.status_code == 206 and second.content == data[1_000_000:]
        assert counter(app, "servefiles_cache_write_failures_total") >= 1
    assert temp_files(full_disk) == []


def test_one_store_fetch_across_processes_sharing_a_cache_dir(store_url: str, tmp_path: Path) -> None:
    data = os.urandom(24_000_000)
    asyncio.run(put(store_url, "shared.bin", data))
    env = {"SERVEFILES_DB": store_url}
    args = ("--cache-dir", str(tmp_path / "cache"), "--metrics", "--cache-size", "1G", "--cache-min-uses", "1")
    with running(*args, env=env) as first, running(*args, env=env) as second:
        bodies: dict[str, bytes] = {}

        def fetch(base: str) -> None:
            bodies[base] = httpx.get(f"{base}/media/shared.bin", timeout=60).content

        threads = [threading.Thread(target=fetch, args=(f.base,)) for f in (first, second) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert all(body == data for body in bodies.values())
        total = first.metric("servefiles_store_fetches_total") + second.metric("servefiles_store_fetches_total")
        assert total == 1


def test_kill_9_in_the_middle_of_a_fill_leaves_no_corrupt_entry(store_url: str, tmp_path: Path) -> None:
    data = os.urandom(48_000_000)
    asyncio.run(put(store_url, "movie.bin", data))
    cache_dir = tmp_path / "cache"
    env = {"SERVEFILES_DB": store_url}
    with running("--cache-dir", str(cache_dir), "--cache-min-uses", "1", env=env) as frontend:
        base = frontend.base

        def slow_client() -> None:
            with contextlib.suppress(httpx.HTTPError), httpx.stream("GET", f"{base}/media/movie.bin") as response:
                for _ in response.iter_bytes(65536):
                    time.sleep(0.01)

        threading.Thread(target=slow_client, daemon=True).start()
        deadline = time.monotonic() + 20
        while not temp_files(cache_dir):
            assert time.monotonic() < deadline, "the fill never started"
            time.sleep(0.005)
        frontend.kill()
    assert temp_files(cache_dir), "the kill came after the fill: nothing was tested"
    with running("--cache-dir", str(cache_dir), env=env) as frontend:
        httpx.get(f"{frontend.base}/_servefiles/health")  # start-up (and its sweep) is done
        assert temp_files(cache_dir) == []
        body = httpx.get(f"{frontend.base}/media/movie.bin", timeout=60).content
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()


async def test_a_client_that_disconnects_does_not_abort_the_fill(store_url: str, tmp_path: Path) -> None:
    data = os.urandom(6_000_000)
    await put(store_url, "walkaway.bin", data)
    app = ServeFiles(None, db=store_url, cache_dir=tmp_path / "cache", cache_min_uses=1)
    async with client_for(app) as client:
        async with client.stream("GET", "/media/walkaway.bin") as response:
            async for _ in response.aiter_bytes():
                break  # read one piece, then hang up
        await wait_for_disk_entry(app, "walkaway.bin")  # the fill goes on without the client
        again = await client.get("/media/walkaway.bin")
        assert again.content == data
        assert counter(app, "servefiles_store_fetches_total") == 1
        assert counter(app, "servefiles_hits_total", tier="disk") == 1


async def test_disk_hits_use_pathsend_when_the_server_offers_it(store_url: str, tmp_path: Path) -> None:
    """Drive the app as a pathsend-capable ASGI server would, and record what it sends."""
    data = os.urandom(1_000_000)
    await put(store_url, "doc.pdf", data)
    app = ServeFiles(None, db=store_url, cache_dir=tmp_path / "cache", cache_min_uses=1)
    try:

        async def request(extensions: dict[str, object], headers: list[tuple[bytes, bytes]]) -> list[dict[str, object]]:
            sent: list[dict[str, object]] = []

            async def receive() -> dict[str, object]:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: dict[str, object]) -> None:
                sent.append(dict(message))

            scope = {"type": "http", "method": "GET", "path": "/media/doc.pdf", "headers": headers,
                     "extensions": extensions, "query_string": b"", "http_version": "1.1"}  # fmt: skip
            await app(scope, receive, send)
            return sent

        pathsend = {"http.response.pathsend": {}}
        await request(pathsend, [])  # the miss fills the disk tier
        await wait_for_disk_entry(app, "doc.pdf")
        hit = await request(pathsend, [])
        assert [m["type"] for m in hit] == ["http.response.start", "http.response.pathsend"]
        assert await asyncio.to_thread(Path(str(hit[1]["path"])).read_bytes) == data
        ranged = await request(pathsend, [(b"range", b"bytes=10-19")])  # a range cannot be a pathsend
        assert ranged[0]["status"] == 206
        assert b"".join(m.get("body", b"") for m in ranged[1:]) == data[10:20]  # type: ignore[misc]
        plain = await request({}, [])
        assert b"".join(m.get("body", b"") for m in plain[1:]) == data  # type: ignore[misc]
    finally:
        await app.aclose()


@pytest.mark.parametrize("in_page_cache", [True, False], ids=["cached", "not-cached"])
async def test_a_large_copy_is_hashed_on_the_loop_only_when_the_page_cache_holds_it(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_page_cache: bool
) -> None:
    """A disk copy too large for the memory tier is hashed before this process first serves it: on
    the loop when it is at most LOOP_CHECK_BYTES and all in the page cache (on a thread it waited for
    the GIL at every step), else on a thread (DiskCache.open_checked), as a read from the disk would
    stall the loop."""
    from servefiles import pagecache
    from servefiles.cache.disk import DiskCache
    from servefiles.service import LOOP_CHECK_BYTES

    data = os.urandom(600_000)
    assert data and len(data) <= LOOP_CHECK_BYTES
    await put(sqlite_url, "photo.jpg", data)
    cache = tmp_path / "cache"
    async with client_for(ServeFiles(None, db=sqlite_url, cache_dir=cache, memory_file_bytes=256 * 1024)) as client:
        assert (await client.get("/media/photo.jpg")).content == data  # the miss fills the disk tier
    app = ServeFiles(None, db=sqlite_url, cache_dir=cache, memory_file_bytes=256 * 1024)  # has vouched for nothing
    on_thread: list[str] = []
    open_checked = DiskCache.open_checked

    def spy(disk: DiskCache, entry: object) -> int | None:
        on_thread.append(threading.current_thread().name)
        return open_checked(disk, entry)  # type: ignore[arg-type]

    monkeypatch.setattr(DiskCache, "open_checked", spy)
    async with client_for(app) as client:
        await app.service.start()
        entry = app.service.disk.get("photo.jpg")
        assert entry is not None
        fd = os.open(entry.path, os.O_RDONLY)
        try:
            if in_page_cache:
                os.pread(fd, len(data), 0)
            else:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            assert pagecache.cached(fd, 0, len(data)) is in_page_cache
        finally:
            os.close(fd)
        assert (await client.get("/media/photo.jpg")).content == data
        assert counter(app, "servefiles_hits_total", tier="disk") == 1
        assert counter(app, "servefiles_cache_files_hashed_total") == 1
        assert len(on_thread) == (0 if in_page_cache else 1), on_thread
        if on_thread:
            assert on_thread[0] != threading.main_thread().name
