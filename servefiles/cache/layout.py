"""The cache dir's layout: what is where, and the few file checks every step of the disk tier makes.

Layout of a cache dir::

    index.sqlite3        the index (see index.py): key -> version, sha256, ..., last access
    open.lock            held while one process opens or repairs the index
    boot-id              the boot id of the last open (durable.py)
    procs/<pid>-*        one per process using the dir, flocked by it (members.py)
    objects/ab/<sha256>  content files, named by content hash, never by key or URL
    objects/ab/.tmp-*    temp files, each flocked by its live writer
    locks/<sha256(key)>.lock  fill locks (see locks.py)

Nothing here is built from a URL: a content file's name is its hash (checked by
:func:`is_sha256` before it is used), a fill lock's is the hash of its key.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from ..localfs import kind, lstat_mode, open_regular, sha256_of_fd
from ..store.types import FileMeta

__all__ = ["TEMP_PREFIX", "CacheDir", "DiskEntry", "content_name", "is_good_file", "is_sha256"]

OBJECTS_DIR = "objects"
LOCKS_DIR = "locks"
INDEX_FILE = "index.sqlite3"
OPEN_LOCK_FILE = "open.lock"
BOOT_FILE = "boot-id"
PROCS_DIR = "procs"
TEMP_PREFIX = ".tmp-"

_SHA256 = re.compile(r"[0-9a-f]{64}")
SHARDS = tuple(f"{n:02x}" for n in range(256))
"""The directories under ``objects/``: a content file lives in the one named by its hash's first byte."""
SHARD_NAMES = frozenset(SHARDS)


class DiskEntry:
    """A cached file: its metadata and the absolute path of its content file, as text
    (:attr:`text`) and as a :class:`Path` built when asked for (:attr:`path`): a disk hit opens
    the text, and building a ``Path`` twice per hit was a fifth of its time in-process."""

    __slots__ = ("meta", "text")

    def __init__(self, meta: FileMeta, path: Path | str) -> None:
        self.meta = meta
        self.text = path if isinstance(path, str) else str(path)

    @property
    def path(self) -> Path:
        return Path(self.text)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DiskEntry) and (self.meta, self.text) == (other.meta, other.text)

    def __hash__(self) -> int:
        return hash((self.meta, self.text))

    def __repr__(self) -> str:
        return f"DiskEntry({self.meta!r}, {self.text!r})"


class CacheDir:
    """The paths of one cache dir (absolute: the process may change its working directory)."""

    __slots__ = ("_objects_text", "boot_file", "index_file", "locks", "objects", "open_lock", "procs", "root")

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.objects = self.root / OBJECTS_DIR
        self.locks = self.root / LOCKS_DIR
        self.index_file = self.root / INDEX_FILE
        self.open_lock = self.root / OPEN_LOCK_FILE
        self.boot_file = self.root / BOOT_FILE
        self.procs = self.root / PROCS_DIR
        self._objects_text = str(self.objects)

    def content_path(self, sha256: str) -> Path:
        """Where the file with this content lives: from the hash, never from a key."""
        return Path(self.content_text(sha256))

    def content_text(self, sha256: str) -> str:
        """:meth:`content_path` as text (no ``Path`` built: the hit path's)."""
        return f"{self._objects_text}/{content_name(sha256)}"

    def shard_path(self, shard: str) -> str:
        """The directory of one shard (see :data:`SHARDS`)."""
        return f"{self._objects_text}/{shard}"


def is_sha256(text: str) -> bool:
    """Whether ``text`` can name a content file: exactly 64 lowercase hex digits, nothing else."""
    return len(text) == 64 and _SHA256.fullmatch(text) is not None


def content_name(sha256: str) -> str:
    """A content file's path under ``objects/`` (what nginx's internal location maps)."""
    return f"{sha256[:2]}/{sha256}"


def is_good_file(path: str | Path, size: int, sha256: str | None = None) -> bool:
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


def kind_of(item: os.DirEntry[str]) -> str:
    """What a directory entry is, in words for a log line (see :func:`localfs.kind`)."""
    try:
        return kind(item.stat(follow_symlinks=False).st_mode)
    except OSError:
        return "vanished file"


def scandir_own(directory: str | Path) -> os._ScandirIterator[str]:
    """``os.scandir`` of a directory of the cache (never a symlink: checked first); one we own
    but may not read (mode 000) is made readable first (as root, mode bits never stop us)."""
    try:
        return os.scandir(directory)
    except PermissionError:
        if not stat.S_ISDIR(lstat_mode(directory)):
            raise
        os.chmod(directory, 0o755)
        return os.scandir(directory)
