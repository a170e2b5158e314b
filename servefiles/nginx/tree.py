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
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path

from ..cache.disk import DiskCache, DiskEntry
from ..localfs import kind, lstat_mode, open_regular, remove_any
from ..store.types import FileMeta
from .static_types import extension_types, publishable, tree_types

__all__ = ["TEMP_PREFIX", "PublishedTree"]

logger = logging.getLogger("servefiles")

TEMP_PREFIX = ".servefiles-tmp-"


class PublishedTree:
    """The directory ``{root}{prefix}/`` that mirrors published keys as paths."""

    def __init__(self, root: Path, prefix: str) -> None:
        self.root = Path(root).absolute()
        self.base = self.root / prefix.strip("/") if prefix.strip("/") else self.root
        types = tree_types()
        self._allowed = frozenset(types)
        self._by_extension = extension_types(types)

    def path(self, key: str) -> Path:
        """Where ``key`` is published. Keys are canonical (the key gate ran): no ``..``, no
        empty or dot segments, no backslash or NUL, so this never leaves ``base``."""
        return self.base / key

    def accepts(self, meta: FileMeta) -> bool:
        """Whether nginx, serving this version from the tree, would send its stored headers."""
        return publishable(meta, self._allowed, self._by_extension)

    def follow(self, disk: DiskCache) -> None:
        """Withdraw a key's path whenever the disk tier removes or replaces its entry (register
        before the disk tier opens: its start-up drops entries too)."""
        disk.on_removed(self.withdraw)

    def publish_entry(self, disk: DiskCache, entry: DiskEntry) -> bool:
        """Publish a disk tier entry, if it is still the key's entry and once its validator second
        is over (:meth:`is_due`); True when the tree holds it now.

        The check and the link happen under the disk tier's write lock (:meth:`DiskCache.holding`):
        a version replaced meanwhile is never published after its withdrawal, which the tier's
        listeners (:meth:`follow`) run only after the replacing change commits.
        """
        if not self.accepts(entry.meta) or not self.is_due(entry.meta):
            return False
        if self.is_published(entry.meta):
            return True
        with disk.holding(entry) as current:
            return current and self.publish(entry.meta, entry.path)

    def is_published(self, meta: FileMeta) -> bool:
        """Whether ``key``'s path holds this version already (size and timestamp agree)."""
        try:
            found = os.stat(self.path(meta.key), follow_symlinks=False)
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
        target = self.path(meta.key)
        try:
            _make_parents(self.root, target.parent)
            temp = target.parent / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
            mtime = _mtime_ns(meta)
            source = open_regular(content)  # never a FIFO to wait on, never a link to follow
            try:
                found = os.fstat(source)
                if found.st_nlink == 1 or found.st_mtime_ns == mtime:
                    os.link(content, temp)  # link(2) does not follow a symlink either
                else:  # the content file is published under another key with another timestamp
                    with open(source, "rb", closefd=False) as src, open(temp, "xb") as dst:
                        shutil.copyfileobj(src, dst)
            finally:
                os.close(source)
            try:
                os.utime(temp, ns=(mtime, mtime), follow_symlinks=False)
                os.rename(temp, target)  # atomic; fails on a directory, which stays
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
                raise
        except OSError as exc:
            logger.info("not publishing %s for nginx: %s", meta.key, exc)
            return False
        return True

    def withdraw(self, key: str) -> None:
        """Remove the key's path (nginx then asks servefiles); missing is fine."""
        target = self.path(key)
        if not _real_dirs(self.root, target.parent.relative_to(self.root).parts):
            return  # not there; and a symlinked directory on the way is never gone through
        try:
            if not stat.S_ISDIR(os.stat(target, follow_symlinks=False).st_mode):
                os.unlink(target)
        except FileNotFoundError:
            return
        except OSError as exc:
            logger.warning("could not withdraw %s from the nginx tree: %s", key, exc)
            return
        _remove_empty_parents(self.base, target.parent)

    def clear(self) -> None:
        """Withdraw everything (the feed is down: nothing here can be vouched for).

        The directories from ``root`` down to ``base`` must be directories: a symlink (to
        a directory elsewhere), file, FIFO or socket in their place is removed, never
        followed, so nothing outside the tree is ever emptied.
        """
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


def _remove_empty_parents(base: Path, directory: Path) -> None:
    while directory != base and base in directory.parents:
        try:
            os.rmdir(directory)
        except OSError:
            return
        directory = directory.parent
