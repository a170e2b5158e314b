"""Faults produced for real, beyond those the other suites inject: the database killed in the
middle of a fetch, a slow database, a cache file damaged in place, eviction racing with load.

Where the others are: kill -9 during a fill, a full disk (a real 1 MiB tmpfs) and a client
that disconnects (test_serving_cache.py); the database killed mid-upload and cancelled
uploads (test_store_contract.py); dropped connections and a database outage through a cut
proxy (test_outage.py, test_frontends.py); the feed's connection killed (test_feed.py);
truncated, replaced and symlinked cache files (test_disk_cache.py).

Under every fault: nothing corrupt is served (a response either completes with exactly
the bytes its ETag names, or is cut short), nothing acknowledged is lost, and service
recovers without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from servefiles import ServeFiles, open_store
from servefiles.cache.verified import stamp_of
from servefiles.service import HEAD_BYTES

from .alarms import alarm
from .servers import Frontend, cli, free_port, listening
from .tcp_proxy import TcpProxy, with_netloc


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_the_database_killed_mid_fetch_never_yields_a_wrong_body(pg_url: str, tmp_path: Path) -> None:
    data = os.urandom(24 * 1024 * 1024)
    async with open_store(pg_url) as store:
        await store.put("big.bin", data)
    frontend = Frontend("--db", pg_url, "--cache-dir", str(tmp_path / "cache")).start()
    try:
        admin = await asyncpg.connect(pg_url)
        try:
            async with httpx.AsyncClient(base_url=frontend.base, timeout=60) as client:
                received = bytearray()
                completed = False
                try:
                    async with client.stream("GET", "/media/big.bin") as response:
                        assert response.status_code == 200
                        killed = False
                        async for chunk in response.aiter_bytes():
                            received += chunk
                            if not killed and len(received) > 1024 * 1024:
                                killed = True  # every other connection to this database: the frontend's
                                await admin.execute(
                                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                                )
                    completed = True
                except httpx.TransportError:
                    pass  # cut short: allowed, the client knows it is incomplete
                if completed:
                    assert bytes(received) == data, "a completed response must be exactly the file"
                else:
                    assert data.startswith(bytes(received)), "even a cut response carries only the file's bytes"
                deadline = time.monotonic() + 20
                while True:  # recovery without a restart
                    again = await client.get("/media/big.bin")
                    if again.status_code == 200:
                        break
                    assert again.status_code == 503, again.status_code
                    assert time.monotonic() < deadline, "the frontend did not recover"
                    await asyncio.sleep(0.2)
                assert again.content == data and again.headers["etag"] == f'"{sha(data)}"'
        finally:
            await admin.close()
    finally:
        frontend.stop()
    assert "Traceback" not in frontend.output(), frontend.output()


async def test_a_slow_database_slows_misses_but_never_hits(pg_url: str, pg_proxy: TcpProxy, tmp_path: Path) -> None:
    hot, cold = os.urandom(50_000), os.urandom(3_000_000)
    async with open_store(pg_url) as store:
        await store.put("hot.bin", hot)
        await store.put("cold.bin", cold)
    slow_url = with_netloc(pg_url, f"127.0.0.1:{pg_proxy.port}")
    app = ServeFiles(None, db=slow_url, cache_dir=tmp_path / "cache")
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t", timeout=60) as client:
            assert (await client.get("/media/hot.bin")).content == hot
            pg_proxy.delay = 0.05  # every piece the database sends now waits 50 ms

            async def hits() -> list[float]:
                times = []
                for _ in range(20):
                    started = time.monotonic()
                    response = await client.get("/media/hot.bin")
                    times.append(time.monotonic() - started)
                    assert response.content == hot
                return times

            started = time.monotonic()
            miss, hit_times = await asyncio.gather(client.get("/media/cold.bin"), hits())
            miss_seconds = time.monotonic() - started
            assert miss.status_code == 200 and miss.content == cold, "slow, but whole and correct"
            assert max(hit_times) < miss_seconds / 2, (max(hit_times), miss_seconds)
            assert sorted(hit_times)[len(hit_times) // 2] < 0.05, "a hit makes no query: the slow database is not in it"
    finally:
        pg_proxy.delay = 0
        await app.aclose()


SIZES = {
    "small": 100_000,  # read whole, and hashed, as it is served
    "large": 600_000,  # over the memory tier's per-file limit: sent from the file in one message
    "larger": 1_500_000,  # sent from the file in several
}
"""Cache files of each way a disk copy is served: every one is hashed before it is first served."""


@pytest.mark.parametrize("size", SIZES)
async def test_a_cache_file_damaged_in_place_is_refetched_not_served(store_url: str, tmp_path: Path, size: str) -> None:
    data = os.urandom(SIZES[size])
    async with open_store(store_url) as store:
        meta = await store.put("photo.jpg", data)
    cache = tmp_path / "cache"
    app = ServeFiles(None, db=store_url, cache_dir=cache, cache_min_uses=1)  # on disk after one request
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
        assert (await client.get("/media/photo.jpg")).content == data
    await app.aclose()
    object_file = cache / "objects" / meta.sha256[:2] / meta.sha256
    damaged = bytearray(object_file.read_bytes())
    damaged[5000:5010] = b"X" * 10  # same size, other bytes: bit rot, or someone editing the cache
    object_file.write_bytes(bytes(damaged))
    app = ServeFiles(None, db=store_url, cache_dir=cache, cache_min_uses=1)  # a restart: the memory tier is empty
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
            for _ in range(3):
                response = await client.get("/media/photo.jpg")
                assert response.content == data and response.headers["etag"] == f'"{sha(data)}"'
        deadline = time.monotonic() + 5  # a small file is written to disk behind its reply
        while not object_file.exists() or sha(object_file.read_bytes()) != meta.sha256:
            assert time.monotonic() < deadline, "the damaged file was not replaced by a good one"
            await asyncio.sleep(0.02)
    finally:
        await app.aclose()


SETTLE_SECONDS = 0.1
"""The settle time these tests give a service's verified marks (servefiles.cache.verified), and
wait out, so that a file's first whole read is remembered and the mark itself is what is tested."""


