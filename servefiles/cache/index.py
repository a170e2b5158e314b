"""The disk tier's persisted index: which key is cached, as which content file.

A SQLite database in the cache dir, shared by every worker process that uses
that dir (WAL mode: a reader never waits for a writer; a busy timeout lets
writers queue). Two tables:

* ``files``: one row per content file (sha256 → size). A file is on disk and
  vouched for exactly while its row exists.
* ``entries``: one row per key (its newest cached version), naming its file by
  sha256; two keys with the same content share one ``files`` row.

``totals`` keeps the entry count and the byte total (of files, so shared
content counts once), maintained by triggers so that no code path can forget
it and the eviction loop reads one row instead of summing 10^5.

The index's write lock is also the lock on the ``objects/`` namespace: every
rename into place and every unlink of a content file happens inside a write
transaction, so a process never deletes a file that another process has just
installed (see ``writer.py``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ..localfs import NotRegularFile, kind, lstat_mode, open_regular, remove_any
from ..store.types import FileMeta

SCHEMA_VERSION = 3
"""1: no ``last_modified`` column; 2: it has one; 3: files have ``installed_at`` (both migrated in
place, see :meth:`Index._open`)."""
BUSY_TIMEOUT_SECONDS = 30.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CORRUPT_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
FILE_SUFFIXES = ("", "-wal", "-shm", "-journal")
"""The index file and the files SQLite keeps beside it."""

# -- SQL --------------------------------------------------------------------------------

_TABLES = ("entries", "files", "totals")
SCHEMA = (
    # The CHECKs and the foreign key make malformed and orphaned rows impossible,
    # so the start-up loader need not scan the whole index looking for them.
    """CREATE TABLE files (
        sha256 TEXT PRIMARY KEY CHECK (length(sha256) = 64 AND sha256 NOT GLOB '*[^0-9a-f]*'),
        size INTEGER NOT NULL CHECK (typeof(size) = 'integer' AND size >= 0),
        installed_at INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID""",
    # installed_at: the monotonic ns of the file's rename until a syncfs made it durable, then 0
    # (durable.py): after a reboot, the files with installed_at > 0 are verified before use.
    "CREATE INDEX files_unsynced ON files (installed_at) WHERE installed_at > 0",
    """CREATE TABLE entries (
        key TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        sha256 TEXT NOT NULL REFERENCES files (sha256),
        content_type TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        last_access INTEGER NOT NULL,
        last_modified INTEGER NOT NULL)""",
    "CREATE INDEX entries_by_sha256 ON entries (sha256)",
    "CREATE INDEX entries_by_access ON entries (last_access)",
    """CREATE TABLE totals (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        entries INTEGER NOT NULL,
        bytes INTEGER NOT NULL)""",
    "INSERT INTO totals (id, entries, bytes) VALUES (1, 0, 0)",
    """CREATE TRIGGER files_added AFTER INSERT ON files
        BEGIN UPDATE totals SET bytes = bytes + NEW.size; END""",
    """CREATE TRIGGER files_removed AFTER DELETE ON files
        BEGIN UPDATE totals SET bytes = bytes - OLD.size; END""",
    """CREATE TRIGGER entries_added AFTER INSERT ON entries
        BEGIN UPDATE totals SET entries = entries + 1; END""",
    """CREATE TRIGGER entries_removed AFTER DELETE ON entries
        BEGIN UPDATE totals SET entries = entries - 1; END""",
)
# Schema 1 -> 2: the validator time, from updated_at, which the stores of schema 1 kept in a
# later whole second than the key's previous version (as they backfill their own column).
MIGRATE_1_TO_2 = (
    "ALTER TABLE entries ADD COLUMN last_modified INTEGER NOT NULL DEFAULT 0",
    "UPDATE entries SET last_modified = updated_at / 1000000 * 1000000",
)
# Schema 2 -> 3: files written before were fsynced one by one, so they are durable (0).
MIGRATE_2_TO_3 = (
    "ALTER TABLE files ADD COLUMN installed_at INTEGER NOT NULL DEFAULT 0",
    "CREATE INDEX IF NOT EXISTS files_unsynced ON files (installed_at) WHERE installed_at > 0",
)
DROP_TABLE = "DROP TABLE IF EXISTS {}"  # only ever formatted with a name from _TABLES
GET_ENTRY = """
    SELECT e.version, e.sha256, f.size, e.content_type, e.created_at, e.updated_at, e.last_modified
    FROM entries AS e JOIN files AS f ON f.sha256 = e.sha256
    WHERE e.key = ?"""
GET_TOTALS = "SELECT entries, bytes FROM totals WHERE id = 1"
GET_FILE_SIZE = "SELECT size FROM files WHERE sha256 = ?"
ADD_FILE = "INSERT INTO files (sha256, size, installed_at) VALUES (?, ?, ?)"
DELETE_FILE = "DELETE FROM files WHERE sha256 = ?"
IS_REFERENCED = "SELECT 1 FROM entries WHERE sha256 = ? LIMIT 1"
# An UPSERT, not INSERT OR REPLACE: REPLACE deletes without firing the delete trigger.
PUT_ENTRY = """
    INSERT INTO entries (key, version, sha256, content_type, created_at, updated_at, last_access, last_modified)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (key) DO UPDATE SET
        version = excluded.version, sha256 = excluded.sha256, content_type = excluded.content_type,
        created_at = excluded.created_at, updated_at = excluded.updated_at, last_access = excluded.last_access,
        last_modified = excluded.last_modified"""
DELETE_ENTRY = "DELETE FROM entries WHERE key = ?"
DELETE_ENTRIES_OF_FILE = "DELETE FROM entries WHERE sha256 = ?"
KEYS_OF_FILE = "SELECT key FROM entries WHERE sha256 = ?"
RECORD_ACCESS = "UPDATE entries SET last_access = max(last_access, ?) WHERE key = ?"
LEAST_RECENT = """
    SELECT key, sha256 FROM entries
    WHERE key != ? AND sha256 != ?
    ORDER BY last_access LIMIT ?"""
FILES_IN_SHARD = "SELECT sha256, size FROM files WHERE sha256 >= ? AND sha256 < ?"
REFERENCED_IN_SHARD = "SELECT DISTINCT sha256 FROM entries WHERE sha256 >= ? AND sha256 < ?"
RECOUNT_TOTALS = """
    UPDATE totals SET
        entries = (SELECT count(*) FROM entries),
        bytes = (SELECT coalesce(sum(size), 0) FROM files)"""


class _Damaged(Exception):
    """The index opened but failed its integrity check."""


def to_micros(moment: datetime) -> int:
    """A UTC instant as integer microseconds since the epoch: exact, and sorts."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # the store's clock is UTC
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def is_corruption(exc: sqlite3.Error) -> bool:
    """A damaged database file, as opposed to a busy one (which must never be rebuilt)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _CORRUPT_CODES


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        # A power cut may lose the last commits; they only name files the sweep then removes.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        conn.close()
        raise
    return conn


class Transaction:
    """One write transaction (``BEGIN IMMEDIATE``): the index's write lock is held throughout."""

    __slots__ = ("_conn", "removed")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.removed: list[str] = []
        """Keys whose entry this transaction removed or replaced (``DiskCache.on_removed`` listeners hear of them)."""

    def _changes(self, sql: str, params: tuple[object, ...] = ()) -> int:
        return self._conn.execute(sql, params).rowcount

    def entry(self, key: str) -> FileMeta | None:
        return row_to_meta(key, self._conn.execute(GET_ENTRY, (key,)).fetchone())

    def file_size(self, sha256: str) -> int | None:
        row = self._conn.execute(GET_FILE_SIZE, (sha256,)).fetchone()
        return None if row is None else int(row[0])

    def add_file(self, sha256: str, size: int, installed_at: int) -> None:
        self._conn.execute(ADD_FILE, (sha256, size, installed_at))

    def run(self, sql: str, params: Iterable[tuple[object, ...]]) -> None:
        """Run one statement per parameter tuple (journal.py's batches)."""
        self._conn.executemany(sql, params)

    def rows(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        return list(self._conn.execute(sql, params))

    def delete_file(self, sha256: str) -> None:
        self._conn.execute(DELETE_FILE, (sha256,))

    def drop_file(self, sha256: str) -> int:
        """Forget a file and every entry that uses it; the number of entries dropped."""
        self.removed += [str(row[0]) for row in self._conn.execute(KEYS_OF_FILE, (sha256,))]
        dropped = self._changes(DELETE_ENTRIES_OF_FILE, (sha256,))
        self._conn.execute(DELETE_FILE, (sha256,))
        return dropped

    def is_referenced(self, sha256: str) -> bool:
        return self._conn.execute(IS_REFERENCED, (sha256,)).fetchone() is not None

    def put_entry(self, meta: FileMeta, last_access: int) -> None:
        """Point the key at ``meta`` (its file row must exist), replacing any older version."""
        self._conn.execute(PUT_ENTRY, entry_row(meta, last_access))

    def keys(self) -> list[str]:
        return [str(row[0]) for row in self._conn.execute("SELECT key FROM entries")]

    def delete_entry(self, key: str) -> bool:
        if self._changes(DELETE_ENTRY, (key,)) > 0:
            self.removed.append(key)
            return True
        return False

    def record_access(self, accesses: Iterable[tuple[str, int]]) -> None:
        """Apply a batch of (key, time_ns) touches; a later time never goes back."""
        self._conn.executemany(RECORD_ACCESS, ((at, key) for key, at in accesses))

    def least_recent(self, keep_key: str, keep_sha256: str, limit: int) -> list[tuple[str, str]]:
        """Eviction candidates, oldest access first: (key, sha256), never the kept key or its content."""
        rows = self._conn.execute(LEAST_RECENT, (keep_key, keep_sha256, limit)).fetchall()
        return [(str(key), str(sha)) for key, sha in rows]

    def total_bytes(self) -> int:
        return int(self._conn.execute(GET_TOTALS).fetchone()[1])

    def shard(self, prefix: str) -> tuple[dict[str, int], set[str]]:
        """The files whose sha256 starts with ``prefix``, and those of them some entry uses.

        Hex digits sort below "g", so ``[prefix, prefix + "g")`` is exactly the
        shard; two index range scans, no table scan.
        """
        bounds = (prefix, prefix + "g")
        files: dict[str, int] = dict(self._conn.execute(FILES_IN_SHARD, bounds))  # CHECKed: text -> integer
        used: set[str] = {sha for (sha,) in self._conn.execute(REFERENCED_IN_SHARD, bounds)}
        return files, used

    def recount(self) -> None:
        self._conn.execute(RECOUNT_TOTALS)


def entry_row(meta: FileMeta, last_access: int) -> tuple[object, ...]:
    """The parameters of :data:`PUT_ENTRY` for ``meta``."""
    return (
        meta.key, meta.version, meta.sha256, meta.content_type,
        to_micros(meta.created_at), to_micros(meta.updated_at), last_access, to_micros(meta.last_modified),
    )  # fmt: skip


def row_to_meta(key: str, row: tuple[int, str, int, str, int, int, int] | None) -> FileMeta | None:
    if row is None:
        return None
    version, sha256, size, content_type, created_at, updated_at, last_modified = row
    return FileMeta(
        key, version, sha256, size, content_type,
        from_micros(created_at), from_micros(updated_at), from_micros(last_modified),
    )  # fmt: skip


class Index:
    """The index of one cache dir, safe to share between the threads of a process.

    Two connections: reads (``get``, ``totals``) on one, writes on the other,
    each behind its own lock, so a hit never queues behind a commit.
    """

    def __init__(self, path: Path, busy_timeout: float = BUSY_TIMEOUT_SECONDS) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self.removed: list[str] = []
        """What :meth:`open` found squatting on the index's files and removed (their kinds)."""

    def _vet_files(self, repair: bool) -> None:
        """Remove whatever stands where SQLite will open the index's files and is not a regular
        file we can open read-write: SQLite follows a symlink (out of the cache dir) and would
        read a FIFO. Each is opened ``O_NOFOLLOW | O_NONBLOCK`` first, so this never blocks.

        An unreadable regular file (another user's, or mode 000) is removed only when
        ``repair``; otherwise it raises ``PermissionError`` (a read-only look at someone
        else's cache dir must not delete their index).
        """
        for suffix in FILE_SUFFIXES:
            path = f"{self.path}{suffix}"
            mode = lstat_mode(path)
            if not mode:
                continue
            try:
                os.close(open_regular(path, os.O_RDWR))
                continue
            except FileNotFoundError:
                continue
            except PermissionError:
                if not repair:
                    raise
                what = "unreadable file"
            except OSError as exc:
                if not isinstance(exc, NotRegularFile) and exc.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                    raise  # a read-only file system, no space: never a reason to throw the index away
                what = kind(lstat_mode(path) or mode)
            self.removed.append(f"{what} where the index{suffix and ' ' + suffix.lstrip('-')} file belongs")
            remove_any(path)

    def open(self, check: bool) -> bool:
        """Connect, creating or rebuilding the schema; True if the index started empty.

        ``check`` runs SQLite's ``quick_check`` too. A file that is not a
        database, is damaged, or has another schema version is rebuilt empty
        (schema 1, whose entries lack ``last_modified``, is migrated in place):
        it is a cache, and the sweep then removes the files nobody vouches for.
        The caller keeps other processes out while this runs.
        """
        self.removed = []
        self._vet_files(repair=check)
        try:
            return self._open(check)
        except BaseException as exc:
            self.close()
            damaged = isinstance(exc, _Damaged) or (isinstance(exc, sqlite3.DatabaseError) and is_corruption(exc))
            if not damaged:
                raise  # busy, read-only, no space: never a reason to throw the index away
        self.removed.append("damaged index file")
        for suffix in FILE_SUFFIXES:
            remove_any(f"{self.path}{suffix}")
        try:
            self._open(check=False)
        except BaseException:
            self.close()
            raise
        return True

    def _open(self, check: bool) -> bool:
        self._writer = writer = _connect(self.path, self.busy_timeout)
        if check and writer.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise _Damaged
        fresh = False
        version = writer.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            with self._transaction() as conn:
                found = conn.execute("PRAGMA user_version").fetchone()[0]
                if found in (1, 2):
                    columns = {row[1] for row in conn.execute("PRAGMA table_info(files)")}
                    for statement in (MIGRATE_1_TO_2 if found == 1 else ()) + MIGRATE_2_TO_3:
                        if "installed_at" not in columns or "installed_at" not in statement:
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                elif found != SCHEMA_VERSION:
                    for table in _TABLES:
                        conn.execute(DROP_TABLE.format(table))
                    for statement in SCHEMA:
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    fresh = True
        self._reader = reader = _connect(self.path, self.busy_timeout)
        reader.execute("PRAGMA query_only = ON")
        return fresh

    def close(self) -> None:
        with self._read_lock:
            reader, self._reader = self._reader, None
            if reader is not None:
                reader.close()
        with self._write_lock:
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.close()

    # -- reads ---------------------------------------------------------------------------

    def _read(self) -> sqlite3.Connection:
        if self._reader is None:
            raise RuntimeError("the disk cache index is not open")
        return self._reader

    def get(self, key: str) -> FileMeta | None:
        with self._read_lock:
            row = self._read().execute(GET_ENTRY, (key,)).fetchone()
        return row_to_meta(key, row)

    def rows(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        """Every row of a read query, on the read connection (journal.py's loading)."""
        with self._read_lock:
            return list(self._read().execute(sql, params))

    def totals(self) -> tuple[int, int]:
        """(entries, bytes) as the index has them now, across all processes."""
        with self._read_lock:
            entries, total = self._read().execute(GET_TOTALS).fetchone()
        return int(entries), int(total)

    # -- writes --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._writer
        if conn is None:
            raise RuntimeError("the disk cache index is not open")
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A write transaction, committed when the block ends, rolled back if it raises."""
        with self._write_lock, self._transaction() as conn:
            yield Transaction(conn)
