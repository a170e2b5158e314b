"""Hits of the disk tier, kept in memory and written to the index in batches.

The least-recently-used order needs each hit's time, but a hit must not wait for SQLite's
write lock: a hit is recorded here, and a background thread writes the batch once it is
:data:`TOUCH_FLUSH_PENDING` keys long or :data:`TOUCH_FLUSH_SECONDS` old (an install and
:meth:`DiskCache.close` take the batch too).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable

__all__ = ["TOUCH_FLUSH_PENDING", "TOUCH_FLUSH_SECONDS", "PendingTouches"]

logger = logging.getLogger("servefiles")

TOUCH_FLUSH_SECONDS = 10.0
"""Touches are written to the index at most this long after they happen (or at install/close)."""
TOUCH_FLUSH_PENDING = 4096
"""...or as soon as this many keys wait to be written."""

Batch = dict[str, int]
"""Key -> time of its last hit, in nanoseconds since the epoch."""


class PendingTouches:
    """Hits not yet written; ``write`` records a batch in the index (it may raise: the batch
    then waits for the next write). Safe to share between threads."""

    def __init__(self, write: Callable[[Batch], None]) -> None:
        self._write = write
        self._lock = threading.Lock()
        self._pending: Batch = {}
        self._last_flush = time.monotonic()
        self._flusher: threading.Thread | None = None
        self._flush_scheduled = False

    def touch(self, key: str) -> None:
        """Record a hit now; starts a background write when one is due."""
        with self._lock:
            self._pending[key] = time.time_ns()
            due = (
                len(self._pending) >= TOUCH_FLUSH_PENDING or time.monotonic() - self._last_flush >= TOUCH_FLUSH_SECONDS
            )
            if not due or self._flush_scheduled:
                return
            self._flush_scheduled = True
            self._last_flush = time.monotonic()
            self._flusher = flusher = threading.Thread(
                target=self._flush_quietly, name="servefiles disk touches", daemon=True
            )
        flusher.start()  # the hit path never waits for SQLite's write lock

    def forget(self, key: str) -> None:
        """Drop a pending hit of a key that is going away."""
        with self._lock:
            self._pending.pop(key, None)

    def take(self) -> Batch:
        """Every pending hit, to be written by the caller (or given back)."""
        with self._lock:
            batch, self._pending = self._pending, {}
            self._last_flush = time.monotonic()
        return batch

    def give_back(self, batch: Batch) -> None:
        """Return a batch that could not be written; a newer hit of a key wins."""
        with self._lock:
            for key, at in batch.items():
                self._pending[key] = max(at, self._pending.get(key, at))

    def flush(self) -> None:
        """Write the pending hits now; whatever ``write`` raises, after giving the batch back."""
        batch = self.take()
        if not batch:
            return
        try:
            self._write(batch)
        except BaseException:
            self.give_back(batch)
            raise

    def join(self) -> None:
        """Wait for a background write under way."""
        flusher = self._flusher
        if flusher is not None:
            flusher.join()

    def _flush_quietly(self) -> None:
        try:
            self.flush()
        except (sqlite3.Error, OSError, RuntimeError) as exc:
            logger.warning("disk cache: could not record accesses: %s", exc)
        finally:
            with self._lock:
                self._flush_scheduled = False
