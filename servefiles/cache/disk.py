"""The disk tier: content files on the frontend's own disk, shared by its worker processes.

The discipline is nginx ``proxy_cache``'s, in three small steps, each in a module of its own:

* **install** (writer.py): bytes go to a temp file, are verified and renamed into place,
  and only then indexed.
* **load** (loader.py, at :meth:`DiskCache.open`): validate the index against the disk
  and sweep, one ``objects/xx`` shard (one short transaction) at a time.
* **evict**: after each install, least recently used entries go until the files fit
  ``max_bytes``, in one batch.

This module is the tier at run time: look up, open, record hits, forget. Lookups read an index in memory (memindex.py),
loaded from the SQLite index at open; a lookup never touches SQLite.

**Alone or shared.** Each process registers in ``procs/`` (members.py). While a process is
the only one using the dir, its memory is the authority: changes are made in memory, files
renamed and unlinked outside any lock, SQLite written behind in batches (behind.py,
journal.py) and at close. Once another process shows up (one ``stat`` per fill tells), this
one writes its pending batch and from then on writes SQLite through, under its write lock
(then the lock on ``objects/``), and fills take per-key lock files (locks.py). Its memory
stays a cache: an entry another process installed is unknown here until a miss asks SQLite
(:meth:`find`), costing a revalidation, never a store fetch; one another process removed is
found missing by :meth:`open_entry` (exists, indexed size) and forgotten. Content files are
named by their hash, so a stale view costs a miss, never a wrong byte; versions are the
metadata view's business (the feed drops outdated keys in every process).

**Durability.** No fsync per file: a ``syncfs`` watermark and, after a reboot, verification of what it did not cover
(durable.py). A crash before a batch reached SQLite loses its entries; the next start-up sweeps their files.

Hostile contents (a symlink, FIFO, socket or directory where a content file, the index, a lock file or a
directory should be; a file where a directory should be; a truncated or unreadable file) are a miss, never a
hang: files are opened with ``O_NOFOLLOW|O_NONBLOCK`` and checked with ``fstat`` (localfs.py); the start-up
sweep removes what it cannot vouch for. A file damaged in place (right size, wrong bytes) is caught where its
bytes are read whole (a small file: once per file and process, verified.py), and by ``sync --verify``.

Whoever mirrors entries elsewhere (nginx's published tree) follows them with :meth:`DiskCache.on_removed`
and :meth:`DiskCache.holding`; this tier knows nothing of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import CacheWriteError
from ..keys import key_digest
from ..localfs import ensure_dir, file_system_type, open_regular_for_reading, remove_any, sha256_of_fd
from ..store.types import Change, FileMeta
from . import locks
from .behind import FLUSH_CHANGES, Behind
from .eviction import evict, release_file
from .index import Index, Transaction
from .journal import load_memory
from .layout import SHARDS, TEMP_PREFIX, CacheDir, DiskEntry, content_name, is_good_file, is_sha256
from .loader import StartupReport, load
from .locks import FillLock
from .members import Members
from .memindex import Journal, MemIndex
from .verified import LOCAL_FILE_SYSTEMS, FileStamp, VerifiedContents, changes_seen_at_once, stamp_of
from .writer import DiskWriter, install, install_alone

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

PROBE_ATTEMPTS = 3
"""Tries of :func:`~servefiles.cache.verified.changes_seen_at_once` before a cache dir's file system is
taken to lack multigrain timestamps (a round held up by the scheduler fails one)."""

RemovalListener = Callable[[str], None]
"""Called with a key whose entry a committed change removed or replaced."""


@dataclass(frozen=True, slots=True)
class CacheStats:
    """The tier's size now and this object's evictions (this process)."""

    entries: int
    bytes: int
    max_bytes: int
    evictions: int


class DiskCache:
    """The disk tier of one cache dir; share one object between the threads of a process.

    Lookups (:meth:`get`, :meth:`touch`) never block on I/O; the other methods may (file
    system, SQLite), and async callers run them in threads. Several processes may open the
    same dir at once.
    """

    def __init__(self, root: Path, max_bytes: int) -> None:
        self._dir = CacheDir(root)
        self.root = self._dir.root
        self.max_bytes = max_bytes
        self.evictions = 0
        self._index = Index(self._dir.index_file)
        self._report: StartupReport | None = None
        self._state_lock = threading.Lock()
        self._lock = threading.Lock()  # the memory index: held for dict work only, never across I/O
        self._mem = MemIndex()
        self._solo = False
        self._members = Members(self._dir.procs)
        self._behind = Behind(self._index, self.root, self._take_journal, self._put_back)
        self._touches = self._behind.touches
        self._listeners: list[RemovalListener] = []
        self.verified = VerifiedContents()  # contents this process checked against their sha256

    def open(self, sweep: bool = True) -> StartupReport:
        """Create the dirs, open (or rebuild) the index, and load: validate and sweep (loader.py),
        then read the index into memory.

        Idempotent: a second call returns the first report. ``sweep=False`` only opens the
        index, for a read-only look at a dir others may be using (such a look does not
        register in ``procs/``: it writes SQLite through if it writes at all).
        """
        with self._state_lock:
            if self._report is None:
                try:
                    report = load(self._dir, self._index, self._changing, sweep, self._members if sweep else None)
                    mem = load_memory(self._index)
                except BaseException:
                    self._members.leave()
                    self._index.close()
                    raise
                self._solo = sweep and self._members.alone()
                mem.journaling = self._solo
                self.verified.local = file_system_type(self.root) in LOCAL_FILE_SYSTEMS
                self.verified.changes_seen = sweep and self.verified.local and self._changes_seen_at_once()
                self._mem, self._report = mem, report
                self._behind.start()
            return self._report

    def _changes_seen_at_once(self) -> bool:
        """:func:`~servefiles.cache.verified.changes_seen_at_once` on a temp file of the first shard
        (locked, and swept as any temp file is if the process dies meanwhile; removed here); False
        when the file cannot be made or written (read-only, full: the settle time then stands)."""
        shard = self._dir.shard_path(SHARDS[0])
        try:
            ensure_dir(shard)
            fd, path = locks.create_locked_temp(shard, TEMP_PREFIX)
        except OSError:
            return False
        try:  # a round held up by the scheduler says no: a few tries
            return any(changes_seen_at_once(fd) for _ in range(PROBE_ATTEMPTS))
        except OSError:
            return False
        finally:
            locks.unlink_then_unlock(path, fd)

    def close(self) -> None:
        """Write what is pending to the index, make new files durable, close; idempotent."""
        with self._state_lock:
            if self._report is not None:
                try:
                    self._behind.stop()
                except (sqlite3.Error, OSError) as exc:
                    logger.warning("disk cache: could not write the index on close: %s", exc)
            self._index.close()
            self._members.leave()
            self._report = None

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` has finished and :meth:`close` has not run since."""
        return self._report is not None

    def alone(self) -> bool:
        """Whether this process is the only one using the dir (one ``stat``; see members.py).
        Once it is not, it writes SQLite through and its pending batch goes first."""
        if not self._solo:
            return False
        if self._members.alone():
            return True
        with self._lock:
            self._solo = False
            self._mem.journaling = False  # what is journaled already is written by the next flush
        self._behind.wake()
        return False

    def on_removed(self, listener: RemovalListener) -> None:
        """Call ``listener(key)`` after every change that removed or replaced ``key``'s entry
        (discarded, replaced by another version, evicted, dropped as damaged or at start-up),
        once per key and change, after the change is made, in the thread that made it. Register
        before :meth:`open`. A listener that raises is logged, never the change's failure."""
        self._listeners.append(listener)

    @contextlib.contextmanager
    def holding(self, entry: DiskEntry) -> Iterator[bool]:
        """Whether ``entry`` is still its key's entry, held so for the block: it runs under the
        index's write lock (across processes) and this process's memory lock, so no change is
        made until it ends, and the listeners hear of the entry's removal only after it. Keep
        the block short."""
        with self._index.transaction() as txn, self._lock:
            current = self._mem.get(entry.meta.key) if self._solo else txn.entry(entry.meta.key)
            yield current is not None and current.revision == entry.meta.revision

    def _tell(self, keys: Iterable[str]) -> None:
        for key in dict.fromkeys(keys):
            for listener in self._listeners:
                try:
                    listener(key)
                except Exception:  # the change is made: its caller must not think it failed
                    logger.exception("disk cache: a removal listener failed for %s", key, extra={"key": key})

    @contextlib.contextmanager
    def _changing(self, adopt: FileMeta | None = None) -> Iterator[Transaction]:
        """A write transaction of SQLite (a process that shares the dir, and start-up); once it
        commits, the memory index follows (``adopt``: the entry it installed) and the listeners
        hear of every key it removed or replaced."""
        with self._index.transaction() as txn:
            yield txn
        with self._lock:
            for key in txn.removed:
                self._mem.discard(key)
            if adopt is not None:
                self._mem.install(adopt, None)
        self._tell(txn.removed)

    # -- the hit path --------------------------------------------------------------------

    def content_path(self, sha256: str) -> Path:
        """Where the file with this content lives: from the hash, never from a key."""
        return self._dir.content_path(sha256)

    def get(self, key: str) -> DiskEntry | None:
        """The key's cached entry as this process knows it, from memory (no I/O at all)."""
        meta = self._mem.get(key)
        return None if meta is None else DiskEntry(meta, self._dir.content_text(meta.sha256))

    def held(self, key: str) -> FileMeta | None:
        """The version of the key's entry as this process knows it (:meth:`get` without the path)."""
        return self._mem.get(key)

    def metas(self) -> list[FileMeta]:
        """The version of every entry this process knows of (a copy, taken under the lock: for a
        scan on another thread)."""
        with self._lock:
            return list(self._mem.entries.values())

    def find(self, key: str) -> DiskEntry | None:
        """The key's entry, including one another process sharing the dir installed since this
        one loaded (then a SQLite read, for the miss path; alone, the same as :meth:`get`).
        An index that cannot be read right now is a miss, never an error."""
        if self.alone() or not self.is_open:
            return self.get(key)
        try:
            meta = self._index.get(key)
        except (sqlite3.Error, RuntimeError) as exc:
            logger.warning("disk cache index unreadable, treating %s as a miss: %s", key, exc, extra={"key": key})
            return None
        if meta is None or not is_sha256(meta.sha256):
            return self.get(key)
        with self._lock:
            known = self._mem.get(key)
            if known is None or known.version < meta.version:
                self._mem.install(meta, None)
        return DiskEntry(meta, self._dir.content_text(meta.sha256))

    def open_entry(self, entry: DiskEntry, *, drop_damaged: bool = True) -> int | None:
        """Open an entry's file for reading, or find it damaged: then drop it (unless not
        ``drop_damaged``: a request thread leaves that to the loop) and return None.

        ``O_NOFOLLOW`` refuses a symlink, ``O_NONBLOCK`` makes opening a FIFO
        return at once; ``fstat`` then wants a regular file of the indexed size.
        The caller owns the returned fd (blocking mode, close-on-exec).
        """
        opened = self.open_stamped(entry, drop_damaged=drop_damaged)
        return None if opened is None else opened[0]

    def open_stamped(self, entry: DiskEntry, *, drop_damaged: bool = True) -> tuple[int, FileStamp] | None:
        """:meth:`open_entry`, with the file's stamp from the same ``fstat``, for :meth:`read_whole`."""
        try:
            fd, status = open_regular_for_reading(entry.text)
        except OSError:
            if drop_damaged:
                self._drop_damaged(entry.meta)
            return None
        if status.st_size == entry.meta.size:
            return fd, stamp_of(status)
        os.close(fd)
        if drop_damaged:
            self._drop_damaged(entry.meta)
        return None

    def in_place(self, entry: DiskEntry) -> FileStamp | None:
        """The stamp of the entry's content file if it is there as indexed: a regular file (not a
        symlink) of the indexed size, by one ``lstat`` and no open — for a reply that hands the path
        to another process (nginx) instead of reading it (:meth:`vouched` then tells whether this
        very file was hashed). None is no verdict: :meth:`open_entry` then finds out and drops what
        is damaged."""
        try:
            found = os.lstat(entry.text)
        except OSError:
            return None
        return stamp_of(found) if stat.S_ISREG(found.st_mode) and found.st_size == entry.meta.size else None

    def vouched(self, entry: DiskEntry, stamp: FileStamp) -> bool:
        """Whether this process hashed the file stamped ``stamp`` and found the entry's content
        there, unchanged since (verified.py)."""
        return self.verified.vouches(entry.meta.sha256, stamp)

    def read_whole(self, entry: DiskEntry, fd: int, stamp: FileStamp, *, drop_damaged: bool = True) -> bytes | None:
        """The content of an entry opened with :meth:`open_stamped` (``fd`` is closed here), if it
        is the content its sha256 names; else None, and the file is dropped with every entry that
        uses it (:meth:`drop_damaged`; not with ``drop_damaged`` False: a request thread leaves
        that to the loop's lookup): a damaged file is refetched, never served.

        The one check of bytes read whole from the tier, whoever reads them (a disk hit, a fill
        that adopts another process's entry, nginx's X-Accel path): hashed the first time this
        process reads that very file, not again while its stamp is unchanged (verified.py)."""
        meta = entry.meta
        try:
            vouched = self.vouched(entry, stamp)
            read_at = 0.0 if vouched else time.time()
            data = os.pread(fd, meta.size, 0)
        finally:
            os.close(fd)
        if len(data) == meta.size and (vouched or self.verified.check(meta.sha256, stamp, data, read_at)):
            return data
        if drop_damaged:
            logger.warning("disk cache: %s does not match its sha256; refetching it", entry.text)
            self.drop_damaged(meta)
        return None

    def read_entry(self, entry: DiskEntry) -> bytes | None:
        """:meth:`open_stamped` then :meth:`read_whole`, in one call: the entry's checked content, or
        None (gone, or damaged and dropped). No descriptor outlives the call, so a caller on the
        event loop that runs it on a thread and is cancelled meanwhile loses nothing (the thread
        runs to its end and closes what it opened)."""
        opened = self.open_stamped(entry)
        if opened is None:
            return None
        fd, stamp = opened
        return self.read_whole(entry, fd, stamp)

    def check_whole(self, entry: DiskEntry, fd: int, stamp: FileStamp, *, small: bool = True) -> bool:
        """:meth:`read_whole` for a caller that sends the file without reading it (nginx's X-Accel
        path): whether it is intact, read and hashed only if this process has not verified it
        already; ``fd`` is closed here. Not ``small`` (too large to read whole): :meth:`check_open`."""
        if small and not self.vouched(entry, stamp):
            return self.read_whole(entry, fd, stamp) is not None
        try:
            return self.check_open(entry, fd, stamp)
        finally:
            os.close(fd)

    def open_checked(self, entry: DiskEntry) -> int | None:
        """:meth:`open_stamped`, then :meth:`check_open`: a descriptor of the entry's file once this
        process has vouched for it (hashed now if need be), else None (gone, or damaged and dropped).
        The caller owns the descriptor. Blocks as :meth:`check_open` does: on a thread."""
        opened = self.open_stamped(entry)
        if opened is None:
            return None
        fd, stamp = opened
        try:
            if self.check_open(entry, fd, stamp):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return None

    def check_open(self, entry: DiskEntry, fd: int, stamp: FileStamp) -> bool:
        """Whether the file open as ``fd`` (stamped ``stamp`` by :meth:`open_stamped`) holds the entry's
        content: at once when this process vouched for that very file, else hashed in blocks (the file
        is not held whole) and remembered as :meth:`read_whole` does; a mismatch, or a file that cannot
        be read, drops it with every entry that uses it. ``fd`` stays open, its offset unmoved.

        For a file too large for the memory tier, before this process first serves it: the same check
        a small file gets, so a file damaged in place (same size, other bytes) is refetched, never
        served, whatever its size. It reads the whole file (about 0.65 µs per KB of sha256 here, and
        the disk if the page cache lacks it): call it on a thread, or on the event loop only for a
        file of at most a MiB that is all in the page cache (FileService._open_checked)."""
        meta = entry.meta
        if self.vouched(entry, stamp):
            return True
        read_at = time.time()
        try:
            digest = sha256_of_fd(fd)
        except OSError as exc:
            logger.warning("disk cache: could not read %s to check it: %s", entry.text, exc)
            digest = ""
        if self.verified.found(meta.sha256, stamp, digest, read_at):
            return True
        logger.warning("disk cache: %s does not match its sha256; refetching it", entry.text)
        self.drop_damaged(meta)
        return False

    def victims(self, meta: FileMeta, limit: int) -> list[str]:
        """The keys an install of ``meta`` would evict, least recently used first, at most ``limit``
        of them; [] when there is room (:meth:`MemIndex.victims`)."""
        with self._lock:
            return self._mem.victims(meta, self.max_bytes, limit)

    def fits(self, meta: FileMeta, pending: int = 0) -> bool:
        """Whether an install of ``meta`` would keep the tier within its size with no eviction
        (:meth:`MemIndex.fits`), ``pending`` more bytes (writes under way) counted as installed:
        False for a file larger than the whole tier. This process's index: exact only while it
        has the dir to itself (:meth:`alone`)."""
        with self._lock:
            return self._mem.fits(meta, self.max_bytes - pending)

    def touch(self, key: str, revision: tuple[int, str] | None = None) -> None:
        """Record a hit for LRU, in memory; written to the index in batches. Nothing for a key
        this tier does not hold, or holds in another revision than ``revision`` (when given)."""
        with self._lock:
            held = self._mem.touch(key, revision)
        if held:
            self._touches.touch(key)

    def flush(self) -> None:
        """Write the pending changes and touches to the index now."""
        self._behind.flush()

    def _take_journal(self) -> Journal:
        with self._lock:
            return self._mem.take_journal()

    def _put_back(self, journal: Journal) -> None:
        with self._lock:
            self._mem.journal.merge_older(journal)

    # -- changes -------------------------------------------------------------------------

    def begin(self, meta: FileMeta) -> DiskWriter:
        """Start writing a file; CacheWriteError if it cannot be (no space, read-only, too big)."""
        if not is_sha256(meta.sha256) or meta.size < 0:
            raise CacheWriteError(f"cannot cache {meta.key}: malformed sha256 or size")
        if meta.size > self.max_bytes:
            raise CacheWriteError(f"cannot cache {meta.key}: {meta.size} bytes exceed the cache's {self.max_bytes}")
        shard = self._dir.shard_path(meta.sha256[:2])
        try:
            ensure_dir(shard)  # each time: a shard replaced by a link while running is never written through
            fd, path = locks.create_locked_temp(shard, TEMP_PREFIX)
        except OSError as exc:
            raise CacheWriteError(f"cannot cache {meta.key}: {exc}") from exc
        return DiskWriter(meta, path, fd, self._install)

    def store(self, meta: FileMeta, data: bytes) -> DiskEntry:
        """Write a whole file at once (begin, write, commit: one call, so one thread hop)."""
        with self.begin(meta) as writer:
            writer.write(data)
            return writer.commit()

    def _install(self, meta: FileMeta, temp: str, fd: int | None) -> DiskEntry:
        """Install a verified temp file (writer.py; ``fd`` open on it when nothing but its writer
        changed it, to be marked: :meth:`_mark_written`), then evict in one batch."""
        if self.alone():
            return self._install_alone(meta, temp, fd)
        self.flush()  # what this process did alone goes first
        touches = self._touches.take()
        try:
            with self._changing(adopt=meta) as txn:
                txn.record_access(touches.items())
                renamed = install(txn, self._dir, meta, temp)
                evicted = evict(txn, self._dir, meta, self.max_bytes)
        except BaseException:
            self._touches.give_back(touches)
            raise
        if renamed:
            self._mark_written(meta, fd)
        self._behind.unsynced = True
        self._count_evictions(evicted)
        return DiskEntry(meta, self._dir.content_text(meta.sha256))

    def _mark_written(self, meta: FileMeta, fd: int | None) -> None:
        """The file this process wrote, hashed as it went and just renamed into place (open as
        ``fd``; None: something else changed its temp file, not marked), vouched for as it is now
        where a later change could not hide (verified.py): its first read is then not a second
        hash."""
        if fd is not None and self.verified.exact:  # else nothing is marked: no fstat
            self.verified.wrote(meta.sha256, stamp_of(os.fstat(fd)))

    def _install_alone(self, meta: FileMeta, temp: str, fd: int | None) -> DiskEntry:
        """Install without SQLite or any lock across file work (:func:`install_alone`), then unlink
        what went, count the evictions, and tell the listeners."""
        done = install_alone(self._mem, self._lock, self._dir, meta, temp, self.max_bytes)
        if done.renamed:
            self._mark_written(meta, fd)
        self._behind.unsynced = self._behind.unsynced or done.renamed
        self._unlink(done.unlink)
        self._count_evictions(len(done.evicted))
        if done.pending >= FLUSH_CHANGES:
            self._behind.wake()
        self._tell(done.removed + done.evicted)
        return DiskEntry(meta, self._dir.content_text(meta.sha256))

    def _unlink(self, shas: Iterable[str]) -> None:
        for sha256 in shas:
            if is_sha256(sha256):
                try:
                    remove_any(self._dir.content_path(sha256))
                except OSError as exc:  # the next start-up's sweep removes it
                    logger.warning("disk cache: could not remove %s: %s", sha256, exc)

    def _count_evictions(self, evicted: int) -> None:
        with self._lock:
            self.evictions += evicted

    def discard(self, key: str) -> None:
        """Forget the key; its file goes too unless another key's entry uses it."""
        self._touches.forget(key)
        if self.alone():
            with self._lock, self._mem.journaled():  # decided alone: see MemIndex.journaled
                known = self._mem.get(key) is not None
                unlink = self._mem.discard(key)
            self._unlink(unlink)
            if known:
                self._tell([key])
            return
        self.flush()
        with self._changing() as txn:
            meta = txn.entry(key)
            if meta is not None:
                txn.delete_entry(key)
                release_file(txn, self._dir, meta.sha256)
        with self._lock:
            self._mem.discard(key)  # known here, unknown to the index (never written, or gone)

    def drop_outdated(self, changes: Iterable[Change]) -> int:
        """Discard every entry that one of ``changes`` outdates (:meth:`Change.outdates`); how many."""
        dropped = 0
        for change in changes:
            entry = self.find(change.key)
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

        The file is looked at again first: another writer may have put a good copy in place
        meanwhile, and that one must stay. A failure is logged: the next open's sweep will do it."""
        self.verified.discard(meta.sha256)
        if not is_sha256(meta.sha256):
            return
        path = self._dir.content_path(meta.sha256)
        try:
            if self.alone():
                with self._lock:
                    size = self._mem.files.get(meta.sha256)
                if size is None or is_good_file(path, size, meta.sha256 if check_hash else None):
                    return
                with self._lock, self._mem.journaled():  # decided alone: see MemIndex.journaled
                    dropped = self._mem.drop_file(meta.sha256)
                remove_any(path)
                self._tell(dropped)
                return
            with self._lock:
                self._mem.drop_file(meta.sha256)
            self.flush()
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
        if self.alone():
            with self._lock:
                return list(self._mem.entries)
        self.flush()
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

    def fill_lock(self, key: str) -> FillLock | None:
        """The lock a fill of ``key`` takes: none while this process is alone in the dir (its
        own single-flight suffices, and no lock file is made), else :meth:`lock`."""
        return None if self.alone() else self.lock(key)

    def stats(self) -> CacheStats:
        """The entries and bytes (alone: this process's; else the whole dir's), and this object's evictions."""
        if self.alone():
            with self._lock:
                entries, total = len(self._mem.entries), self._mem.total_bytes
        else:  # what this process did alone reaches SQLite with the next batch
            entries, total = self._index.totals()
        return CacheStats(entries=entries, bytes=total, max_bytes=self.max_bytes, evictions=self.evictions)
