"""Whether a file's bytes are in the page cache, asked without reading them.

A body the server sends from a file with ``sendfile(2)`` (:mod:`servefiles.middleware.zerocopy`) is
read by the kernel on the event loop's thread: a page that is not cached would stall every
other request while the disk answers. The read path avoids that with ``RWF_NOWAIT``, which
only works by copying the bytes out; ``cachestat(2)`` (Linux 6.5) counts the cached pages of
a range without touching them, so a file is handed to ``sendfile`` only when all of it is
there. Where the kernel (or a seccomp filter) does not offer it, :func:`cached` says None and
the caller reads as before.

A leaf module: it imports nothing of servefiles.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
import threading
from collections.abc import Callable

__all__ = ["cached"]

_CACHESTAT = 451
"""The syscall's number: one table for every architecture since Linux 5.1 (``__NR_cachestat``)."""
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]  # struct cachestat_range


class _Stat(ctypes.Structure):
    _fields_ = [  # struct cachestat
        ("nr_cache", ctypes.c_uint64),
        ("nr_dirty", ctypes.c_uint64),
        ("nr_writeback", ctypes.c_uint64),
        ("nr_evicted", ctypes.c_uint64),
        ("nr_recently_evicted", ctypes.c_uint64),
    ]


class _CacheStat:
    """The call and its argument buffers, made once per thread (ctypes lets go of the GIL during
    the call, so two threads must not share them): a call costs about 4 µs, a 256 KiB copy out of
    the cache about 45."""

    def __init__(self, syscall: Callable[..., int]) -> None:
        self.syscall = syscall
        self.range = _Range()
        self.stat = _Stat()
        self.range_ref = ctypes.byref(self.range)
        self.stat_ref = ctypes.byref(self.stat)

    def __call__(self, fd: int, start: int, end: int) -> bool | None:
        self.range.off = start
        self.range.len = end - start
        if self.syscall(_CACHESTAT, fd, self.range_ref, self.stat_ref, 0) != 0:
            if ctypes.get_errno() in (errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP):
                global _syscall
                _syscall = None  # this kernel cannot, or may not: never asked again
            return None
        # cachestat counts whole pages: the range rounded out to page boundaries.
        pages = (end - 1) // _PAGE - start // _PAGE + 1
        return bool(self.stat.nr_cache >= pages)


_syscall: Callable[..., int] | None = None
_threads = threading.local()


def cached(fd: int, start: int, end: int) -> bool | None:
    """Whether every page of bytes ``[start, end)`` of the open file ``fd`` is in the page cache.

    True or False from ``cachestat(2)``; None when the system cannot tell (not Linux, a kernel
    before 6.5, a filter that refuses the call). An empty range is cached."""
    if _syscall is None:
        return None
    if end <= start:
        return True
    call: _CacheStat | None = getattr(_threads, "call", None)
    if call is None:
        call = _threads.call = _CacheStat(_syscall)
    return call(fd, start, end)


def _load() -> Callable[..., int] | None:
    if sys.platform != "linux":
        return None
    try:
        syscall = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):  # no libc to load (a static interpreter): the read path
        return None
    syscall.restype = ctypes.c_long
    return syscall


_syscall = _load()
