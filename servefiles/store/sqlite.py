"""The embedded store: one SQLite file, the default when no database is named.

Blocking sqlite3 calls run on a small thread pool, each worker thread with its
own connection (WAL mode: readers never wait for a writer).

An upload is staged, then published. Its chunks are committed in small
batches under a fresh blob id registered in ``servefiles_uploads``, so a
1 GiB upload never holds SQLite's single write lock for long; a last short
transaction takes a version and points the key at the blob. An upload that
dies half-way leaves only an unreferenced staged blob, which nobody can read
and which is swept once it has been idle for :data:`~servefiles.store.base.STALE_UPLOAD_SECONDS`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from ..errors import SchemaTooNew, StoreUnavailable, UploadAborted
from . import base, sql
from .base import HashedChunks, Store, WritePrecondition
from .types import BlobRef, Change, FileMeta

SCHEMA_VERSION = 2
"""1: no ``last_modified`` column (``updated_at`` itself kept the one-second rule); 2: it has one."""
BUSY_TIMEOUT_SECONDS = 30.0

_T = TypeVar("_T")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# -- SQL --------------------------------------------------------------------------------

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS servefiles_meta (name TEXT PRIMARY KEY, value)",
    "INSERT OR IGNORE INTO servefiles_meta (name, value) VALUES ('last_version', 0)",
    """CREATE TABLE IF NOT EXISTS servefiles_files (
        key TEXT PRIMARY KEY,
        version INTEGER NOT NULL UNIQUE,
        deleted INTEGER NOT NULL DEFAULT 0,
        blob_id INTEGER,
        chunk_size INTEGER,
        size INTEGER NOT NULL DEFAULT 0,
        sha256 TEXT,
        content_type TEXT,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        last_modified INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS servefiles_uploads (
        blob_id INTEGER PRIMARY KEY AUTOINCREMENT,
        touched_at INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS servefiles_chunks (
        blob_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (blob_id, seq))""",
)
GET_SCHEMA_VERSION = "SELECT value FROM servefiles_meta WHERE name = 'schema_version'"
INIT_STORE_ID = "INSERT OR IGNORE INTO servefiles_meta (name, value) VALUES ('store_id', ?)"
GET_STORE_ID = "SELECT value FROM servefiles_meta WHERE name = 'store_id'"
SET_SCHEMA_VERSION = "INSERT OR REPLACE INTO servefiles_meta (name, value) VALUES ('schema_version', ?)"
# Schema 1 -> 2: add the validator time, taken from updated_at, which schema 1 kept in
# a later whole second than the key's previous version (the rule last_modified keeps now).
FILES_COLUMNS = "SELECT name FROM pragma_table_info('servefiles_files')"
ADD_LAST_MODIFIED = "ALTER TABLE servefiles_files ADD COLUMN last_modified INTEGER NOT NULL DEFAULT 0"
BACKFILL_LAST_MODIFIED = "UPDATE servefiles_files SET last_modified = updated_at / 1000000 * 1000000"
NEXT_VERSION = "UPDATE servefiles_meta SET value = value + 1 WHERE name = 'last_version' RETURNING value"
LAST_VERSION = "SELECT value FROM servefiles_meta WHERE name = 'last_version'"
_META_COLUMNS = "key, version, sha256, size, content_type, created_at, updated_at, last_modified"
LOCATE = f"SELECT {_META_COLUMNS}, blob_id, chunk_size FROM servefiles_files WHERE key = ? AND NOT deleted"
LOCATE_HEAD = sql.locate_head(":max", ":whole", ":key")
FETCH_CHUNKS = "SELECT data FROM servefiles_chunks WHERE blob_id = ? AND seq BETWEEN ? AND ? ORDER BY seq"
BEGIN_UPLOAD = "INSERT INTO servefiles_uploads (touched_at) VALUES (?)"
TOUCH_UPLOAD = "UPDATE servefiles_uploads SET touched_at = ? WHERE blob_id = ?"
END_UPLOAD = "DELETE FROM servefiles_uploads WHERE blob_id = ?"
STALE_UPLOADS = "SELECT blob_id FROM servefiles_uploads WHERE touched_at < ?"
INSERT_CHUNK = "INSERT INTO servefiles_chunks (blob_id, seq, data) VALUES (?, ?, ?)"
DELETE_CHUNKS = "DELETE FROM servefiles_chunks WHERE blob_id = ?"
CURRENT_ROW = "SELECT blob_id, deleted, created_at, sha256, last_modified FROM servefiles_files WHERE key = ?"
UPSERT_FILE = """
    INSERT INTO servefiles_files
        (key, version, deleted, blob_id, chunk_size, size, sha256, content_type, created_at, updated_at,
         last_modified)
    VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (key) DO UPDATE SET
        version = excluded.version, deleted = 0, blob_id = excluded.blob_id,
        chunk_size = excluded.chunk_size, size = excluded.size, sha256 = excluded.sha256,
        content_type = excluded.content_type, created_at = excluded.created_at,
        updated_at = excluded.updated_at, last_modified = excluded.last_modified"""
TOMBSTONE = """
    UPDATE servefiles_files SET version = ?, deleted = 1, blob_id = NULL, chunk_size = NULL,
        size = 0, sha256 = NULL, content_type = NULL, updated_at = ?, last_modified = ?
    WHERE key = ?"""
LIST = f"""
    SELECT {_META_COLUMNS} FROM servefiles_files
    WHERE NOT deleted AND (key > ? OR (key = ? AND NOT ?)) AND (? IS NULL OR key < ?)
    ORDER BY key LIMIT ?"""
CHANGES = "SELECT key, version, deleted FROM servefiles_files WHERE version > ? ORDER BY version LIMIT ?"


def _now_us() -> int:
    return time.time_ns() // 1000


def _validator_second(now_us: int, previous_us: int | None) -> int:
    """A new version's ``last_modified`` (microseconds, a whole second): ``now``'s second, or
    the second after the key's previous version or tombstone (``previous_us``) if that is
    later. See :attr:`FileMeta.last_modified` on why a key's versions never share a second."""
    second = now_us // 1_000_000 * 1_000_000
    return second if previous_us is None else max(second, previous_us + 1_000_000)


def _to_datetime(microseconds: int) -> datetime:
    return _EPOCH + timedelta(microseconds=microseconds)


def _meta(row: Sequence[Any]) -> FileMeta:
    key, version, sha256, size, content_type, created_at, updated_at, last_modified = row[:8]
    return FileMeta(
        key, version, sha256, size, content_type,
        _to_datetime(created_at), _to_datetime(updated_at), _to_datetime(last_modified),
    )  # fmt: skip


class _Transaction:
    """``with _Transaction(conn):`` — BEGIN IMMEDIATE … COMMIT, or ROLLBACK on error."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                self._conn.execute("COMMIT")
        finally:
            if self._conn.in_transaction:  # an error, or a COMMIT that failed
                self._conn.execute("ROLLBACK")


class SQLiteStore(Store):
    """A :class:`Store` in one SQLite database file."""

    def __init__(self, path: Path, threads: int = 4) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="servefiles-sqlite")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    @classmethod
    async def open(cls, path: Path) -> SQLiteStore:
        """Open (creating if needed) the database at ``path`` and its schema."""
        store = cls(path)
        try:
            await store._run(store._init_schema)
        except BaseException:
            await store.close()
            raise
        return store

    # -- threads and connections ------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
            )
            try:
                _use_wal(conn)
                conn.execute("PRAGMA synchronous = FULL")
            except BaseException:
                conn.close()
                raise
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn(conn, *args)`` on a worker thread with that thread's connection."""

        def call() -> _T:
            try:
                return fn(self._connection(), *args)
            except (sqlite3.OperationalError, sqlite3.DatabaseError) as exc:
                if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError):
                    raise
                raise StoreUnavailable(f"SQLite database {self.path}: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    # -- schema -----------------------------------------------------------------------

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        with _Transaction(conn):
            for statement in SCHEMA:
                conn.execute(statement)
            row = conn.execute(GET_SCHEMA_VERSION).fetchone()
            found = int(row[0]) if row else 0
            if found > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"{self.path} has schema version {found}; this servefiles supports up to {SCHEMA_VERSION}"
                )
            if found < SCHEMA_VERSION:
                if "last_modified" not in {name for (name,) in conn.execute(FILES_COLUMNS)}:
                    conn.execute(ADD_LAST_MODIFIED)
                    conn.execute(BACKFILL_LAST_MODIFIED)
                conn.execute(SET_SCHEMA_VERSION, (SCHEMA_VERSION,))
            conn.execute(INIT_STORE_ID, (uuid.uuid4().hex,))
            self.store_id = str(conn.execute(GET_STORE_ID).fetchone()[0])
        self._sweep_stale_uploads(conn)

    def _sweep_stale_uploads(self, conn: sqlite3.Connection) -> None:
        """Free the chunks of uploads that died half-way (idle for an hour)."""
        cutoff = _now_us() - base.STALE_UPLOAD_SECONDS * 1_000_000
        for (blob_id,) in conn.execute(STALE_UPLOADS, (cutoff,)).fetchall():
            with _Transaction(conn):
                conn.execute(DELETE_CHUNKS, (blob_id,))
                conn.execute(END_UPLOAD, (blob_id,))

    # -- reads ------------------------------------------------------------------------

    async def _locate(self, key: str) -> tuple[FileMeta, BlobRef] | None:
        def locate(conn: sqlite3.Connection) -> tuple[FileMeta, BlobRef] | None:
            row = conn.execute(LOCATE, (key,)).fetchone()
            return None if row is None else (_meta(row), BlobRef(row[8], row[9]))

        return await self._run(locate)

    async def _locate_head(
        self, key: str, max_bytes: int, whole: bool
    ) -> tuple[FileMeta, BlobRef, Sequence[bytes]] | None:
        def locate(conn: sqlite3.Connection) -> tuple[FileMeta, BlobRef, Sequence[bytes]] | None:
            rows = conn.execute(LOCATE_HEAD, {"max": max_bytes, "whole": whole, "key": key}).fetchall()
            if not rows:
                return None
            chunks = [row[10] for row in rows if row[10] is not None]
            return _meta(rows[0]), BlobRef(rows[0][8], rows[0][9]), chunks

        return await self._run(locate)

    async def _fetch_chunks(self, blob_id: int, first: int, last: int) -> Sequence[bytes]:
        def fetch(conn: sqlite3.Connection) -> list[bytes]:
            return [row[0] for row in conn.execute(FETCH_CHUNKS, (blob_id, first, last))]

        return await self._run(fetch)

    async def _list(self, low: str, exclusive: bool, high: str | None, limit: int) -> list[FileMeta]:
        def list_rows(conn: sqlite3.Connection) -> list[FileMeta]:
            return [_meta(row) for row in conn.execute(LIST, (low, low, exclusive, high, high, limit))]

        return await self._run(list_rows)

    async def _changes(self, since_version: int, limit: int) -> list[Change]:
        def changes(conn: sqlite3.Connection) -> list[Change]:
            rows = conn.execute(CHANGES, (since_version, limit))
            return [Change(key, version, bool(deleted)) for key, version, deleted in rows]

        return await self._run(changes)

    async def _last_version(self) -> int:
        def last(conn: sqlite3.Connection) -> int:
            return int(conn.execute(LAST_VERSION).fetchone()[0])

        return await self._run(last)

    # -- writes -----------------------------------------------------------------------

    async def _write(
        self, key: str, chunks: HashedChunks, content_type: str, expect: WritePrecondition | None
    ) -> FileMeta:
        blob_id = await self._run(_begin_upload)
        try:
            async for batch in base.staged_batches(chunks):
                await self._run(_stage_chunks, blob_id, [(blob_id, seq, chunk) for seq, chunk in batch])
            return await self._run(_publish, key, blob_id, chunks, content_type, expect)
        except BaseException:
            # Shielded: a cancelled upload must still free what it staged.
            await asyncio.shield(self._run(_abandon_upload, blob_id))
            raise

    async def _delete(self, key: str, expect: WritePrecondition | None) -> int | None:
        return await self._run(_tombstone, key, expect)


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch the file to WAL mode (it stays so).

    On a fresh file, connections opened at once race to switch it, and SQLite
    answers the losers "database is locked" at once, without its busy timeout:
    retry them until the timeout, as the busy handler would.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            busy = exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
            if not busy or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def _begin_upload(conn: sqlite3.Connection) -> int:
    with _Transaction(conn):
        blob_id = conn.execute(BEGIN_UPLOAD, (_now_us(),)).lastrowid
    assert blob_id is not None
    return blob_id


def _stage_chunks(conn: sqlite3.Connection, blob_id: int, rows: list[tuple[int, int, bytes]]) -> None:
    with _Transaction(conn):
        # A cancelled put's clean-up may run before this (both wait for the write lock
        # in different threads): staging into an abandoned upload would leave chunks
        # that nothing references and no sweep finds.
        if conn.execute(TOUCH_UPLOAD, (_now_us(), blob_id)).rowcount != 1:
            raise UploadAborted(f"upload {blob_id} was abandoned or swept (idle too long); retry it")
        conn.executemany(INSERT_CHUNK, rows)


def _abandon_upload(conn: sqlite3.Connection, blob_id: int) -> None:
    with _Transaction(conn):
        # No upload row: the publish already committed (the put was cancelled after it),
        # so the chunks are the live version's now and must stay.
        if conn.execute(END_UPLOAD, (blob_id,)).rowcount == 1:
            conn.execute(DELETE_CHUNKS, (blob_id,))


def _next_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute(NEXT_VERSION).fetchone()[0])