async def one_file_two_keys(store_url: str, cache: Path, size: int = SIZES["small"]) -> tuple[bytes, Path]:
    """``a.jpg`` and ``b.jpg`` of the same content (``size`` bytes), both in the disk tier of ``cache``
    and sharing one content file, put there by a service that has stopped since; the content and that file."""
    data = os.urandom(size)
    async with open_store(store_url) as store:
        meta = await store.put("a.jpg", data)
        assert (await store.put("b.jpg", data)).sha256 == meta.sha256
    app = ServeFiles(None, db=store_url, cache_dir=cache, cache_min_uses=1)  # on disk after one request
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
            for key in ("a.jpg", "b.jpg"):
                assert (await client.get(f"/media/{key}")).content == data
    finally:
        await app.aclose()  # lets the fills finish writing
    return data, cache / "objects" / meta.sha256[:2] / meta.sha256


async def started(store_url: str, cache: Path) -> ServeFiles:
    """A service over ``cache`` (fresh: nothing in memory, nothing verified) whose marks settle
    after :data:`SETTLE_SECONDS`, started, once the files already there have settled."""
    app = ServeFiles(None, db=store_url, cache_dir=cache, cache_min_uses=1)  # a refetch lands on disk
    app.service.disk.verified.settle_seconds = SETTLE_SECONDS
    await app.service.start()
    assert app.service.disk.get("a.jpg") is not None and app.service.disk.get("b.jpg") is not None
    await asyncio.sleep(SETTLE_SECONDS * 1.5)
    return app


def damage_in_place(path: Path) -> None:
    """Other bytes, same size, same file (inode): someone editing the cache, a bad restore."""
    with path.open("r+b") as file:
        file.seek(5000)
        file.write(b"X" * 10)


def holds(path: Path, sha256: str) -> bool:
    return path.exists() and sha(path.read_bytes()) == sha256


async def until_good(path: Path, sha256: str) -> None:
    """Wait until ``path`` holds the content ``sha256`` names (a refetched small file is written
    to disk behind its reply)."""
    deadline = time.monotonic() + 5
    while not holds(path, sha256):
        assert time.monotonic() < deadline, "the damaged file was not replaced by a good one"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("size", SIZES)
