"""Hits of the disk tier, kept in memory until the background writer (behind.py) records them.

The least-recently-used order lives in memory (memindex.py); the index on disk keeps each
entry's last access only so that the order survives a restart, so a hit never waits for
SQLite: it is recorded here and written with the next batch.
"""

from __future__ import annotations

import threading
import time

__all__ = ["Batch", "PendingTouches"]

Batch = dict[str, int]
"""Key -> time of its last hit, in nanoseconds since the epoch."""


class PendingTouches:
    """Hits not yet written. Safe to share between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: Batch = {}

    def __len__(self) -> int:
        return len(self._pending)

    def touch(self, key: str) -> None:
        """Record a hit now."""
        with self._lock:
            self._pending[key] = time.time_ns()

    def forget(self, key: str) -> None:
        """Drop a pending hit of a key that is going away."""
        with self._lock:
            self._pending.pop(key, None)

    def take(self) -> Batch:
        """Every pending hit, to be written by the caller (or given back)."""
        with self._lock:
            batch, self._pending = self._pending, {}
        return batch

    def give_back(self, batch: Batch) -> None:
        """Return a batch that could not be written; a newer hit of a key wins."""
        with self._lock:
            for key, at in batch.items():
                self._pending[key] = max(at, self._pending.get(key, at))
