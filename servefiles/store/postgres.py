"""The production store: PostgreSQL through an asyncpg connection pool.

Content lives in ``servefiles_chunks`` as uncompressed bytea rows (uploads
are mostly already-compressed media; EXTERNAL storage also makes them cheap
to read). An upload is staged, then published, as in the SQLite store: its
chunks are committed in short transactions under a fresh blob id registered
in ``servefiles_uploads`` (no pooled connection waits on a slow client between
them), and one last transaction switches the key's row to that blob. Until
then the old version stays readable; an upload that dies half-way is freed at
once, or swept by the next open once it has been idle for an hour.

Versions are handed out under a transaction-scoped advisory lock held until
commit, so versions become visible in the order they were taken: a change
feed that has seen version V can never later meet a smaller one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg

from ..errors import InvalidURL, SchemaTooNew, StoreUnavailable, UploadAborted
from . import sql
from .base import (
    STALE_UPLOAD_SECONDS,
    HashedChunks,
    Store,
    WritePrecondition,
    check_expectation,
    staged_batches,
)
from .dsn import mask_dsn
from .types import BlobRef, Change, FileMeta

logger = logging.getLogger("servefiles")

SCHEMA_VERSION = 2
"""1: no ``last_modified`` column (``updated_at`` itself kept the one-second rule); 2: it has one."""
COMMAND_TIMEOUT_SECONDS = 15.0
"""No statement waits longer on a database that stopped answering: a request gets a 503, not a hang."""
KEPT_IDLE_SECONDS = 60.0
"""A connection kept out of the pool between statements is closed after this long unused (seconds):
well inside the few minutes after which NATs and firewalls forget a silent flow."""
REPLICA_RETRY_SECONDS = 2.0
"""While the read replica does not answer, content is read from the primary, and one request
tries the replica again this often: reads go back to it within that time of its return."""
INIT_LOCK = 0x5345_5256_4649_0001  # "SERVFI" + 1: serialises schema set-up
WRITE_LOCK = 0x5345_5256_4649_0002  # serialises version hand-out until commit

# -- SQL --------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS servefiles_meta (name text PRIMARY KEY, value text NOT NULL);
CREATE SEQUENCE IF NOT EXISTS servefiles_version_seq;
CREATE SEQUENCE IF NOT EXISTS servefiles_blob_seq;
CREATE TABLE IF NOT EXISTS servefiles_files (
    key text COLLATE "C" PRIMARY KEY,
    version bigint NOT NULL UNIQUE,
    deleted boolean NOT NULL DEFAULT false,
    blob_id bigint,
    chunk_size integer,
    size bigint NOT NULL DEFAULT 0,
    sha256 text,
    content_type text,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    last_modified timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS servefiles_uploads (
    blob_id bigint PRIMARY KEY,
    touched_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS servefiles_chunks (
    blob_id bigint NOT NULL,
    seq integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (blob_id, seq)
);
"""
# Run once, when the schema is first created: ALTER TABLE takes an ACCESS EXCLUSIVE
# lock, so running it on every open would make a starting frontend wait for every
# upload in progress, and every reader wait behind it.
SET_CHUNK_STORAGE = "ALTER TABLE servefiles_chunks ALTER COLUMN data SET STORAGE EXTERNAL"
# Schema 1 -> 2: add the validator time, taken from updated_at, which schema 1 kept in a
# later whole second than the key's previous version (the rule last_modified keeps now).
# Once, under INIT_LOCK: ALTER TABLE takes an ACCESS EXCLUSIVE lock.
ADD_LAST_MODIFIED = """
    ALTER TABLE servefiles_files ADD COLUMN IF NOT EXISTS last_modified timestamptz;
    UPDATE servefiles_files SET last_modified = to_timestamp(floor(extract(epoch FROM updated_at)))
        WHERE last_modified IS NULL;
    ALTER TABLE servefiles_files ALTER COLUMN last_modified SET NOT NULL"""
LOCK = "SELECT pg_advisory_xact_lock($1)"
CHANGES_CHANNEL = "servefiles_changes"
NOTIFY = f"SELECT pg_notify('{CHANGES_CHANNEL}', $1::bigint::text)"
INIT_STORE_ID = """
    INSERT INTO servefiles_meta (name, value) VALUES ('store_id', replace(gen_random_uuid()::text, '-', ''))
    ON CONFLICT (name) DO NOTHING"""
