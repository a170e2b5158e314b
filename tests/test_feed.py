"""The change feed: one truth across frontends, on PostgreSQL and on SQLite."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx

from servefiles import ServeFiles, open_store

from .instrument import count_store_reads
from .servers import serving

PROPAGATION_LIMIT_SECONDS = 3.0  # generous for a loaded CI box; the benchmark measures the real figure


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.asynccontextmanager
async def frontend(
    store_url: str, cache_dir: Path, **options: object
) -> AsyncIterator[tuple[ServeFiles, httpx.AsyncClient]]:
    app = ServeFiles(None, db=store_url, cache_dir=cache_dir, **options)  # type: ignore[arg-type]
    await app.service.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://test") as client:
            yield app, client
    finally:
        await app.aclose()


async def until(predicate: object, seconds: float = PROPAGATION_LIMIT_SECONDS) -> float:
    """Poll an async predicate until it holds; return how long it took."""
    started = time.monotonic()
    while True:
        if await predicate():  # type: ignore[operator]
            return time.monotonic() - started
        assert time.monotonic() - started < seconds, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_hits_make_no_query_while_the_feed_is_healthy(store_url: str, tmp_path: Path) -> None:
    async with open_store(store_url) as store:
        await store.put("logo.png", b"small" * 100)
        await store.put("big.bin", os.urandom(1_000_000))
        # cache_min_uses=1: both files cached by their first request, as the hits below need.
        app = ServeFiles(None, db=store, cache_dir=tmp_path / "cache", freshness_seconds=0.05, cache_min_uses=1)
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
                for key in ("logo.png", "big.bin"):
                    assert (await client.get(f"/media/{key}")).status_code == 200
                await until(lambda: _disk_has(app, "big.bin"))
                assert app.service.feed is not None and app.service.feed.healthy
                calls = count_store_reads(store)
                await asyncio.sleep(0.1)  # well past the time-based freshness interval
                for _ in range(50):
                    assert (await client.get("/media/logo.png")).status_code == 200
                    assert (await client.get("/media/big.bin")).status_code == 200
                assert calls == []
        finally:
            await app.aclose()


async def _disk_has(app: ServeFiles, key: str, version: int | None = None) -> bool:
    entry = app.service.disk.get(key)
    return entry is not None and (version is None or entry.meta.version == version)


async def test_without_the_feed_hits_revalidate_by_time(store_url: str, tmp_path: Path) -> None:
    async with open_store(store_url) as store:
        await store.put("logo.png", b"small" * 100)
        app = ServeFiles(None, db=store, cache_dir=tmp_path / "cache", feed=False, freshness_seconds=0.05)
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
                await client.get("/media/logo.png")
                calls = count_store_reads(store)
                await asyncio.sleep(0.1)
                await client.get("/media/logo.png")
                assert calls == ["_locate"]  # one metadata query, never content
        finally:
            await app.aclose()


async def test_put_replace_and_delete_reach_every_frontend(store_url: str, tmp_path: Path) -> None:
    async with (
        open_store(store_url) as store,
        frontend(store_url, tmp_path / "a") as (_a, client_a),
        frontend(store_url, tmp_path / "b") as (_b, client_b),
    ):
        clients = (client_a, client_b)
        v1 = os.urandom(300_000)
        await store.put("post/cover.jpg", v1)
        for client in clients:  # a new key: a miss everywhere, served at once
            assert (await client.get("/media/post/cover.jpg")).content == v1
        v2 = os.urandom(300_000)
        await store.put("post/cover.jpg", v2)
        for client in clients:

            async def replaced(client: httpx.AsyncClient = client) -> bool:
                response = await client.get("/media/post/cover.jpg")
                assert sha(response.content) == response.headers["etag"].strip('"')  # never a mix
                return response.content == v2

            await until(replaced)
        await store.delete("post/cover.jpg")
        for client in clients:

            async def deleted(client: httpx.AsyncClient = client) -> bool:
                return (await client.get("/media/post/cover.jpg")).status_code == 404

            await until(deleted)


async def test_a_frontend_catches_up_after_a_restart(store_url: str, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    async with open_store(store_url) as store:
        v1 = os.urandom(600_000)
        await store.put("doc.pdf", v1)
        async with frontend(store_url, cache_dir, cache_min_uses=1) as (app, client):  # on disk after one request
            assert (await client.get("/media/doc.pdf")).content == v1
            await until(lambda: _disk_has(app, "doc.pdf"))
        v2 = os.urandom(600_000)
        meta2 = await store.put("doc.pdf", v2)  # while the frontend is down
        async with frontend(store_url, cache_dir) as (app, client):
            assert app.service.feed is not None and app.service.feed.healthy
            stale = app.service.disk.get("doc.pdf")
            assert stale is None or stale.meta.version == meta2.version  # caught up before serving
            assert (await client.get("/media/doc.pdf")).content == v2


async def test_a_cache_dir_from_another_database_is_not_trusted(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    one, two = f"sqlite:///{tmp_path / 'one.db'}", f"sqlite:///{tmp_path / 'two.db'}"
    for url, data in ((one, b"from one" * 1000), (two, b"from two" * 1000)):
        async with open_store(url) as store:
            await store.put("same-key.txt", data)  # version 1 in both databases
    async with frontend(one, cache_dir) as (_app, client):
        assert (await client.get("/media/same-key.txt")).content == b"from one" * 1000
    async with frontend(two, cache_dir) as (_app, client):
        assert (await client.get("/media/same-key.txt")).content == b"from two" * 1000


async def test_prefetch_fetches_new_versions_before_any_request(store_url: str, tmp_path: Path) -> None:
    async with open_store(store_url) as store, frontend(store_url, tmp_path / "cache", prefetch=True) as (app, client):
        meta = await store.put("fresh.bin", os.urandom(2_000_000))
        await until(lambda: _disk_has(app, "fresh.bin", meta.version))
        response = await client.get("/media/fresh.bin")
        assert sha(response.content) == meta.sha256
        assert app.service.metrics.value("servefiles_hits_total", tier="disk") == 1
        assert app.service.metrics.value("servefiles_misses_total") == 0


async def test_the_feed_recovers_after_its_connection_is_killed(pg_url: str, tmp_path: Path) -> None:
    async with (
        open_store(pg_url) as store,
        frontend(pg_url, tmp_path / "cache", feed_check_seconds=0.2) as (app, client),
    ):
        await store.put("k.txt", b"one")
        assert (await client.get("/media/k.txt")).content == b"one"
        feed = app.service.feed
        assert feed is not None and feed.healthy
        admin = await asyncpg.connect(pg_url)
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
            )
        finally:
            await admin.close()
        assert killed >= 1
        await store.put("k.txt", b"two")  # made while the listener is gone

        async def updated() -> bool:
            return (await client.get("/media/k.txt")).content == b"two"

        await until(updated, seconds=10)
        await until(lambda: _healthy(app), seconds=10)


async def _healthy(app: ServeFiles) -> bool:
    return app.service.feed is not None and app.service.feed.healthy


def test_two_real_frontends_agree_after_a_put(store_url: str, tmp_path: Path) -> None:
    """Two `servefiles serve` processes, each with its own cache dir, one database."""
    env = {"SERVEFILES_DB": store_url}
    asyncio.run(_put(store_url, "shared.txt", b"version one"))
    with (
        serving("--cache-dir", str(tmp_path / "a"), env=env) as a,
        serving("--cache-dir", str(tmp_path / "b"), env=env) as b,
    ):
        for base in (a, b):
            assert httpx.get(f"{base}/media/shared.txt").content == b"version one"
        asyncio.run(_put(store_url, "shared.txt", b"version two"))
        deadline = time.monotonic() + PROPAGATION_LIMIT_SECONDS
        for base in (a, b):
            while httpx.get(f"{base}/media/shared.txt").content != b"version two":
                assert time.monotonic() < deadline, f"{base} still serves the old version"
                time.sleep(0.01)


async def _put(url: str, key: str, data: bytes) -> None:
    async with open_store(url) as store:
        await store.put(key, data)


async def test_a_missing_key_costs_one_query_while_the_feed_is_healthy(store_url: str, tmp_path: Path) -> None:
    """A flood of requests for absent keys must not become a flood of queries; the feed says when one appears."""
    async with open_store(store_url) as store, open_store(store_url) as writer:
        app = ServeFiles(None, db=store, cache_dir=tmp_path / "cache")
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
                await app.service.start()  # readiness reports the state, it does not wait for a start-up
                assert (await client.get("/_servefiles/ready")).json()["reason"] == "ready"  # feed connected
                calls = count_store_reads(store)
                for _ in range(50):
                    assert (await client.get("/media/nothing-here.png")).status_code == 404
                assert calls == ["_locate_head"], calls  # one metadata query (with the content, had it been there)
                await writer.put("nothing-here.png", b"now it is")

                async def appeared() -> bool:
                    return (await client.get("/media/nothing-here.png")).status_code == 200

                await until(appeared)
                assert (await client.get("/media/nothing-here.png")).content == b"now it is"
        finally:
            await app.aclose()


async def test_a_database_restored_from_a_backup_is_served_as_it_is_now(tmp_path: Path) -> None:
    """A database whose history went back (here a SQLite file restored from a copy; on PostgreSQL a
    promoted standby, tests/test_failover.py): its last version is below the cursor the frontend
    saved, so nothing the frontend cached is vouched for; every copy is dropped."""
    db = tmp_path / "files.db"
    async with open_store(f"sqlite:///{db}") as store:
        await store.put("a.txt", b"in the backup")
    backup = db.read_bytes()
    async with open_store(f"sqlite:///{db}") as store:
        await store.put("a.txt", b"after the backup")
    async with frontend(f"sqlite:///{db}", tmp_path / "cache", cache_min_uses=1) as (_, client):
        assert (await client.get("/media/a.txt")).content == b"after the backup"  # now on disk
    db.write_bytes(backup)
    async with frontend(f"sqlite:///{db}", tmp_path / "cache", cache_min_uses=1) as (_, client):
        assert (await client.get("/media/a.txt")).content == b"in the backup"


async def test_the_listener_stops_when_cancelled_as_a_notification_arrives(pg_url: str) -> None:
    """Closing a frontend cancels its feed's ``wake_ups``; a cancel that lands in the same few loop
    turns as a commit's NOTIFY must still stop it (Python 3.11's ``asyncio.wait_for`` returned the
    notification instead, and ``close()`` waited forever). Each round cancels a few turns later."""
    async with open_store(pg_url) as store, open_store(pg_url) as writer:
        async def listen(listening: asyncio.Event) -> None:
            async for _ in store.wake_ups(5.0):
                listening.set()

        for round_ in range(60):
            listening = asyncio.Event()
            task = asyncio.create_task(listen(listening))
            await listening.wait()
            await writer.put("k.txt", b"%d" % round_)  # its NOTIFY arrives about now
            for _ in range(round_ % 12):
                await asyncio.sleep(0)
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=10)  # a listener that missed the cancel never ends
            assert done, f"round {round_}: the cancelled listener went on listening"
