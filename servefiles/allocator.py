"""The C allocator's settings for a process whose requests move file contents through Python bytes.

A miss decodes a bytea of up to 1 MiB (asyncpg makes a ``bytes`` of it), and a disk hit of a
file over the memory tier's limit reads it into one. glibc's malloc serves every allocation of
128 KiB or more with an ``mmap`` of its own and unmaps it when freed (its threshold then rises
to the freed size, but the heap's top is trimmed back to the kernel as soon as twice that is
free), so each such object costs a page fault and a zeroed page for every 4 KiB written to it.
Measured with asyncpg on this project's machine (benchmarks/RESULTS.md, 2026-11-30 night):
fetching a 1 MB bytea took 1,773 µs of client CPU with glibc's defaults and 768 µs with the
thresholds below; a 300 KB one 362 µs and 150 µs — a third of the profile was page faults.

:func:`tune_allocator` fixes both thresholds (``mallopt``), so contents up to
:data:`MMAP_THRESHOLD_BYTES` come from the heap and freed memory is reused, not returned, until
more than :data:`TRIM_THRESHOLD_BYTES` of it lies free at the top. That bounds what the process
keeps beyond its live objects. ``servefiles serve`` calls it at start; an application that
mounts the middleware may call it too (or set glibc's ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` environment variables, which it leaves alone).
"""

from __future__ import annotations

import ctypes
import os
import sys

from .defaults import MiB

__all__ = ["MMAP_THRESHOLD_BYTES", "TRIM_THRESHOLD_BYTES", "tune_allocator"]

MMAP_THRESHOLD_BYTES = 4 * MiB
"""Allocations below this come from the heap: every content servefiles makes a bytes object of
(a miss's head of 1 MiB, a whole disk-tier file read for a reply of one message)."""
TRIM_THRESHOLD_BYTES = 8 * MiB
"""Free memory at the heap's top kept for reuse before it is returned to the kernel."""

# mallopt(3) parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def tune_allocator(mmap_threshold: int = MMAP_THRESHOLD_BYTES, trim_threshold: int = TRIM_THRESHOLD_BYTES) -> bool:
    """Set glibc malloc's mmap and trim thresholds (bytes) for this process; True if it took.

    False, changing nothing, where there is no glibc ``mallopt`` (macOS, musl's accepts nothing),
    or where the environment already sets either threshold (``MALLOC_MMAP_THRESHOLD_``,
    ``MALLOC_TRIM_THRESHOLD_``, or ``glibc.malloc`` tunables in ``GLIBC_TUNABLES``): the operator's
    word wins. Never raises."""
    if not sys.platform.startswith("linux"):
        return False
    if any(name in os.environ for name in _ENVIRONMENT) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # The trim threshold first: setting either one turns glibc's dynamic adjustment off.
    return bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold)) and bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold))
