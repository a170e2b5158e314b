"""Writing a file into the disk tier, atomically.

Bytes go to a temp file in the directory of their final name (:class:`DiskWriter`), are
verified (size and sha256), then **installed**: renamed into place (atomic: same directory)
and only then indexed. A reader therefore never sees a partial file under a final name, and
``kill -9`` at any point leaves at worst a temp file, which the next start-up sweeps
(loader.py). Nothing is fsynced here: a power cut is handled by ``syncfs`` watermarks and
verification after a reboot (durable.py). A process alone in the dir renames outside any
lock (disk.py); one sharing it uses :func:`install`, under the index's write lock, so no
other process deletes the file between its rename and its row.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ..errors import CacheWriteError
from ..localfs import lstat_mode
from ..store.types import FileMeta
from . import locks
from .eviction import release_file
from .index import Transaction
from .layout import CacheDir, DiskEntry, is_good_file
from .memindex import MemIndex

__all__ = ["DiskWriter", "Installed", "install", "install_alone", "rename_into_place"]

logger = logging.getLogger("servefiles")

Install = Callable[[FileMeta, str, int | None], DiskEntry]
"""Installs a verified temp file as the content of ``meta`` (see :meth:`DiskCache.begin`); the
descriptor given is open on it when nothing but its writer changed it (else None: see
:meth:`DiskWriter.commit`)."""


def install(txn: Transaction, cache_dir: CacheDir, meta: FileMeta, temp: str) -> bool:
    """Move a verified temp file into place and index it as ``meta.key``'s entry, in ``txn``
    (the write lock); whether it was renamed into place (else a file of the same bytes already
    there is shared). CacheWriteError when a newer version of the key is cached.

    When the index already vouches for a file of these bytes, and hashing it agrees, the temp file
    goes and the entry shares that file (a file damaged in place is replaced, never shared unseen:
    what this process installs holds the bytes it hashed). The key's previous entry, when it was
    another version, is in ``txn.removed`` afterwards; its file goes when no entry uses it any more.
    """
    final = cache_dir.content_text(meta.sha256)
    current = txn.entry(meta.key)
    if current is not None and current.version > meta.version:
        raise CacheWriteError(f"{meta.key}: version {current.version} is cached, newer than {meta.version}")
    known_size = txn.file_size(meta.sha256)
    renamed = not (known_size == meta.size and is_good_file(final, meta.size, meta.sha256))
    if not renamed:
        os.unlink(temp)  # the same bytes are already in place: share them
    else:
        if known_size is not None:
            txn.drop_file(meta.sha256)  # its row said one thing, the disk another
        rename_into_place(temp, final)
        txn.add_file(meta.sha256, meta.size, time.monotonic_ns())
    txn.put_entry(meta, time.time_ns())
    if current is not None and current.revision != meta.revision:
        txn.removed.append(meta.key)  # whoever mirrors the entry holds the old version
    if current is not None and current.sha256 != meta.sha256:
        release_file(txn, cache_dir, current.sha256)
    return renamed


def rename_into_place(temp: str | Path, final: str | Path) -> None:
    """Rename a temp file to its final name (same directory: atomic), replacing a squatting directory
    (renamed first, looked at only when that fails: the common case costs the rename alone)."""
    try:
        os.rename(temp, final)
    except OSError:
        if not stat.S_ISDIR(lstat_mode(final)):
            raise
        shutil.rmtree(final)  # rename cannot replace a directory
        os.rename(temp, final)


INSTALL_ATTEMPTS = 4
"""Tries at sharing a file that is being evicted meanwhile before renaming a copy."""


@dataclass(frozen=True, slots=True)
class Installed:
    """What :func:`install_alone` did: keys replaced and evicted, files to unlink, whether the
    temp file was renamed into place (else an existing file is shared), journal length."""

    removed: list[str]
    evicted: list[str]
    unlink: list[str]
    renamed: bool
    pending: int


def install_alone(
    mem: MemIndex, lock: threading.Lock, cache_dir: CacheDir, meta: FileMeta, temp: str, max_bytes: int
) -> Installed:
    """Install a verified temp file for a process alone in its cache dir: rename outside any lock,
    then change the memory index and pick the evictions (one batch) under ``lock``, which is
    held for dict work only. CacheWriteError when a newer version of the key is cached.

    A file being shared that an eviction removes meanwhile is renamed from the temp file
    instead; one unlinked by an eviction just as another thread renamed the same bytes into
    place is a miss later (the size check on open), never a wrong byte: names are hashes. A file
    is shared only once hashing it agrees (see :func:`install`).
    """
    final = cache_dir.content_text(meta.sha256)
    renamed = False
    for attempt in range(INSTALL_ATTEMPTS):
        with lock:
            _refuse_older(mem, meta)
            share = mem.has_file(meta.sha256, meta.size) and attempt < INSTALL_ATTEMPTS - 1
        if not share or not is_good_file(final, meta.size, meta.sha256):
            rename_into_place(temp, final)
            renamed = True
        with lock:
            if not renamed and not mem.has_file(meta.sha256, meta.size):
                continue  # evicted meanwhile: rename ours
            try:
                _refuse_older(mem, meta)
            except CacheWriteError:
                if renamed and meta.sha256 not in mem.files:
                    os.unlink(final)  # nobody uses these bytes (under the lock: nobody can start to)
                raise
            with mem.journaled():  # decided alone: written behind even if a newcomer came meanwhile
                removed, unlink = mem.install(meta, time.monotonic_ns() if renamed else None)
                evicted, unlink_evicted = mem.evict(max_bytes, meta)
            pending = len(mem.journal)
        break
    if not renamed:
        os.unlink(temp)  # the same bytes are in place already: share them
    return Installed(removed, evicted, unlink + unlink_evicted, renamed, pending)


def _refuse_older(mem: MemIndex, meta: FileMeta) -> None:
    current = mem.get(meta.key)
    if current is not None and current.version > meta.version:
        raise CacheWriteError(f"{meta.key}: version {current.version} is cached, newer than {meta.version}")


class DiskWriter:
    """One file being written into the cache; commit it or abort it.

    ``path`` is the temp file: readers may open it and read as far as
    ``written``; their fd stays valid through the rename (or the unlink).
    Not for concurrent use by several threads.
    """

    def __init__(self, meta: FileMeta, path: str, fd: int, install: Install) -> None:
        self.meta = meta
        self.path = path
        self.written = 0
        self._install = install
        self._fd: int | None = fd  # holds the flock that tells the sweep we are alive
        self._hash = hashlib.sha256()
        self._left: int | None = None
        """The temp file's ctime as this writer's last write left it (an ``fstat`` right after
        that write); None before the first."""
        self._alone = True
        """Whether the temp file's ctime was, before each later write and at the commit, the one
        the writer's own last write left: no other writer changed it meanwhile (verified.py)."""

    def write(self, data: bytes) -> None:
        """Append bytes; CacheWriteError (temp file removed) if the disk refuses or they are too many."""
        fd = self._open_fd()
        if self.written + len(data) > self.meta.size:
            self.abort()
            raise CacheWriteError(f"{self.meta.key}: more than the announced {self.meta.size} bytes")
        view = memoryview(data)
        try:
            self._look(os.fstat(fd).st_ctime_ns)
            while view:
                view = view[os.write(fd, view) :]
            self._left = os.fstat(fd).st_ctime_ns
        except OSError as exc:
            self.abort()
            raise CacheWriteError(f"cannot cache {self.meta.key}: {exc}") from exc
        self._hash.update(data)
        self.written += len(data)

    def _look(self, ctime_ns: int) -> None:
        """The temp file's ctime now, before a write or at the commit: not the one this writer's
        last write left means another writer changed the file meanwhile (``_alone`` turns False)."""
        if self._left is not None and ctime_ns != self._left:
            self._alone = False

    def commit(self) -> DiskEntry:
        """Verify size and sha256 against the metadata, install; CacheWriteError otherwise.

        What was hashed is what this writer wrote, not what the file holds: another writer of the
        temp file in between would go unseen by the hash. So the file is handed to the install
        with its descriptor, to be marked as verified there (verified.py), only if its ctime was,
        before each of this writer's later writes and here, the one its own last write left (an
        ``fstat`` right after each write; where every change moves the ctime, no other change can
        hide from that, however long the fill took, the wait before this commit included). One
        changed meanwhile is hashed when it is first read."""
        fd = self._open_fd()
        try:
            if self.written != self.meta.size:
                raise CacheWriteError(f"{self.meta.key}: wrote {self.written} bytes, expected {self.meta.size}")
            if self._hash.hexdigest() != self.meta.sha256:
                raise CacheWriteError(f"{self.meta.key}: content does not match its sha256")
            status = os.fstat(fd)
            if status.st_size != self.meta.size:
                raise CacheWriteError(f"{self.meta.key}: the temp file changed size under us")
            self._look(status.st_ctime_ns)
            entry = self._install(self.meta, self.path, fd if self._alone else None)
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