GET_STORE_ID = "SELECT value FROM servefiles_meta WHERE name = 'store_id'"
SAFETY_QUERY = "SELECT 1"
# The cluster and its timeline: a promoted standby starts a new timeline at once, so the primary
# asks for the timeline it writes WAL on (the first 8 hex digits of its current WAL file's
# name); pg_control_checkpoint()'s timeline would name the old one until the next checkpoint.
# A standby (a DSN without target_session_attrs) answers with its last restartpoint's.
HISTORY_ID = """
    SELECT (SELECT system_identifier FROM pg_control_system())::text || '/' ||
        CASE WHEN pg_is_in_recovery() THEN (SELECT timeline_id FROM pg_control_checkpoint())
             ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END"""
GET_SCHEMA_VERSION = "SELECT value::int FROM servefiles_meta WHERE name = 'schema_version'"
SET_SCHEMA_VERSION = """
    INSERT INTO servefiles_meta (name, value) VALUES ('schema_version', $1::int::text)
    ON CONFLICT (name) DO UPDATE SET value = excluded.value"""
_META_COLUMNS = "key, version, sha256, size, content_type, created_at, updated_at, last_modified"
LOCATE = f"SELECT {_META_COLUMNS}, blob_id, chunk_size FROM servefiles_files WHERE key = $1 AND NOT deleted"
LOCATE_HEAD = sql.locate_head("$2::bigint", "$3", "$1")
FETCH_CHUNKS = "SELECT data FROM servefiles_chunks WHERE blob_id = $1 AND seq BETWEEN $2 AND $3 ORDER BY seq"
BEGIN_UPLOAD = """
    INSERT INTO servefiles_uploads (blob_id, touched_at) VALUES (nextval('servefiles_blob_seq'), clock_timestamp())
    RETURNING blob_id"""
TOUCH_UPLOAD = "UPDATE servefiles_uploads SET touched_at = clock_timestamp() WHERE blob_id = $1"
END_UPLOAD = "DELETE FROM servefiles_uploads WHERE blob_id = $1"
SWEEP_UPLOADS = """
    WITH stale AS (
        DELETE FROM servefiles_uploads WHERE touched_at < clock_timestamp() - make_interval(secs => $1)
        RETURNING blob_id
    )
    DELETE FROM servefiles_chunks WHERE blob_id IN (SELECT blob_id FROM stale)"""
INSERT_CHUNK = "INSERT INTO servefiles_chunks (blob_id, seq, data) VALUES ($1, $2, $3)"
DELETE_CHUNKS = "DELETE FROM servefiles_chunks WHERE blob_id = $1"
CURRENT_ROW = "SELECT blob_id, deleted, sha256 FROM servefiles_files WHERE key = $1"
# updated_at is the true time of the write (statement_timestamp(): one reading for the whole
# statement, taken under WRITE_LOCK); last_modified is its whole second, or the second after
# the key's previous version or tombstone if that is later (see FileMeta.last_modified).
_WRITE_SECOND = "to_timestamp(floor(extract(epoch FROM statement_timestamp())))"
UPSERT_FILE = f"""
    INSERT INTO servefiles_files AS f
        (key, version, deleted, blob_id, chunk_size, size, sha256, content_type, created_at, updated_at,
         last_modified)
    VALUES ($1, nextval('servefiles_version_seq'), false, $2, $3, $4, $5, $6, statement_timestamp(),
        statement_timestamp(), {_WRITE_SECOND})
    ON CONFLICT (key) DO UPDATE SET
        version = excluded.version, deleted = false, blob_id = excluded.blob_id,
        chunk_size = excluded.chunk_size, size = excluded.size, sha256 = excluded.sha256,
        content_type = excluded.content_type, updated_at = excluded.updated_at,
        last_modified = greatest(excluded.last_modified, f.last_modified + interval '1 second'),
        created_at = CASE WHEN f.deleted THEN excluded.created_at ELSE f.created_at END
    RETURNING {_META_COLUMNS}"""
TOMBSTONE = f"""
    UPDATE servefiles_files SET version = nextval('servefiles_version_seq'), deleted = true,
        blob_id = NULL, chunk_size = NULL, size = 0, sha256 = NULL, content_type = NULL,
        updated_at = statement_timestamp(),
        last_modified = greatest({_WRITE_SECOND}, last_modified + interval '1 second')
    WHERE key = $1
    RETURNING version"""
