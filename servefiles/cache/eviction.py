"""Which content files go (nginx ``proxy_cache``'s "cache manager" step): a file no entry uses
any more, and, after each install, the least recently used entries while the files exceed the
cache's budget. Both run inside a write transaction of the index, whose lock is also the lock
on ``objects/``: no process deletes a file another has just installed.
"""

from __future__ import annotations

from ..localfs import remove_any
from ..store.types import FileMeta
from .index import Transaction
from .layout import CacheDir, is_sha256

__all__ = ["EVICT_BATCH", "evict", "release_file"]

EVICT_BATCH = 64
"""Least recently used entries read from the index at a time."""


def release_file(txn: Transaction, cache_dir: CacheDir, sha256: str) -> None:
    """Delete a file (row and bytes) that no entry references any more."""
    if not txn.is_referenced(sha256):
        txn.delete_file(sha256)
        if is_sha256(sha256):
            remove_any(cache_dir.content_path(sha256))


def evict(txn: Transaction, cache_dir: CacheDir, keep: FileMeta, max_bytes: int) -> int:
    """Drop least recently used entries until the files fit ``max_bytes``; never ``keep``.

    Returns how many entries went (their keys are in ``txn.removed``).
    """
    evicted = 0
    while txn.total_bytes() > max_bytes:
        victims = txn.least_recent(keep.key, keep.sha256, EVICT_BATCH)
        if not victims:
            break
        for key, sha256 in victims:
            txn.delete_entry(key)
            evicted += 1
            release_file(txn, cache_dir, sha256)
            if txn.total_bytes() <= max_bytes:
                break
    return evicted
