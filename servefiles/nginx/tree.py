"""The published tree: cached files laid out as ``{root}{prefix}/{key}`` for nginx's
``try_files``, so hits never reach Python.

A file is published only when nginx would send exactly the headers servefiles sends:
its stored Content-Type must be the one the generated ``types`` block gives its
extension, and it must not be active content or text (see static_types.py). Everything
else keeps going through the app.

Each published file is a hard link to the disk tier's content file (a copy when the
content file already carries another key's timestamp), renamed into place atomically,
with its mtime set to the version's ``last_modified`` (the database's validator second,
never shared by two versions of a key): nginx derives Last-Modified and its ETag
(``"mtime-size"``) from it, so they are the same on every frontend and differ between
versions. A version whose second is not yet over is not published: nginx would send a
Last-Modified later than its Date (RFC 9110 §8.8.2.1), so until then it goes through
the app (accel), and the first request after that publishes it (see
:meth:`PublishedTree.is_due`). The tree follows the disk tier (:meth:`PublishedTree.follow`):
a key's path is withdrawn whenever its entry goes (replaced, deleted, evicted, dropped),
and the service clears the whole tree while the change feed is down, since nginx serves
the tree without asking anyone.

Every operation goes through open directory fds (``*at`` system calls, ``O_NOFOLLOW``):
nothing planted in the tree is ever followed, and a directory already open costs no
``mkdir`` nor ``lstat`` walk, so a publish is a link, a timestamp and a rename, and a
withdrawal (which the disk tier's change path waits for) an unlink. A directory another
process removed meanwhile is noticed (its fd's link count is 0) and opened afresh.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from ..cache.disk import DiskCache, DiskEntry
from ..localfs import kind, lstat_mode, open_regular, remove_any
from ..store.types import FileMeta
from .static_types import extension_types, publishable, tree_types

__all__ = ["TEMP_PREFIX", "PublishedTree"]

logger = logging.getLogger("servefiles")

TEMP_PREFIX = ".servefiles-tmp-"
MAX_OPEN_DIRS = 1024
"""Directory fds kept open (all are closed when there are more, then opened as needed)."""
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

Parts = tuple[str, ...]
"""A directory of the tree as its names below ``base`` (``()``: ``base`` itself)."""


class PublishedTree:
    """The directory ``{root}{prefix}/`` that mirrors published keys as paths. Thread-safe."""

    def __init__(self, root: Path, prefix: str) -> None:
        self.root = Path(root).absolute()
        self.base = self.root / prefix.strip("/") if prefix.strip("/") else self.root
        types = tree_types()
        self._allowed = frozenset(types)
        self._by_extension = extension_types(types)
        self.private: tuple[str, ...] = ()
        """Private folders (``"invoices/"``): their keys are never published, so nginx never
        serves them unchecked (the tree is emptied at every start, so a key that became private
        since the last run is withdrawn then)."""
        self._lock = threading.Lock()
        """Held across every use of ``_dirs``: no fd is closed while another thread uses it."""
        self._dirs: dict[Parts, int] = {}

    def path(self, key: str) -> Path:
        """Where ``key`` is published. Keys are canonical (the key gate ran): no ``..``, no
        empty or dot segments, no backslash or NUL, so this never leaves ``base``."""
        return self.base / key

    def accepts(self, meta: FileMeta) -> bool:
        """Whether nginx, serving this version from the tree, would send its stored headers (and
        the key is public: a private one is never nginx's to serve)."""
        return not meta.key.startswith(self.private) and publishable(meta, self._allowed, self._by_extension)

    def follow(self, disk: DiskCache) -> None:
        """Withdraw a key's path whenever the disk tier removes or replaces its entry (register
        before the disk tier opens: its start-up drops entries too)."""
        disk.on_removed(self.withdraw)

    def publish_entry(self, disk: DiskCache, entry: DiskEntry) -> bool:
        """Publish a disk tier entry, if it is still the key's entry and once its validator second
        is over (:meth:`is_due`); True when the tree holds it now.

        The check and the link happen under the disk tier's write lock (:meth:`DiskCache.holding`):
        a version replaced meanwhile is never published after its withdrawal, which the tier's
        listeners (:meth:`follow`) run only after the replacing change commits. A plain read of
        the index first spares that lock for an entry the tier does not hold (any more).
        """
        if not self.accepts(entry.meta) or not self.is_due(entry.meta):
            return False
        held = disk.get(entry.meta.key)
        if held is None or held.meta.revision != entry.meta.revision:
            return False
        if self.is_published(entry.meta):
            return True
        with disk.holding(entry) as current:
            return current and self.publish(entry.meta, entry.path)

    def is_published(self, meta: FileMeta) -> bool:
        """Whether ``key``'s path holds this version already (size and timestamp agree)."""
        parts, name = _split(meta.key)
        with self._lock:
            try:
                directory = self._dir(parts, create=False)
                if directory is None:
                    return False
                found = os.stat(name, dir_fd=directory, follow_symlinks=False)
            except OSError:
                return False
        return stat.S_ISREG(found.st_mode) and found.st_size == meta.size and found.st_mtime_ns == _mtime_ns(meta)

    def is_due(self, meta: FileMeta, now: float | None = None) -> bool:
        """Whether nginx may state this version's validator second as Last-Modified by ``now``
        (default: this host's clock, the one nginx stamps Date from).

        A version written in its own second is due at once: it is published after the write, so
        after that second began. One pushed ahead by a burst of writes is due once its second is
        over, not the instant it begins, so that no nginx worker still dating its responses from
        just before that instant can find the file (nginx reads its clock once per event loop turn).
        """
        second = _mtime_ns(meta) // 1_000_000_000
        pushed = meta.last_modified > meta.updated_at
        return (time.time() if now is None else now) >= second + (1 if pushed else 0)

    def publish(self, meta: FileMeta, content: Path) -> bool:
        """Put ``content`` (the disk tier's file of this version) at the key's path; False when
        the path cannot hold it (a directory there, a name too long, a full disk) or the
        version's second is not over yet (:meth:`is_due`)."""
        if not self.accepts(meta) or not self.is_due(meta):
            return False
        parts, name, mtime = *_split(meta.key), _mtime_ns(meta)
        with self._lock:
            try:
                return self._in_dir(parts, True, lambda directory: _place(directory, name, content, mtime))
            except OSError as exc:
                logger.info("not publishing %s for nginx: %s", meta.key, exc, extra={"key": meta.key})
                return False

    def withdraw(self, key: str) -> None:
        """Remove the key's path (nginx then asks servefiles), and its directories left empty;
        missing is fine. The disk tier's change path runs this: a lookup of open fds, an unlink."""
        parts, name = _split(key)
        with self._lock:
            try:
                if self._in_dir(parts, False, lambda directory: os.unlink(name, dir_fd=directory)):
                    self._remove_empty(parts)
            except (FileNotFoundError, IsADirectoryError):
                return  # not there, or a key that is also a folder of other keys: nothing published
            except OSError as exc:
                logger.warning("could not withdraw %s from the nginx tree: %s", key, exc, extra={"key": key})

    def read_since_checked(self, metas: Iterable[FileMeta]) -> list[str]:
        """The keys of ``metas`` whose published file was read since this last looked at it.

        nginx answers published files without asking anyone, so the disk tier's recency and the
        admission sketch would never hear of its hits: the files it serves most would look as cold
        as the long tail, be evicted as soon as anything newer, and be fetched again (measured
        in tree mode with a 256 MiB cache: four times the standalone server's evictions). The
        file's access time tells: :meth:`publish` sets it to the mtime, and Linux's default
        ``relatime`` (like ``strictatime``) moves it on the next read of a file whose atime is not
        later than its mtime. A file found read gets its atime set back to its mtime, so the next
        read shows again. Under ``noatime`` nothing moves, and nothing is reported.

        The file is opened (an open reads nothing) and checked to be this version — a regular
        file of its size and mtime — and its times are set through that descriptor, to the mtime
        it has: a path replaced meanwhile is never given another version's times (nginx derives
        Last-Modified and the ETag from the mtime). One key at a time under the tree's lock, so a
        publish on the event loop never waits for a whole scan."""
        found: list[str] = []
        for meta in metas:
            if not self.accepts(meta):
                continue
            parts, name = _split(meta.key)
            with self._lock:
                try:
                    self._in_dir(parts, False, functools.partial(_check_read, name=name, meta=meta, found=found))
                except OSError:
                    continue  # not published (any more), or not a file: nothing read there
        return found

    def clear(self) -> None:
        """Withdraw everything (the feed is down: nothing here can be vouched for).

        The directories from ``root`` down to ``base`` must be directories: a symlink (to
        a directory elsewhere), file, FIFO or socket in their place is removed, never
        followed, so nothing outside the tree is ever emptied.
        """
        with self._lock:
            self._forget(())
            if self._base_is_real():
                for item in list(os.scandir(self.base)):
                    remove_any(Path(item.path))

    def _base_is_real(self) -> bool:
        """Whether ``base`` is a real directory, reached from ``root`` through real directories
        only; the first thing in the way that is not one is removed (and logged)."""
        parts = self.base.relative_to(self.root).parts
        return _real_dirs(self.root, parts) if parts else os.path.isdir(self.root)

    def sweep(self, current: Callable[[str], DiskEntry | None]) -> int:
        """Start-up: remove every path that is not the published version of ``current(key)``'s
        entry (``DiskCache.get``, once the disk tier is open); returns how many paths went."""
        removed = 0
        with self._lock:
            self._forget(())
            if not self._base_is_real():
                return 0
        for directory, dirnames, filenames in os.walk(self.base):
            for name in filenames:
                path = Path(directory) / name
                key = path.relative_to(self.base).as_posix()
                entry = None if name.startswith(TEMP_PREFIX) else current(key)
                if entry is None or not self.accepts(entry.meta) or not self.is_published(entry.meta):
                    remove_any(path)
                    removed += 1
            for name in list(dirnames):
                if os.path.islink(os.path.join(directory, name)):
                    remove_any(Path(directory) / name)
                    dirnames.remove(name)
        return removed

    # -- open directories (the caller holds ``_lock``) ---------------------------------------

    def _dir(self, parts: Parts, create: bool) -> int | None:
        """The open directory ``base/parts``; None when it is missing (``create`` False). What
        stands in a directory's place is never followed: :class:`NotADirectoryError` when
        creating, else removed (and logged) and None, as for a missing one."""
        fd = self._dirs.get(parts)
        if fd is not None:
            return fd
        if not parts:
            if create:
                _make_parents(self.root, self.base)
            elif not self._base_is_real():
                return None
            fd = os.open(self.base, _DIR_FLAGS)
        else:
            parent = self._dir(parts[:-1], create)
            if parent is None:
                return None
            fd = _open_dir(parent, parts[-1], create)
            if fd is None:
                return None
        self._dirs[parts] = fd
        return fd

    def _in_dir(self, parts: Parts, create: bool, act: Callable[[int], object]) -> bool:
        """``act(fd)`` in the open directory ``base/parts``; False, without acting, when it is
        missing and not ``create``. Once more, afresh, when ``act`` meets ENOENT because another
        process removed that directory; what ``act`` raises otherwise is raised."""
        self._trim()
        for attempt in range(2):
            directory = self._dir(parts, create)
            if directory is None:
                return False
            try:
                act(directory)
                return True
            except FileNotFoundError:
                if attempt or not self._vanished(directory):
                    raise
        return False

    def _vanished(self, directory: int) -> bool:
        """Whether the open directory was removed (by another process): then forget it."""
        try:
            gone = os.fstat(directory).st_nlink == 0
        except OSError:
            gone = True
        if gone:
            self._forget(())  # its parents may have gone too: open every one afresh
        return gone

    def _remove_empty(self, parts: Parts) -> None:
        """Remove ``base/parts`` and its parents up to ``base`` while they are empty."""
        while parts:
            parent = self._dirs.get(parts[:-1])
            try:
                if parent is None:
                    return
                os.rmdir(parts[-1], dir_fd=parent)
            except OSError:
                return
            self._forget(parts)
            parts = parts[:-1]

    def _forget(self, parts: Parts) -> None:
        """Close the open directory ``parts`` and every one below it."""
        for known in [known for known in self._dirs if known[: len(parts)] == parts]:
            os.close(self._dirs.pop(known))

    def _trim(self) -> None:
        if len(self._dirs) > MAX_OPEN_DIRS:
            self._forget(())


def _split(key: str) -> tuple[Parts, str]:
    """A canonical key as its directories below ``base`` and its file name."""
    *parents, name = key.split("/")
    return tuple(parents), name


def _open_dir(parent: int, name: str, create: bool) -> int | None:
    """Open (making it first when ``create``) the directory ``name`` in ``parent``, never
    following what stands there instead (see :meth:`PublishedTree._dir`)."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, dir_fd=parent)
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        if create:
            raise
        return None
    except OSError:
        mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
        if stat.S_ISDIR(mode):
            raise
        if create:
            raise NotADirectoryError(f"a {kind(mode)} stands where a directory of the nginx tree belongs") from None
        logger.warning("nginx tree: removed a %s where the directory %s belongs", kind(mode), name)
        os.unlink(name, dir_fd=parent)
        return None


def _place(directory: int, name: str, content: Path, mtime: int) -> None:
    """Link (or copy) ``content`` into ``directory`` as ``name`` with its mtime, atomically."""
    temp = f"{TEMP_PREFIX}{secrets.token_hex(8)}"
    source = open_regular(content)  # never a FIFO to wait on, never a link to follow
    try:
        found = os.fstat(source)
        if found.st_nlink == 1 or found.st_mtime_ns == mtime:
            os.link(content, temp, dst_dir_fd=directory, follow_symlinks=False)
        else:  # the content file is published under another key with another timestamp
            target = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666,
                             dir_fd=directory)  # fmt: skip
            try:
                _copy(source, target, found.st_size)
            finally:
                os.close(target)
    finally:
        os.close(source)
    try:
        os.utime(temp, ns=(mtime, mtime), dir_fd=directory, follow_symlinks=False)
        os.rename(temp, name, src_dir_fd=directory, dst_dir_fd=directory)  # atomic; fails on a directory
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=directory)
        raise


def _check_read(directory: int, *, name: str, meta: FileMeta, found: list[str]) -> None:
    """Append ``meta.key`` to ``found`` if ``name`` is ``meta``'s published file and was read
    since its atime was last set to its mtime; set it back then (see :meth:`PublishedTree.read_since_checked`)."""
    fd = open_regular(name, dir_fd=directory)
    try:
        status = os.fstat(fd)
        mtime = _mtime_ns(meta)
        if status.st_size != meta.size or status.st_mtime_ns != mtime or status.st_atime_ns <= mtime:
            return
        os.utime(fd, ns=(mtime, mtime))
        found.append(meta.key)
    finally:
        os.close(fd)


def _copy(source: int, target: int, size: int) -> None:
    offset = 0
    while offset < size:
        sent = os.sendfile(target, source, offset, size - offset)
        if sent == 0:
            raise OSError(f"the content file ended at {offset} of {size} bytes")
        offset += sent


def _mtime_ns(meta: FileMeta) -> int:
    """The version's validator second (HTTP dates have no finer grain), as nanoseconds."""
    return int(meta.last_modified.timestamp()) * 1_000_000_000


def _real_dirs(root: Path, parts: tuple[str, ...]) -> bool:
    """Whether ``root/parts[0]/parts[1]/...`` are all real directories (``lstat``). The first
    that is missing stops the walk (False); the first that is something else — a symlink,
    file, FIFO, socket — is removed, not followed, with a log line (False)."""
    current = root
    for part in parts:
        current = current / part
        mode = lstat_mode(current)
        if not mode:
            return False
        if not stat.S_ISDIR(mode):
            logger.warning("nginx tree: removed a %s where the directory %s belongs", kind(mode), current)
            remove_any(current)
            return False
    return True


def _make_parents(base: Path, directory: Path) -> None:
    """Create ``directory`` under ``base`` (which is followed: the user named it), refusing
    to go through a symlink or a file."""
    os.makedirs(base, exist_ok=True)
    current = base
    for part in directory.relative_to(base).parts:
        current = current / part
        try:
            os.mkdir(current)
        except FileExistsError:
            if not stat.S_ISDIR(os.stat(current, follow_symlinks=False).st_mode):
                raise NotADirectoryError(f"{current} is not a directory") from None