async def test_a_file_verified_through_one_key_then_damaged_in_place_is_not_served_through_another(
    store_url: str, tmp_path: Path, size: str
) -> None:
    """Two keys, one content file. Read whole through ``a.jpg``, it is hashed and remembered as
    good; then it is damaged in place. Read through ``b.jpg`` it must be hashed again (a mark
    names that file unchanged, not the content) and refetched: never served."""
    data, content_file = await one_file_two_keys(store_url, tmp_path / "cache", SIZES[size])
    app = await started(store_url, tmp_path / "cache")
    disk = app.service.disk
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
            assert (await client.get("/media/a.jpg")).content == data
            assert sha(data) in disk.verified, "read whole through a.jpg, the file was hashed and remembered"
            damage_in_place(content_file)
            for _ in range(3):
                response = await client.get("/media/b.jpg")
                assert response.content == data and response.headers["etag"] == f'"{sha(data)}"'
            await until_good(content_file, sha(data))
            app.service.memory.discard("a.jpg")  # gone from memory (evicted): read from disk again
            assert (await client.get("/media/a.jpg")).content == data
    finally:
        await app.aclose()


@pytest.mark.parametrize("size", SIZES)
async def test_dropping_a_damaged_file_forgets_it_for_every_key_that_shares_it(
    store_url: str, tmp_path: Path, size: str
) -> None:
    """Found damaged through ``a.jpg``, the file goes with every entry that uses it (``b.jpg``'s
    too) and with its verified mark; the copy refetched in its place is a file of its own, hashed
    when it is first read whole, and caught in turn when damaged after that."""
    data, content_file = await one_file_two_keys(store_url, tmp_path / "cache", SIZES[size])
    app = await started(store_url, tmp_path / "cache")
    disk, memory = app.service.disk, app.service.memory
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
            assert (await client.get("/media/a.jpg")).content == data
            assert sha(data) in disk.verified
            damage_in_place(content_file)
            damaged = stamp_of(content_file.stat())
            memory.discard("a.jpg")  # gone from memory (evicted): read from disk again
            assert (await client.get("/media/a.jpg")).content == data  # found damaged: dropped, refetched
            # (the refetched copy, another file, may be marked already: written and hashed here)
            assert not disk.verified.vouches(sha(data), damaged), "the mark outlived the file it vouched for"
            assert disk.get("b.jpg") is None, "b.jpg's entry still names the damaged file"
            assert (await client.get("/media/b.jpg")).content == data
            await until_good(content_file, sha(data))
            await asyncio.sleep(SETTLE_SECONDS * 1.5)
            memory.discard("a.jpg")
            assert (await client.get("/media/a.jpg")).content == data
            assert sha(data) in disk.verified, "the refetched copy was hashed when first read whole"
            damage_in_place(content_file)
            memory.discard("a.jpg")
            assert (await client.get("/media/a.jpg")).content == data
            await until_good(content_file, sha(data))
    finally:
        await app.aclose()


@pytest.mark.parametrize("size", SIZES)
async def test_a_fill_that_finds_its_file_on_disk_damaged_serves_and_keeps_none_of_it(
    store_url: str, tmp_path: Path, size: str
) -> None:
    """A fill that finds the version already on disk (another process sharing the cache dir put
    it there, or one fill overtook another) reads a small file whole instead of fetching it: those
    bytes are checked as a disk hit's are, not handed to its waiters and the memory tier unchecked."""
    data, content_file = await one_file_two_keys(store_url, tmp_path / "cache", SIZES[size])
    damage_in_place(content_file)
    app = await started(store_url, tmp_path / "cache")
    files = app.service
    try:
        meta = await files.revalidate("a.jpg")
        assert meta is not None and files.runtime.filler is not None
        fill = files.runtime.filler.start(meta, files.prepared(meta))
        fill.join()
        try:
            await fill.wait_done()
        finally:
            fill.leave()
        assert fill.body is None or fill.body == data, "the fill's waiters were handed damaged bytes"
        held = files.memory.peek("a.jpg")
        assert held is None or held.body == data, "damaged bytes were kept in the memory tier"
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
            for key in ("a.jpg", "b.jpg"):
                assert (await client.get(f"/media/{key}")).content == data, key
    finally:
        await app.aclose()


