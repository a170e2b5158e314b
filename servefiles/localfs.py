"""servefiles' own files on local disk (the cache dir, nginx's published tree), touched safely.

Anything may be found there: a FIFO, a socket, a symlink (to a file, to a directory
elsewhere, dangling, to itself), a directory where a file belongs or a file where a
directory belongs. Opening a FIFO for reading blocks until a writer comes, which may
be never; following a symlink reads or deletes outside the cache dir. So every file is
opened with ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO opens at once, a symlink not at all)
and then ``fstat``-ed: only a regular file is used. Every directory below the root the
user named is checked with ``lstat`` and never followed. What cannot be used is
removed (never following it), and named by :func:`kind` in one log line.

A leaf module: the cache and the change feed both use it, it imports neither.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
from pathlib import Path

__all__ = [
    "NotRegularFile",
    "ensure_dir",
    "file_system_type",
    "kind",
    "lstat_mode",
    "open_regular",
    "read_regular",
    "remove_any",
    "sha256_of_fd",
]

NOFOLLOW_NONBLOCK = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
HASH_BLOCK = 1024 * 1024
"""Bytes per read while hashing a file: few system calls, little memory."""


MOUNTINFO = "/proc/self/mountinfo"


def file_system_type(path: str | Path, mountinfo: str = MOUNTINFO) -> str | None:
    """The type of the file system ``path`` is on ("ext4", "nfs4", "fuse.sshfs"…), from the mount
    whose mount point is the longest prefix of ``path``'s real path in ``mountinfo`` (Linux,
    proc(5)); None where that cannot be read (another system) or no mount matches."""
    target = os.path.realpath(path)
    found: tuple[int, str] | None = None
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                fields, _, after = line.partition(" - ")
                parts, types = fields.split(" "), after.split(" ")
                if len(parts) < 5 or not types[0]:
                    continue
                point = _unescape_octal(parts[4])
                inside = target == point or target.startswith(point.rstrip("/") + "/")
                if inside and (found is None or len(point) >= found[0]):  # the later of two stacked mounts
                    found = (len(point), types[0])
    except OSError:
        return None
    return None if found is None else found[1]


def _unescape_octal(text: str) -> str:
    """mountinfo's escapes (``\\040`` for a space, ``\\011``, ``\\012``, ``\\134``) undone."""
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and len(text[i + 1 : i + 4]) == 3 and set(text[i + 1 : i + 4]) <= set("01234567"):
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


class NotRegularFile(OSError):
    """The path names something other than a regular file (a FIFO, socket, directory, device)."""


def kind(mode: int) -> str:
    """What an ``lstat`` mode names, in words for a log line (``0``: nothing)."""
    if stat.S_ISREG(mode):
        return "regular file"
    for test, name in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "missing file" if mode == 0 else "special file"


def lstat_mode(path: str | Path) -> int:
    """The mode of what ``path`` names, not following a symlink; 0 when nothing is there."""
    try:
        return os.stat(path, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return 0


def open_regular(path: str | Path, flags: int = os.O_RDONLY, mode: int = 0o644, dir_fd: int | None = None) -> int:
    """Open ``path`` only if it is a regular file, without following a symlink or blocking.

    ``flags`` are the access flags (``O_RDWR | O_CREAT``...); ``O_NOFOLLOW``, ``O_NONBLOCK``
    and ``O_CLOEXEC`` are added. Raises :class:`NotRegularFile` for a FIFO, socket,
    directory or device, and ``OSError`` (``ELOOP``) for a symlink. The fd is returned in
    blocking mode (which a regular file ignores anyway); the caller closes it.
    """
    fd = os.open(path, flags | NOFOLLOW_NONBLOCK, mode, dir_fd=dir_fd)
    try:
        found = os.fstat(fd).st_mode
        if not stat.S_ISREG(found):
            raise NotRegularFile(f"{path} is a {kind(found)}, not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular_for_reading(path: str | Path) -> tuple[int, os.stat_result]:
    """``(fd, status)`` of ``path`` opened read-only (blocking) if it is a regular file, as
    :func:`open_regular` checks it, with the one ``fstat`` that check makes (a cache hit's path,
    where each system call counts: its size and stamp come from it). Raises
    :class:`NotRegularFile`, or ``OSError`` (``ELOOP`` for a symlink)."""
    fd = os.open(path, os.O_RDONLY | NOFOLLOW_NONBLOCK)
    try:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode):
            raise NotRegularFile(f"{path} is a {kind(found.st_mode)}, not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, found


def read_regular(path: str | Path, limit: int) -> bytes:
    """The whole of a small regular file (:func:`open_regular`); ``ValueError`` beyond ``limit`` bytes."""
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise ValueError(f"{path} holds {size} bytes, more than the {limit} expected")
        return os.pread(fd, limit + 1, 0)
    finally:
        os.close(fd)


def sha256_of_fd(fd: int) -> str:
    """The sha256 of everything an open file holds, as 64 lowercase hex digits.

    Read with positional reads from byte 0 in blocks of :data:`HASH_BLOCK`, so the fd's
    offset neither matters nor moves; ``OSError`` as the reads raise it. The caller opens
    (a cache file: with :func:`open_regular`) and closes ``fd``.
    """
    digest = hashlib.sha256()
    offset = 0
    while block := os.pread(fd, HASH_BLOCK, offset):
        digest.update(block)
        offset += len(block)
    return digest.hexdigest()


def remove_any(path: str | Path) -> None:
    """Remove whatever ``path`` names without following it: a directory with its contents
    (symlinks inside are unlinked, not followed); nothing there is fine."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.stat(path, follow_symlinks=False).st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def ensure_dir(path: str | Path) -> str | None:
    """Make ``path`` a real directory, replacing a symlink, file, FIFO... squatting on the name.

    Returns the :func:`kind` of what was replaced (for the caller's log line), None when
    ``path`` was a directory already or did not exist; ``NotADirectoryError`` when it
    cannot be made one (something keeps putting a squatter back).
    """
    replaced = None
    for _ in range(3):
        mode = lstat_mode(path)
        if stat.S_ISDIR(mode):
            return replaced
        if mode:
            replaced = kind(mode)
            remove_any(path)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path)
    if not stat.S_ISDIR(lstat_mode(path)):
        raise NotADirectoryError(f"{path} is not a directory")
    return replaced