LIST = f"""
    SELECT {_META_COLUMNS} FROM servefiles_files
    WHERE NOT deleted AND (key > $1 OR (key = $1 AND NOT $2)) AND ($3::text IS NULL OR key < $3)
    ORDER BY key LIMIT $4"""
CHANGES = "SELECT key, version, deleted FROM servefiles_files WHERE version > $1 ORDER BY version LIMIT $2"
LAST_VERSION = "SELECT coalesce(max(version), 0) AS last_value FROM servefiles_files"

# Failures that mean "the database is not there right now", as opposed to a bug.
_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutdown, pg_terminate_backend
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, disk full
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
    asyncpg.exceptions.InvalidPasswordError,
    asyncpg.exceptions.InvalidCatalogNameError,  # the database does not exist
    asyncpg.InterfaceError,  # connection closed under us
    asyncpg.exceptions.InternalClientError,  # its protocol state broken by a connection killed mid-query
)


def _meta(row: asyncpg.Record) -> FileMeta:
    return FileMeta(
        row["key"], row["version"], row["sha256"], row["size"], row["content_type"],
        row["created_at"], row["updated_at"], row["last_modified"],
    )  # fmt: skip


class PostgresStore(Store):
    """A :class:`Store` in a PostgreSQL database."""

    notifies = True

    def __init__(self, dsn: str, pool: asyncpg.Pool, connect_timeout: float = 10.0) -> None:
        self.url = dsn
        self._where = mask_dsn(dsn)
        """The DSN as messages show it: without its password."""
        self._pool = pool
        self._idle: list[tuple[asyncpg.Connection, float]] = []
        """Connections this store holds out of the pool between statements (:meth:`_connection`)."""
        self._waiting = 0
        """Statements waiting for the pool to hand them a connection (then one is given back)."""
        self._closing = False
        self.kept_idle_seconds = KEPT_IDLE_SECONDS
        """How long (seconds) a kept connection may sit unused and still serve the next statement
        (:data:`KEPT_IDLE_SECONDS`; a test shortens it rather than wait a minute)."""
        self._connect_timeout = connect_timeout
        self._replica: ReadReplica | None = None
        self._history_hidden = False
        """The server refused to tell its timeline (said once, in :meth:`read_history_id`)."""

    @classmethod
    async def open(
        cls, dsn: str, *, read_dsn: str | None = None, pool_size: int = 10, connect_timeout: float = 10.0
    ) -> PostgresStore:
        """Connect a pool to ``dsn`` (and one to the read replica ``read_dsn``); make sure the schema is there.

        ``dsn`` may name several hosts (``postgresql://h1,h2/db?target_session_attrs=read-write``):
        asyncpg tries them in turn, so a fail-over to a promoted standby needs no change here.
        """
        pool = await _create_pool(dsn, pool_size, connect_timeout)
        store = cls(dsn, pool, connect_timeout)
        try:
            await store._init_schema()
            if read_dsn:
                store._replica = await ReadReplica.open(read_dsn, pool_size, connect_timeout)
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        """Refuse new statements at once, give the kept connections back, close the pools (which
        waits for the statements in progress). The kept connections are taken one at a time: a
        close() cancelled part-way (a shutdown that gave up) leaves the rest where the next call
        finds them, not checked out of the pool for ever (its close would wait for them for ever)."""
        self._closing = True
        while self._idle:
            conn, _used = self._idle.pop()
            await self._give_back(conn)
        await self._pool.close()
        if self._replica is not None:
            await self._replica.pool.close()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; connection-level failures become StoreUnavailable.

        A connection that served a statement cleanly is kept aside for the next one instead of
        going back to the pool (unless a statement waits for the pool): asyncpg's acquire and
        release each run a task of their own (``wait_for``, ``shield``). Measured in-process, a
        ``stat`` cost 392 µs of CPU through the pool and 194 µs this way (benchmarks/RESULTS.md,
        2026-11-30 evening). Anything else — an error, a cancellation, a connection left in a
        transaction or closed — goes back through the pool, which rolls back or terminates it.

        Once :meth:`close` has begun, no statement starts (StoreUnavailable): one that took a
        connection from the pool while close() gave the kept ones back would have run against a
        store being closed, and made the pool's close wait for it."""
        conn = None
        try:
            conn = await self._take()
            yield conn
        except BaseException as exc:
            await self._failed(conn, exc)
            raise
        await self._done(conn)

    async def _take(self) -> asyncpg.Connection:
        """A connection for a statement: a kept one when at hand (nothing awaited), else the pool's.
        StoreUnavailable once :meth:`close` has begun, before taking one and after waiting for the
        pool (then the connection goes straight back). Failures of the pool are the caller's to map
        (:meth:`_failed` with no connection)."""
        self._refuse_if_closing()
        conn = self._take_idle()
        if conn is not None:
            return conn
        self._waiting += 1
        try:
            conn = await self._pool.acquire(timeout=self._connect_timeout)
        finally:
            self._waiting -= 1
        if self._closing:  # close() began while this statement waited for the pool
            await self._give_back(conn)
            self._refuse_if_closing()
        return conn

    async def _failed(self, conn: asyncpg.Connection | None, exc: BaseException) -> None:
        """A statement on ``conn`` (None: none taken yet) raised ``exc``: the connection goes back
        through the pool (which rolls back or terminates it); a connection-level failure is raised
        as StoreUnavailable, anything else is left for the caller to re-raise."""
        if conn is not None:
            await self._give_back(conn)
        if isinstance(exc, _UNAVAILABLE):
            raise StoreUnavailable(f"PostgreSQL at {self._where}: {_reason(exc)}") from exc

    async def _done(self, conn: asyncpg.Connection) -> None:
        """``conn`` served its statements cleanly: kept aside for the next one, unless a statement
        waits in the pool for it, the store is closing, or it was lost or left in a transaction."""
        if self._waiting or self._closing or not _is_open(conn) or conn.is_in_transaction():
            await self._give_back(conn)  # to a statement waiting in the pool, or to be reset or closed
        else:
            self._idle.append((conn, time.monotonic()))

    def _take_idle(self) -> asyncpg.Connection | None:
        """A connection kept aside after a clean statement, if one is still open and was used
        within :attr:`kept_idle_seconds`; any other is closed on the spot.

        Closed, not given back to the pool: asyncpg's pool hands out its most recently released
        live connection first, and restarts its own inactivity limit (300 s) at the release, so
        one given back would serve the very next statement — a flow a NAT or firewall dropped
        silently after a lull would be met by it after all. ``terminate`` (what the pool itself
        does to an inactive connection) hands its slot back to the pool at once. No await here:
        :meth:`close` cannot run between the check and the use."""
        now = time.monotonic()
        while self._idle:
            conn, used = self._idle.pop()
            if now - used < self.kept_idle_seconds and _is_open(conn):
                return conn
            _terminate(conn)  # idle too long, or lost meanwhile (a restart, a fail-over)
        return None

    def _refuse_if_closing(self) -> None:
        """StoreUnavailable once :meth:`close` has begun (the store is unusable from then on, as
        :meth:`Store.close` says): checked before a statement takes a connection, and again after
        any await for one."""
        if self._closing:
            raise StoreUnavailable(f"PostgreSQL store at {self._where} is closed")

    async def _give_back(self, conn: asyncpg.Connection) -> None:
        try:
            await self._pool.release(conn)
        except Exception as exc:  # a connection that cannot be reset is terminated by the pool
            logger.debug("PostgreSQL connection released with an error: %s", exc)

    async def _init_schema(self) -> None:
        async with self._connection() as conn, conn.transaction():
            await conn.execute(LOCK, INIT_LOCK)
            await conn.execute(SCHEMA)
            found = await conn.fetchval(GET_SCHEMA_VERSION) or 0
            if found > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"the database at {self._where} has schema version {found}; "
                    f"this servefiles supports up to {SCHEMA_VERSION}"
                )
            if found < SCHEMA_VERSION:
                if found < 1:
                    await conn.execute(SET_CHUNK_STORAGE)
                await conn.execute(ADD_LAST_MODIFIED)
                await conn.execute(SET_SCHEMA_VERSION, SCHEMA_VERSION)
            await conn.execute(INIT_STORE_ID)
            self.store_id = await conn.fetchval(GET_STORE_ID)
        self.history_id = await self.read_history_id()
        async with self._connection() as conn:
            await conn.execute(SWEEP_UPLOADS, float(STALE_UPLOAD_SECONDS))

    # -- reads ------------------------------------------------------------------------

    async def _fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        """One statement's rows, under :meth:`_connection`'s rules without its context manager,
        whose async generator's enter and exit cost 7 µs of the 84 µs of CPU a miss's query took
        (best of 15 batches of 200, in process, 2026-12-01)."""
        conn = None
        try:
            conn = await self._take()
            rows: list[asyncpg.Record] = await conn.fetch(query, *args)
        except BaseException as exc:
            await self._failed(conn, exc)
            raise
        await self._done(conn)
        return rows

    async def _locate(self, key: str) -> tuple[FileMeta, BlobRef] | None:
        rows = await self._fetch(LOCATE, key)
        return (_meta(rows[0]), BlobRef(rows[0]["blob_id"], rows[0]["chunk_size"])) if rows else None

    async def _locate_head(
        self, key: str, max_bytes: int, whole: bool
    ) -> tuple[FileMeta, BlobRef, Sequence[bytes]] | None:
        """From the primary: the metadata must be the primary's (a replica may lag behind the feed)."""
        rows = await self._fetch(LOCATE_HEAD, key, max_bytes, whole)
        if not rows:
            return None
        chunks = [row["data"] for row in rows if row["data"] is not None]
        return _meta(rows[0]), BlobRef(rows[0]["blob_id"], rows[0]["chunk_size"]), chunks

    async def _fetch_chunks(self, blob_id: int, first: int, last: int) -> Sequence[bytes]:
        """Content comes from the read replica when there is one, else (or if it lags or is down) the primary.
        Not once :meth:`close` has begun: the replica's pool is closed last, and would serve meanwhile."""
        self._refuse_if_closing()
        if self._replica is not None:
            # A replica whose replay lags has no row (or not all rows) of a blob written since: the
            # primary has them. Chunks never change once written, so any row it has is the right one.
            rows = await self._replica.fetch(FETCH_CHUNKS, blob_id, first, last)
            if rows is not None and len(rows) == last - first + 1:
                return [row["data"] for row in rows]
        return [row["data"] for row in await self._fetch(FETCH_CHUNKS, blob_id, first, last)]

    async def _list(self, low: str, exclusive: bool, high: str | None, limit: int) -> list[FileMeta]:
        return [_meta(row) for row in await self._fetch(LIST, low, exclusive, high, limit)]

    async def _changes(self, since_version: int, limit: int) -> list[Change]:
        rows = await self._fetch(CHANGES, since_version, limit)
        return [Change(row["key"], row["version"], row["deleted"]) for row in rows]

    async def _last_version(self) -> int:
        rows = await self._fetch(LAST_VERSION)
        return int(rows[0]["last_value"])

    async def read_history_id(self) -> str:
        """The cluster's system identifier and timeline (see :meth:`Store.read_history_id`).

        A server that will not tell (a managed service that hides ``pg_control_system()``, say)
        gets ``""``, with one warning: a fail-over that lost commits is then noticed only when
        the database's last version is below a feed's cursor."""
        async with self._connection() as conn:
            try:
                history: str = await conn.fetchval(HISTORY_ID)
            except asyncpg.PostgresError as exc:
                if isinstance(exc, _UNAVAILABLE):
                    raise
                if not self._history_hidden:
                    self._history_hidden = True
                    logger.warning("PostgreSQL at %s does not tell its timeline (%s): a promoted standby that "
                                   "lost commits is noticed only by a last version below the cursor",
                                   self._where, _reason(exc))  # fmt: skip
                return ""
            return history

    async def wake_ups(self, poll_seconds: float) -> AsyncIterator[None]:
        """LISTEN on a connection of its own: woken by every commit's NOTIFY.

        Every ``poll_seconds`` without a notification it checks the connection
        with a query, so a connection killed under it (``pg_terminate_backend``,
        a restart) is noticed and reported as :class:`StoreUnavailable`.
        """
        try:
            conn = await asyncpg.connect(self.url, timeout=self._connect_timeout)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"change feed cannot connect to {self._where}: {_reason(exc)}") from exc
        woken: asyncio.Queue[bool] = asyncio.Queue()
        conn.add_termination_listener(lambda _conn: woken.put_nowait(False))
        try:
            await conn.add_listener(CHANGES_CHANNEL, lambda *_args: woken.put_nowait(True))
            yield
            while True:
                try:
                    # asyncio.timeout, not wait_for: on Python 3.11, wait_for returns the result
                    # instead of raising when a cancel comes as a notification arrives, so the
                    # feed's close() waited forever on a task that went on listening.
                    async with asyncio.timeout(poll_seconds):
                        alive = await woken.get()
                except TimeoutError:
                    await conn.execute(SAFETY_QUERY)
                    alive = True
                while alive and not woken.empty():
                    alive = woken.get_nowait()
                if not alive or conn.is_closed():
                    raise StoreUnavailable(f"change feed connection to {self._where} was lost")
                yield
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"change feed connection to {self._where}: {_reason(exc)}") from exc
        finally:
            with contextlib.suppress(*_UNAVAILABLE, asyncpg.PostgresError):
                await asyncio.wait_for(conn.close(), 2)

    # -- writes -----------------------------------------------------------------------

    async def _write(
        self, key: str, chunks: HashedChunks, content_type: str, expect: WritePrecondition | None
    ) -> FileMeta:
        async with self._connection() as conn:
            blob_id: int = await conn.fetchval(BEGIN_UPLOAD)
        try:
            async for batch in staged_batches(chunks):  # no connection held while the client sends
                async with self._connection() as conn, conn.transaction():
                    if await conn.execute(TOUCH_UPLOAD, blob_id) != "UPDATE 1":
                        raise UploadAborted(f"upload {blob_id} was swept (idle too long); retry it")
                    await conn.executemany(INSERT_CHUNK, [(blob_id, seq, chunk) for seq, chunk in batch])
            async with self._connection() as conn, conn.transaction():
                await conn.execute(LOCK, WRITE_LOCK)
                if await conn.execute(END_UPLOAD, blob_id) != "DELETE 1":
                    raise UploadAborted(f"the upload of {key} was idle too long and has been swept; retry it")
                current = await conn.fetchrow(CURRENT_ROW, key)
                check_expectation(key, expect, _live_sha256(current))
                row = await conn.fetchrow(
                    UPSERT_FILE, key, blob_id, chunks.chunk_size, chunks.size, chunks.sha256, content_type
                )
                if current is not None and current["blob_id"] is not None:
                    await conn.execute(DELETE_CHUNKS, current["blob_id"])
                await conn.execute(NOTIFY, row["version"])  # delivered at commit
                return _meta(row)
        except BaseException:
            # Shielded: a cancelled upload still frees what it staged. If the database is
            # gone, the upload row stays and the sweep frees it later.
            with contextlib.suppress(StoreUnavailable, *_UNAVAILABLE, asyncpg.PostgresError):
                await asyncio.shield(self._abandon_upload(blob_id))
            raise

    async def _abandon_upload(self, blob_id: int) -> None:
        async with self._connection() as conn, conn.transaction():
            # No upload row: the publish committed (cancelled after it), the chunks are live.
            if await conn.execute(END_UPLOAD, blob_id) == "DELETE 1":
                await conn.execute(DELETE_CHUNKS, blob_id)

    async def _delete(self, key: str, expect: WritePrecondition | None) -> int | None:
        async with self._connection() as conn, conn.transaction():
            await conn.execute(LOCK, WRITE_LOCK)
            current = await conn.fetchrow(CURRENT_ROW, key)
            if current is None or current["deleted"]:
                return None  # nothing to delete: a 404 whatever the preconditions say (RFC 9110 13.2.1)
            check_expectation(key, expect, _live_sha256(current))
            version: int = await conn.fetchval(TOMBSTONE, key)
            if current["blob_id"] is not None:
                await conn.execute(DELETE_CHUNKS, current["blob_id"])
            await conn.execute(NOTIFY, version)  # delivered at commit
            return version


