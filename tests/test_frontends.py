"""Several real frontends (``servefiles serve`` processes, each with its own cache dir)
against one real PostgreSQL: one truth across all of them."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from servefiles import open_store

from .servers import Frontend, running
from .tcp_proxy import TcpProxy, proxy_for, with_netloc

LIMIT_SECONDS = 5.0  # generous for a loaded CI machine; benchmarks/feed_propagation.py measures the real delay


def store(url: str, action: str, key: str, data: bytes = b"") -> str:
    """Put or delete through the store API (HTTP uploads are another issue); returns the new sha256."""

    async def go() -> str:
        async with open_store(url) as opened:
            if action == "put":
                return (await opened.put(key, data)).sha256
            await opened.delete(key)
            return ""

    return asyncio.run(go())


def wait_for(check: Callable[[], bool], seconds: float = LIMIT_SECONDS, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what} not reached in {seconds} s"
        time.sleep(0.01)


def serves(frontend: Frontend, key: str, data: bytes | None) -> bool:
    """Whether ``frontend`` now answers ``key`` with ``data`` (None: with 404); never with mixed bytes."""
    response = httpx.get(f"{frontend.base}/media/{key}", timeout=10)
    if data is None:
        return response.status_code == 404
    if response.status_code != 200:
        return False
    assert hashlib.sha256(response.content).hexdigest() == response.headers["etag"].strip('"')
    return response.content == data


@contextlib.contextmanager
def frontends(count: int, url: str, tmp_path: Path, *extra: str) -> Iterator[list[Frontend]]:
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(running("--db", url, "--cache-dir", str(tmp_path / f"cache{n}"), "--metrics", *extra))
            for n in range(count)
        ]


def test_put_replace_and_delete_propagate_to_every_frontend(pg_url: str, tmp_path: Path) -> None:
    with frontends(3, pg_url, tmp_path) as fleet:
        v1 = os.urandom(400_000)
        store(pg_url, "put", "news/cover.jpg", v1)
        for frontend in fleet:
            wait_for(lambda f=frontend: serves(f, "news/cover.jpg", v1), what="put")
        v2 = os.urandom(400_000)
        store(pg_url, "put", "news/cover.jpg", v2)
        for frontend in fleet:
            wait_for(lambda f=frontend: serves(f, "news/cover.jpg", v2), what="replace")
        store(pg_url, "delete", "news/cover.jpg")
        for frontend in fleet:
            wait_for(lambda f=frontend: serves(f, "news/cover.jpg", None), what="delete")


def test_a_restarted_frontend_catches_up_on_what_it_missed(pg_url: str, tmp_path: Path) -> None:
    with frontends(2, pg_url, tmp_path) as (steady, restarting):
        store(pg_url, "put", "a.txt", b"a1")
        store(pg_url, "put", "b.txt", b"b1")
        for key, data in (("a.txt", b"a1"), ("b.txt", b"b1")):
            assert serves(restarting, key, data) and serves(steady, key, data)
        restarting.kill()  # a crash: no shutdown code runs
        store(pg_url, "put", "a.txt", b"a2")
        store(pg_url, "delete", "b.txt")
        restarting.start()  # same cache dir, same persisted cursor
        assert serves(restarting, "a.txt", b"a2")  # caught up before it served anything
        assert serves(restarting, "b.txt", None)
        assert serves(steady, "a.txt", b"a2") and serves(steady, "b.txt", None)


def test_frontends_recover_when_their_listening_connections_are_killed(pg_url: str, tmp_path: Path) -> None:
    with frontends(2, pg_url, tmp_path) as fleet:
        store(pg_url, "put", "k.txt", b"one")
        for frontend in fleet:
            assert serves(frontend, "k.txt", b"one")

        async def kill_listeners() -> int:
            admin = await asyncpg.connect(pg_url)
            try:
                return int(await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                ))  # fmt: skip
            finally:
                await admin.close()

        assert asyncio.run(kill_listeners()) >= 2
        store(pg_url, "put", "k.txt", b"two")  # while nobody listens
        for frontend in fleet:
            wait_for(lambda f=frontend: serves(f, "k.txt", b"two"), seconds=15, what="catch-up after the kill")
            wait_for(lambda f=frontend: f.metric("servefiles_feed_connected") == 1, seconds=15,
                     what="feed healthy again")  # fmt: skip


def test_prefetch_puts_new_versions_on_disk_before_any_request(pg_url: str, tmp_path: Path) -> None:
    with frontends(2, pg_url, tmp_path, "--prefetch") as fleet:
        data = os.urandom(3_000_000)
        store(pg_url, "put", "video.mp4", data)
        for frontend in fleet:
            wait_for(lambda f=frontend: f.metric("servefiles_store_fetches_total") == 1, what="prefetch")
            assert serves(frontend, "video.mp4", data)
            assert frontend.metric("servefiles_misses_total") == 0


@pytest.fixture
def proxy(pg_url: str) -> Iterator[TcpProxy]:
    """A proxy to PostgreSQL on its own event loop thread, so real frontends can go through it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    tcp = proxy_for(pg_url)
    asyncio.run_coroutine_threadsafe(tcp.start(), loop).result(10)
    tcp.loop = loop  # type: ignore[attr-defined]
    yield tcp
    asyncio.run_coroutine_threadsafe(tcp.cut(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def in_proxy_loop(proxy: TcpProxy, action: str) -> None:
    asyncio.run_coroutine_threadsafe(getattr(proxy, action)(), proxy.loop).result(10)  # type: ignore[attr-defined]


def test_service_through_a_database_outage_and_recovery(pg_url: str, proxy: TcpProxy, tmp_path: Path) -> None:
    via_proxy = with_netloc(pg_url, f"127.0.0.1:{proxy.port}")
    store(pg_url, "put", "cached.txt", b"before")
    store(pg_url, "put", "cold.txt", b"cold")
    with frontends(2, via_proxy, tmp_path, "--freshness", "0.2") as fleet:
        for frontend in fleet:
            assert serves(frontend, "cached.txt", b"before")
        in_proxy_loop(proxy, "cut")
        for frontend in fleet:
            wait_for(lambda f=frontend: f.metric("servefiles_feed_connected") == 0, what="feed noticed the outage")
        time.sleep(0.3)  # past the freshness interval that applies while the feed is down
        for frontend in fleet:
            stale = httpx.get(f"{frontend.base}/media/cached.txt", timeout=10)
            assert stale.status_code == 200 and stale.content == b"before"
            assert stale.headers["x-servefiles-stale"] == "store-unavailable"
            started = time.monotonic()
            cold = httpx.get(f"{frontend.base}/media/cold.txt", timeout=30)
            assert cold.status_code == 503 and "retry-after" in cold.headers
            assert time.monotonic() - started < 10
        store(pg_url, "put", "cached.txt", b"after")  # changed during the outage
        in_proxy_loop(proxy, "restore")
        for frontend in fleet:
            wait_for(lambda f=frontend: serves(f, "cold.txt", b"cold"), seconds=30, what="recovery")
            wait_for(lambda f=frontend: serves(f, "cached.txt", b"after"), seconds=30, what="catch-up")
