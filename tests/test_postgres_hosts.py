"""PostgreSQL with more than one host: multi-host DSNs and a read replica for content."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from servefiles import ServeFiles, open_store

from .servers import free_port
from .tcp_proxy import TcpProxy, with_netloc


async def test_a_multi_host_dsn_fails_over_past_a_dead_host(pg_url: str, tmp_path: Path) -> None:
    real = urlsplit(pg_url).netloc
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    url = with_netloc(pg_url, f"{dead},{real}")
    async with open_store(url) as store:
        meta = await store.put("multi.txt", b"through the second host")
        assert (await store.stat("multi.txt")) == meta
        woken = store.wake_ups(1.0)
        await woken.__anext__()  # the change feed's LISTEN connection fails over too
        await woken.aclose()


async def test_content_is_read_from_the_replica(pg_url: str, pg_proxy: TcpProxy, tmp_path: Path) -> None:
    data = os.urandom(1_500_000)
    replica_url = with_netloc(pg_url, f"127.0.0.1:{pg_proxy.port}")
    async with open_store(pg_url) as primary:
        await primary.put("big.bin", data)
    # disk_bytes=1: nothing is cached, so every request below reads the store
    app = ServeFiles(None, db=pg_url, read_db=replica_url, cache_dir=tmp_path / "cache", disk_bytes=1)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
            ranged = await client.get("/media/big.bin", headers={"Range": "bytes=1000000-1000999"})
            assert ranged.content == data[1_000_000:1_001_000]
            assert pg_proxy.accepted >= 1
            await pg_proxy.cut()  # the replica goes away: content comes from the primary
            assert (await client.get("/media/big.bin", headers={"Range": "bytes=5-9"})).content == data[5:10]
    finally:
        await app.aclose()


async def test_sqlite_refuses_a_read_replica(tmp_path: Path) -> None:
    from servefiles import InvalidURL

    with pytest.raises(InvalidURL):
        async with open_store(f"sqlite:///{tmp_path}/x.db", read_url="postgresql://127.0.0.1/x"):
            pass