class ReadReplica:
    """The read replica's pool, and whether it answers: while it does not, its queries are not
    even tried (but one every :data:`REPLICA_RETRY_SECONDS`), and that is logged once, when it
    stops answering, and once when it answers again; never once per request."""

    def __init__(self, dsn: str, pool: asyncpg.Pool, connect_timeout: float) -> None:
        self.pool = pool
        self.where = mask_dsn(dsn)
        self.answers = True
        self._connect_timeout = connect_timeout
        self._next_try = 0.0
        """While it does not answer: when (monotonic seconds) one query may try it again."""

    @classmethod
    async def open(cls, dsn: str, pool_size: int, connect_timeout: float) -> ReadReplica:
        """A pool to ``dsn``, connected if the replica answers; if not, a pool that connects on first
        use: a frontend starts and reads content from the primary until the replica answers.
        Raises :class:`InvalidURL` for a DSN asyncpg cannot parse."""
        try:
            return cls(dsn, await _create_pool(dsn, pool_size, connect_timeout), connect_timeout)
        except StoreUnavailable as exc:
            replica = cls(dsn, await _create_pool(dsn, pool_size, connect_timeout, probe=False), connect_timeout)
            replica._stopped_answering(exc)
            return replica

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record] | None:
        """The rows of ``query`` on the replica, or None when it does not answer (read the primary)."""
        if not self.answers:
            now = time.monotonic()
            if now < self._next_try:
                return None
            self._next_try = now + REPLICA_RETRY_SECONDS  # this query tries; the others keep to the primary
        try:
            async with self.pool.acquire(timeout=self._connect_timeout) as conn:
                rows: list[asyncpg.Record] = await conn.fetch(query, *args)
        except _UNAVAILABLE as exc:
            self._stopped_answering(exc)
            return None
        if not self.answers:
            self.answers = True
            logger.warning("read replica at %s answers again: content is read from it", self.where)
        return rows

    def _stopped_answering(self, exc: BaseException) -> None:
        self._next_try = time.monotonic() + REPLICA_RETRY_SECONDS
        if self.answers:
            self.answers = False
            logger.warning(
                "read replica at %s unavailable (%s): content is read from the primary until it answers",
                self.where, _reason(exc),
            )  # fmt: skip