def _publish(
    conn: sqlite3.Connection,
    key: str,
    blob_id: int,
    chunks: HashedChunks,
    content_type: str,
    expect: WritePrecondition | None,
) -> FileMeta:
    size, sha256 = chunks.size, chunks.sha256
    with _Transaction(conn):
        current = conn.execute(CURRENT_ROW, (key,)).fetchone()
        base.check_expectation(key, expect, _live_sha256(current))
        if conn.execute(END_UPLOAD, (blob_id,)).rowcount != 1:
            raise UploadAborted(f"the upload of {key} was idle too long and has been swept; retry it")
        now = _now_us()
        last_modified = _validator_second(now, None if current is None else current[4])
        version = _next_version(conn)
        created_at = current[2] if current is not None and not current[1] else now
        row = (key, version, blob_id, chunks.chunk_size, size, sha256, content_type, created_at, now, last_modified)
        conn.execute(UPSERT_FILE, row)
        if current is not None and current[0] is not None:
            conn.execute(DELETE_CHUNKS, (current[0],))
    return FileMeta(
        key, version, sha256, size, content_type,
        _to_datetime(created_at), _to_datetime(now), _to_datetime(last_modified),
    )  # fmt: skip


def _tombstone(conn: sqlite3.Connection, key: str, expect: WritePrecondition | None) -> int | None:
    with _Transaction(conn):
        current = conn.execute(CURRENT_ROW, (key,)).fetchone()
        if current is None or current[1]:
            return None  # nothing to delete: a 404 whatever the preconditions say (RFC 9110 13.2.1)
        base.check_expectation(key, expect, _live_sha256(current))
        version = _next_version(conn)
        now = _now_us()
        conn.execute(TOMBSTONE, (version, now, _validator_second(now, current[4]), key))
        if current[0] is not None:
            conn.execute(DELETE_CHUNKS, (current[0],))
    return version


def _live_sha256(current: sqlite3.Row | tuple[Any, ...] | None) -> str | None:
    """The content hash of a CURRENT_ROW row, or None when there is no live file."""
    return None if current is None or current[1] else str(current[3])
