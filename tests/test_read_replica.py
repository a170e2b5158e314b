"""A real read replica: a hot standby whose replay is paused (it lags), or which is stopped.

Content fetches go to the replica (``read_db``); metadata always comes from the primary. The
tests share one primary/standby pair (tests/pg_pair.py) and leave the standby running and
replaying when they end. Which server read a file's chunks is told by the servers themselves:
``pg_stat_activity`` keeps each backend's last query and when it started.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from servefiles import ServeFiles, open_store

from .ha_tools import frontend, pair_with_database, wait_for
from .pg_pair import PgPair, sql

pytestmark = pytest.mark.postgres

BIG = 1_500_000
"""Larger than the first chunk a miss fetches with its metadata: the rest comes from the replica."""
LAST_CHUNK_READ = """
    SELECT coalesce(max(query_start) > $1::timestamptz, false) FROM pg_stat_activity
    WHERE datname = current_database() AND query LIKE 'SELECT data FROM servefiles_chunks%'"""


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[PgPair, str]]:
    with pair_with_database() as started:
        yield started


def _payload(seed: str) -> bytes:
    return hashlib.sha256(seed.encode()).digest() * (BIG // 32)


async def _now(dsn: str) -> object:
    return await sql(dsn, "SELECT clock_timestamp()")


async def _read_chunks_since(dsn: str, since: object) -> bool:
    return bool(await sql(dsn, LAST_CHUNK_READ, since))


async def test_a_lagging_replica_never_serves_an_old_or_missing_file(pair: tuple[PgPair, str], tmp_path: Path) -> None:
    servers, database = pair
    primary, replica = servers.primary.dsn(database), servers.standby.dsn(database)
    async with open_store(primary) as store:
        await store.put("doc.bin", _payload("v1"))
        await servers.wait_replayed()
        await servers.pause_replay()
        try:
            v2, added = _payload("v2"), _payload("added")
            await store.put("doc.bin", v2)  # the replica still has v1's chunks, not v2's
            await store.put("added.bin", added)  # the replica has no row of it at all
            # disk_bytes=1: nothing is cached, every request below reads the store
            app = ServeFiles(None, db=primary, read_db=replica, cache_dir=tmp_path / "cache", disk_bytes=1)
            try:
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
                    since = await _now(primary)
                    for key, data in (("doc.bin", v2), ("added.bin", added)):
                        response = await client.get(f"/media/{key}")
                        assert response.status_code == 200 and response.content == data, key
                    assert await _read_chunks_since(primary, since), "the primary had what the replica lacks"

                    await servers.resume_replay()
                    await servers.wait_replayed()
                    since = await _now(replica)
                    response = await client.get("/media/doc.bin")
                    assert response.status_code == 200 and response.content == v2
                    assert await _read_chunks_since(replica, since), "the replica reads again once it caught up"
            finally:
                await app.aclose()
        finally:
            await servers.resume_replay()


def test_with_the_replica_down_a_frontend_starts_serves_from_the_primary_and_returns_to_it(
    pair: tuple[PgPair, str], tmp_path: Path
) -> None:
    servers, database = pair
    primary, replica = servers.primary.dsn(database), servers.standby.dsn(database)
    data = _payload("down")

    async def put() -> None:
        async with open_store(primary) as store:
            await store.put("while-down.bin", data)

    asyncio.run(put())
    servers.standby.stop_immediately()
    # Nothing is written to disk (a disk tier smaller than the file, min uses 255): every GET reads the store.
    server = frontend(primary, tmp_path / "cache", "--read-db", replica, "--cache-min-uses", "255",
                      "--cache-size", str(BIG // 2))  # fmt: skip
    try:
        server.start()  # starts although the replica does not answer
        for _ in range(20):
            response = httpx.get(f"{server.base}/media/while-down.bin", timeout=10)
            assert response.status_code == 200 and response.content == data
        log = server.output()
        assert log.count("read replica") == 1, log  # said once, not per request

        servers.standby.start()
        since = asyncio.run(_now(primary))

        def replica_reads() -> bool:
            response = httpx.get(f"{server.base}/media/while-down.bin", timeout=10)
            assert response.status_code == 200 and response.content == data
            return asyncio.run(_read_chunks_since(replica, since))

        wait_for(replica_reads, 15, "reads back on the replica")
        log = server.output()
        assert "answers again" in log and "Traceback" not in log, log
    finally:
        server.stop()
        servers.standby.start_if_stopped()