def _live_sha256(current: asyncpg.Record | None) -> str | None:
    """The content hash of a CURRENT_ROW row, or None when there is no live file."""
    return None if current is None or current["deleted"] else str(current["sha256"])


async def _create_pool(dsn: str, size: int, connect_timeout: float, *, probe: bool = True) -> asyncpg.Pool:
    """A pool of up to ``size`` connections; with ``probe``, one is made (and kept) at once, so a
    database that is not there, or a DSN asyncpg cannot parse, fails here in one line.

    No connection floor (``min_size`` 0): asyncpg keeps a floor with a background task that,
    while the database is down, logs a traceback at every attempt to restore it — a log full of
    tracebacks during every outage and fail-over, for nothing (a request connects when it must).
    """
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=0,
            max_size=size,
            timeout=connect_timeout,
            command_timeout=COMMAND_TIMEOUT_SECONDS,
            reset=_keep_session,
        )
        if probe:
            try:
                async with pool.acquire(timeout=connect_timeout):
                    pass
            except BaseException:
                pool.terminate()
                raise
        return pool
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(f"cannot connect to PostgreSQL at {mask_dsn(dsn)}: {_reason(exc)}") from exc
    except (ValueError, OverflowError) as exc:  # asyncpg could not parse it: a port "x" or 99999
        raise InvalidURL(f"not a valid PostgreSQL URL ({_reason(exc)}): {mask_dsn(dsn)}") from None


async def _keep_session(_connection: asyncpg.Connection) -> None:
    """What the pool does to a connection given back, beyond rolling back an open transaction
    (which asyncpg always does): nothing. asyncpg's default sends ``pg_advisory_unlock_all();
    CLOSE ALL; UNLISTEN *; RESET ALL`` — a round trip per query, the second of every miss — to
    undo session state this store never creates on a pooled connection: its advisory locks are
    transaction-scoped (``pg_advisory_xact_lock``), it LISTENs on a connection of its own, and
    it sets no parameter and opens no cursor outside a transaction."""


def _is_open(conn: asyncpg.Connection) -> bool:
    """Whether a pooled connection is still usable. One whose socket the event loop saw close is
    released to the pool by asyncpg itself, which detaches the handle held here: its methods then
    raise InterfaceError (a 503 for the statement that met it, were it not caught here)."""
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:
        return False


def _terminate(conn: asyncpg.Connection) -> None:
    """Close a pooled connection at once (no round trip: it may be one a NAT dropped) and free its
    slot in the pool; nothing to do for one asyncpg released already (see :func:`_is_open`)."""
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


def _reason(exc: BaseException) -> str:
    """The first line of an error's message, or its type when it has none."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