@pytest.mark.parametrize("clients", [8])
async def test_eviction_racing_with_load_serves_only_whole_files(store_url: str, tmp_path: Path, clients: int) -> None:
    files = {f"f{n}.bin": os.urandom(random.Random(n).randrange(200_000, 900_000)) for n in range(14)}
    async with open_store(store_url) as store:
        for key, data in files.items():
            await store.put(key, data)
    frontend = Frontend("--db", store_url, "--cache-dir", str(tmp_path / "cache"), "--cache-size", "3MiB",
                        "--memory-size", "1MiB", "--metrics").start()  # fmt: skip
    bad: list[str] = []
    counts = {"requests": 0}
    try:
        async with httpx.AsyncClient(base_url=frontend.base, timeout=60) as client:

            async def worker(seed: int) -> None:
                rng = random.Random(seed)
                deadline = time.monotonic() + 4
                while time.monotonic() < deadline:
                    key = rng.choice(list(files))
                    headers = {"range": "bytes=1000-60999"} if rng.random() < 0.2 else {}
                    response = await client.get(f"/media/{key}", headers=headers)
                    counts["requests"] += 1
                    expected = files[key][1000:61000] if headers else files[key]
                    if response.status_code not in (200, 206) or response.content != expected:
                        bad.append(f"{key} {headers} -> {response.status_code}, {len(response.content)} bytes")

            await asyncio.gather(*(worker(n) for n in range(clients)))
        evictions = frontend.metric('servefiles_evictions_total{tier="disk"}')
    finally:
        frontend.stop()
    assert not bad, bad[:10]
    assert counts["requests"] > 50 and evictions > 0, (counts, evictions)
    assert "Traceback" not in frontend.output(), frontend.output()


@pytest.mark.parametrize("change", ["replace", "delete"])
async def test_a_file_changed_between_lookup_and_fetch_is_asked_for_again(
    store_url: str, tmp_path: Path, change: str
) -> None:
    """The race the soak test found: the metadata query says version 1, then a writer replaces
    (or deletes) the file and its old chunks are gone before the fetch. The client must get
    the new state, never a status line followed by a cut connection."""
    old, new = os.urandom(HEAD_BYTES + 100_000), os.urandom(300_000)
    async with open_store(store_url) as store:
        await store.put("k.bin", old)
        app = ServeFiles(None, db=store, cache_dir=tmp_path / "cache", feed=False)
        real_stat, real_fetch_head = store.stat, store.fetch_head
        interleaved = False

        async def then_change(found: object) -> object:  # a real write, at the worst moment
            nonlocal interleaved
            if not interleaved:
                interleaved = True
                await (store.put("k.bin", new) if change == "replace" else store.delete("k.bin"))
            return found

        async def stat_then_change(key: str) -> object:
            return await then_change(await real_stat(key))

        async def fetch_head_then_change(key: str, *args: Any, **kwargs: Any) -> object:
            # The miss path's metadata query (it brings a small file's content along; this
            # one is larger than that, so the rest of it is fetched after the change).
            return await then_change(await real_fetch_head(key, *args, **kwargs))

        store.stat = stat_then_change  # type: ignore[method-assign]
        store.fetch_head = fetch_head_then_change  # type: ignore[method-assign]
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
                response = await client.get("/media/k.bin")
        finally:
            await app.aclose()
        assert interleaved
        if change == "replace":
            assert (response.status_code, response.content) == (200, new)
            assert response.headers["etag"] == f'"{sha(new)}"'
        else:
            assert response.status_code == 404


# -- whatever the cache dir holds: start-up in bounded time, never a hang (issue 13 item 7) ---

PHOTO = bytes(range(256)) * 12  # small enough for the memory tier: promotion hashes it
PHOTO_KEY = "dir/photo.png"
FILE_SHAPES = ["fifo", "socket", "symlink_file", "symlink_dir", "dangling", "loop", "directory", "truncated", "zeros"]
DIR_SHAPES = ["fifo", "socket", "symlink_dir", "symlink_file", "dangling", "loop", "file"]
LOG_WORD = {"fifo": "FIFO", "socket": "socket", "symlink_file": "symlink", "symlink_dir": "symlink",
            "dangling": "symlink", "loop": "symlink", "directory": "directory", "file": "regular file"}  # fmt: skip
START_SECONDS = 15.0


