"""The SQLite side of the in-memory index (memindex.py): read whole at open, written behind in batches.

A batch (a :class:`Journal` and the pending touches) is one write transaction: files added
first (an entry's file row must exist), then entries put or deleted, then files deleted. A
file row is deleted only while no entry uses it: another process sharing the dir may have
pointed an entry at it meanwhile (a process that is not alone writes SQLite through, see
disk.py), and its row must stay.
"""

from __future__ import annotations

import time

from .index import PUT_ENTRY, Index, Transaction, entry_row, row_to_meta
from .layout import is_sha256
from .memindex import Journal, MemIndex

__all__ = ["MARK_ONE_SYNCED", "load_memory", "mark_synced", "unsynced_files", "write_journal"]

ALL_ENTRIES = """
    SELECT e.key, e.version, e.sha256, f.size, e.content_type, e.created_at, e.updated_at, e.last_modified
    FROM entries AS e JOIN files AS f ON f.sha256 = e.sha256
    ORDER BY e.last_access"""
UPSERT_FILE = """
    INSERT INTO files (sha256, size, installed_at) VALUES (?, ?, ?)
    ON CONFLICT (sha256) DO UPDATE SET installed_at = excluded.installed_at"""
ENSURE_FILE = "INSERT OR IGNORE INTO files (sha256, size, installed_at) VALUES (?, ?, ?)"
DELETE_ENTRY = "DELETE FROM entries WHERE key = ?"
DELETE_UNUSED_FILE = "DELETE FROM files WHERE sha256 = ?1 AND NOT EXISTS (SELECT 1 FROM entries WHERE sha256 = ?1)"
RECORD_ACCESS = "UPDATE entries SET last_access = max(last_access, ?) WHERE key = ?"
UNSYNCED = "SELECT sha256, size FROM files WHERE installed_at > 0"
MARK_ONE_SYNCED = "UPDATE files SET installed_at = 0 WHERE sha256 = ?"
MARK_SYNCED = "UPDATE files SET installed_at = 0 WHERE installed_at > 0 AND installed_at < ?"


def load_memory(index: Index) -> MemIndex:
    """The index in memory: every entry whose sha256 can name a file, in last-access order."""
    mem = MemIndex()
    for key, *rest in index.rows(ALL_ENTRIES):
        meta = row_to_meta(str(key), tuple(rest))  # type: ignore[arg-type]
        if meta is not None and is_sha256(meta.sha256):
            mem.load(meta)
    return mem


def write_journal(txn: Transaction, journal: Journal, touches: dict[str, int]) -> list[str]:
    """Apply a batch; the keys it deleted (for the removal listeners of a process that shares)."""
    added = [(sha, size, at) for sha, change in journal.files.items() if change is not None for size, at in [change]]
    txn.run(UPSERT_FILE, added)
    puts = [op for op in journal.entries.values() if op is not None]
    now = time.monotonic_ns()  # a file row this batch must recreate is not known to be durable
    txn.run(ENSURE_FILE, ((meta.sha256, meta.size, now) for meta, _ in puts))
    txn.run(PUT_ENTRY, (entry_row(meta, last_access) for meta, last_access in puts))
    deleted = [key for key, op in journal.entries.items() if op is None]
    txn.run(DELETE_ENTRY, ((key,) for key in deleted))
    txn.run(DELETE_UNUSED_FILE, ((sha,) for sha, change in journal.files.items() if change is None))
    txn.run(RECORD_ACCESS, ((at, key) for key, at in touches.items()))
    return deleted


def unsynced_files(txn: Transaction) -> list[tuple[str, int]]:
    """(sha256, size) of every file no syncfs is known to have made durable."""
    return [(str(sha), int(str(size))) for sha, size in txn.rows(UNSYNCED)]


def mark_synced(txn: Transaction, before: int) -> None:
    """Files renamed before monotonic ns ``before`` are durable: a syncfs begun then has returned."""
    txn.run(MARK_SYNCED, [(before,)])
