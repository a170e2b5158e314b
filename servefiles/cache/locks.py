"""Cross-process locks on files, with flock(2): the kernel drops them when the holder dies.

Two uses in the disk tier:

* the fill lock, "this process is fetching key K from the store", so that the
  worker processes sharing a cache dir fetch a key once, not once each;
* the lock a writer holds on its own temp file while it writes, so that a sweep
  in another process tells a temp file being written (locked) from one left
  behind by a killed writer (free): no pid files, no clocks, no guessing.

flock locks belong to an open file description, so two threads of one process
(each with its own ``open``) exclude each other exactly like two processes do.

A holder unlinks its lock file as it releases it, so lock files do not pile
up. On its own that would race (a waiter may already have opened the old
inode and then win a lock nobody else can see), so whoever gets the flock
checks that the path still names the inode it locked, and starts over if not:
the lock is held by whoever holds the flock on the inode the path names.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from ..localfs import NotRegularFile, kind, lstat_mode, open_regular, remove_any

logger = logging.getLogger("servefiles")

LOCK_OPEN_FLAGS = os.O_RDWR | os.O_CREAT
"""With ``O_NOFOLLOW | O_NONBLOCK`` added by :func:`open_regular`: a squatter never blocks us."""
PROBE_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
TEMP_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
FILE_MODE = 0o644
"""Readable by others: nginx may serve the disk tier's files (X-Accel-Redirect)."""
TEMP_ATTEMPTS = 8
SQUATTER_ATTEMPTS = 8
"""How many times a lock path is cleared of something that is not a lock file before giving up."""


def _names_inode(fd: int, path: str | Path) -> bool:
    """Whether ``path`` (not followed) still names the file open as ``fd``."""
    try:
        on_disk = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def unlink_then_unlock(path: str | Path, fd: int) -> None:
    """Remove a locked file while still holding its lock, then let go of it.

    Unlinking first means nobody can lock the old inode after we let go: a
    waiter that locked it re-checks the path (see :func:`_names_inode`).
    """
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    finally:
        _close_quietly(fd)


def _open_lock_file(path: Path) -> int:
    """Open (creating) the lock file at ``path``, a regular file we can write.

    Whatever else is found there — a FIFO, socket, symlink, directory, a file we may not
    open — is no lock anybody holds (a lock is a flock on a regular file we could open
    too): it is removed, never followed or waited on, and the open is tried again.
    """
    for _ in range(SQUATTER_ATTEMPTS):
        try:
            return open_regular(path, LOCK_OPEN_FLAGS, FILE_MODE)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)  # the lock dir was removed under us
        except OSError as exc:
            unusable = isinstance(exc, (NotRegularFile, PermissionError))
            if not unusable and exc.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise  # ELOOP: a symlink; EISDIR: a directory; ENXIO: a socket
            mode = lstat_mode(path)
            what = "unreadable file" if isinstance(exc, PermissionError) and stat.S_ISREG(mode) else kind(mode)
            logger.warning("removed a %s where the lock file %s belongs", what, path)
            remove_any(path)
    raise OSError(errno.EEXIST, "something keeps taking the place of the lock file", str(path))


def _lock_path(path: Path, blocking: bool) -> int | None:
    """flock ``path`` (creating it); the fd that holds the lock, or None if someone else does."""
    while True:
        fd = _open_lock_file(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            _close_quietly(fd)
            return None
        except BaseException:
            _close_quietly(fd)
            raise
        if _names_inode(fd, path):
            return fd
        _close_quietly(fd)  # the holder we waited for unlinked it: lock the new one


class FillLock:
    """The cross-process "I am filling this key" lock.

    ``try_acquire`` never blocks; ``with lock:`` blocks until it is ours. The
    lock dies with the process (``kill -9`` releases it). One object belongs
    to one filler; it is not reentrant across objects, even in one thread.
    """

    __slots__ = ("_fd", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        """Take the lock if it is free; True if this object holds it now."""
        if self._fd is None:
            self._fd = _lock_path(self.path, blocking=False)
        return self._fd is not None

    def acquire(self) -> None:
        """Wait until the lock is ours."""
        if self._fd is None:
            self._fd = _lock_path(self.path, blocking=True)

    def release(self) -> None:
        """Unlink the lock file while still holding it, then let go; idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            unlink_then_unlock(self.path, fd)

    def __enter__(self) -> FillLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def create_locked_temp(directory: str | Path, prefix: str) -> tuple[int, str]:
    """Create a fresh temp file in ``directory`` and flock it; (write fd, path). The path is text:
    built on every fill, a ``Path`` cost more than the ``open`` (pathlib's parsing).

    A sweep may lock and unlink a temp file in the instant between its
    creation and our flock; the inode check catches that and we try a new name.
    """
    for _ in range(TEMP_ATTEMPTS):
        path = f"{directory}/{prefix}{os.getpid()}-{secrets.token_hex(8)}"
        fd = os.open(path, TEMP_OPEN_FLAGS, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _names_inode(fd, path):
                return fd, path
        except BaseException:
            _close_quietly(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        _close_quietly(fd)
    raise FileExistsError(f"could not create a temp file in {directory}")


def remove_if_unlocked(path: str | Path) -> bool:
    """Unlink a regular file nobody holds a flock on (a dead writer's temp file, a stale lock).

    Returns whether it was removed. A file that is locked right now is being
    written by a live process and stays. Never follows a symlink and never
    blocks on a FIFO; such things (not regular files) are left to the caller.
    """
    try:
        fd = os.open(path, PROBE_OPEN_FLAGS)
    except FileNotFoundError:
        return False
    except PermissionError:  # nobody can hold a flock on a file nobody may open: stale
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return True
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        if not _names_inode(fd, path):
            return False
        os.unlink(path)
        return True
    finally:
        _close_quietly(fd)


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold a blocking flock on a long-lived file (never unlinked) for the block's duration."""
    fd = _open_lock_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        _close_quietly(fd)
