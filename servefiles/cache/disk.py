"""The disk tier: content files on the frontend's own disk, shared by its worker processes.

The discipline is nginx ``proxy_cache``'s, in three small steps:

* **publish** (:meth:`DiskWriter.commit`): bytes go to a temp file in the
  directory of their final name, are fsynced and verified (size and sha256),
  renamed into place (atomic: same directory) and only then indexed. A reader
  therefore never sees a partial file under a final name, and ``kill -9`` at
  any point leaves at worst a temp file.
* **load** (:meth:`DiskCache.open`): validate the index against the disk and
  sweep, one ``objects/xx`` shard (one short transaction) at a time: temp files
  of dead writers and anything the index does not vouch for go.
* **evict** (:meth:`DiskCache._evict`): after each publish, least recently
  used entries go until the files fit ``max_bytes``.

Layout of a cache dir::

    index.sqlite3        the index (see index.py): key -> version, sha256, ..., last access
    open.lock            held while one process opens or repairs the index
    objects/ab/<sha256>  content files, named by content hash, never by key or URL
    objects/ab/.tmp-*    temp files, each flocked by its live writer
    locks/<sha256(key)>.lock  fill locks (see locks.py)

Processes agree through two kernel mechanisms only: the index's SQLite write
lock, which every rename into ``objects/`` and every unlink of a content file
happens under (so nobody deletes a file another process has just published),
and flock, which dies with its holder (fill locks, temp files in progress).

Hostile contents (a symlink, FIFO, socket or directory where a content file,
the index, a lock file or a directory should be; a file where a directory
should be; a truncated or unreadable file) are a miss, never a hang: files are
opened with ``O_NOFOLLOW|O_NONBLOCK`` and checked with ``fstat`` (localfs.py);
the sweep uses ``lstat``, never follows links and removes what it cannot vouch
for, logging one line per kind. A file damaged in place (right size, wrong
bytes) is caught where its bytes are read anyway: promotion to memory and
``sync --verify`` hash them.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import sqlite3
import stat
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from ..errors import CacheWriteError
from ..keys import key_digest
from ..localfs import ensure_dir, kind, open_regular, remove_any, sha256_of_fd
from ..store.types import FileMeta
from . import locks
from .index import Index, Transaction
from .locks import FillLock
from .tree import PublishedTree

__all__ = ["CacheStats", "DiskCache", "DiskEntry", "DiskWriter", "FillLock", "StartupReport"]

logger = logging.getLogger("servefiles")

OBJECTS_DIR = "objects"
LOCKS_DIR = "locks"
INDEX_FILE = "index.sqlite3"
OPEN_LOCK_FILE = "open.lock"
TEMP_PREFIX = ".tmp-"
EVICT_BATCH = 64
TOUCH_FLUSH_SECONDS = 10.0
"""Touches are written to the index at most this long after they happen (or at commit/close)."""
TOUCH_FLUSH_PENDING = 4096
"""...or as soon as this many keys wait to be written."""

_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHARDS = tuple(f"{n:02x}" for n in range(256))
_SHARD_NAMES = frozenset(_SHARDS)


@dataclass(frozen=True, slots=True)
class DiskEntry:
    """A cached file: its metadata and the absolute path of its content file."""

    meta: FileMeta
    path: Path


@dataclass(frozen=True, slots=True)
class StartupReport:
    """What :meth:`DiskCache.open` found and did (logged by the caller)."""

    entries: int
    bytes: int
    removed_temp: int
    removed_unvouched: int
    dropped_invalid: int
    seconds: float


@dataclass(frozen=True, slots=True)
class CacheStats:
    """The tier's size now (all processes) and this object's evictions (this process)."""

    entries: int
    bytes: int
    max_bytes: int
    evictions: int


@dataclass(slots=True)
class _SweepCounts:
    removed_temp: int = 0
    removed_unvouched: int = 0
    dropped_invalid: int = 0
    hostile: Counter[str] = field(default_factory=Counter)
    """What stood where something else belongs, by kind (one log line each)."""


def is_sha256(text: str) -> bool:
    """Whether ``text`` can name a content file: exactly 64 lowercase hex digits, nothing else."""
    return len(text) == 64 and _SHA256.fullmatch(text) is not None


def _is_good_file(path: Path, size: int, sha256: str | None = None) -> bool:
    """A regular file (not followed) we can open, of exactly ``size`` bytes (and, when
    given, that hash). Opened without blocking: a FIFO or an unreadable file is not good."""
    try:
        fd = open_regular(path)
    except OSError:
        return False
    try:
        if os.fstat(fd).st_size != size:
            return False
        if sha256 is None:
            return True
        return sha256_of_fd(fd) == sha256
    finally:
        os.close(fd)


_remove_any = remove_any


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable: the directory entry, not just the data."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DiskCache:
    """The disk tier of one cache dir; share one object between the threads of a process.

    Every method blocks (file system, SQLite); async callers run the slow ones
    in threads. Several processes may open the same dir at once.
    """

    def __init__(self, root: Path, max_bytes: int, tree: PublishedTree | None = None) -> None:
        self.root = Path(root).absolute()
        self.tree = tree
        """nginx's published tree, kept in step with the entries (see tree.py)."""
        self.max_bytes = max_bytes
        self.evictions = 0
        self._objects = self.root / OBJECTS_DIR
        self._objects_text = str(self._objects)
        self._locks = self.root / LOCKS_DIR
        self._index = Index(self.root / INDEX_FILE)
        self._report: StartupReport | None = None
        self._state_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._touch_lock = threading.Lock()
        self._touches: dict[str, int] = {}
        self._last_flush = time.monotonic()
        self._flusher: threading.Thread | None = None
        self._flush_scheduled = False

    # -- life cycle ----------------------------------------------------------------------

    def open(self, sweep: bool = True) -> StartupReport:
        """Create the dirs, open (or rebuild) the index, and load: validate and sweep.

        Idempotent: a second call returns the first report. ``sweep=False``
        only opens the index, for a read-only look at a dir others may be using.
        """
        with self._state_lock:
            if self._report is not None:
                return self._report
            started = time.monotonic()
            counts = _SweepCounts()
            os.makedirs(self.root, exist_ok=True)  # the root is the user's to choose: a symlink is followed
            for directory in (self._objects, self._locks):
                replaced = ensure_dir(directory)
                if replaced:
                    counts.hostile[f"{replaced} where the {directory.name}/ directory belongs"] += 1
            with locks.exclusive(self.root / OPEN_LOCK_FILE):
                self._index.open(check=sweep)
            counts.hostile.update(self._index.removed)
            try:
                if sweep:
                    self._load(counts)
                    if self.tree is not None:
                        counts.removed_unvouched += self.tree.sweep(self._index.get)
                entries, total = self._index.totals()
            except BaseException:
                self._index.close()
                raise
            self._report = StartupReport(
                entries=entries,
                bytes=total,
                removed_temp=counts.removed_temp,
                removed_unvouched=counts.removed_unvouched,
                dropped_invalid=counts.dropped_invalid,
                seconds=time.monotonic() - started,
            )
            for what, number in sorted(counts.hostile.items()):
                logger.warning("disk cache %s: removed %d %s", self.root, number, what)
            return self._report

    def close(self) -> None:
        """Write pending touches and close the index; idempotent."""
        with self._state_lock:
            flusher = self._flusher
            if flusher is not None:
                flusher.join()
            if self._report is not None:
                try:
                    self.flush()
                except (sqlite3.Error, OSError) as exc:
                    logger.warning("disk cache: could not record accesses on close: %s", exc)
            self._index.close()
            self._report = None

    @contextlib.contextmanager
    def _changing(self) -> Iterator[Transaction]:
        """A write transaction; once it commits, the tree withdraws every key it removed or replaced."""
        with self._index.transaction() as txn:
            yield txn
        if self.tree is not None and txn.removed:
            for key in dict.fromkeys(txn.removed):
                self.tree.withdraw(key)

    def publish_to_tree(self, entry: DiskEntry) -> bool:
        """Publish an entry for nginx, if it is still the key's entry (checked under the write
        lock, so a version replaced meanwhile is never published after its withdrawal), and
        once its validator second is over (see :meth:`PublishedTree.is_due`)."""
        if self.tree is None or not self.tree.accepts(entry.meta) or not self.tree.is_due(entry.meta):
            return False
        if self.tree.is_published(entry.meta):
            return True
        with self._index.transaction() as txn:
            current = txn.entry(entry.meta.key)
            if current is None or current.revision != entry.meta.revision:
                return False
            return self.tree.publish(entry.meta, entry.path)

    # -- the hit path --------------------------------------------------------------------

    def content_path(self, sha256: str) -> Path:
        """Where the file with this content lives: from the hash, never from a key."""
        return Path(f"{self._objects_text}/{content_name(sha256)}")

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
        return DiskEntry(meta, self.content_path(meta.sha256))

    def open_entry(self, entry: DiskEntry) -> int | None:
        """Open an entry's file for reading, or find it damaged: then drop it and return None.

        ``O_NOFOLLOW`` refuses a symlink, ``O_NONBLOCK`` makes opening a FIFO
        return at once; ``fstat`` then wants a regular file of the indexed size.
        The caller owns the returned fd (blocking mode, close-on-exec).
        """
        try:
            fd = open_regular(entry.path)
        except OSError:
            self._drop_damaged_quietly(entry.meta)
            return None
        try:
            if os.fstat(fd).st_size == entry.meta.size:
                return fd
        except OSError:
            pass
        os.close(fd)
        self._drop_damaged_quietly(entry.meta)
        return None

    def drop_damaged(self, meta: FileMeta) -> None:
        """Forget a file whose bytes were found not to match its hash, with every entry that
        uses it — unless the file in place now (another process may have replaced it) is good."""
        self._drop_damaged_quietly(meta, check_hash=True)

    def _drop_damaged_quietly(self, meta: FileMeta, check_hash: bool = False) -> None:
        try:
            self._drop_damaged(meta, check_hash)
        except (sqlite3.Error, OSError) as exc:  # the next open's sweep will
            logger.warning("disk cache: could not drop damaged entry %s: %s", meta.key, exc)

    def touch(self, key: str) -> None:
        """Record a hit for LRU, in memory; written to the index in batches."""
        with self._touch_lock:
            self._touches[key] = time.time_ns()
            due = (
                len(self._touches) >= TOUCH_FLUSH_PENDING or time.monotonic() - self._last_flush >= TOUCH_FLUSH_SECONDS
            )
            if not due or self._flush_scheduled:
                return
            self._flush_scheduled = True
            self._last_flush = time.monotonic()
            self._flusher = flusher = threading.Thread(
                target=self._flush_quietly, name="servefiles disk touches", daemon=True
            )
        flusher.start()  # the hit path never waits for SQLite's write lock

    def flush(self) -> None:
        """Write the pending touches to the index now."""
        batch = self._take_touches()
        if not batch:
            return
        try:
            with self._changing() as txn:
                txn.record_access(batch.items())
        except BaseException:
            self._return_touches(batch)
            raise

    def _flush_quietly(self) -> None:
        try:
            self.flush()
        except (sqlite3.Error, OSError, RuntimeError) as exc:
            logger.warning("disk cache: could not record accesses: %s", exc)
        finally:
            with self._touch_lock:
                self._flush_scheduled = False

    def _take_touches(self) -> dict[str, int]:
        with self._touch_lock:
            batch, self._touches = self._touches, {}
            self._last_flush = time.monotonic()
        return batch

    def _return_touches(self, batch: dict[str, int]) -> None:
        with self._touch_lock:
            for key, at in batch.items():
                self._touches[key] = max(at, self._touches.get(key, at))

    # -- changes -------------------------------------------------------------------------

    def begin(self, meta: FileMeta) -> DiskWriter:
        """Start writing a file; CacheWriteError if it cannot be (no space, read-only, too big)."""
        if not is_sha256(meta.sha256) or meta.size < 0:
            raise CacheWriteError(f"cannot cache {meta.key}: malformed sha256 or size")
        if meta.size > self.max_bytes:
            raise CacheWriteError(f"cannot cache {meta.key}: {meta.size} bytes exceed the cache's {self.max_bytes}")
        final = self.content_path(meta.sha256)
        try:
            ensure_dir(final.parent)
            fd, path = locks.create_locked_temp(final.parent, TEMP_PREFIX)
        except OSError as exc:
            raise CacheWriteError(f"cannot cache {meta.key}: {exc}") from exc
        return DiskWriter(self, meta, path, fd)

    def discard(self, key: str) -> None:
        """Forget the key; its file goes too unless another key's entry uses it."""
        with self._touch_lock:
            self._touches.pop(key, None)
        with self._changing() as txn:
            meta = txn.entry(key)
            if meta is not None:
                txn.delete_entry(key)
                self._release_file(txn, meta.sha256)

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
        return FillLock(self._locks / f"{key_digest(key).hex()}.lock")

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` has finished and :meth:`close` has not run since."""
        return self._report is not None

    def stats(self) -> CacheStats:
        entries, total = self._index.totals()
        return CacheStats(entries=entries, bytes=total, max_bytes=self.max_bytes, evictions=self.evictions)

    # -- publish -------------------------------------------------------------------------

    def _publish(self, meta: FileMeta, temp: Path) -> DiskEntry:
        """Move a verified, fsynced temp file into place, index it, then evict (all under the write lock)."""
        final = self.content_path(meta.sha256)
        touches = self._take_touches()
        evicted = 0
        try:
            with self._changing() as txn:
                current = txn.entry(meta.key)
                if current is not None and current.version > meta.version:
                    raise CacheWriteError(f"{meta.key}: version {current.version} is cached, newer than {meta.version}")
                known_size = txn.file_size(meta.sha256)
                if known_size == meta.size and _is_good_file(final, meta.size):
                    os.unlink(temp)  # the same bytes are already in place: share them
                else:
                    if known_size is not None:
                        txn.drop_file(meta.sha256)  # its row said one thing, the disk another
                    if stat.S_ISDIR(_lstat_mode(final)):
                        shutil.rmtree(final)  # rename cannot replace a directory
                    os.rename(temp, final)
                    _fsync_dir(final.parent)
                    txn.add_file(meta.sha256, meta.size)
                txn.record_access(touches.items())
                txn.put_entry(meta, time.time_ns())
                if current is not None and current.revision != meta.revision:
                    txn.removed.append(meta.key)  # the tree's copy is the old version
                if current is not None and current.sha256 != meta.sha256:
                    self._release_file(txn, current.sha256)
                evicted = self._evict(txn, meta)
        except BaseException:
            self._return_touches(touches)
            raise
        if evicted:
            with self._count_lock:
                self.evictions += evicted
        return DiskEntry(meta, final)

    def _release_file(self, txn: Transaction, sha256: str) -> None:
        """Delete a file (row and bytes) that no entry references any more."""
        if not txn.is_referenced(sha256):
            txn.delete_file(sha256)
            if is_sha256(sha256):
                _remove_any(self.content_path(sha256))

    def _drop_damaged(self, meta: FileMeta, check_hash: bool = False) -> None:
        """Forget a file found damaged, with every entry that uses it, and remove what is there.

        Under the write lock the file is looked at again: another process may
        have put a good copy in place meanwhile, and that one must stay.
        """
        if not is_sha256(meta.sha256):
            return
        path = self.content_path(meta.sha256)
        try:
            with self._changing() as txn:
                size = txn.file_size(meta.sha256)
                if size is None or _is_good_file(path, size, meta.sha256 if check_hash else None):
                    return
                txn.drop_file(meta.sha256)
                _remove_any(path)
        except (sqlite3.Error, OSError) as exc:
            logger.warning("disk cache: could not drop damaged %s: %s", path, exc)

    # -- evict ---------------------------------------------------------------------------

    def _evict(self, txn: Transaction, keep: FileMeta) -> int:
        """Drop least recently used entries until the files fit ``max_bytes``; never ``keep``."""
        evicted = 0
        while txn.total_bytes() > self.max_bytes:
            victims = txn.least_recent(keep.key, keep.sha256, EVICT_BATCH)
            if not victims:
                break
            for key, sha256 in victims:
                txn.delete_entry(key)
                evicted += 1
                self._release_file(txn, sha256)
                if txn.total_bytes() <= self.max_bytes:
                    break
        return evicted

    # -- load ----------------------------------------------------------------------------

    def _load(self, counts: _SweepCounts) -> None:
        """Start-up: validate the index against the disk and sweep, a shard per transaction."""
        with os.scandir(self._objects) as it:
            strays = [e for e in it if e.name not in _SHARD_NAMES or not e.is_dir(follow_symlinks=False)]
        for stray in strays:
            if stray.name in _SHARD_NAMES:
                counts.hostile[f"{_kind_of(stray)} where a shard directory belongs"] += 1
            _remove_any(stray.path)
            counts.removed_unvouched += 1
        for shard in _SHARDS:
            with self._changing() as txn:
                self._load_shard(txn, shard, counts)
        with self._changing() as txn:
            txn.recount()
        self._sweep_locks(counts)

    def _load_shard(self, txn: Transaction, shard: str, counts: _SweepCounts) -> None:
        """One batch: the files of ``objects/<shard>`` against the index rows for that prefix.

        Runs under the write lock, so no file is published into the shard meanwhile.
        A file is vouched for when its row exists, some entry uses it, and the
        disk has a regular file of the row's size under its name.
        """
        directory = f"{self._objects_text}/{shard}"
        on_disk: dict[str, int] = {}
        squatters: dict[str, str] = {}
        try:
            it = _scandir_own(directory)
        except FileNotFoundError:
            it = None
        except OSError:  # unreadable even after chmod: nothing in it can be vouched for
            counts.hostile["unreadable shard directory"] += 1
            with contextlib.suppress(OSError):
                _remove_any(directory)
            it = None
        if it is not None:
            with it:
                for item in it:
                    name = item.name
                    if name.startswith(TEMP_PREFIX):
                        if not item.is_file(follow_symlinks=False):
                            _remove_any(item.path)
                            counts.removed_temp += 1
                        elif locks.remove_if_unlocked(item.path):
                            counts.removed_temp += 1
                    elif name.startswith(shard) and is_sha256(name) and item.is_file(follow_symlinks=False):
                        on_disk[name] = item.stat(follow_symlinks=False).st_size
                    else:
                        if name.startswith(shard) and is_sha256(name):
                            squatters[name] = _kind_of(item)
                        _remove_any(item.path)
                        counts.removed_unvouched += 1
        files, used = txn.shard(shard)
        for sha256, size in files.items():
            actual = on_disk.pop(sha256, None)
            if actual != size or sha256 not in used:
                counts.dropped_invalid += txn.drop_file(sha256)
                if sha256 in squatters:
                    counts.hostile[f"{squatters[sha256]} where a content file belongs"] += 1
                elif actual is not None and sha256 in used:
                    counts.hostile["content file of the wrong size"] += 1
                if actual is not None:
                    _remove_any(f"{directory}/{sha256}")
        for sha256 in on_disk:
            _remove_any(f"{directory}/{sha256}")
            counts.removed_unvouched += 1

    def _sweep_locks(self, counts: _SweepCounts) -> None:
        """Lock files left by killed fillers (live ones are locked and stay)."""
        with _scandir_own(self._locks) as it:
            items = [(e.path, e.is_file(follow_symlinks=False), _kind_of(e)) for e in it]
        for path, regular, what in items:
            if regular:
                locks.remove_if_unlocked(path)
            else:
                counts.hostile[f"{what} where a lock file belongs"] += 1
                _remove_any(path)


def content_name(sha256: str) -> str:
    """A content file's path under ``objects/`` (what nginx's internal location maps)."""
    return f"{sha256[:2]}/{sha256}"


def _kind_of(item: os.DirEntry[str]) -> str:
    try:
        return kind(item.stat(follow_symlinks=False).st_mode)
    except OSError:
        return "vanished file"


def _scandir_own(directory: str | Path) -> os._ScandirIterator[str]:
    """``os.scandir`` of a directory of the cache (never a symlink: checked first); one we own
    but may not read (mode 000) is made readable first (as root, mode bits never stop us)."""
    try:
        return os.scandir(directory)
    except PermissionError:
        if not stat.S_ISDIR(_lstat_mode(Path(directory))):
            raise
        os.chmod(directory, 0o755)
        return os.scandir(directory)


def _lstat_mode(path: Path) -> int:
    try:
        return os.stat(path, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return 0


class DiskWriter:
    """One file being written into the cache; commit it or abort it.

    ``path`` is the temp file: readers may open it and read as far as
    ``written``; their fd stays valid through the rename (or the unlink).
    Not for concurrent use by several threads.
    """

    def __init__(self, cache: DiskCache, meta: FileMeta, path: Path, fd: int) -> None:
        self.meta = meta
        self.path = path
        self.written = 0
        self._cache = cache
        self._fd: int | None = fd  # holds the flock that tells the sweep we are alive
        self._hash = hashlib.sha256()

    def write(self, data: bytes) -> None:
        """Append bytes; CacheWriteError (temp file removed) if the disk refuses or they are too many."""
        fd = self._open_fd()
        if self.written + len(data) > self.meta.size:
            self.abort()
            raise CacheWriteError(f"{self.meta.key}: more than the announced {self.meta.size} bytes")
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            self.abort()
            raise CacheWriteError(f"cannot cache {self.meta.key}: {exc}") from exc
        self._hash.update(data)
        self.written += len(data)

    def commit(self) -> DiskEntry:
        """fsync, verify size and sha256 against the metadata, publish; CacheWriteError otherwise."""
        fd = self._open_fd()
        try:
            if self.written != self.meta.size:
                raise CacheWriteError(f"{self.meta.key}: wrote {self.written} bytes, expected {self.meta.size}")
            if self._hash.hexdigest() != self.meta.sha256:
                raise CacheWriteError(f"{self.meta.key}: content does not match its sha256")
            os.fsync(fd)
            if os.fstat(fd).st_size != self.meta.size:
                raise CacheWriteError(f"{self.meta.key}: the temp file changed size under us")
            entry = self._cache._publish(self.meta, self.path)
        except CacheWriteError:
            self.abort()
            raise
        except (OSError, sqlite3.Error) as exc:
            self.abort()
            raise CacheWriteError(f"cannot cache {self.meta.key}: {exc}") from exc
        self._fd = None
        os.close(fd)
        return entry

    def abort(self) -> None:
        """Remove the temp file (while still holding its lock); idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            locks.unlink_then_unlock(self.path, fd)
        except OSError as exc:
            logger.warning("disk cache: could not remove %s: %s", self.path, exc)  # the sweep will

    def _open_fd(self) -> int:
        if self._fd is None:
            raise CacheWriteError(f"{self.meta.key}: the writer is already committed or aborted")
        return self._fd

    def __enter__(self) -> DiskWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()  # after a commit this does nothing