def cache_paths(cache: Path, publish: Path) -> dict[str, Path]:
    """Where each thing lives in a cache dir (see cache/layout.py) and in the published tree."""
    digest = sha(PHOTO)
    return {
        "content": cache / "objects" / digest[:2] / digest,
        "index": cache / "index.sqlite3",
        "index-wal": cache / "index.sqlite3-wal",
        "lock": cache / "locks" / f"{sha(PHOTO_KEY.encode())}.lock",
        "open.lock": cache / "open.lock",
        "cursor": cache / "feed-cursor.json",
        "objects": cache / "objects",
        "shard": cache / "objects" / digest[:2],
        "locks": cache / "locks",
        "tree-file": publish / "media" / PHOTO_KEY,
        "tree-dir": publish / "media" / "dir",
        "tree-base": publish / "media",
    }


FILE_PLACES = ["content", "index", "index-wal", "lock", "open.lock", "cursor", "tree-file"]
DIR_PLACES = ["objects", "shard", "locks", "tree-dir", "tree-base"]


def plant(path: Path, shape: str, outside: Path) -> None:
    """Put ``shape`` where ``path`` is, replacing what is there. ``outside`` (beside the cache dir)
    holds ``file`` (the right bytes: only not following a link protects it) and ``dir/keep``."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    if shape == "fifo":
        os.mkfifo(path)
    elif shape == "socket":  # an AF_UNIX socket file; bound by a short relative name (108-byte limit)
        here = os.getcwd()
        os.chdir(path.parent)
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.bind(path.name)
        finally:
            os.chdir(here)
    elif shape == "symlink_file":
        path.symlink_to(outside / "file")
    elif shape == "symlink_dir":
        path.symlink_to(outside / "dir")
    elif shape == "dangling":
        path.symlink_to(outside / "nothing here")
    elif shape == "loop":
        path.symlink_to(path.name)
    elif shape == "directory":
        path.mkdir()
        (path / "inner").write_bytes(b"x")
    elif shape == "file":
        path.write_bytes(b"a file where a directory belongs")
    elif shape == "truncated":
        path.write_bytes(PHOTO[:100])
    elif shape == "zeros":
        path.write_bytes(bytes(len(PHOTO)))
    else:
        raise AssertionError(shape)


def lstat_mode(path: Path) -> int:
    return os.lstat(path).st_mode if os.path.lexists(path) else 0


def make_outside(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "file").write_bytes(PHOTO)
    (outside / "dir" / "keep").write_bytes(b"keep")
    return outside


def assert_outside_intact(outside: Path) -> None:
    assert (outside / "file").read_bytes() == PHOTO, "a symlink was followed: the file outside was changed"
    assert (outside / "dir" / "keep").read_bytes() == b"keep", "a symlink was followed: the dir outside was emptied"
    assert sorted(p.name for p in outside.iterdir()) == ["dir", "file"]
    assert [p.name for p in (outside / "dir").iterdir()] == ["keep"]


def release_fifos(root: Path) -> None:
    """Open every FIFO under ``root`` for writing and close it: a reader blocked on one (old
    code) gets EOF, so a failing test ends instead of leaving a stuck thread behind."""
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(top, name)
            if stat.S_ISFIFO(os.lstat(path).st_mode):
                with contextlib.suppress(OSError):
                    os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


class Hung(BaseException):
    """Raised by :func:`time_limit`; not an OSError (TimeoutError is one), so no handler swallows it."""


@contextlib.contextmanager
def time_limit(seconds: float, root: Path) -> Iterator[None]:
    """Fail instead of hanging: SIGALRM interrupts the event loop, then blocked readers are released."""
    try:
        with alarm(seconds, lambda: Hung(f"still running after {seconds} s: something blocked on the cache dir")):
            yield
    finally:
        release_fifos(root)


async def fill_cache(db: str, cache: Path, publish: Path | None = None) -> None:
    """A first run: the photo cached on disk (and, in tree mode, published), the cursor saved."""
    options: dict[str, object] = {"nginx": "tree", "publish_dir": publish} if publish is not None else {}
    options["cache_min_uses"] = 1  # written to disk on its first request
    app = ServeFiles(None, db=db, cache_dir=cache, feed_poll_seconds=0.05, **options)  # type: ignore[arg-type]
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
            assert (await client.get(f"/media/{PHOTO_KEY}")).status_code == 200
    finally:
        await app.aclose()


def hostile_cases() -> list[tuple[str, str]]:
    cases = [(place, shape) for place in FILE_PLACES for shape in FILE_SHAPES]
    cases += [(place, shape) for place in DIR_PLACES for shape in DIR_SHAPES]
    # A lock file's or open.lock's bytes mean nothing: truncated or zeroed, it is still a lock file.
    return [(p, s) for p, s in cases if not (p in ("lock", "open.lock") and s in ("truncated", "zeros"))]


@pytest.mark.parametrize(("place", "shape"), hostile_cases())
async def test_the_service_starts_and_serves_whatever_stands_in_the_cache_dir(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, place: str, shape: str
) -> None:
    """Issue 13 item 7: a FIFO, socket, symlink (to a file, to a directory outside, dangling, to
    itself), a directory where a file belongs, a file where a directory belongs, a truncated or
    zero-filled file — where a content file, the index, a lock file, the cursor, a cache
    directory or nginx's published tree would be. The service starts in bounded time, serves
    the file correctly (refetching it), follows no link, and logs no traceback."""
    async with open_store(sqlite_url) as store:
        await store.put(PHOTO_KEY, PHOTO, "image/png")
    cache, publish = tmp_path / "cache", tmp_path / "published"
    tree = place.startswith("tree")
    await fill_cache(sqlite_url, cache, publish if tree else None)
    outside = make_outside(tmp_path)
    target = cache_paths(cache, publish)[place]
    plant(target, shape, outside)
    options: dict[str, object] = {"nginx": "tree", "publish_dir": publish} if tree else {}
    options["cache_min_uses"] = 1  # the refetch is written to disk at once, as checked below
    app = ServeFiles(None, db=sqlite_url, cache_dir=cache, feed_poll_seconds=0.05, **options)  # type: ignore[arg-type]
    caplog.set_level(logging.INFO, logger="servefiles")
    try:
        with time_limit(START_SECONDS, tmp_path):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
                health = await client.get("/_servefiles/health")
                assert health.status_code == 200, health.text
                for _ in range(2):  # the refetch, then a hit on what it cached
                    response = await client.get(f"/media/{PHOTO_KEY}")
                    assert response.status_code == 200
                    assert response.headers["etag"] == f'"{sha(PHOTO)}"'
                    if tree:  # nginx sends the bytes: the published file must be exactly them
                        published = cache_paths(cache, publish)["tree-file"]
                        assert response.headers["x-accel-redirect"] == f"/_servefiles_tree/{PHOTO_KEY}"
                        assert stat.S_ISREG(os.lstat(published).st_mode) and published.read_bytes() == PHOTO
                    else:
                        assert response.content == PHOTO
    finally:
        await app.aclose()
    assert_outside_intact(outside)
    mode = lstat_mode(target)
    if place in DIR_PLACES:
        assert not mode or stat.S_ISDIR(mode), f"{place} is still a {stat.filemode(mode)}"
    else:
        assert not mode or stat.S_ISREG(mode), f"{place} is still a {stat.filemode(mode)}"
    if place == "content":
        assert target.read_bytes() == PHOTO, "the content file was refetched"
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    if shape in LOG_WORD and not tree:  # the one line that names what was dropped
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert any(LOG_WORD[shape] in line for line in lines), lines


def _serve_command(db: str, cache: Path, port: int, without_dac_override: bool = False) -> list[str]:
    serve = ["-m", "servefiles", "serve", "--db", db, "--cache-dir", str(cache), "--port", str(port),
             "--cache-min-uses", "1"]  # the refetch is written to disk at once, as the tests check  # fmt: skip
    if without_dac_override and os.geteuid() == 0:
        return [sys.executable, "-c", DROP_DAC_AND_EXEC, *serve]
    return [sys.executable, *serve]


DROP_DAC_AND_EXEC = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH; PR_CAPBSET_DROP = 24
    if libc.prctl(24, cap, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])  # root without them obeys mode bits
"""
"""Tests run as root, for whom mode 000 reads fine: dropping the two capabilities from the
bounding set before exec makes the server a root that permission bits stop, like any user."""


