"""The disk tier's background writer: one thread that writes the in-memory index's changes and
the hits to SQLite in batches (journal.py), and makes new content files durable with
``syncfs`` (durable.py).

A pass runs every :data:`FLUSH_SECONDS`, or as soon as it is woken (a batch of
:data:`FLUSH_CHANGES` changes is waiting); :meth:`Behind.stop` runs the last one.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .durable import syncfs
from .index import Index
from .journal import mark_synced, write_journal
from .memindex import Journal
from .touches import PendingTouches

__all__ = ["FLUSH_CHANGES", "FLUSH_SECONDS", "SYNC_SECONDS", "Behind"]

logger = logging.getLogger("servefiles")

FLUSH_SECONDS = 0.5
"""A change reaches SQLite at most about this long after it was made in memory."""
FLUSH_CHANGES = 1024
"""...or as soon as this many changes wait."""
SYNC_SECONDS = 2.0
"""New content files are made durable (one ``syncfs``) at most this often."""


class Behind:
    """What waits to be written to one cache dir's SQLite index, and the thread that writes it.

    ``take`` hands over the memory index's journal (under its lock); ``put_back`` returns
    one that could not be written (a change recorded since wins).
    """

    def __init__(self, index: Index, root: Path, take: Callable[[], Journal], put_back: Callable[[Journal], None]):
        self._index = index
        self._root = root
        self._take = take
        self._put_back = put_back
        self.touches = PendingTouches()
        self.unsynced = False
        """Whether a file was renamed into place since the last syncfs began."""
        self._last_sync = time.monotonic()
        self._flush_lock = threading.Lock()  # one batch at a time, in order
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="servefiles disk index", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Stop the thread, then write what is pending and sync; idempotent. Raises what they raise."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping = True
            self._wake.set()
            thread.join()
        self.flush()
        if self.unsynced:
            self.sync()

    def flush(self) -> None:
        """Write the pending changes and hits to the index now (given back if that fails)."""
        with self._flush_lock:
            journal = self._take()
            touches = self.touches.take()
            if not journal and not touches:
                return
            try:
                with self._index.transaction() as txn:
                    write_journal(txn, journal, touches)
            except BaseException:
                self._put_back(journal)
                self.touches.give_back(touches)
                raise

    def sync(self) -> None:
        """Make every file renamed so far durable, then say so in the index (durable.py)."""
        self.unsynced = False
        self._last_sync = time.monotonic()
        began = time.monotonic_ns()
        try:
            syncfs(self._root)
            with self._index.transaction() as txn:
                mark_synced(txn, began)
        except BaseException:
            self.unsynced = True
            raise

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(FLUSH_SECONDS)
            self._wake.clear()
            if self._stopping:
                return
            try:
                self.flush()
                if self.unsynced and time.monotonic() - self._last_sync >= SYNC_SECONDS:
                    self.sync()
            except (sqlite3.Error, OSError, RuntimeError) as exc:  # the batch waits for the next pass
                logger.warning("disk cache: could not write the index behind: %s", exc)
