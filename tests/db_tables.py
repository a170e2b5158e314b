"""Look at a store's tables from outside the store: what a test needs to prove "nothing was left behind"."""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass, field

import asyncpg

from servefiles.store import sqlite_path


@dataclass
class Storage:
    """What the database holds, looked at from outside the store."""

    chunks: dict[int, list[int]] = field(default_factory=dict)  # blob_id -> seq numbers present
    live: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # key -> (blob_id, size, chunk_size)
    staged_uploads: int = 0  # rows in the stores' registry of uploads in progress


async def storage(url: str) -> Storage:
    """Read the store's tables directly: sqlite3 for SQLite, asyncpg for PostgreSQL.

    A database whose tables do not exist yet (no store has opened it: a WSGI worker that
    never got as far as the store) holds nothing: an empty :class:`Storage`.
    """
    try:
        return await _storage(url)
    except (sqlite3.OperationalError, asyncpg.UndefinedTableError) as exc:
        if isinstance(exc, sqlite3.OperationalError) and "no such table" not in str(exc):
            raise
        return Storage()


async def _storage(url: str) -> Storage:
    found = Storage()
    chunk_sql = "SELECT blob_id, seq FROM servefiles_chunks ORDER BY blob_id, seq"
    live_sql = "SELECT key, blob_id, size, chunk_size FROM servefiles_files WHERE NOT deleted"
    if url.startswith("sqlite:"):
        with contextlib.closing(sqlite3.connect(sqlite_path(url))) as conn:
            chunk_rows = conn.execute(chunk_sql).fetchall()
            live_rows = conn.execute(live_sql).fetchall()
            found.staged_uploads = conn.execute("SELECT count(*) FROM servefiles_uploads").fetchone()[0]
    else:
        conn = await asyncpg.connect(url)  # the DSN's search_path selects the test's schema
        try:
            chunk_rows = [tuple(row) for row in await conn.fetch(chunk_sql)]
            live_rows = [tuple(row) for row in await conn.fetch(live_sql)]
            found.staged_uploads = await conn.fetchval("SELECT count(*) FROM servefiles_uploads")
        finally:
            await conn.close()
    for blob_id, seq in chunk_rows:
        found.chunks.setdefault(blob_id, []).append(seq)
    for key, blob_id, size, chunk_size in live_rows:
        found.live[key] = (blob_id, size, chunk_size)
    return found


async def assert_only_live_chunks(url: str) -> None:
    """Every chunk row belongs to a live file, every live file has all its chunks, no upload is left staged."""
    found = await storage(url)
    live_blobs = {blob_id: (size, chunk_size) for blob_id, size, chunk_size in found.live.values()}
    assert set(found.chunks) <= set(live_blobs), "chunk rows of a dead or unpublished blob remain"
    for blob_id, (size, chunk_size) in live_blobs.items():
        assert found.chunks.get(blob_id, []) == list(range(-(-size // chunk_size)))
    assert found.staged_uploads == 0


async def age_staged_uploads(url: str, seconds: float) -> None:
    """Move every staged upload's last activity ``seconds`` into the past, as if it had been idle that long."""
    if url.startswith("sqlite:"):
        with contextlib.closing(sqlite3.connect(sqlite_path(url))) as conn, conn:
            conn.execute("UPDATE servefiles_uploads SET touched_at = touched_at - ?", (int(seconds * 1_000_000),))
    else:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "UPDATE servefiles_uploads SET touched_at = touched_at - make_interval(secs => $1)", float(seconds)
            )
        finally:
            await conn.close()
