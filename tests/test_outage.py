"""A database outage, produced for real: the frontend reaches PostgreSQL through a proxy we cut."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from servefiles import ServeFiles, open_store

from .instrument import count_store_reads
from .tcp_proxy import TcpProxy, with_netloc
from .test_feed import until


async def test_service_through_a_database_outage_and_recovery(pg_url: str, pg_proxy: TcpProxy, tmp_path: Path) -> None:
    async with open_store(pg_url) as direct, open_store(with_netloc(pg_url, f"127.0.0.1:{pg_proxy.port}")) as proxied:
        await direct.put("cached.txt", b"version one")
        await direct.put("cold.txt", b"never requested before the outage")
        app = ServeFiles(
            None, db=proxied, cache_dir=tmp_path / "cache", freshness_seconds=0.1, feed_check_seconds=0.2
        )
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
                assert (await client.get("/media/cached.txt")).content == b"version one"
                feed = app.service.feed
                assert feed is not None and feed.healthy

                await pg_proxy.cut()

                async def feed_down() -> bool:
                    return not feed.healthy

                await until(feed_down, seconds=5)
                await asyncio.sleep(0.15)  # past the time-based freshness that applies while the feed is down
                calls = count_store_reads(proxied)

                # Cached: still served, and marked as possibly stale.
                stale = await client.get("/media/cached.txt")
                assert stale.status_code == 200 and stale.content == b"version one"
                assert stale.headers["x-servefiles-stale"] == "store-unavailable"
                assert stale.headers["x-content-type-options"] == "nosniff"
                assert app.service.metrics.value("servefiles_stale_served_total") >= 1

                # Uncached: a prompt 503 with Retry-After, never a hang.
                started = time.monotonic()
                for _ in range(30):
                    cold = await client.get("/media/cold.txt")
                    assert cold.status_code == 503
                    assert int(cold.headers["retry-after"]) > 0
                    assert cold.headers["x-content-type-options"] == "nosniff"
                assert time.monotonic() - started < 10
                # The circuit breaker kept most of those 30 away from the database.
                assert len(calls) <= 5, calls

                await direct.put("cached.txt", b"version two")  # a change made during the outage
                await pg_proxy.restore()

                async def cold_served() -> bool:
                    return (await client.get("/media/cold.txt")).status_code == 200

                async def caught_up() -> bool:
                    return (await client.get("/media/cached.txt")).content == b"version two"

                async def feed_up() -> bool:
                    return feed.healthy

                await until(cold_served, seconds=30)
                await until(caught_up, seconds=30)
                await until(feed_up, seconds=30)
        finally:
            await app.aclose()
