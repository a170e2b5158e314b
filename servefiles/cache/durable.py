"""Durability a cache needs: a content file may be lost after a power cut, never served wrong.

No file is fsynced on its way in (that cost a temp-file fsync and a directory fsync per miss,
a third of the fill threads' time). Instead each file's index row carries ``installed_at``,
the monotonic ns of its rename; a background ``syncfs(2)`` of the cache dir's filesystem makes
everything renamed before it began durable, and then those rows are set to 0 (journal.py).
A file whose row is still > 0 may be torn, truncated or zero-filled only if the machine went
down since it was written, which a changed boot id (``/proc/sys/kernel/random/boot_id``,
recorded in the cache dir at every open) tells: then, at open, each such file is hashed
(size and sha256) and kept, or dropped with its entries. A process that dies (``kill -9``)
loses nothing the kernel already has, so the same boot id needs no check.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import secrets
from pathlib import Path

from ..localfs import read_regular, remove_any

__all__ = ["boot_id", "read_boot_id", "syncfs", "write_boot_id"]

logger = logging.getLogger("servefiles")

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
BOOT_ID_LIMIT = 128
"""Bytes read at most from a boot id file (the kernel's is 37)."""

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)


def boot_id() -> str:
    """This boot's id; "" where the system has none (then every open counts as a new boot)."""
    try:
        return read_regular(BOOT_ID_PATH, BOOT_ID_LIMIT).decode("ascii").strip()
    except (OSError, ValueError, UnicodeDecodeError):
        return ""


def read_boot_id(path: Path) -> str | None:
    """The boot id recorded in the cache dir; None when missing, unreadable or not one (a squatter
    is never followed or waited on: :func:`read_regular`)."""
    try:
        text = read_regular(path, BOOT_ID_LIMIT).decode("ascii").strip()
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return text or None


def write_boot_id(path: Path, boot: str) -> None:
    """Record ``boot`` (temp file, fsync, rename: once per open, so durable the simple way)."""
    temp = path.with_name(f".tmp-{path.name}-{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, f"{boot}\n".encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            remove_any(path)  # rename cannot replace a directory
        os.rename(temp, path)
    except BaseException:
        remove_any(temp)
        raise


def syncfs(directory: Path) -> None:
    """Make everything written to ``directory``'s filesystem so far durable (``syncfs(2)``; where
    the C library lacks it, ``sync(2)``, which does more). OSError on failure."""
    if _syncfs is None:
        os.sync()
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if _syncfs(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error), str(directory))
    finally:
        os.close(fd)