def serve_and_get(db: str, cache: Path, log: Path, without_dac_override: bool = False) -> str:
    """Start a real ``servefiles serve``; it must listen within START_SECONDS and serve the photo."""
    port = free_port()
    command = _serve_command(db, cache, port, without_dac_override)
    try:
        with listening(command, port, log, what="serve", start_timeout=START_SECONDS):
            for _ in range(2):
                response = httpx.get(f"http://127.0.0.1:{port}/media/{PHOTO_KEY}", timeout=10)
                assert response.status_code == 200 and response.content == PHOTO
                assert response.headers["etag"] == f'"{sha(PHOTO)}"'
    finally:
        release_fifos(cache)
    output = log.read_text(errors="replace")
    assert "Traceback" not in output, output
    return output


@pytest.mark.parametrize("place", ["content", "cursor", "index", "lock", "open.lock"])
async def test_servefiles_serve_listens_with_a_fifo_in_the_cache_dir(
    sqlite_url: str, tmp_path: Path, place: str
) -> None:
    """The report: a content file replaced by a FIFO (mkfifo), then a restart of ``servefiles
    serve``. It must listen within 15 s and serve the file; the FIFO is gone."""
    async with open_store(sqlite_url) as store:
        await store.put(PHOTO_KEY, PHOTO, "image/png")
    cache = tmp_path / "cache"
    await fill_cache(sqlite_url, cache)
    target = cache_paths(cache, tmp_path / "published")[place]
    plant(target, "fifo", make_outside(tmp_path))
    output = await asyncio.to_thread(serve_and_get, sqlite_url, cache, tmp_path / "serve.log")
    assert not stat.S_ISFIFO(lstat_mode(target)), output
    assert "FIFO" in output, "one line names what was removed"


