"""The disk tier's background writer: one thread that writes the in-memory index's changes and
the hits to SQLite in batches, and makes new content files durable with ``syncfs`` (durable.py).

It runs every :data:`FLUSH_SECONDS`, or as soon as it is woken (a batch of
:data:`FLUSH_CHANGES` changes is waiting); :meth:`DiskCache.close` writes the last batch.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable

__all__ = ["FLUSH_CHANGES", "FLUSH_SECONDS", "SYNC_SECONDS", "WriteBehind"]

logger = logging.getLogger("servefiles")

FLUSH_SECONDS = 0.5
"""A change reaches SQLite at most about this long after it was made in memory."""
FLUSH_CHANGES = 1024
"""...or as soon as this many changes wait."""
SYNC_SECONDS = 2.0
"""New content files are made durable (one ``syncfs``) at most this often."""


class WriteBehind:
    """Calls ``work()`` every :data:`FLUSH_SECONDS` or when woken, until stopped."""

    def __init__(self, work: Callable[[], None], name: str) -> None:
        self._work = work
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Stop after the pass under way (the caller does the last one)."""
        self._stopping = True
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(FLUSH_SECONDS)
            self._wake.clear()
            if self._stopping:
                return
            try:
                self._work()
            except (sqlite3.Error, OSError, RuntimeError) as exc:  # the batch waits for the next pass
                logger.warning("disk cache: could not write the index behind: %s", exc)
