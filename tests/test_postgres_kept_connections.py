"""The PostgreSQL store's kept connections: reused while fresh, closed once idle too long or lost,
and none used or left behind once :meth:`PostgresStore.close` has begun.

A connection that served a statement cleanly is kept out of asyncpg's pool for the next one
(servefiles.store.postgres, ``_connection``). Each rule here runs against the real PostgreSQL and
reads the server's own word (``pg_backend_pid()``, ``pg_stat_activity``); interleavings with
``close()`` are driven with real tasks and awaits, nothing of asyncpg or PostgreSQL is mocked.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from servefiles import FileMeta, StoreUnavailable
from servefiles.store.base import CHUNK_SIZE, READ_BATCH_CHUNKS
from servefiles.store.postgres import PostgresStore

SHORT_IDLE_SECONDS = 0.2
"""The kept-idle limit these tests set, so a connection outlives it after a short sleep."""


async def open_named(pg_url: str, pool_size: int = 3) -> tuple[PostgresStore, str]:
    """A store whose connections carry an application name of their own, so ``pg_stat_activity``
    tells its backends from everyone else's (other tests share the server)."""
    application = f"servefiles_kept_{uuid.uuid4().hex[:8]}"
    return await PostgresStore.open(f"{pg_url}&application_name={application}", pool_size=pool_size), application


async def backend_pid(store: PostgresStore) -> int:
    """The server process that ran one statement of ``store``'s."""
    async with store._connection() as conn:
        pid: int = await conn.fetchval("SELECT pg_backend_pid()")
        return pid


async def backends(pg_url: str, application: str) -> set[int]:
    """The server processes connected with ``application`` right now."""
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = $1", application)
        return {row["pid"] for row in rows}
    finally:
        await conn.close()


async def until_gone(pg_url: str, application: str, pids: set[int] | None = None, seconds: float = 10.0) -> None:
    """Wait until none of ``pids`` (None: no process of ``application``) is connected any more: a
    backend exits soon after its client closes the socket, not at once. A TimeoutError if one
    still is after ``seconds``."""
    async with asyncio.timeout(seconds):
        while True:
            found = await backends(pg_url, application)
            if not (found if pids is None else found & pids):
                return
            await asyncio.sleep(0.02)


async def begin_close(store: PostgresStore) -> asyncio.Task[None]:
    """Start ``store.close()`` and let it run to its first wait (giving a kept connection back)."""
    closing = asyncio.create_task(store.close())
    await asyncio.sleep(0)
    assert not closing.done()
    return closing


async def end_close(store: PostgresStore, closing: asyncio.Task[None] | None) -> None:
    """A test's clean-up: close the store if the test never began to, else stop waiting for it."""
    if closing is None:
        await store.close()
    else:
        closing.cancel()


def kept(store: PostgresStore) -> list[asyncpg.Connection]:
    return [conn for conn, _used in store._idle]


# -- idle expiry ----------------------------------------------------------------------------------


async def test_a_connection_used_within_the_limit_serves_the_next_statement(pg_url: str) -> None:
    store = await PostgresStore.open(pg_url, pool_size=3)
    try:
        store.kept_idle_seconds = 5.0
        first = await backend_pid(store)
        assert len(store._idle) == 1, "a clean statement's connection is kept aside"
        await asyncio.sleep(SHORT_IDLE_SECONDS)
        assert await backend_pid(store) == first
    finally:
        await store.close()


async def test_a_connection_idle_past_the_limit_is_closed_not_reused(pg_url: str) -> None:
    """Given back to the pool instead, it would be the next statement's anyway: asyncpg's pool
    hands out its most recently released live connection first, and its own inactivity limit
    (300 s) restarts at the release. So it is closed, and its server process goes."""
    store, application = await open_named(pg_url)
    try:
        store.kept_idle_seconds = SHORT_IDLE_SECONDS
        first = await backend_pid(store)
        await asyncio.sleep(SHORT_IDLE_SECONDS * 1.5)
        second = await backend_pid(store)
        assert second != first, "a connection idle past the limit served the next statement"
        await until_gone(pg_url, application, {first})
        assert second in await backends(pg_url, application)
        assert await backend_pid(store) == second  # the new one is kept in turn
    finally:
        await store.close()