@pytest.mark.parametrize("place", ["content", "index", "lock", "cursor", "shard"])
async def test_servefiles_serve_drops_what_it_cannot_read(sqlite_url: str, tmp_path: Path, place: str) -> None:
    """chmod 000 where a file or directory of the cache dir is; the server runs without the
    capabilities that let root read anything (see DROP_DAC_AND_EXEC), so the bits bite."""
    async with open_store(sqlite_url) as store:
        await store.put(PHOTO_KEY, PHOTO, "image/png")
    cache = tmp_path / "cache"
    await fill_cache(sqlite_url, cache)
    target = cache_paths(cache, tmp_path / "published")[place]
    if place == "lock":
        target.write_bytes(b"")  # a lock file left behind by a killed filler
    target.chmod(0)
    output = await asyncio.to_thread(serve_and_get, sqlite_url, cache, tmp_path / "serve.log", True)
    mode = lstat_mode(target)
    if place != "shard":  # a shard is made readable again (as its owner), files are removed
        assert not mode or stat.S_IMODE(mode) != 0, output
    assert (cache / "objects" / sha(PHOTO)[:2] / sha(PHOTO)).read_bytes() == PHOTO


CLI_SHAPES = ["fifo", "socket", "symlink_dir", "directory", "zeros"]


@pytest.mark.parametrize("shape", CLI_SHAPES)
async def test_stats_sync_and_warm_finish_over_a_hostile_cache_dir(sqlite_url: str, tmp_path: Path, shape: str) -> None:
    """The same shape at once where the content file, the cursor, the index's -wal, a lock file
    and open.lock are: ``stats``, ``sync --verify`` and ``warm`` each finish in bounded time with
    exit 0 and no traceback, and leave the photo cached and good."""
    async with open_store(sqlite_url) as store:
        await store.put(PHOTO_KEY, PHOTO, "image/png")
    cache = tmp_path / "cache"
    await fill_cache(sqlite_url, cache)
    outside = make_outside(tmp_path)
    paths = cache_paths(cache, tmp_path / "published")
    for command in (["stats", "--json"], ["sync", "--verify", "--db", sqlite_url], ["warm", "--db", sqlite_url]):
        for place in ("content", "cursor", "index-wal", "lock", "open.lock"):
            if not (shape == "zeros" and place in ("lock", "open.lock")):
                plant(paths[place], shape, outside)
        try:
            done = await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "servefiles", *command, "--cache-dir", str(cache)],
                capture_output=True, timeout=START_SECONDS * 2,
            )  # fmt: skip
        finally:
            release_fifos(cache)
        err = done.stderr.decode(errors="replace")
        assert done.returncode == 0, (command, err)
        assert "Traceback" not in err, (command, err)
    assert_outside_intact(outside)
    content = paths["content"]
    assert stat.S_ISREG(lstat_mode(content)) and content.read_bytes() == PHOTO, "warm fetched it again"
    stats = json.loads(cli("stats", "--json", "--cache-dir", str(cache)).stdout)
    assert stats["entries"] == 1
