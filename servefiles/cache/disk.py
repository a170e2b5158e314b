"""The disk tier: content files on the frontend's own disk, shared by its worker processes.

The discipline is nginx ``proxy_cache``'s, in three small steps, each in a module of its own:

* **install** (writer.py): bytes go to a temp file, are fsynced, verified and renamed
  into place, and only then indexed.
* **load** (loader.py, at :meth:`DiskCache.open`): validate the index against the disk
  and sweep, one ``objects/xx`` shard (one short transaction) at a time.
* **evict** (eviction.py): after each install, least recently used entries go until
  the files fit ``max_bytes``.

This module is the tier at run time: look up, open, record hits, forget, and the change
transaction every write goes through. The layout of the dir is in layout.py.

Processes agree through two kernel mechanisms only: the index's SQLite write
lock, which every rename into ``objects/`` and every unlink of a content file
happens under (so nobody deletes a file another process has just installed),
and flock, which dies with its holder (fill locks, temp files in progress).

Hostile contents (a symlink, FIFO, socket or directory where a content file,
the index, a lock file or a directory should be; a file where a directory
should be; a truncated or unreadable file) are a miss, never a hang: files are
opened with ``O_NOFOLLOW|O_NONBLOCK`` and checked with ``fstat`` (localfs.py);
the start-up sweep removes what it cannot vouch for. A file damaged in place
(right size, wrong bytes) is caught where its bytes are read anyway: promotion
to memory and ``sync --verify`` hash them.

Whoever mirrors entries elsewhere (nginx's published tree) follows them with
:meth:`DiskCache.on_removed` and :meth:`DiskCache.holding`; this tier knows nothing of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import CacheWriteError
from ..keys import key_digest
from ..localfs import ensure_dir, open_regular, remove_any
from ..store.types import Change, FileMeta
from . import locks
from .eviction import evict, release_file
from .index import Index, Transaction
from .layout import TEMP_PREFIX, CacheDir, DiskEntry, content_name, is_good_file, is_sha256
from .loader import StartupReport, load
from .locks import FillLock
from .touches import Batch, PendingTouches
from .writer import DiskWriter, install

__all__ = [
    "TEMP_PREFIX",
    "CacheStats",
    "DiskCache",
    "DiskEntry",
    "DiskWriter",
    "FillLock",
    "StartupReport",
    "content_name",
]

logger = logging.getLogger("servefiles")

RemovalListener = Callable[[str], None]
"""Called with a key whose entry a committed change removed or replaced."""


@dataclass(frozen=True, slots=True)
class CacheStats:
    """The tier's size now (all processes) and this object's evictions (this process)."""

    entries: int
    bytes: int
    max_bytes: int
    evictions: int


class DiskCache:
    """The disk tier of one cache dir; share one object between the threads of a process.

    Every method blocks (file system, SQLite); async callers run the slow ones
    in threads. Several processes may open the same dir at once.
    """

    def __init__(self, root: Path, max_bytes: int) -> None:
        self._dir = CacheDir(root)
        self.root = self._dir.root
        self.max_bytes = max_bytes
        self.evictions = 0
        self._index = Index(self._dir.index_file)
        self._report: StartupReport | None = None
        self._state_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._touches = PendingTouches(self._record_accesses)
        self._listeners: list[RemovalListener] = []

    # -- life cycle ----------------------------------------------------------------------

    def open(self, sweep: bool = True) -> StartupReport:
        """Create the dirs, open (or rebuild) the index, and load: validate and sweep (loader.py).

        Idempotent: a second call returns the first report. ``sweep=False``
        only opens the index, for a read-only look at a dir others may be using.
        """
        with self._state_lock:
            if self._report is None:
                self._report = load(self._dir, self._index, self._changing, sweep)
            return self._report

    def close(self) -> None:
        """Write pending touches and close the index; idempotent."""
        with self._state_lock:
            self._touches.join()
            if self._report is not None:
                try:
                    self.flush()
                except (sqlite3.Error, OSError) as exc:
                    logger.warning("disk cache: could not record accesses on close: %s", exc)
            self._index.close()
            self._report = None

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` has finished and :meth:`close` has not run since."""
        return self._report is not None

    # -- for whoever mirrors the entries -------------------------------------------------

    def on_removed(self, listener: RemovalListener) -> None:
        """Call ``listener(key)`` after every change that removed or replaced ``key``'s entry
        (discarded, replaced by another version, evicted, dropped as damaged or at start-up),
        once per key and change, after the change commits, in the thread that made it. Register
        before :meth:`open`. A listener that raises is logged, never the change's failure."""
        self._listeners.append(listener)

    @contextlib.contextmanager
    def holding(self, entry: DiskEntry) -> Iterator[bool]:
        """Whether ``entry`` is still its key's entry, held so for the block: it runs under the
        index's write lock (across processes), so no change commits until it ends, and the
        listeners hear of the entry's removal only after it. Keep the block short."""
        with self._index.transaction() as txn:
            current = txn.entry(entry.meta.key)
            yield current is not None and current.revision == entry.meta.revision

    @contextlib.contextmanager
    def _changing(self) -> Iterator[Transaction]:
        """A write transaction; once it commits, the listeners hear of every key it removed or replaced."""
        with self._index.transaction() as txn:
            yield txn
        if self._listeners and txn.removed:
            for key in dict.fromkeys(txn.removed):
                for listener in self._listeners:
                    try:
                        listener(key)
                    except Exception:  # the change has committed: its caller must not think it failed
                        logger.exception("disk cache: a removal listener failed for %s", key)

    # -- the hit path --------------------------------------------------------------------

    def content_path(self, sha256: str) -> Path:
        """Where the file with this content lives: from the hash, never from a key."""
        return self._dir.content_path(sha256)

    def get(self, key: str) -> DiskEntry | None:
        """The key's cached entry, from the index alone (no content read, no stat).

        An index that cannot be read right now is a miss, never an error: a
        cache failure must not fail a request.
        """
        try:
            meta = self._index.get(key)
        except (sqlite3.Error, RuntimeError) as exc:
            logger.warning("disk cache index unreadable, treating %s as a miss: %s", key, exc)
            return None
        if meta is None or not is_sha256(meta.sha256):
            return None
        return DiskEntry(meta, self._dir.content_path(meta.sha256))

    def open_entry(self, entry: DiskEntry) -> int | None:
        """Open an entry's file for reading, or find it damaged: then drop it and return None.

        ``O_NOFOLLOW`` refuses a symlink, ``O_NONBLOCK`` makes opening a FIFO
        return at once; ``fstat`` then wants a regular file of the indexed size.
        The caller owns the returned fd (blocking mode, close-on-exec).
        """
        try:
            fd = open_regular(entry.path)
        except OSError:
            self._drop_damaged(entry.meta)
            return None
        try:
            if os.fstat(fd).st_size == entry.meta.size:
                return fd
        except OSError:
            pass
        os.close(fd)
        self._drop_damaged(entry.meta)
        return None

    def touch(self, key: str) -> None:
        """Record a hit for LRU, in memory; written to the index in batches (touches.py)."""
        self._touches.touch(key)

    def flush(self) -> None:
        """Write the pending touches to the index now."""
        self._touches.flush()

    def _record_accesses(self, batch: Batch) -> None:
        with self._changing() as txn:
            txn.record_access(batch.items())

    # -- changes -------------------------------------------------------------------------

    def begin(self, meta: FileMeta) -> DiskWriter:
        """Start writing a file; CacheWriteError if it cannot be (no space, read-only, too big)."""
        if not is_sha256(meta.sha256) or meta.size < 0:
            raise CacheWriteError(f"cannot cache {meta.key}: malformed sha256 or size")
        if meta.size > self.max_bytes:
            raise CacheWriteError(f"cannot cache {meta.key}: {meta.size} bytes exceed the cache's {self.max_bytes}")
        final = self._dir.content_path(meta.sha256)
        try:
            ensure_dir(final.parent)
            fd, path = locks.create_locked_temp(final.parent, TEMP_PREFIX)
        except OSError as exc:
            raise CacheWriteError(f"cannot cache {meta.key}: {exc}") from exc
        return DiskWriter(meta, path, fd, self._install)

    def _install(self, meta: FileMeta, temp: Path) -> DiskEntry:
        """Install a verified, fsynced temp file (writer.py), with the pending touches, then
        evict (eviction.py): all in one change, under the write lock."""
        touches = self._touches.take()
        try:
            with self._changing() as txn:
                txn.record_access(touches.items())
                install(txn, self._dir, meta, temp)
                evicted = evict(txn, self._dir, meta, self.max_bytes)
        except BaseException:
            self._touches.give_back(touches)
            raise
        if evicted:
            with self._count_lock:
                self.evictions += evicted
        return DiskEntry(meta, self._dir.content_path(meta.sha256))

    def discard(self, key: str) -> None:
        """Forget the key; its file goes too unless another key's entry uses it."""
        self._touches.forget(key)
        with self._changing() as txn:
            meta = txn.entry(key)
            if meta is not None:
                txn.delete_entry(key)
                release_file(txn, self._dir, meta.sha256)

    def drop_outdated(self, changes: Iterable[Change]) -> int:
        """Discard every entry that one of ``changes`` outdates (:meth:`Change.outdates`); how many."""
        dropped = 0
        for change in changes:
            entry = self.get(change.key)
            if change.outdates(entry.meta.version if entry is not None else None):
                self.discard(change.key)
                dropped += 1
        return dropped

    def drop_damaged(self, meta: FileMeta) -> None:
        """Forget a file whose bytes were found not to match its hash, with every entry that
        uses it — unless the file in place now (another process may have replaced it) is good."""
        self._drop_damaged(meta, check_hash=True)

    def _drop_damaged(self, meta: FileMeta, check_hash: bool = False) -> None:
        """Forget a file found damaged, with every entry that uses it, and remove what is there.

        Under the write lock the file is looked at again: another process may
        have put a good copy in place meanwhile, and that one must stay. A failure
        is logged: the next open's sweep will do it.
        """
        if not is_sha256(meta.sha256):
            return
        path = self._dir.content_path(meta.sha256)
        try:
            with self._changing() as txn:
                size = txn.file_size(meta.sha256)
                if size is None or is_good_file(path, size, meta.sha256 if check_hash else None):
                    return
                txn.drop_file(meta.sha256)
                remove_any(path)
        except (sqlite3.Error, OSError) as exc:
            logger.warning("disk cache: could not drop damaged %s: %s", path, exc)

    def keys(self) -> list[str]:
        """Every key with an entry (for maintenance commands, not the request path)."""
        with self._index.transaction() as txn:
            return txn.keys()

    def clear(self) -> int:
        """Forget every entry, e.g. when the cache dir was filled from another database."""
        keys = self.keys()
        for key in keys:
            self.discard(key)
        return len(keys)

    def lock(self, key: str) -> FillLock:
        """The cross-process fill lock of ``key`` (named by the key's hash, never its text)."""
        return FillLock(self._dir.locks / f"{key_digest(key).hex()}.lock")

    def stats(self) -> CacheStats:
        """The entries and bytes of the whole dir (every process), and this object's evictions."""
        entries, total = self._index.totals()
        return CacheStats(entries=entries, bytes=total, max_bytes=self.max_bytes, evictions=self.evictions)