async def test_a_kept_connection_lost_meanwhile_is_replaced_without_failing_a_statement(pg_url: str) -> None:
    """A kept connection whose server process went (a restart, ``pg_terminate_backend``): once the
    store has seen the socket close, the next statement runs on a new connection instead of
    failing with a 503. (asyncpg hands a lost connection's slot back to the pool itself and
    detaches the store's handle, whose methods then raise InterfaceError.)"""
    store, application = await open_named(pg_url)
    try:
        first = await backend_pid(store)
        (conn,) = kept(store)
        killer = await asyncpg.connect(pg_url)
        try:
            assert await killer.fetchval("SELECT pg_terminate_backend($1, 10000)", first)
        finally:
            await killer.close()
        await until_gone(pg_url, application, {first})
        async with asyncio.timeout(10):
            while True:  # until the event loop has read the socket's end
                try:
                    if conn.is_closed():
                        break
                except asyncpg.InterfaceError:
                    break  # detached: asyncpg released it when it saw the connection lost
                await asyncio.sleep(0.01)
        assert await backend_pid(store) != first
    finally:
        await store.close()


async def test_a_statement_that_fails_on_a_kept_connection_gives_it_back_not_keeps_it(pg_url: str) -> None:
    """A kept connection's statement that raises (here a division by zero, PostgreSQL's own
    error) goes back through the pool, which resets it; the error is the caller's, not a 503;
    the next statement runs as usual."""
    store = await PostgresStore.open(pg_url, pool_size=3)
    try:
        await backend_pid(store)
        assert len(store._idle) == 1
        with pytest.raises(asyncpg.DivisionByZeroError):
            await store._fetch("SELECT 1 / 0")
        assert store._idle == [], "a connection whose statement failed was kept"
        assert store._pool.get_idle_size() == store._pool.get_size(), "nor was it given back to the pool"
        assert [row[0] for row in await store._fetch("SELECT 41 + 1")] == [42]
        assert len(store._idle) == 1
    finally:
        async with asyncio.timeout(10):  # a connection leaked out of the pool would make close() wait for ever
            await store.close()


async def test_a_kept_connection_lost_during_a_statement_is_a_store_unavailable_then_replaced(pg_url: str) -> None:
    """The server process goes while a statement runs on a kept connection: the statement fails with
    StoreUnavailable (a 503 with Retry-After), nothing is kept, and the next statement runs on a
    new connection."""
    store, _ = await open_named(pg_url)
    try:
        first = await backend_pid(store)
        sleeping = asyncio.create_task(store._fetch("SELECT pg_sleep(30)"))
        killer = await asyncpg.connect(pg_url)
        try:
            async with asyncio.timeout(10):
                while True:  # until the statement runs on the server
                    if await killer.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND query LIKE 'SELECT pg_sleep%'", first
                    ):
                        break
                    await asyncio.sleep(0.01)
            assert await killer.fetchval("SELECT pg_terminate_backend($1, 10000)", first)
        finally:
            await killer.close()
        with pytest.raises(StoreUnavailable):
            async with asyncio.timeout(10):
                await sleeping
        assert store._idle == []
        assert store._pool.get_idle_size() == store._pool.get_size(), "the lost connection's slot is back in the pool"
        assert await backend_pid(store) != first
    finally:
        async with asyncio.timeout(10):  # a connection leaked out of the pool would make close() wait for ever
            await store.close()


# -- close() --------------------------------------------------------------------------------------


async def test_a_statement_asked_for_once_close_has_begun_is_refused(pg_url: str) -> None:
    """``close()`` gives the kept connections back before it closes the pool, awaiting each; a
    statement that starts meanwhile must not take a connection from the pool that is about to
    close (which then waits for it): the store is unusable from the moment close() is called."""
    store = await PostgresStore.open(pg_url, pool_size=3)
    closing: asyncio.Task[None] | None = None
    try:
        await store.put("k.bin", b"content")
        gate = asyncio.Event()

        async def held() -> None:
            async with store._connection() as conn:  # two at once: both kept aside after
                await gate.wait()
                await conn.fetchval("SELECT 1")

        both = asyncio.gather(held(), held())
        await asyncio.sleep(0.05)
        gate.set()
        await both
        assert len(store._idle) == 2
        spare = await store._pool.acquire()  # a third live connection, idle in the pool itself
        await store._pool.release(spare)
        closing = await begin_close(store)  # it awaits the first kept connection's release
        with pytest.raises(StoreUnavailable):
            await store.stat("k.bin")
        async with asyncio.timeout(10):
            await closing
    finally:
        await end_close(store, closing)


async def test_a_close_cancelled_part_way_leaves_no_connection_out_of_the_pool(pg_url: str) -> None:
    """A shutdown that gives up on ``close()`` (a timeout, a second signal) cancels it while it
    gives kept connections back. What it had not given back yet must still be found by the next
    ``close()``, which then finishes and leaves no server process behind; lost instead, they
    stay checked out of the pool for ever, and the pool's close waits for them for ever."""
    store, application = await open_named(pg_url, pool_size=4)
    gate = asyncio.Event()

    async def held() -> None:
        async with store._connection() as conn:  # three at once: all kept aside after
            await gate.wait()
            await conn.fetchval("SELECT 1")

    crowd = asyncio.gather(held(), held(), held())
    await asyncio.sleep(0.05)
    gate.set()
    await crowd
    pids = {conn.get_server_pid() for conn in kept(store)}
    assert len(pids) == 3
    first = asyncio.create_task(store.close())
    await asyncio.sleep(0)  # inside the first release
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    try:
        async with asyncio.timeout(10):
            await store.close()
    except TimeoutError:
        store._pool.terminate()
        raise
    await until_gone(pg_url, application, pids)


async def test_close_while_a_statement_retires_an_expired_connection_leaves_nothing_behind(pg_url: str) -> None:
    """The interleaving the code review named: a statement finds a kept connection idle too long
    and retires it while ``close()`` runs. The statement gets a connection and its answer or
    StoreUnavailable; close() finishes; no server process of the store's is left."""
    store, application = await open_named(pg_url)
    await store.put("k.bin", b"content")
    store.kept_idle_seconds = SHORT_IDLE_SECONDS
    await backend_pid(store)
    await asyncio.sleep(SHORT_IDLE_SECONDS * 1.5)
    statement = asyncio.create_task(store.stat("k.bin"))
    await asyncio.sleep(0)  # the statement has started: the old connection retired, a new one on its way
    async with asyncio.timeout(10):
        await store.close()
        (result,) = await asyncio.gather(statement, return_exceptions=True)
    assert isinstance(result, StoreUnavailable) or (isinstance(result, FileMeta) and result.size == 7), result
    await until_gone(pg_url, application)


async def test_a_read_from_the_replica_asked_for_once_close_has_begun_is_refused(pg_url: str) -> None:
    """The same rule for content read from the read replica, whose pool close() closes last: a
    stream's next batch of chunks must not be fetched from it while the store is being closed.
    (The same database serves as the "replica" here: what is tested is who may use its pool.)"""
    store = await PostgresStore.open(pg_url, pool_size=3, read_dsn=pg_url)
    closing: asyncio.Task[None] | None = None
    try:
        data = bytes(range(256)) * (2 * READ_BATCH_CHUNKS * CHUNK_SIZE // 256)  # two batches
        await store.put("big.bin", data)
        head = await store.fetch_head("big.bin", 0)
        assert head is not None
        stream = store.read_from(head)
        got = [await anext(stream) for _ in range(READ_BATCH_CHUNKS)]  # the first batch, one chunk a piece
        assert b"".join(got) == data[: READ_BATCH_CHUNKS * CHUNK_SIZE]
        assert store._idle, "a connection is kept: close() awaits its release before closing the pools"
        closing = await begin_close(store)
        with pytest.raises(StoreUnavailable):
            await anext(stream)  # the second batch
        async with asyncio.timeout(10):
            await closing
    finally:
        await end_close(store, closing)
